/**
 * The directory lock shared by `data_dir` and the durable buffer. Liveness by pid and start time
 * is exercised through the durable buffer's tests; here, what only the module itself shows.
 */
import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { afterEach, describe, expect, it } from "vitest";
import { acquireDirLock } from "../../../src/core/dir-lock.js";
import { fillDisk, mountTmpfs } from "../../helpers/tmpfs.js";

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

/** Whether `file` is there: a lock is a symlink to no file, which `existsSync` (following it) calls absent. */
function exists(file: string): boolean {
  return fs.lstatSync(file, { throwIfNoEntry: false }) !== undefined;
}

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
    expect(exists(file)).toBe(false);
    const again = await acquireDirLock(file, "data_dir /x");
    await again.release();
  });

  it("releasing twice, or after another took the lock over, leaves the other's lock alone", async () => {
    const file = join(tmpDir(), "pipeline.lock");
    const lock = await acquireDirLock(file, "d");
    await lock.release();
    const other = await acquireDirLock(file, "d");
    await lock.release();
    expect(exists(file)).toBe(true);
    await other.release();
    expect(exists(file)).toBe(false);
  });

  it("release removes the lock only while it names this process: one that another took over stays", async () => {
    const file = join(tmpDir(), "pipeline.lock");
    const lock = await acquireDirLock(file, "d");
    // Another process judged this one gone and took the lock over.
    fs.rmSync(file);
    fs.symlinkSync(`${process.ppid} 1`, file);
    await lock.release();
    expect(fs.readlinkSync(file)).toBe(`${process.ppid} 1`);
  });

  it("is a symlink naming this pid and start time", async () => {
    const file = join(tmpDir(), "pipeline.lock");
    const lock = await acquireDirLock(file, "d");
    expect(fs.lstatSync(file).isSymbolicLink()).toBe(true);
    expect(fs.readlinkSync(file)).toMatch(new RegExp(`^${process.pid} \\d+$`));
    await lock.release();
  });

  it.each([
    ["a process that is gone", () => `${spawnSync(process.execPath, ["-e", ""]).pid} 1\n`],
    ["garbled content", () => "not a pid\n"],
    ["nothing in it (an earlier version's, made on a full disk)", () => ""],
  ])("takes over a lock file (an earlier version's) left by %s and leaves no temp file", async (_name, content) => {
    const dir = tmpDir();
    const file = join(dir, "pipeline.lock");
    const text = content();
    fs.writeFileSync(file, text);
    const lock = await acquireDirLock(file, "d");
    expect(lock.staleFrom).toBe(/^\d+ /.test(text) ? Number(text.split(" ")[0]) : undefined);
    expect(fs.readlinkSync(file)).toMatch(new RegExp(`^${process.pid} \\d+$`));
    expect(fs.readdirSync(dir)).toEqual(["pipeline.lock"]);
    await lock.release();
  });

  it("refuses a live process's lock file of an earlier version", async () => {
    const file = join(tmpDir(), "pipeline.lock");
    fs.writeFileSync(file, `${process.ppid}\n`);
    await expect(acquireDirLock(file, "d")).rejects.toMatchObject({ code: "ERR_LOCKED", message: expect.stringContaining(`process ${process.ppid}`) });
  });

  it("removes the temp files of takers that are gone (this version's and the earlier one's), and leaves a live taker's", async () => {
    const dir = tmpDir();
    const file = join(dir, "pipeline.lock");
    const gone = spawnSync(process.execPath, ["-e", ""]).pid;
    fs.writeFileSync(join(dir, `pipeline.lock.${gone}.tmp`), "");
    fs.symlinkSync(`${gone} 1`, join(dir, `pipeline.lock.${gone}-3.tmp`));
    fs.writeFileSync(join(dir, `pipeline.lock.${process.ppid}.tmp`), "");
    const lock = await acquireDirLock(file, "d");
    expect(fs.readdirSync(dir).sort()).toEqual(["pipeline.lock", `pipeline.lock.${process.ppid}.tmp`]);
    await lock.release();
  });
});

