/**
 * The lock that keeps two processes (or two pipelines of one process) off one directory: the
 * pipeline's `data_dir` and the durable buffer's log each take one. A lock is a symlink whose
 * target is the pid of its holder and, where /proc tells it, the time that process started.
 */
import fs from "node:fs/promises";
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
  /** Gives the lock up (removes it if it still names this process). Safe to call more than once. */
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

/** The lock's target for this process: its pid, and its start time where /proc tells it. */
async function lockTarget(): Promise<string> {
  const started = await startTime(process.pid);
  return started === undefined ? `${process.pid}` : `${process.pid} ${started}`;
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

/**
 * What the lock at `file` says: a symlink's target, or a regular file's content (a lock left by an
 * earlier version); undefined when there is none.
 */
async function readLock(file: string): Promise<string | undefined> {
  try {
    return await fs.readlink(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EINVAL") return undefined;
  }
  return fs.readFile(file, "utf8").catch(() => undefined);
}

/** The holder a lock names; undefined when it is garbled or empty. */
function parseHolder(text: string): Holder | undefined {
  const [pidText, started] = text.trim().split(" ");
  const pid = Number(pidText);
  return Number.isSafeInteger(pid) && pid > 0 ? { pid, started } : undefined;
}

/** Names of files set aside while taking over a stale lock, unique in this process. */
let asideCount = 0;

/**
 * Removes a stale lock that said `stale`, unless another taker replaced it meanwhile: it is renamed
 * aside first (atomic: of two takers, one gets it), and only removed if the renamed one still says
 * `stale`; a fresh lock moved by mistake is put back. Without this, a taker that judged the old
 * lock stale could delete the lock another taker just created, and both would run.
 */
async function removeStale(file: string, stale: string): Promise<void> {
  const aside = `${file}.${process.pid}-${++asideCount}.tmp`;
  try {
    await fs.rename(file, aside);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return;
    throw err;
  }
  if ((await readLock(aside)) === stale) {
    await fs.rm(aside, { force: true });
    return;
  }
  // A hard link of the symlink itself: unlike rename, it never replaces a lock created meanwhile.
  await fs.link(aside, file).catch(() => {});
  await fs.rm(aside, { force: true });
}

/**
 * Removes the temp files of takers that are gone: `<file>.<pid>-<n>.tmp` (a lock set aside by a
 * taker killed before removing it) and `<file>.<pid>.tmp` (an earlier version's). A live taker's
 * are left alone: it may be about to use them.
 */
async function removeLeftovers(file: string): Promise<void> {
  const prefix = `${basename(file)}.`;
  for (const name of await fs.readdir(dirname(file)).catch(() => [] as string[])) {
    if (!name.startsWith(prefix) || !name.endsWith(".tmp")) continue;
    const pid = Number(name.slice(prefix.length, -4).split("-")[0]);
    if (!Number.isSafeInteger(pid) || pid <= 0 || pid === process.pid) continue;
    if (await isLive({ pid, started: undefined }, file)) continue;
    await fs.rm(join(dirname(file), name), { force: true }).catch(() => {});
  }
}

/**
 * Takes the lock `file` (in an existing directory) for this process; `what` names the directory
 * in messages (`data_dir /srv/data`). A lock whose process is alive, this one included (another
 * pipeline on the same directory), refuses with `ERR_LOCKED` naming that pid; a stale one (its
 * process is gone, e.g. after SIGKILL; its pid now names a process started at another time; or its
 * content is garbled or empty) is taken over, and its pid is in `staleFrom`. Lock files of earlier
 * versions (regular files holding the same text) are read and taken over the same way.
 *
 * The lock is a symlink whose target is `<pid> <start time>`: created atomically, never seen
 * half-written, and its short target needs no data block (a fast symlink on ext4 and tmpfs), so it
 * is taken on a disk without one free byte (a durable buffer that filled it, then a crash: the
 * restart is what frees the space). Of takers racing for one stale lock, exactly one wins (see
 * {@link removeStale}); `release` removes the lock only while it still names this process.
 *
 * Gotchas: the put-back of a fresh lock moved aside by a losing taker fails if a third taker
 * created one in that instant; the lock guards against a second start by mistake, not a siege.
 */
export async function acquireDirLock(file: string, what: string): Promise<DirLock> {
  const target = await lockTarget();
  let staleFrom: number | undefined;
  for (let attempt = 0; attempt < 5; attempt++) {
    try {
      await fs.symlink(target, file);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      const text = await readLock(file);
      // Gone meanwhile (its holder released it, or another taker set it aside): try again.
      if (text === undefined) continue;
      const holder = parseHolder(text);
      if (holder !== undefined && (await isLive(holder, file))) {
        const by = holder.pid === process.pid ? `this process (pid ${holder.pid}): another pipeline on it is built or running` : `process ${holder.pid}`;
        throw new SluiceError("ERR_LOCKED", `${what} is in use by ${by}; stop it first, or delete ${file} if no sluice process uses this directory`, { location: file });
      }
      staleFrom = holder?.pid;
      await removeStale(file, text);
      continue;
    }
    heldLocks.add(file);
    let held = true;
    const release = async (): Promise<void> => {
      // Once given up, or taken over (by someone who judged this process gone), the lock is another's.
      if (!held) return;
      held = false;
      heldLocks.delete(file);
      if ((await readLock(file)) === target) await fs.rm(file, { force: true });
    };
    await removeLeftovers(file);
    return { file, staleFrom, release };
  }
  throw new SluiceError("ERR_LOCKED", `${what}: could not take ${file}; another process keeps taking it`, { location: file });
}
