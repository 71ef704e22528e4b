/**
 * The `stdout` sink: one NDJSON line per record on standard output, for piping sluice into other
 * tools and for watching a pipeline by eye.
 */
import type { Writable } from "node:stream";
import { z } from "zod";
import { SluiceError } from "../core/errors.js";
import type { SluiceRecord } from "../core/record.js";
import { defineComponent, type Sink, type WriteResult } from "../components/contracts.js";
import { encodeNdjson, type NdjsonFormat } from "../components/ndjson-lines.js";

/** What a stdout line holds: the whole record envelope, or the payload alone. */
export type StdoutFormat = NdjsonFormat;

const options = z.strictObject({
  format: z
    .enum(["ndjson", "payload"])
    .default("ndjson")
    .describe('ndjson: {"id","key","event_time","received_at","source","payload"} per line; payload: the payload alone'),
});

/** Stream errors that mean the reader is gone for good (a closed pipe): retrying cannot help. */
const GONE = new Set(["EPIPE", "ERR_STREAM_DESTROYED", "ERR_STREAM_WRITE_AFTER_END"]);

function wrapStreamError(err: unknown): SluiceError {
  if (err instanceof SluiceError) return err;
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  const message = err instanceof Error ? err.message : String(err);
  return new SluiceError("ERR_SINK_WRITE", `stdout sink: ${message}`, {
    cause: err,
    retryable: code === undefined || !GONE.has(code),
  });
}

function abortedWhileWaiting(signal: AbortSignal): SluiceError {
  return new SluiceError("ERR_ABORTED", "stdout sink: aborted while waiting for the stream", { cause: signal.reason });
}

/**
 * Builds a sink writing NDJSON lines to `stream` (the `stdout` definition passes
 * `process.stdout`; tests pass a capture). A write resolves once the stream has taken the batch
 * (its write callback ran) and, if the stream signalled backpressure, once it drained, so a slow
 * reader slows the pipeline instead of growing memory. An abort stops the wait (the batch may
 * still be printed later: it is in the stream's buffer).
 *
 * Gotchas: "durable" here means handed to the stream; what the reader does with it is outside
 * sluice. Not idempotent: a redelivered record is printed again (at-least-once). Never ends the
 * stream, which its owner keeps. While connected it listens for the stream's `error` event, so an
 * EPIPE becomes a failed write rather than an uncaught exception.
 */
export function createStdoutSink(stream: Writable, format: StdoutFormat = "ndjson"): Sink {
  let streamError: unknown;
  const onError = (err: unknown) => {
    streamError = err;
  };

  function waitForDrain(signal: AbortSignal): Promise<void> {
    return new Promise((resolve, reject) => {
      const cleanup = () => {
        stream.off("drain", onDrain);
        stream.off("close", onClose);
        signal.removeEventListener("abort", onAbort);
      };
      const onDrain = () => {
        cleanup();
        resolve();
      };
      const onClose = () => {
        cleanup();
        reject(wrapStreamError(streamError ?? Object.assign(new Error("stream closed"), { code: "ERR_STREAM_DESTROYED" })));
      };
      const onAbort = () => {
        cleanup();
        reject(abortedWhileWaiting(signal));
      };
      stream.on("drain", onDrain);
      stream.on("close", onClose);
      signal.addEventListener("abort", onAbort, { once: true });
    });
  }

  return {
    maxInFlight: 1,

    async connect() {
      stream.off("error", onError);
      stream.on("error", onError);
    },

    async write(records: readonly SluiceRecord[], signal: AbortSignal): Promise<WriteResult | void> {
      if (signal.aborted) throw new SluiceError("ERR_ABORTED", "stdout sink: aborted before writing", { cause: signal.reason });
      if (streamError !== undefined) throw wrapStreamError(streamError);
      const { data, failures } = encodeNdjson(records, format, "stdout sink");
      if (data.length > 0) {
        await new Promise<void>((resolve, reject) => {
          const onAbort = () => reject(abortedWhileWaiting(signal));
          signal.addEventListener("abort", onAbort, { once: true });
          stream.write(data, (err) => {
            signal.removeEventListener("abort", onAbort);
            if (err) reject(wrapStreamError(err));
            else resolve();
          });
        });
        // Checked after the callback, not from write()'s return value: another writer (a logger on the
        // same stdout) may have filled the buffer too, and 'drain' may already have fired for our chunk.
        if (stream.writableNeedDrain) await waitForDrain(signal);
      }
      return failures.length > 0 ? { failures } : {};
    },

    async close() {
      stream.off("error", onError);
    },
  };
}

/**
 * The `stdout` sink: one line per record on standard output, `format: ndjson` (the record
 * envelope) or `payload`. Awaits the stream's drain, so a slow consumer of the pipe applies
 * backpressure. At-least-once: a redelivered record is printed again.
 */
export const definition = defineComponent<typeof options, Sink>({
  type: "stdout",
  summary: "Prints one NDJSON line per record on standard output",
  options,
  create(opts) {
    return createStdoutSink(process.stdout, opts.format);
  },
});
