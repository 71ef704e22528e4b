/**
 * The `file` sink: an NDJSON landing zone. Records are appended to a hidden temp segment and the
 * segment is renamed to its final name once complete, so a reader that lists `<prefix>-*.ndjson`
 * only ever sees whole files.
 */
import { mkdir, open, readdir, rename, unlink, type FileHandle } from "node:fs/promises";
import { join, resolve } from "node:path";
import { z } from "zod";
import type { Clock } from "../core/clock.js";
import { classify, SluiceError } from "../core/errors.js";
import type { EventSink } from "../core/events.js";
import type { SluiceRecord } from "../core/record.js";
import { defineComponent, type RecordFailure, type Sink, type WriteResult } from "../components/contracts.js";
import { byteSize, duration } from "../components/options.js";

const options = z.strictObject({
  path: z.string().min(1).describe("Directory of the segments; created on connect; relative to the working directory"),
  prefix: z
    .string()
    .regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/, "prefix may hold letters, digits, '.', '_' and '-', and must start with a letter or digit")
    .default("records")
    .describe("Segment names are <prefix>-<UTC time>-<sequence>.ndjson"),
  rotate_bytes: byteSize()
    .default(64 * 1024 ** 2)
    .describe("Finish a segment once it holds this many bytes (a batch is never split, so one batch may exceed it)"),
  rotate_after: duration()
    .default(60_000)
    .describe("Finish a segment this long after it was started, even if it is small; 0 disables"),
  fsync: z.boolean().default(true).describe("fsync each write before it resolves (durable); false trades durability for speed"),
});

/** What {@link createFileSink} needs; the definition builds it from validated options. */
export interface FileSinkSettings {
  /** Directory of the segments. */
  readonly dir: string;
  readonly prefix: string;
  /** Finish a segment at this size, in bytes. */
  readonly rotateBytes: number;
  /** Finish a segment this long after its first write, in ms; 0 disables. */
  readonly rotateAfterMs: number;
  readonly fsync: boolean;
  /** Timestamps segment names and drives `rotateAfterMs`. */
  readonly clock: Clock;
  /** Where a failure of a background (age) rotation is reported; the next write or close retries it. */
  readonly emit?: EventSink;
  /** Component name for those reports. */
  readonly name?: string;
}

/**
 * The NDJSON line of a record, without the newline:
 * `{"id","key","event_time","received_at","source","payload"}`, times as ISO 8601, absent key and
 * event time as null. `format: "payload"` gives the payload alone. Throws for a payload JSON
 * cannot represent (a cycle, a BigInt) or an invalid time.
 *
 * JSON.stringify escapes every line break inside strings, so one record is always one line.
 */
export function ndjsonLine(record: SluiceRecord, format: "ndjson" | "payload" = "ndjson"): string {
  if (format === "payload") return JSON.stringify(record.payload);
  return JSON.stringify({
    id: record.id,
    key: record.key ?? null,
    event_time: record.eventTime === undefined ? null : new Date(record.eventTime).toISOString(),
    received_at: new Date(record.receivedAt).toISOString(),
    source: record.source,
    payload: record.payload,
  });
}

/**
 * Encodes a batch as NDJSON. A record that cannot be encoded is left out and reported by index as
 * a permanent `ERR_SINK_REJECTED`; the others are encoded in order.
 */
