/**
 * The lock that keeps two processes (or two pipelines of one process) off one directory: the
 * pipeline's `data_dir` and the durable buffer's log each take one. A lock is a file holding the
 * pid of its holder and, where /proc tells it, the time that process started.
 */
import fs, { type FileHandle } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { SluiceError } from "./errors.js";

/** Lock files this process holds: a lock naming our own pid is live only if it is in here. */
const heldLocks = new Set<string>();

/** A lock taken by {@link acquireDirLock}. */
export interface DirLock {
  /** The lock file. */
  readonly file: string;
  /** The pid of the dead process whose lock was taken over, if it was. */
  readonly staleFrom: number | undefined;
  /** Gives the lock up (removes the file). Safe to call more than once. */
  release(): Promise<void>;
}

interface Holder {
  readonly pid: number;
  readonly started: string | undefined;
}

/**
 * When process `pid` started (clock ticks since boot, field 22 of /proc/<pid>/stat), or undefined
 * where there is no /proc or no such process. With the pid it names one process for good: a pid
 * alone may be reused by another process after a crash.
 */
async function startTime(pid: number): Promise<string | undefined> {
  try {
    const stat = await fs.readFile(`/proc/${pid}/stat`, "utf8");
    // After the command name, which may hold spaces and parentheses: field 3 onwards.
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19];
  } catch {
    return undefined;
  }
}

/** The lock file's content for this process: its pid, and its start time where /proc tells it. */
async function lockContent(): Promise<string> {
  const started = await startTime(process.pid);
  return started === undefined ? `${process.pid}\n` : `${process.pid} ${started}\n`;
}

async function isLive(holder: Holder, lockFile: string): Promise<boolean> {
  // A lock with our own pid is from an earlier incarnation (a container restarted as pid 1)
  // unless this process took it.
  if (holder.pid === process.pid) return heldLocks.has(lockFile);
  try {
    process.kill(holder.pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EPERM") return false;
  }
  // Alive; but when the lock says when its process started, the pid must still be that process.
  if (holder.started === undefined) return true;
  const started = await startTime(holder.pid);
  return started === undefined || started === holder.started;
}

async function lockHolder(lockFile: string): Promise<Holder | undefined> {
  try {
    const [pidText, started] = (await fs.readFile(lockFile, "utf8")).trim().split(" ");
    const pid = Number(pidText);
    return Number.isSafeInteger(pid) && pid > 0 ? { pid, started } : undefined;
  } catch {
    return undefined;
  }
}

/** Errors of a write that found no room: the lock then needs a way that allocates no data block. */
const NO_SPACE: ReadonlySet<string | undefined> = new Set(["ENOSPC", "EDQUOT"]);

/**
 * Creates the lock file `file` holding `content`; false when it exists already. The preferred way
 * hard-links a complete temp file, so nobody reads a half-written pid. On a disk without room for
 * the temp file (a durable buffer that filled it, then a crash: the restart is what frees the
 * space) the lock is created empty with `O_EXCL`, which needs an inode but no data block, and the
 * pid written into it if a block can still be had. The temp file is removed however this ends.
 */
async function createLock(file: string, content: string): Promise<boolean> {
  const tmp = `${file}.${process.pid}.tmp`;
  try {
    await fs.writeFile(tmp, content);
    await fs.link(tmp, file);
    return true;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "EEXIST") return false;
    if (!NO_SPACE.has(code)) throw err;
  } finally {
    await fs.rm(tmp, { force: true });
  }
  let fh: FileHandle;
  try {
    fh = await fs.open(file, "wx");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "EEXIST") return false;
    throw err;
  }
  try {
    await fh.writeFile(content);
  } catch {
    // Still no room: the lock stays empty, which a later taker reads as garbled and takes over.
  } finally {
    await fh.close();
  }
  return true;
}

/**
 * Removes the temp files of takers that are gone (`<file>.<pid>.tmp` of a process killed between
 * writing and removing it); a live taker's is left alone, its link may be about to happen.
 */
async function removeLeftovers(file: string): Promise<void> {
  const prefix = `${basename(file)}.`;
  for (const name of await fs.readdir(dirname(file)).catch(() => [] as string[])) {
    if (!name.startsWith(prefix) || !name.endsWith(".tmp")) continue;
    const pid = Number(name.slice(prefix.length, -4));
    if (!Number.isSafeInteger(pid) || pid <= 0 || pid === process.pid) continue;
    if (await isLive({ pid, started: undefined }, file)) continue;
    await fs.rm(join(dirname(file), name), { force: true }).catch(() => {});
  }
}

/**
 * Takes the lock file `file` (in an existing directory) for this process; `what` names the
 * directory in messages (`data_dir /srv/data`). A lock whose process is alive, this one included
 * (another pipeline on the same directory), refuses with `ERR_LOCKED` naming that pid; a stale one
 * (its process is gone, e.g. after SIGKILL; its pid now names a process started at another time;
 * or its content is garbled or empty) is taken over, and its pid is in `staleFrom`. The lock is
 * created by hard-linking a complete temp file, so nobody reads a half-written pid; on a full disk
 * it is created without free space (see {@link createLock}). Temp files of takers that are gone
 * are removed once the lock is taken.
 *
 * Gotchas: two processes taking over the same stale lock at the same moment can both win; the
 * lock guards against a second start by mistake, not against a race on purpose. A lock created on
 * a disk with not one free block stays empty, and another process would take it over as garbled.
 */
export async function acquireDirLock(file: string, what: string): Promise<DirLock> {
  const content = await lockContent();
  let staleFrom: number | undefined;
  for (let attempt = 0; attempt < 3; attempt++) {
    if (await createLock(file, content)) {
      heldLocks.add(file);
      let held = true;
      const release = async (): Promise<void> => {
        // Once given up, the file may be another lock's: only the first release removes it.
        if (!held) return;
        held = false;
        heldLocks.delete(file);
        await fs.rm(file, { force: true });
      };
      await removeLeftovers(file);
      return { file, staleFrom, release };
    }
    const holder = await lockHolder(file);
    // A lock without a pid is ours if we hold it: one this process created on a full disk.
    if (holder === undefined ? heldLocks.has(file) : await isLive(holder, file)) {
      const pid = holder?.pid ?? process.pid;
      const by = pid === process.pid ? `this process (pid ${pid}): another pipeline on it is built or running` : `process ${pid}`;
      throw new SluiceError("ERR_LOCKED", `${what} is in use by ${by}; stop it first, or delete ${file} if no sluice process uses this directory`, { location: file });
    }
    staleFrom = holder?.pid;
    // Removing the stale lock also gives back its block, which a full disk needs for the new one.
    await fs.rm(file, { force: true });
  }
  throw new SluiceError("ERR_LOCKED", `${what}: could not take ${file}; another process keeps taking it`, { location: file });
}
