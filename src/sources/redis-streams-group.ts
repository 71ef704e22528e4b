/**
 * The commands the `redis_streams` source sends about its consumer group besides the blocking read,
 * all on its second connection so none waits behind a BLOCK: creating the group, XACK, keeping
 * in-flight entries from going idle, finding and claiming entries other consumers left, deleting
 * consumers without pending entries (its own at close, long-idle ones of gone workers), and the
 * backlog for the metrics.
 */
import type { Redis } from "ioredis";
import { SluiceError } from "../core/errors.js";
import { classifyRedisError, isReplyError } from "../brokers/redis.js";
import { parseGroupInfo, parsePending, type GroupBacklog, type PendingEntry, type RawEntry } from "./redis-streams-entries.js";

/** A chunk's checkpoint: its entry ids per stream, XACKed once the chunk is done. */
export type RedisStreamsCheckpoint = ReadonlyMap<string, readonly string[]>;

/** Whether `err` is a server reply starting with `prefix` (NOGROUP, BUSYGROUP). */
export function isReply(err: unknown, prefix: string): boolean {
  return isReplyError(err) && err.message.startsWith(prefix);
}

/**
 * Wraps an error of the source's connections as `ERR_SOURCE_CONNECT`, its message starting with
 * `location` (the stream): retryable for a lost or refused connection, a timeout, a server loading
 * or out of memory; permanent for a refused AUTH or ACL (NOAUTH, WRONGPASS, NOPERM), a key that is
 * not a stream (WRONGTYPE) and other replies no retry clears.
 */
export function sourceError(err: unknown, location: string): SluiceError {
  if (err instanceof SluiceError) return err;
  const e = classifyRedisError(err, "ERR_SOURCE_CONNECT", location);
  if (e.code === "ERR_INTERNAL") return e;
  const message = `${location}: ${e.message.replace(/^redis: /, "")}`;
  if (e.code === "ERR_SINK_REJECTED") return new SluiceError("ERR_SOURCE_CONNECT", `${message} (the key is not a stream)`, { cause: err, retryable: false, location });
  return new SluiceError("ERR_SOURCE_CONNECT", message, { cause: err, retryable: e.retryable, location });
}

/**
 * Deletes consumer ARGV[2] of group ARGV[1] on stream KEYS[1] if it has no pending entries; 1 when
 * it was deleted. One script, so no read can deliver it an entry between the check and the delete.
 */
const LEAVE_SCRIPT = `
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1`;

/**
 * Deletes every consumer of group ARGV[1] on stream KEYS[1] but ARGV[3] that has no pending entries
 * and has not read or claimed for ARGV[2] ms; returns how many. One script: XINFO's pending counts
 * hold until the deletes are done.
 */
const DROP_IDLE_SCRIPT = `
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local deleted = 0
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local f = {}
  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
  if f['pending'] == 0 and f['idle'] >= tonumber(ARGV[2]) and f['name'] ~= ARGV[3] then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])
    deleted = deleted + 1
  end
end
return deleted`;

/** Runs a pipeline and throws the first command's error, if any: a pipeline resolves even when its commands fail. */
async function execAll(pipeline: ReturnType<Redis["pipeline"]>): Promise<unknown[]> {
  const replies = (await pipeline.exec()) ?? [];
  for (const [err] of replies) if (err) throw err;
  return replies.map(([, reply]) => reply);
}

/** One consumer (`consumer`) of one group (`group`), as seen through one connection. */
export class ConsumerGroup {
  constructor(
    readonly redis: Redis,
    readonly group: string,
    readonly consumer: string,
  ) {}

  /**
   * Creates the group on each stream (and the stream, MKSTREAM), starting at `start`; a group that
   * exists is left as it is. Rejects with a {@link sourceError} naming the stream.
   */
  async create(streams: readonly string[], start: "0" | "$"): Promise<void> {
    const replies = (await this.redis.pipeline(streams.map((s) => ["xgroup", "CREATE", s, this.group, start, "MKSTREAM"])).exec()) ?? [];
    replies.forEach(([err], i) => {
      if (err && !isReply(err, "BUSYGROUP")) throw sourceError(err, `redis stream ${streams[i]}`);
    });
  }