/** A process that takes the lock `file` when told `take` and answers `won`, `lost <code>`; `release` gives it up. */
function lockTaker(file: string): { proc: ChildProcessWithoutNullStreams; ask: (line: string) => Promise<string> } {
  const script = `
    import { createInterface } from "node:readline";
    import { acquireDirLock } from ${JSON.stringify(resolve("src/core/dir-lock.ts"))};
    let lock;
    for await (const line of createInterface({ input: process.stdin })) {
      if (line === "take") {
        try { lock = await acquireDirLock(${JSON.stringify(file)}, "d"); console.log("won"); }
        catch (err) { console.log("lost " + (err.code ?? err.message)); }
      } else if (line === "release") { await lock?.release(); lock = undefined; console.log("released"); }
    }`;
  const proc = spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], { stdio: "pipe" });
  const answers = createInterface({ input: proc.stdout })[Symbol.asyncIterator]();
  return {
    proc,
    ask: async (line) => {
      proc.stdin.write(`${line}\n`);
      const next = await answers.next();
      return String(next.value);
    },
  };
}

describe("acquireDirLock raced by two processes", () => {
  it("of two takers of one stale lock at the same moment, exactly one wins, every round", async () => {
    const dir = tmpDir();
    const file = join(dir, "pipeline.lock");
    const takers = [lockTaker(file), lockTaker(file)];
    try {
      const gone = spawnSync(process.execPath, ["-e", ""]).pid;
      for (let round = 0; round < 40; round++) {
        // Alternately an earlier version's lock file and this version's symlink.
        if (round % 2 === 0) fs.writeFileSync(file, `${gone} 1\n`);
        else fs.symlinkSync(`${gone} 1`, file);
        const answers = await Promise.all(takers.map((t) => t.ask("take")));
        expect(answers.sort(), `round ${round}`).toEqual(["lost ERR_LOCKED", "won"]);
        for (const t of takers) await t.ask("release");
        expect(exists(file), `round ${round}: the winner released its lock`).toBe(false);
      }
    } finally {
      for (const t of takers) t.proc.kill();
    }
  }, 60_000);
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
    expect(fs.readlinkSync(join(mountPoint, "lock"))).toMatch(new RegExp(`^${process.pid} \\d+$`));
    expect(fs.readdirSync(mountPoint).sort()).toEqual(["filler", "lock"]);
    await lock.release();
  });

  it("takes a lock where there was none, and refuses a second taker while it is held", async (ctx) => {
    if (!fullDisk(() => {})) return ctx.skip();
    const file = join(mountPoint, "lock");
    const lock = await acquireDirLock(file, "d");
    expect(fs.readdirSync(mountPoint).sort()).toEqual(["filler", "lock"]);
    // Without a free block the pid is still in it (a symlink's short target needs none): never an empty lock.
    expect(fs.readlinkSync(file)).toMatch(new RegExp(`^${process.pid} \\d+$`));
    await expect(acquireDirLock(file, "d")).rejects.toMatchObject({ code: "ERR_LOCKED" });
    expect(fs.readdirSync(mountPoint).sort()).toEqual(["filler", "lock"]);
    await lock.release();
    expect(exists(file)).toBe(false);
  });

  it("is refused to another process while held on a full disk: the lock is not read as garbled", async (ctx) => {
    if (!fullDisk(() => {})) return ctx.skip();
    const file = join(mountPoint, "lock");
    const lock = await acquireDirLock(file, "d");
    const other = lockTaker(file);
    try {
      expect(await other.ask("take")).toBe("lost ERR_LOCKED");
    } finally {
      other.proc.kill();
    }
    expect(fs.readlinkSync(file)).toMatch(new RegExp(`^${process.pid} `));
    await lock.release();
  });
});
