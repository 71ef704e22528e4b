/**
 * The `redis_streams` sink: one stream entry per record (XADD), one round trip per batch,
 * idempotent by record id within `dedupe_window` through an atomic Lua script, optionally spread
 * over `partitions` streams by key.
 */
import type { Redis, Result } from "ioredis";
import { classifyRedisError, CLIENT_OPTIONS, ENVELOPE_FIELDS, innerReply, isReplyError, loadedRedisModule, loadRedis, partitionsOption, partitionStream, quitWithin, type RedisModule } from "../brokers/redis.js";
import { z } from "zod";
import { SluiceError } from "../core/errors.js";
import type { SluiceRecord } from "../core/record.js";
import { defineComponent, writeResult, type RecordFailure, type Sink, type WriteResult } from "../components/contracts.js";
import { duration } from "../components/options.js";

/** Batches the sink takes at once: script calls on one connection, run in order by the server. */
const MAX_IN_FLIGHT = 8;

/**
 * The atomic write of a batch. KEYS: per record its dedupe key and its stream. ARGV: the dedupe
 * window in ms, the MAXLEN (or empty), then per record the number of its entry's field/value
 * strings followed by them. Per record it answers the entry id; 0 when the id was written within
 * the window; or `!<error>` when XADD failed. SET NX first and, when XADD fails, DEL: a script is
 * not rolled back when a command fails, and a failed XADD must not leave the id marked as written.
 * Any error but WRONGTYPE (which is its stream's, not the batch's) stops the script there, and a
 * SET refused for OOM aborts it: no record after a failed one is written, so order per key holds
 * when the batch is retried, and the records before it read as already present.
 */
const WRITE_ONCE = `
local window, maxlen = ARGV[1], ARGV[2]
local out = {}
local a = 3
for i = 1, #KEYS / 2 do
  local n = tonumber(ARGV[a])
  a = a + 1
  if redis.call('SET', KEYS[2 * i - 1], '1', 'NX', 'PX', window) then
    local args = {'XADD', KEYS[2 * i]}
    if maxlen ~= '' then
      args[#args + 1] = 'MAXLEN'
      args[#args + 1] = '~'
      args[#args + 1] = maxlen
    end
    args[#args + 1] = '*'
    for j = a, a + n - 1 do args[#args + 1] = ARGV[j] end
    local entry = redis.pcall(unpack(args))
    if type(entry) == 'table' and entry.err then
      redis.call('DEL', KEYS[2 * i - 1])
      out[i] = '!' .. entry.err
      if string.sub(entry.err, 1, 9) ~= 'WRONGTYPE' then return out end
    else
      out[i] = entry
    end
  else
    out[i] = 0
  end
  a = a + n
end
return out
`;

/**
 * What `connect` checks the user may do (Redis 7's redis.acl_check_cmd; before 7 only that EVAL
 * runs): SET and DEL of dedupe key KEYS[1], XADD to each stream KEYS[2..]. '' when all may, else
 * the command and key refused. An ACL that lets the sink connect but not write would otherwise
 * fail every batch.
 */
const PROBE = `
if redis.acl_check_cmd == nil then return '' end
if not redis.acl_check_cmd('set', KEYS[1], '1', 'NX', 'PX', '1') then return 'SET ' .. KEYS[1] end
if not redis.acl_check_cmd('del', KEYS[1]) then return 'DEL ' .. KEYS[1] end
for i = 2, #KEYS do
  if not redis.acl_check_cmd('xadd', KEYS[i], '*', 'f', 'v') then return 'XADD ' .. KEYS[i] end
end
return ''
`;

declare module "ioredis" {
  interface RedisCommander<Context> {
    sluiceWriteOnce(numberOfKeys: number, ...keysAndArgs: string[]): Result<(string | number)[], Context>;
  }
}