  /** XACKs a chunk's entries, one round trip. */
  async ack(checkpoint: RedisStreamsCheckpoint): Promise<void> {
    const pipeline = this.redis.pipeline();
    for (const [stream, ids] of checkpoint) if (ids.length > 0) pipeline.xack(stream, this.group, ...ids);
    await execAll(pipeline);
  }

  /**
   * Sets the entries' idle time (XCLAIM to this consumer with JUSTID, which counts no delivery):
   * to 0 for entries still being worked on, so no other worker claims them; to `idleMs` (claim_idle)
   * for entries read and given back, so the next reclaim pass of any worker takes them at once.
   */
  async setIdle(checkpoint: RedisStreamsCheckpoint, idleMs = 0): Promise<void> {
    const pipeline = this.redis.pipeline();
    for (const [stream, ids] of checkpoint) {
      if (ids.length > 0) pipeline.xclaim(stream, this.group, this.consumer, 0, ...ids, "IDLE", idleMs, "JUSTID");
    }
    if (pipeline.length > 0) await execAll(pipeline);
  }

  /** Up to `count` entries of `stream` pending for at least `idleMs`, after entry id `after` (exclusive; `undefined`: from the start). */
  async idle(stream: string, idleMs: number, after: string | undefined, count: number): Promise<PendingEntry[]> {
    return parsePending(await this.redis.xpending(stream, this.group, "IDLE", idleMs, after === undefined ? "-" : `(${after}`, "+", count));
  }

  /**
   * Claims `ids` of `stream` for this consumer if they are still idle for at least `idleMs` (atomic:
   * of two workers claiming at once, one gets each entry), counting a delivery. Entries deleted from
   * the stream come back as `null` before Redis 7, and not at all from Redis 7 on.
   */
  async claim(stream: string, idleMs: number, ids: readonly string[]): Promise<(RawEntry | null)[]> {
    return (await this.redis.xclaim(stream, this.group, this.consumer, idleMs, ...ids)) as (RawEntry | null)[];
  }

  /** Which of `ids` no longer exist in `stream` (deleted or trimmed). */
  async missing(stream: string, ids: readonly string[]): Promise<string[]> {
    const ranges = await execAll(this.redis.pipeline(ids.map((id) => ["xrange", stream, id, id])));
    return ids.filter((_, i) => Array.isArray(ranges[i]) && (ranges[i] as unknown[]).length === 0);
  }

  /**
   * Deletes this consumer from the group on each of `streams` where it has no pending entries (at
   * a clean close: a worker named after its host and pid would otherwise stay in the group
   * forever). Where entries are still pending it stays, for other workers to claim them from.
   * Resolves with the streams it was deleted on; a stream without the group (deleted) is skipped.
   */
  async leave(streams: readonly string[]): Promise<string[]> {
    const replies = (await this.redis.pipeline(streams.map((s) => ["eval", LEAVE_SCRIPT, 1, s, this.group, this.consumer])).exec()) ?? [];
    const left: string[] = [];
    replies.forEach(([err, reply], i) => {
      if (err && !isReply(err, "NOGROUP")) throw err;
      if (reply === 1) left.push(streams[i]!);
    });
    return left;
  }

  /**
   * Deletes the consumers of `stream` other than this one that have no pending entries and have
   * been idle (no read, no claim) for at least `idleMs`: workers gone for good. Resolves with how many.
   */
  async dropIdle(stream: string, idleMs: number): Promise<number> {
    return Number(await this.redis.eval(DROP_IDLE_SCRIPT, 1, stream, this.group, Math.round(idleMs), this.consumer));
  }

  /** The group's pending entries and lag summed over `streams`; lag undefined when any stream does not tell it. */
  async backlog(streams: readonly string[]): Promise<GroupBacklog> {
    const replies = (await this.redis.pipeline(streams.map((s) => ["xinfo", "GROUPS", s])).exec()) ?? [];
    let pending = 0;
    let lag: number | undefined = 0;
    for (const [err, reply] of replies) {
      // A stream deleted meanwhile has no backlog.
      const info = err ? undefined : parseGroupInfo(reply, this.group);
      pending += info?.pending ?? 0;
      lag = lag === undefined || (info !== undefined && info.lag === undefined) ? undefined : lag + (info?.lag ?? 0);
    }
    return { pending, lag };
  }
}
