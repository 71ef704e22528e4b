/**
 * The `file` sink: an NDJSON landing zone. Records are appended to a hidden temp segment and the
 * segment is renamed to its final name once complete, so a reader that lists `<prefix>-*.ndjson`
 * only ever sees whole files.
 */
import { resolve } from "node:path";
import { z } from "zod";
import type { Clock } from "../core/clock.js";
import { classify, SluiceError } from "../core/errors.js";
import type { EventSink } from "../core/events.js";
import type { SluiceRecord } from "../core/record.js";
import { defineComponent, type ComponentContext, type Sink, type WriteResult } from "../components/contracts.js";
import { encodeNdjson } from "../components/ndjson-lines.js";
import { byteSize, duration, fileNamePrefix } from "../components/options.js";
import { createSegmentWriter } from "../components/segment-writer.js";

const options = z.strictObject({
  path: z.string().min(1).describe("Directory of the segments; created on connect; relative to the working directory"),
  prefix: fileNamePrefix("records").describe("Segment names are <prefix>-<UTC time>-<sequence>.ndjson"),
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

/** A `file` sink's settings from its validated options, its directory resolved against `ctx.baseDir`. */
function settingsFrom(opts: z.output<typeof options>, ctx: ComponentContext): FileSinkSettings {
  return {
    dir: resolve(ctx.baseDir, opts.path),
    prefix: opts.prefix,
    rotateBytes: opts.rotate_bytes,
    rotateAfterMs: opts.rotate_after,
    fsync: opts.fsync,
    clock: ctx.clock,
    emit: ctx.emit,
    name: ctx.name,
  };
}

/**
 * Builds a file sink (what the `file` definition's factory returns).
 *
 * Delivery is at-least-once, not effectively-once: a landing zone appends, it cannot look up ids,
 * so a redelivered record (a retried batch, a source re-read after a crash) can appear twice, in
 * the same or in another segment. Readers that need one copy deduplicate by `id`. That is the
 * honest guarantee of a file landing zone.
 *
 * Lifecycle (the shared segment writer, `components/segment-writer.ts`, with leftovers
 * `keep_lines`): connect creates the directory and finishes segments a crashed run left behind (their
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
  const writer = createSegmentWriter({
    dir: settings.dir,
    prefix: settings.prefix,
    extension: "ndjson",
    rotateBytes: settings.rotateBytes,
    rotateAfterMs: settings.rotateAfterMs,
    fsync: settings.fsync,
    leftovers: "keep_lines",
    clock: settings.clock,
    label: "file sink",
    report(err) {
      const error = classify(err);
      settings.emit?.({ type: "component_error", component: settings.name ?? "file", code: error.code, message: error.message });
    },
  });

  return {
    maxInFlight: 1,

    connect() {
      return writer.open();
    },

    async write(records: readonly SluiceRecord[], signal: AbortSignal): Promise<WriteResult | void> {
      if (signal.aborted) throw new SluiceError("ERR_ABORTED", "file sink: aborted before writing", { cause: signal.reason });
      const { data, failures } = encodeNdjson(records, "ndjson", "file sink");
      await writer.append(Buffer.from(data, "utf8"));
      return failures.length > 0 ? { failures } : {};
    },

    close() {
      return writer.close();
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
  create: (opts, ctx) => createFileSink(settingsFrom(opts, ctx)),
});