const options = z
  .strictObject({
    url: z
      .string()
      .min(1)
      .describe("Server URL: redis://[user:password@]host:6379[/db], rediss:// for TLS; write ${REDIS_URL} to keep the password out of the file"),
    stream: z.string().min(1).describe("Stream key to XADD to; with partitions, the prefix of <stream>:0 .. <stream>:<partitions - 1>"),
    partitions: partitionsOption("Streams to spread records over by hash of the record key (keyless: of the id), so records of one key stay in order in one stream; 1 writes to stream itself"),
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

/** One record's entry as field/value strings. Throws for a payload JSON cannot hold or an invalid event time. */
function entryFields(record: SluiceRecord, bodyKey: string): string[] {
  // The JSON as the source read it, when no transform changed the payload: no second serialization.
  const fields = ["id", record.id, bodyKey, record.text ?? JSON.stringify(record.payload)];
  if (record.key !== undefined) fields.push("key", record.key);
  if (record.eventTime !== undefined) fields.push("event_time", new Date(record.eventTime).toISOString());
  return fields;
}

/** An ACL's refusal: of the script's call (NOPERM), or of a command inside it (Redis 7 says it this way). */
const ACL_REFUSED = /^NOPERM\b|^ERR The user executing the script can't/;

/**
 * NOPERM at a write is the sink's fault, not the records': the ACL changed after connect (which
 * checked it). Retryable, so the records wait (the sink reads as down) rather than being
 * dead-lettered in bulk; anything else as classified.
 */
function sinkFault(e: SluiceError): SluiceError {
  if (!isReplyError(e.cause) || !ACL_REFUSED.test(innerReply(e.cause.message))) return e;
  return new SluiceError(e.code, `${e.message} (the ACL does not allow the sink to write)`, { cause: e.cause, retryable: true, location: e.location });
}

/** A `redis_streams` sink's settings from its validated options. */
function settingsFrom(opts: z.output<typeof options>): RedisStreamsSinkSettings {
  return {
    url: opts.url,
    stream: opts.stream,
    partitions: opts.partitions,
    maxLen: opts.max_len,
    bodyKey: opts.body_key,
    // PX takes whole milliseconds.
    dedupeWindowMs: Math.ceil(opts.dedupe_window),
    dedupePrefix: opts.dedupe_prefix ?? `${opts.stream}:dedupe`,
  };
}

/**
 * Builds a Redis Streams sink (what the `redis_streams` definition's factory returns).
 *
 * A batch is one call of an atomic Lua script (one round trip): per record, `SET <prefix>:<id> 1 NX
 * PX <window>`; when the key was there, nothing (reported as already present); else XADD the entry
 * (and DEL the key again if XADD fails). The call holds the server for the whole batch (measured 27 ms
 * per 1,000 records on a loaded 2-core machine): keep batches modest on a Redis other clients share. Commands are never queued while disconnected nor resent
 * after a reconnect: a write fails (retryable) and the engine's retry writes the batch again, which
 * the script makes safe. Standalone Redis only: a script's keys must live on one server, which
 * Redis Cluster does not promise for the dedupe key and its stream.
 */
export function createRedisStreamsSink(settings: RedisStreamsSinkSettings): Sink {
  const location = settings.partitions === 1 ? `redis stream ${settings.stream}` : `redis streams ${settings.stream}:0..${settings.partitions - 1}`;
  const maxLen = settings.maxLen === undefined ? "" : String(settings.maxLen);
  const window = String(settings.dedupeWindowMs);
  let client: Redis | undefined;
  /** The newest error ioredis reported on its own: a refused AUTH comes only this way. */
  let lastError: unknown;

  function open(ioredis: RedisModule): Redis {
    const redis = new ioredis.Redis(settings.url, {
      ...CLIENT_OPTIONS,
      // ioredis reconnects in the background; until it has, writes fail at once and the engine backs off.
      retryStrategy: (times) => Math.min(times * 100, 2000),
    });
    redis.defineCommand("sluiceWriteOnce", { lua: WRITE_ONCE });
    redis.on("error", (err: unknown) => (lastError = err));
    return redis;
  }

  return {
    maxInFlight: MAX_IN_FLIGHT,

    async connect(signal) {
      if (client !== undefined) return;
      const redis = open(await loadRedis());
      lastError = undefined;
      const abort = () => redis.disconnect();
      signal.addEventListener("abort", abort, { once: true });
      try {
        await redis.connect();
        await redis.ping();
        const streams = Array.from({ length: settings.partitions }, (_, p) => (settings.partitions === 1 ? settings.stream : `${settings.stream}:${p}`));
        const refused = String(await redis.eval(PROBE, 1 + streams.length, `${settings.dedupePrefix}:probe`, ...streams));
        if (refused !== "") throw new SluiceError("ERR_SINK_CONNECT", `${location}: NOPERM this user may not run ${refused}`, { retryable: false, location });
      } catch (err) {
        redis.disconnect();
        // A refused AUTH reaches connect() as "Connection is closed."; the server's reply came as an event.
        throw classifyRedisError(isReplyError(lastError) ? lastError : err, "ERR_SINK_CONNECT", location);
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
      /** Batch index of each record in the call. */
      const sent: number[] = [];
      const keys: string[] = [];
      const args: string[] = [window, maxLen];
      records.forEach((record, index) => {
        let fields: string[];
        try {
          fields = entryFields(record, settings.bodyKey);
        } catch (err) {
          // A payload JSON cannot represent (a cycle, a BigInt) or an invalid event time: only this record is bad.
          const message = `redis_streams sink: record ${record.id} cannot be stored: ${(err as Error).message}`;
          failures.push({ index, error: new SluiceError("ERR_SINK_REJECTED", message, { cause: err, location }) });
          return;
        }
        keys.push(`${settings.dedupePrefix}:${record.id}`, partitionStream(settings.stream, settings.partitions, record));
        args.push(String(fields.length), ...fields);
        sent.push(index);
      });
      if (sent.length === 0) return { failures };

      let results: (string | number)[];
      try {
        results = await redis.sluiceWriteOnce(keys.length, ...keys, ...args);
      } catch (err) {
        // A lost connection, OOM at SET, a timeout, an ACL that no longer allows EVAL: not the records' fault; the whole batch is retried.
        throw sinkFault(classifyRedisError(err, "ERR_SINK_WRITE", location));
      }

      const present: number[] = [];
      for (let i = 0; i < sent.length; i++) {
        const result = results[i];
        const index = sent[i]!;
        if (result === 0) {
          present.push(index);
        } else if (typeof result === "string" && result.startsWith("!")) {
          // ioredis is loaded: the client that answered came from it.
          const reply = new (loadedRedisModule()!.ReplyError)(result.slice(1));
          const error = sinkFault(classifyRedisError(reply, "ERR_SINK_WRITE", location));
          // OOM, an ACL that no longer allows SET or XADD, and the like: retry the whole batch; the script wrote nothing after this record.
          if (error.retryable) throw error;
          if (error.code === "ERR_SINK_REJECTED") {
            failures.push({ index, error });
            continue;
          }
          // A syntax error: not this record's doing; the script stopped here, and every record
          // from here on would fail the same way.
          for (let j = i; j < sent.length; j++) failures.push({ index: sent[j]!, error });
          break;
        }
      }
      return writeResult(failures, present);
    },

    async close() {
      const redis = client;
      client = undefined;
      if (redis === undefined) return;
      // Nothing is pending, since every write waited for its replies; a server that does not answer the QUIT is dropped.
      await quitWithin(redis);
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
  create: (opts) => createRedisStreamsSink(settingsFrom(opts)),
});
