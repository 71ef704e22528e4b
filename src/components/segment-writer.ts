/**
 * The segment writer that file-format sinks share (`file`: NDJSON, `parquet`): files in one
 * directory named `<prefix>-<UTC time>-<sequence>.<extension>`, each written under a hidden temp
 * name `.<name>.tmp` and renamed once complete, so a reader that lists `<prefix>-*.<extension>`
 * only ever sees whole files. With `fsync`, data is synced before a write resolves and the
 * directory after every create and rename.
 */
import { mkdir, open, readdir, rename, unlink, type FileHandle } from "node:fs/promises";
import { dirname, join } from "node:path";
import type { Clock } from "../core/clock.js";
import { classify, SluiceError } from "../core/errors.js";

/**
 * What a temp segment left by a crashed run becomes when the writer opens. `keep_lines`: its whole
 * lines were acknowledged (an appending NDJSON sink syncs each batch into the temp segment), so a
 * torn last line is cut and the segment renamed. `remove`: nothing in it was acknowledged (a sink
 * that acks only after the rename), so it is deleted and its records come again from the source.
 */
export type SegmentLeftovers = "keep_lines" | "remove";

/** What {@link createSegmentWriter} needs. */
export interface SegmentWriterSettings {
  /** Directory of the segments; created (and its new parents synced) by `open`. */
  readonly dir: string;
  /** Segment names start with it; letters, digits, `.`, `_`, `-`. */
  readonly prefix: string;
  /** File name extension, without the dot (`ndjson`, `parquet`). */
  readonly extension: string;
  /** `append` finishes a segment at this size, in bytes. */
  readonly rotateBytes: number;
  /** `append` finishes a segment this long after it was started, in ms; 0 disables. */
  readonly rotateAfterMs: number;
  /** Sync data before a write resolves, and the directory after creates and renames. */
  readonly fsync: boolean;
  readonly leftovers: SegmentLeftovers;
  /** Timestamps names and drives `rotateAfterMs`. */
  readonly clock: Clock;
  /** Starts error messages (`file sink`, `parquet sink`). */
  readonly label: string;
  /** Where a failure of a background step is reported (an age rotation, a rename after a durable append); the next call retries it. */
  readonly report: (err: unknown) => void;
}

/**
 * A directory of segments. Calls are serialized: appends, whole writes and rotations never
 * interleave. Gotcha: one writer per directory and prefix; a second one would take the first
 * one's temp segments for leftovers.
 */
export interface SegmentWriter {
  /**
   * Creates the directory, deals with temp segments a crashed run left (see {@link SegmentLeftovers})
   * and continues the sequence numbers after the highest in the directory, so a restart never
   * reuses a name. May be called again after it failed.
   */
  open(): Promise<void>;
  /**
   * Appends `data` (whole lines) to the current temp segment, starting a new one first when it
   * would overflow `rotateBytes` (data is never split). Resolves once the data is synced (with
   * `fsync`). A failed write is truncated away before it is reported, so a retry does not leave
   * half a batch behind, and the retry goes to a fresh segment. A segment that reaches
   * `rotateBytes` is renamed at once; a failed rename then is reported, not thrown (the data is
   * durable already), and retried before the next write.
   */
  append(data: Buffer): Promise<void>;
  /**
   * Writes `data` as one complete segment: temp name, write, sync, rename, directory sync.
   * Resolves with the final path only once all of that is done; on failure the temp file is
   * removed and the error thrown (nothing under a final name).
   */
  writeWhole(data: Uint8Array): Promise<string>;
  /** Finishes the current segment and any whose rename failed before. Later calls are refused. */
  close(): Promise<void>;
}

interface Segment {
  readonly tmpPath: string;
  readonly finalPath: string;
  handle: FileHandle | undefined;
  bytes: number;
  /** Cancels the age-rotation timer. */
  cancelTimer: () => void;
  /** The tail may hold a partial line (a failed write could not be truncated away): trim before renaming. */
  torn: boolean;
}

