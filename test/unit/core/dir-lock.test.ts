/**
 * The directory lock shared by `data_dir` and the durable buffer. Liveness by pid and start time
 * is exercised through the durable buffer's tests; here, what only the module itself shows.
 */
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { acquireDirLock } from "../../../src/core/dir-lock.js";
import { fillDisk, mountTmpfs } from "../../helpers/tmpfs.js";

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

function tmpDir(): string {
  const d = fs.mkdtempSync(join(os.tmpdir(), "sluice-lock-"));
  dirs.push(d);
  return d;
}

describe("acquireDirLock", () => {
  it("refuses a second taker in this process, naming the directory and this pid, until released", async () => {
    const file = join(tmpDir(), "pipeline.lock");
    const lock = await acquireDirLock(file, "data_dir /x");
    expect(lock.staleFrom).toBeUndefined();
    await expect(acquireDirLock(file, "data_dir /x")).rejects.toMatchObject({
      code: "ERR_LOCKED",
      location: file,
      message: `data_dir /x is in use by this process (pid ${process.pid}): another pipeline on it is built or running; stop it first, or delete ${file} if no sluice process uses this directory`,
    });
    await lock.release();
    expect(fs.existsSync(file)).toBe(false);
    const again = await acquireDirLock(file, "data_dir /x");
    await again.release();
  });

  it("releasing twice, or after another took the lock over, leaves the other's lock alone", async () => {
    const file = join(tmpDir(), "pipeline.lock");
    const lock = await acquireDirLock(file, "d");
    await lock.release();
    const other = await acquireDirLock(file, "d");
    await lock.release();
    expect(fs.existsSync(file)).toBe(true);
    await other.release();
    expect(fs.existsSync(file)).toBe(false);
  });

  it.each([
    ["a process that is gone", () => `${spawnSync(process.execPath, ["-e", ""]).pid} 1\n`],
    ["garbled content", () => "not a pid\n"],
  ])("takes over a lock left by %s and leaves no temp file", async (_name, content) => {
    const dir = tmpDir();
    const file = join(dir, "pipeline.lock");
    const text = content();
    fs.writeFileSync(file, text);
    const lock = await acquireDirLock(file, "d");
    expect(lock.staleFrom).toBe(/^\d+ /.test(text) ? Number(text.split(" ")[0]) : undefined);
    expect(fs.readFileSync(file, "utf8")).toMatch(new RegExp(`^${process.pid} \\d+\n$`));
    expect(fs.readdirSync(dir)).toEqual(["pipeline.lock"]);
    await lock.release();
  });

  it("removes the temp files of takers that are gone, and leaves a live taker's", async () => {
    const dir = tmpDir();
    const file = join(dir, "pipeline.lock");
    const gone = spawnSync(process.execPath, ["-e", ""]).pid;
    fs.writeFileSync(join(dir, `pipeline.lock.${gone}.tmp`), "");
    fs.writeFileSync(join(dir, `pipeline.lock.${process.ppid}.tmp`), "");
    const lock = await acquireDirLock(file, "d");
    expect(fs.readdirSync(dir).sort()).toEqual(["pipeline.lock", `pipeline.lock.${process.ppid}.tmp`]);
    await lock.release();
  });
});

describe("acquireDirLock on a full disk (a small tmpfs)", () => {
  let mountPoint: string;
  const unmounts: (() => void)[] = [];
  afterEach(() => {
    for (const unmount of unmounts.splice(0)) unmount();
  });

  /** Mounts a 64 KiB tmpfs and fills it to the last byte; false (with the reason printed) where mounting is not permitted. */
  function fullDisk(before: (dir: string) => void): boolean {
    mountPoint = tmpDir();
    const unmount = mountTmpfs(mountPoint, "size=64k");
    if (unmount === undefined) return false;
    unmounts.push(unmount);
    before(mountPoint);
    fillDisk(join(mountPoint, "filler"));
    expect(() => fs.writeFileSync(join(mountPoint, "probe"), "x")).toThrow(/ENOSPC/);
    fs.rmSync(join(mountPoint, "probe"), { force: true });
    return true;
  }

  it("takes over the lock of a process that is gone, with its pid in it, and leaves no temp file", async (ctx) => {
    const gone = spawnSync(process.execPath, ["-e", ""]).pid;
    if (!fullDisk((dir) => fs.writeFileSync(join(dir, "lock"), `${gone} 1\n`))) return ctx.skip();
    const lock = await acquireDirLock(join(mountPoint, "lock"), "d");
    expect(lock.staleFrom).toBe(gone);
    expect(fs.readFileSync(join(mountPoint, "lock"), "utf8")).toMatch(new RegExp(`^${process.pid} \\d+\n$`));
    expect(fs.readdirSync(mountPoint).sort()).toEqual(["filler", "lock"]);
    await lock.release();
  });

  it("takes a lock where there was none, and refuses a second taker while it is held", async (ctx) => {
    if (!fullDisk(() => {})) return ctx.skip();
    const file = join(mountPoint, "lock");
    const lock = await acquireDirLock(file, "d");
    expect(fs.readdirSync(mountPoint).sort()).toEqual(["filler", "lock"]);
    // Without a free block the pid cannot be written: an empty lock, which is still refused in this process.
    await expect(acquireDirLock(file, "d")).rejects.toMatchObject({ code: "ERR_LOCKED" });
    expect(fs.readdirSync(mountPoint).sort()).toEqual(["filler", "lock"]);
    await lock.release();
  });
});