export function encodeNdjson(
  records: readonly SluiceRecord[],
  format: "ndjson" | "payload",
  sinkName: string,
): { readonly data: string; readonly failures: RecordFailure[] } {
  const lines: string[] = [];
  const failures: RecordFailure[] = [];
  records.forEach((record, index) => {
    try {
      lines.push(ndjsonLine(record, format));
    } catch (err) {
      failures.push({
        index,
        error: new SluiceError("ERR_SINK_REJECTED", `${sinkName}: record ${record.id} cannot be encoded: ${(err as Error).message}`, {
          cause: err,
        }),
      });
    }
  });
  return { data: lines.length === 0 ? "" : `${lines.join("\n")}\n`, failures };
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

function compactUtc(ms: number): string {
  // 2024-01-02T03:04:05.678Z -> 20240102T030405678Z: sorts like the time and is safe in any file system.
  return new Date(ms).toISOString().replace(/[-:.]/g, "");
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

function wrapFsError(err: unknown, what: string, path: string): SluiceError {
  if (err instanceof SluiceError) return err;
  const error = classify(err, "ERR_SINK_WRITE");
  if (error.code !== "ERR_SINK_WRITE") return error;
  return new SluiceError("ERR_SINK_WRITE", `file sink: ${what} ${path}: ${error.message}`, { cause: err, location: path });
}

async function fsyncDir(dir: string): Promise<void> {
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

/**
 * Builds a file sink (what the `file` definition's factory returns).
 *
 * Delivery is at-least-once, not effectively-once: a landing zone appends, it cannot look up ids,
 * so a redelivered record (a retried batch, a source re-read after a crash) can appear twice, in
 * the same or in another segment. Readers that need one copy deduplicate by `id`. That is the
 * honest guarantee of a file landing zone.
 *
 * Lifecycle: connect creates the directory and finishes segments a crashed run left behind (their
 * acknowledged lines are kept, a torn last line is cut). Each write appends whole lines to the
 * current temp segment `.<prefix>-<time>-<seq>.ndjson.tmp` and, with `fsync`, resolves only after
 * fdatasync. A segment is renamed to `<prefix>-<time>-<seq>.ndjson` when it reaches `rotateBytes`,
 * when it is `rotateAfterMs` old, and on close. Sequence numbers continue from the highest in the
 * directory, so a restart never reuses a name.
 *
 * Gotchas: one sink per directory and prefix (a second one would finish the first one's temp
 * segment). A failed write is truncated away before it is reported, so its retry does not leave a
 * half batch behind.
 */
export function createFileSink(settings: FileSinkSettings): Sink {
  const { dir, prefix, rotateBytes, rotateAfterMs, clock } = settings;
  const segmentName = new RegExp(`^\\.?${escapeRegExp(prefix)}-(\\d{8}T\\d{9}Z)-(\\d+)\\.ndjson(\\.tmp)?$`);
  let connected = false;
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

  function report(err: unknown): void {
    const error = classify(err);
    settings.emit?.({ type: "component_error", component: settings.name ?? "file", code: error.code, message: error.message });
  }

  async function openSegment(): Promise<Segment> {
    const seq = nextSeq++;
    const base = `${prefix}-${compactUtc(clock.now())}-${String(seq).padStart(6, "0")}.ndjson`;
    const tmpPath = join(dir, `.${base}.tmp`);
    let handle: FileHandle;
    try {
      handle = await open(tmpPath, "wx");
      if (settings.fsync) await fsyncDir(dir);
    } catch (err) {
      throw wrapFsError(err, "cannot create", tmpPath);
    }
    const segment: Segment = { tmpPath, finalPath: join(dir, base), handle, bytes: 0, cancelTimer: () => {}, torn: false };
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
      throw wrapFsError(err, "cannot finish segment", segment.tmpPath);
    }
    // Not fatal: the data and the temp name were synced already, and a crash that loses the rename
    // leaves the temp segment for the next connect to finish.
    if (settings.fsync) await fsyncDir(dir).catch(report);
  }

  async function append(segment: Segment, data: Buffer): Promise<void> {
    const handle = segment.handle!;
    const start = segment.bytes;
    try {
      let offset = 0;
      while (offset < data.length) {
        const { bytesWritten } = await handle.write(data, offset, data.length - offset, start + offset);
        offset += bytesWritten;
      }
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
      throw wrapFsError(err, "cannot write", segment.tmpPath);
    }
  }

  /** Finishes temp segments a previous run left behind and continues their sequence numbers. */
  async function recover(): Promise<void> {
    // A connect retried after a failed recovery starts over: nothing else is queued before the first write.
    unfinished.length = 0;
    const names = await readdir(dir);
    for (const name of names) {
      const m = segmentName.exec(name);
      if (m === null) continue;
      nextSeq = Math.max(nextSeq, Number(m[2]) + 1);
      if (m[3] === undefined || !name.startsWith(".")) continue;
      unfinished.push({
        tmpPath: join(dir, name),
        finalPath: join(dir, name.slice(1, -".tmp".length)),
        handle: undefined,
        bytes: 0,
        cancelTimer: () => {},
        torn: true,
      });
    }
    await finishAll();
  }

  return {
    maxInFlight: 1,

    connect() {
      return exclusive(async () => {
        if (connected) return;
        try {
          await mkdir(dir, { recursive: true });
          await recover();
        } catch (err) {
          const error = wrapFsError(err, "cannot prepare", dir);
          throw new SluiceError("ERR_SINK_CONNECT", error.message, { cause: err, location: dir });
        }
        connected = true;
      });
    },

    write(records: readonly SluiceRecord[], signal: AbortSignal): Promise<WriteResult | void> {
      return exclusive(async () => {
        if (!connected || closed) throw new SluiceError("ERR_INTERNAL", `file sink: write ${closed ? "after close" : "before connect"}`);
        if (signal.aborted) throw new SluiceError("ERR_ABORTED", "file sink: aborted before writing", { cause: signal.reason });
        await finishAll();
        if (records.length === 0) return {};

        const { data, failures } = encodeNdjson(records, "ndjson", "file sink");
        if (data.length > 0) {
          const bytes = Buffer.from(data, "utf8");
          if (current !== undefined && current.bytes > 0 && current.bytes + bytes.length > rotateBytes) await retire();
          const segment = current ?? (await openSegment());
          await append(segment, bytes);
          if (segment.bytes >= rotateBytes) {
            // The batch is durable already: a failed rename must not fail it (its retry would duplicate it).
            await retire().catch(report);
          }
        }
        return failures.length > 0 ? { failures } : {};
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

/**
 * The `file` sink: NDJSON segments in a directory, each written under a temp name and renamed when
 * complete (by size, by age, and on close). At-least-once: a redelivered record can appear twice
 * across segments (see {@link createFileSink}). One batch at a time (maxInFlight 1), so lines keep
 * batch order.
 */
export const definition = defineComponent<typeof options, Sink>({
  type: "file",
  summary: "Appends records as NDJSON segments to a directory (a landing zone; at-least-once)",
  options,
  create(opts, ctx) {
    return createFileSink({
      dir: resolve(ctx.baseDir, opts.path),
      prefix: opts.prefix,
      rotateBytes: opts.rotate_bytes,
      rotateAfterMs: opts.rotate_after,
      fsync: opts.fsync,
      clock: ctx.clock,
      emit: ctx.emit,
      name: ctx.name,
    });
  },
});