/** `2024-01-02T03:04:05.678Z` -> `20240102T030405678Z`: sorts like the time and is safe in any file system. */
export function compactUtc(ms: number): string {
  return new Date(ms).toISOString().replace(/[-:.]/g, "");
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/** Matches a segment name of `prefix` and `extension`, finished or temp: groups time, sequence, `.tmp`. */
export function segmentNamePattern(prefix: string, extension: string): RegExp {
  return new RegExp(`^\\.?${escapeRegExp(prefix)}-(\\d{8}T\\d{9}Z)-(\\d+)\\.${escapeRegExp(extension)}(\\.tmp)?$`);
}

/** A file-system error as an `ERR_SINK_WRITE` (retryable by the one classifier) that names the path; other codes pass through. */
export function wrapFsError(err: unknown, label: string, what: string, path: string): SluiceError {
  if (err instanceof SluiceError) return err;
  const error = classify(err, "ERR_SINK_WRITE");
  if (error.code !== "ERR_SINK_WRITE") return error;
  return new SluiceError("ERR_SINK_WRITE", `${label}: ${what} ${path}: ${error.message}`, { cause: err, location: path });
}

/** fsyncs a directory, so the names created, renamed or removed in it survive a crash of the machine. */
export async function fsyncDir(dir: string): Promise<void> {
  const handle = await open(dir, "r");
  try {
    await handle.sync();
  } catch (err) {
    // Some platforms and file systems cannot fsync a directory; the data itself was synced already.
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== "EINVAL" && code !== "EISDIR" && code !== "EPERM" && code !== "EBADF") throw err;
  } finally {
    await handle.close();
  }
}

/** `mkdir -p`, then (with `fsync`) syncs the parent of every directory it created, so the new path survives a crash. */
export async function makeDirDurable(dir: string, fsync: boolean): Promise<void> {
  const first = await mkdir(dir, { recursive: true });
  if (first === undefined || !fsync) return;
  let created = dir;
  for (;;) {
    await fsyncDir(dirname(created));
    if (created === first) return;
    created = dirname(created);
  }
}

/**
 * Cuts a partial last line (one whose write never completed) off a segment, so a finished segment
 * holds whole NDJSON lines only. Returns the remaining size.
 */
async function trimTornTail(path: string): Promise<number> {
  const handle = await open(path, "r+");
  try {
    const { size } = await handle.stat();
    const chunk = Buffer.alloc(64 * 1024);
    let end = size;
    while (end > 0) {
      const start = Math.max(0, end - chunk.length);
      const { bytesRead } = await handle.read(chunk, 0, end - start, start);
      const newline = chunk.subarray(0, bytesRead).lastIndexOf(0x0a);
      if (newline >= 0) {
        const keep = start + newline + 1;
        if (keep < size) await handle.truncate(keep);
        return keep;
      }
      end = start;
    }
    if (size > 0) await handle.truncate(0);
    return 0;
  } finally {
    await handle.close();
  }
}

async function writeAll(handle: FileHandle, data: Uint8Array, position: number): Promise<void> {
  let offset = 0;
  while (offset < data.length) {
    const { bytesWritten } = await handle.write(data, offset, data.length - offset, position + offset);
    offset += bytesWritten;
  }
}

