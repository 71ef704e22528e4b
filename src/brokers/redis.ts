/**
 * What the Redis Streams source and sink share: ioredis loaded on first use, the classification of
 * its errors, the partition a record's stream is chosen by, the envelope fields of an entry, and
 * closing a connection to a server that may not answer.
 */
import type { Redis, RedisOptions } from "ioredis";
import { z } from "zod";
import { classify, SluiceError, type ErrorCode } from "../core/errors.js";
import type { SluiceRecord } from "../core/record.js";

/** Entry fields the `redis_streams` sink writes beside the body; in an entry with a body the source reads them into the record's envelope, not its payload. */
export const ENVELOPE_FIELDS = ["id", "key", "event_time"] as const;

/** What sluice takes from ioredis, once {@link loadRedis} has loaded it. */
export interface RedisModule {
  readonly Redis: typeof Redis;
  /** The class of a server's error reply (ioredis types it as any). */
  readonly ReplyError: new (message: string) => Error;
}

/** ioredis, imported on first use only: a pipeline without a Redis source or sink never pays for loading it. */
let redisModule: Promise<RedisModule> | undefined;
/** The loaded module, for classifying errors synchronously; undefined until {@link loadRedis} resolved. */
let loadedRedis: RedisModule | undefined;

/** The loaded module; undefined until {@link loadRedis} resolved. */
export function loadedRedisModule(): RedisModule | undefined {
  return loadedRedis;
}

/** Imports ioredis once (later calls share the same promise). */
export function loadRedis(): Promise<RedisModule> {
  redisModule ??= import("ioredis").then((mod) => (loadedRedis = { Redis: mod.Redis, ReplyError: mod.ReplyError as RedisModule["ReplyError"] }));
  return redisModule;
}

/** Whether `err` is a reply from the server. Before ioredis is loaded no error can be one. */
export function isReplyError(err: unknown): err is Error {
  return loadedRedis !== undefined && err instanceof loadedRedis.ReplyError;
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
const RETRYABLE_REPLIES = /^(OOM|LOADING|BUSY|READONLY|MISCONF|NOSCRIPT|NOREPLICAS|TRYAGAIN|CLUSTERDOWN|MASTERDOWN)\b|^ERR max number of clients/;
/** Before Redis 7 a script's failed call comes wrapped: "ERR Error running script (call to f_…): @user_script:1: @user_script: 1: -OOM …"; the reply of the call follows the dash. */
const WRAPPED_SCRIPT_REPLY = /^ERR Error running script\b.*?: -([A-Z]+\b.*)$/s;

/** A server's reply as the command that failed gave it: unwrapped from a pre-7 script error. */
export function innerReply(reply: string): string {
  return WRAPPED_SCRIPT_REPLY.exec(reply)?.[1] ?? reply;
}
/** A key holding another type than a stream: the stream's fault, not the connection's. */
const WRONGTYPE = /^WRONGTYPE\b/;

/**
 * Wraps an ioredis error as a {@link SluiceError}. A reply from the server, by its prefix: OOM,
 * LOADING, BUSY, READONLY, MISCONF, NOSCRIPT, NOREPLICAS (and the cluster and client-limit replies) are
 * retryable `code`; WRONGTYPE is a permanent ERR_SINK_REJECTED; any other reply (NOAUTH,
 * WRONGPASS, NOPERM, a syntax error) is a permanent `code`: no retry clears it. A script error
 * of Redis before 7 is judged by the reply it wraps. Anything else
 * (connection refused or lost, a timeout) is retryable `code`; a programmer error stays a
 * permanent ERR_INTERNAL.
 */
export function classifyRedisError(err: unknown, code: ErrorCode, location: string): SluiceError {
  if (err instanceof SluiceError) return err;
  if (isReplyError(err)) {
    const reply = innerReply(err.message);
    const message = `redis: ${err.message}`;
    if (WRONGTYPE.test(reply)) return new SluiceError("ERR_SINK_REJECTED", message, { cause: err, location });
    return new SluiceError(code, message, { cause: err, retryable: RETRYABLE_REPLIES.test(reply), location });
  }
  const wrapped = classify(err, code);
  if (wrapped.code === "ERR_INTERNAL") return wrapped;
  return new SluiceError(code, `redis: ${wrapped.message}`, { cause: err, retryable: true, location });
}


/** How long closing a connection may wait for the server (QUIT, a last command), in ms, before the socket is dropped: a server stopped with SIGSTOP or cut off without a reset never answers. */
export const CLOSE_TIMEOUT_MS = 2_000;

/** `work`'s value, or undefined once `ms` of real time passed first (a rejection after that is ignored); a rejection before it passes through. */
export function within<T>(work: Promise<T>, ms = CLOSE_TIMEOUT_MS): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), ms)));
  work.catch(() => {});
  return Promise.race([work, late]).finally(() => clearTimeout(timer));
}

/** QUITs `redis` (the replies of commands already sent come first), dropping the connection instead when the server does not answer within {@link CLOSE_TIMEOUT_MS}. */
export async function quitWithin(redis: Redis): Promise<void> {
  const quit = await within(redis.quit().then(() => true, () => false));
  if (quit !== true) redis.disconnect();
}

/** How long `connect` waits for the server, in ms. */
const CONNECT_TIMEOUT_MS = 10_000;

/** How long a command may wait for its reply, in ms: a server stopped with SIGSTOP never closes the socket. */
export const COMMAND_TIMEOUT_MS = 30_000;

/**
 * The client options the source and the sink share: connect only when asked, and fail a command at
 * once (no offline queue, no resend, no retries by ioredis) while the connection is down, so the
 * engine decides what is retried and when.
 */
export const CLIENT_OPTIONS: RedisOptions = {
  lazyConnect: true,
  enableOfflineQueue: false,
  autoResendUnfulfilledCommands: false,
  maxRetriesPerRequest: 0,
  connectTimeout: CONNECT_TIMEOUT_MS,
  commandTimeout: COMMAND_TIMEOUT_MS,
};

/** The `partitions` option of the source and the sink, with what it means for each. */
export function partitionsOption(description: string) {
  return z.number().int().positive().max(1024).default(1).describe(description);
}
