/**
 * The `redis_streams` sink: one stream entry per record (XADD), one round trip per batch,
 * idempotent by record id within `dedupe_window` through an atomic Lua script, optionally spread
 * over `partitions` streams by key.
 */
import { Redis, ReplyError, type Result } from "ioredis";
import { z } from "zod";
import { classify, SluiceError, type ErrorCode } from "../core/errors.js";
import type { SluiceRecord } from "../core/record.js";
import { defineComponent, type RecordFailure, type Sink, type WriteResult } from "../components/contracts.js";
import { duration } from "../components/options.js";

/** Fields the sink fills itself besides the payload's; `body_key` may not be one of them. */
const ENVELOPE_FIELDS = ["id", "key", "event_time"] as const;

/** How long one command may wait for its reply before the batch fails (retryable), in ms: a server stopped with SIGSTOP never closes the socket. */
const COMMAND_TIMEOUT_MS = 30_000;

/** How long `connect` waits for the server, in ms. */
const CONNECT_TIMEOUT_MS = 10_000;

/** Batches the sink takes at once: pipelines on one connection, written in order by the server. */
const MAX_IN_FLIGHT = 8;

/**
 * The atomic write of one record. KEYS: the dedupe key, the stream. ARGV: the dedupe window in ms,
 * the MAXLEN (or empty), then the entry's field/value pairs. Returns the entry id, or nil when the
 * id was written within the window. XADD runs before SET: a script is not rolled back when a
 * command fails, and a failed XADD (WRONGTYPE, OOM) must not leave the id marked as written.
 */
const WRITE_ONCE = `
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local args = {'XADD', KEYS[2]}
if ARGV[2] ~= '' then
  args[#args + 1] = 'MAXLEN'
  args[#args + 1] = '~'
  args[#args + 1] = ARGV[2]
end
args[#args + 1] = '*'
for i = 3, #ARGV do args[#args + 1] = ARGV[i] end
local entry = redis.call(unpack(args))
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
return entry
`;

declare module "ioredis" {
  interface RedisCommander<Context> {
    sluiceWriteOnce(dedupeKey: string, stream: string, ...args: string[]): Result<string | null, Context>;
  }
}

const options = z
  .strictObject({
    url: z
      .string()
      .min(1)
      .describe("Server URL: redis://[user:password@]host:6379[/db], rediss:// for TLS; write ${REDIS_URL} to keep the password out of the file"),
    stream: z.string().min(1).describe("Stream key to XADD to; with partitions, the prefix of <stream>:0 .. <stream>:<partitions - 1>"),
    partitions: z
      .number()
      .int()
      .positive()
      .max(1024)
      .default(1)
      .describe("Streams to spread records over by hash of the record key (keyless: of the id), so records of one key stay in order in one stream; 1 writes to stream itself"),
    max_len: z
      .number()
      .int()
      .positive()
      .optional()
      .describe("Trim each stream to about this many entries (XADD MAXLEN ~): bounds memory, but drops the oldest entries whether read or not"),
    body_key: z
      .string()
      .min(1)
      .default("body")
      .describe("Entry field holding the payload as JSON; the entry also has id, and key and event_time when the record has them"),
    dedupe_window: duration()
      .default(120_000)
      .refine((ms) => ms >= 1, "must be at least 1 ms")
      .describe("How long a record id is remembered (a key <dedupe_prefix>:<id> per record): a redelivery within it adds no entry; default 2m"),
    dedupe_prefix: z
      .string()
      .min(1)
      .optional()
      .describe("Prefix of the dedupe keys; default <stream>:dedupe. Sinks writing the same streams must share it"),
  })
  .superRefine((o, ctx) => {
    if ((ENVELOPE_FIELDS as readonly string[]).includes(o.body_key)) {
      ctx.addIssue({ code: "custom", path: ["body_key"], message: `"${o.body_key}" is a field the sink fills itself (${ENVELOPE_FIELDS.join(", ")})` });
    }
  });

/** Everything a {@link createRedisStreamsSink} needs; the definition builds it from validated options. */
export interface RedisStreamsSinkSettings {
  /** Server URL. Never put into messages: it may hold a password. */
  readonly url: string;
  readonly stream: string;
  readonly partitions: number;
  readonly maxLen?: number | undefined;
  readonly bodyKey: string;
  /** ms */
  readonly dedupeWindowMs: number;
  readonly dedupePrefix: string;
}