/** Builds a {@link SegmentWriter} over `settings.dir`. Does no I/O until `open`. */
export function createSegmentWriter(settings: SegmentWriterSettings): SegmentWriter {
  const { dir, prefix, extension, rotateBytes, rotateAfterMs, clock, label, report } = settings;
  const segmentName = segmentNamePattern(prefix, extension);
  let opened = false;
  let closed = false;
  let nextSeq = 0;
  let current: Segment | undefined;
  /** Segments taken out of service whose rename has not succeeded yet; retried before each write. */
  const unfinished: Segment[] = [];
  let tail: Promise<unknown> = Promise.resolve();

  /** Runs `fn` after every earlier operation: writes and rotations never interleave. */
  function exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const result = tail.then(fn, fn);
    tail = result.catch(() => undefined);
    return result;
  }

  function ready(what: string): void {
    if (!opened || closed) throw new SluiceError("ERR_INTERNAL", `${label}: ${what} ${closed ? "after close" : "before open"}`);
  }

  function nextNames(): { tmpPath: string; finalPath: string } {
    const base = `${prefix}-${compactUtc(clock.now())}-${String(nextSeq++).padStart(6, "0")}.${extension}`;
    return { tmpPath: join(dir, `.${base}.tmp`), finalPath: join(dir, base) };
  }

  async function openSegment(): Promise<Segment> {
    const { tmpPath, finalPath } = nextNames();
    let handle: FileHandle;
    try {
      handle = await open(tmpPath, "wx");
      // The temp segment will hold acknowledged data: its name must survive a crash too.
      if (settings.fsync) await fsyncDir(dir);
    } catch (err) {
      throw wrapFsError(err, label, "cannot create", tmpPath);
    }
    const segment: Segment = { tmpPath, finalPath, handle, bytes: 0, cancelTimer: () => {}, torn: false };
    if (rotateAfterMs > 0) {
      segment.cancelTimer = clock.setTimer(rotateAfterMs, () => {
        exclusive(async () => {
          if (current === segment) await retire();
        }).catch(report);
      });
    }
    current = segment;
    return segment;
  }

  /** Takes the current segment out of service and finishes it (and any earlier unfinished ones). */
  async function retire(): Promise<void> {
    const segment = current;
    if (segment !== undefined) {
      current = undefined;
      segment.cancelTimer();
      unfinished.push(segment);
    }
    await finishAll();
  }

  async function finishAll(): Promise<void> {
    while (unfinished.length > 0) {
      await finish(unfinished[0]!);
      unfinished.shift();
    }
  }

  async function finish(segment: Segment): Promise<void> {
    try {
      if (segment.handle !== undefined) {
        const handle = segment.handle;
        segment.handle = undefined;
        await handle.close();
      }
      const size = segment.torn ? await trimTornTail(segment.tmpPath) : segment.bytes;
      if (size === 0) {
        await unlink(segment.tmpPath);
      } else {
        await rename(segment.tmpPath, segment.finalPath);
      }
    } catch (err) {
      throw wrapFsError(err, label, "cannot finish segment", segment.tmpPath);
    }
    // Not fatal: the data and the temp name were synced already, and a crash that loses the rename
    // leaves the temp segment for the next open to finish.
    if (settings.fsync) await fsyncDir(dir).catch(report);
  }

  async function appendTo(segment: Segment, data: Buffer): Promise<void> {
    const handle = segment.handle!;
    const start = segment.bytes;
    try {
      await writeAll(handle, data, start);
      if (settings.fsync) await handle.datasync();
      segment.bytes = start + data.length;
    } catch (err) {
      try {
        await handle.truncate(start);
      } catch {
        segment.torn = true;
      }
      // After a failed write or fsync the file's state is uncertain: start the retry in a fresh segment.
      segment.bytes = start;
      if (current === segment) {
        current = undefined;
        segment.cancelTimer();
        unfinished.push(segment);
      }
      throw wrapFsError(err, label, "cannot write", segment.tmpPath);
    }
  }

  /** Finishes or removes the temp segments a previous run left behind and continues their sequence numbers. */
  async function recover(): Promise<void> {
    // An open retried after a failed recovery starts over: nothing else is queued before the first write.
    unfinished.length = 0;
    for (const name of await readdir(dir)) {
      const m = segmentName.exec(name);
      if (m === null) continue;
      nextSeq = Math.max(nextSeq, Number(m[2]) + 1);
      if (m[3] === undefined || !name.startsWith(".")) continue;
      const tmpPath = join(dir, name);
      if (settings.leftovers === "remove") {
        await unlink(tmpPath);
        continue;
      }
      unfinished.push({ tmpPath, finalPath: join(dir, name.slice(1, -".tmp".length)), handle: undefined, bytes: 0, cancelTimer: () => {}, torn: true });
    }
    if (settings.leftovers === "remove" && settings.fsync) await fsyncDir(dir);
    await finishAll();
  }

  return {
    open() {
      return exclusive(async () => {
        if (opened) return;
        try {
          await makeDirDurable(dir, settings.fsync);
          await recover();
        } catch (err) {
          const error = wrapFsError(err, label, "cannot prepare", dir);
          throw new SluiceError("ERR_SINK_CONNECT", error.message, { cause: err, location: dir });
        }
        opened = true;
      });
    },

    append(data) {
      return exclusive(async () => {
        ready("write");
        await finishAll();
        if (data.length === 0) return;
        if (current !== undefined && current.bytes > 0 && current.bytes + data.length > rotateBytes) await retire();
        const segment = current ?? (await openSegment());
        await appendTo(segment, data);
        if (segment.bytes >= rotateBytes) {
          // The batch is durable already: a failed rename must not fail it (its retry would duplicate it).
          await retire().catch(report);
        }
      });
    },

    writeWhole(data) {
      return exclusive(async () => {
        ready("write");
        await finishAll();
        const { tmpPath, finalPath } = nextNames();
        let handle: FileHandle | undefined;
        try {
          handle = await open(tmpPath, "wx");
          await writeAll(handle, data, 0);
          if (settings.fsync) await handle.datasync();
          await handle.close();
          handle = undefined;
          await rename(tmpPath, finalPath);
          if (settings.fsync) await fsyncDir(dir);
          return finalPath;
        } catch (err) {
          await handle?.close().catch(() => undefined);
          await unlink(tmpPath).catch(() => undefined);
          throw wrapFsError(err, label, "cannot write", tmpPath);
        }
      });
    },

    close() {
      return exclusive(async () => {
        closed = true;
        await retire();
      });
    },
  };
}
