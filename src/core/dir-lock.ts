/**
 * The lock that keeps two processes (or two pipelines of one process) off one directory: the
 * pipeline's `data_dir` and the durable buffer's log each take one. A lock is a file holding the
 * pid of its holder and, where /proc tells it, the time that process started.
 */
import fs from "node:fs/promises";
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

/**
 * Takes the lock file `file` (in an existing directory) for this process; `what` names the
 * directory in messages (`data_dir /srv/data`). A lock whose process is alive, this one included
 * (another pipeline on the same directory), refuses with `ERR_LOCKED` naming that pid; a stale one
 * (its process is gone, e.g. after SIGKILL; its pid now names a process started at another time;
 * or its content is garbled) is taken over, and its pid is in `staleFrom`. The lock is created by
 * hard-linking a complete temp file, so nobody reads a half-written pid.
 *
 * Gotcha: two processes taking over the same stale lock at the same moment can both win; the
 * lock guards against a second start by mistake, not against a race on purpose.
 */
export async function acquireDirLock(file: string, what: string): Promise<DirLock> {
  const tmp = `${file}.${process.pid}.tmp`;
  await fs.writeFile(tmp, await lockContent());
  let staleFrom: number | undefined;
  try {
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        await fs.link(tmp, file);
        heldLocks.add(file);
        let held = true;
        const release = async (): Promise<void> => {
          // Once given up, the file may be another lock's: only the first release removes it.
          if (!held) return;
          held = false;
          heldLocks.delete(file);
          await fs.rm(file, { force: true });
        };
        return { file, staleFrom, release };
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      }
      const holder = await lockHolder(file);
      if (holder !== undefined && (await isLive(holder, file))) {
        const by = holder.pid === process.pid ? `this process (pid ${holder.pid}): another pipeline on it is built or running` : `process ${holder.pid}`;
        throw new SluiceError("ERR_LOCKED", `${what} is in use by ${by}; stop it first, or delete ${file} if no sluice process uses this directory`, { location: file });
      }
      staleFrom = holder?.pid;
      await fs.rm(file, { force: true });
    }
    throw new SluiceError("ERR_LOCKED", `${what}: could not take ${file}; another process keeps taking it`, { location: file });
  } finally {
    await fs.rm(tmp, { force: true });
  }
}