/** FNV-1a (32 bits) of the UTF-8 bytes: stable across processes and easy to repeat in another language. */
function fnv1a(text: string): number {
  let h = 0x811c9dc5;
  for (const byte of Buffer.from(text, "utf8")) {
    h ^= byte;
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/** The stream a record goes to: `stream` itself, or `<stream>:<FNV-1a(key, else id) mod partitions>`. */
export function partitionStream(stream: string, partitions: number, record: Pick<SluiceRecord, "id" | "key">): string {
  if (partitions === 1) return stream;
  return `${stream}:${fnv1a(record.key ?? record.id) % partitions}`;
}

/** Reply prefixes that may pass: memory full, loading after a restart, a busy script, a replica after failover, failing RDB saves, script cache flushed, too many clients. */
const RETRYABLE_REPLIES = /^(OOM|LOADING|BUSY|READONLY|MISCONF|NOSCRIPT|TRYAGAIN|CLUSTERDOWN|MASTERDOWN)\b|^ERR max number of clients/;
/** A key holding another type than a stream: the stream's fault, not the connection's. */
const WRONGTYPE = /^WRONGTYPE\b/;

/**
 * Wraps an ioredis error as a {@link SluiceError}. A reply from the server, by its prefix: OOM,
 * LOADING, BUSY, READONLY, MISCONF, NOSCRIPT (and the cluster and client-limit replies) are
 * retryable `code`; WRONGTYPE is a permanent ERR_SINK_REJECTED; any other reply (NOAUTH,
 * WRONGPASS, NOPERM, a syntax error) is a permanent `code`: no retry clears it. Anything else
 * (connection refused or lost, a timeout) is retryable `code`; a programmer error stays a
 * permanent ERR_INTERNAL.
 */
export function classifyRedisError(err: unknown, code: ErrorCode, location: string): SluiceError {
  if (err instanceof SluiceError) return err;
  if (err instanceof ReplyError) {
    const reply = (err as Error).message;
    const message = `redis: ${reply}`;
    if (WRONGTYPE.test(reply)) return new SluiceError("ERR_SINK_REJECTED", message, { cause: err, location });
    return new SluiceError(code, message, { cause: err, retryable: RETRYABLE_REPLIES.test(reply), location });
  }
  const wrapped = classify(err, code);
  if (wrapped.code === "ERR_INTERNAL") return wrapped;
  return new SluiceError(code, `redis: ${wrapped.message}`, { cause: err, retryable: true, location });
}

/** One record's script arguments, or why it cannot be written. */
function entryArgs(record: SluiceRecord, settings: RedisStreamsSinkSettings, maxLen: string): string[] {
  // The JSON as the source read it, when no transform changed the payload: no second serialization.
  const args = [String(settings.dedupeWindowMs), maxLen, "id", record.id, settings.bodyKey, record.text ?? JSON.stringify(record.payload)];
  if (record.key !== undefined) args.push("key", record.key);
  if (record.eventTime !== undefined) args.push("event_time", new Date(record.eventTime).toISOString());
  return args;
}

/**
 * Builds a Redis Streams sink (what the `redis_streams` definition's factory returns).
 *
 * Each record is one call of an atomic Lua script: if `<prefix>:<id>` exists, nothing (reported as
 * already present); else XADD the entry and SET the key with the window as expiry. A batch's calls
 * go in one pipeline, one round trip. Commands are never queued while disconnected nor resent
 * after a reconnect: a write fails (retryable) and the engine's retry writes the batch again, which
 * the script makes safe. Standalone Redis only: a script's keys must live on one server, which
 * Redis Cluster does not promise for the dedupe key and its stream.
 */
export function createRedisStreamsSink(settings: RedisStreamsSinkSettings): Sink {
  const location = settings.partitions === 1 ? `redis stream ${settings.stream}` : `redis streams ${settings.stream}:0..${settings.partitions - 1}`;
  const maxLen = settings.maxLen === undefined ? "" : String(settings.maxLen);
  let client: Redis | undefined;
  /** The newest error ioredis reported on its own (a lost connection), for the next write's message. */
  let lastError: unknown;

  function open(): Redis {
    const redis = new Redis(settings.url, {
      lazyConnect: true,
      enableOfflineQueue: false,
      autoResendUnfulfilledCommands: false,
      maxRetriesPerRequest: 0,
      connectTimeout: CONNECT_TIMEOUT_MS,
      commandTimeout: COMMAND_TIMEOUT_MS,
      // ioredis reconnects in the background; until it has, writes fail at once and the engine backs off.
      retryStrategy: (times) => Math.min(times * 100, 2000),
    });
    redis.defineCommand("sluiceWriteOnce", { numberOfKeys: 2, lua: WRITE_ONCE });
    redis.on("error", (err: unknown) => (lastError = err));
    return redis;
  }

  return {
    maxInFlight: MAX_IN_FLIGHT,

    async connect(signal) {
      if (client !== undefined) return;
      const redis = open();
      lastError = undefined;
      const abort = () => redis.disconnect();
      signal.addEventListener("abort", abort, { once: true });
      try {
        await redis.connect();
        await redis.ping();
      } catch (err) {
        redis.disconnect();
        // A refused AUTH reaches connect() as "Connection is closed."; the server's reply came as an event.
        throw classifyRedisError(lastError instanceof ReplyError ? lastError : err, "ERR_SINK_CONNECT", location);
      } finally {
        signal.removeEventListener("abort", abort);
      }
      client = redis;
    },

    async write(records, signal): Promise<WriteResult | void> {
      const redis = client;
      if (redis === undefined) throw new SluiceError("ERR_INTERNAL", "redis_streams sink: write before connect", { location });
      if (signal.aborted) throw new SluiceError("ERR_ABORTED", "redis_streams sink: aborted before writing", { cause: signal.reason, location });
      if (records.length === 0) return {};

      const failures: RecordFailure[] = [];
      /** Batch index of each pipelined call. */
      const sent: number[] = [];
      const pipeline = redis.pipeline();
      records.forEach((record, index) => {
        let args: string[];
        try {
          args = entryArgs(record, settings, maxLen);
        } catch (err) {
          // A payload JSON cannot represent (a cycle, a BigInt) or an invalid event time: only this record is bad.
          const message = `redis_streams sink: record ${record.id} cannot be stored: ${(err as Error).message}`;
          failures.push({ index, error: new SluiceError("ERR_SINK_REJECTED", message, { cause: err, location }) });
          return;
        }
        pipeline.sluiceWriteOnce(`${settings.dedupePrefix}:${record.id}`, partitionStream(settings.stream, settings.partitions, record), ...args);
        sent.push(index);
      });
      if (sent.length === 0) return { failures };

      let replies: [Error | null, unknown][] | null;
      try {
        replies = await pipeline.exec();
      } catch (err) {
        throw classifyRedisError(err ?? lastError, "ERR_SINK_WRITE", location);
      }
      if (replies === null) throw new SluiceError("ERR_SINK_WRITE", "redis: the pipeline was discarded", { cause: lastError, location });

      const present: number[] = [];
      for (let i = 0; i < sent.length; i++) {
        const [err, reply] = replies[i]!;
        const index = sent[i]!;
        if (err !== null) {
          const error = classifyRedisError(err, "ERR_SINK_WRITE", location);
          // A lost connection or a full server is not this record's fault: the whole batch goes back for
          // retry, so no later record of its key is committed before it (the script skips those written).
          if (error.retryable || error.code === "ERR_INTERNAL") throw error;
          failures.push({ index, error });
        } else if (reply === null) {
          present.push(index);
        }
      }
      failures.sort((a, b) => a.index - b.index);
      return failures.length > 0 || present.length > 0 ? { failures, alreadyPresent: present } : {};
    },

    async close() {
      const redis = client;
      client = undefined;
      if (redis === undefined) return;
      try {
        await redis.quit();
      } catch {
        // Already disconnected: nothing is pending, since every write waited for its replies.
        redis.disconnect();
      }
    },
  };
}

/**
 * The `redis_streams` sink: XADD of one entry per record (fields `id`, `<body_key>` = payload JSON,
 * `key` and `event_time` when set), one round trip per batch, idempotent by id within
 * `dedupe_window`, optionally trimmed (`max_len`) and spread over `partitions` streams by key.
 */
export const definition = defineComponent<typeof options, Sink>({
  type: "redis_streams",
  summary: "Adds records as Redis stream entries, idempotent by id within a dedupe window",
  options,
  create(opts) {
    return createRedisStreamsSink({
      url: opts.url,
      stream: opts.stream,
      partitions: opts.partitions,
      maxLen: opts.max_len,
      bodyKey: opts.body_key,
      dedupeWindowMs: opts.dedupe_window,
      dedupePrefix: opts.dedupe_prefix ?? `${opts.stream}:dedupe`,
    });
  },
});
