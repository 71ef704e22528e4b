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
});
