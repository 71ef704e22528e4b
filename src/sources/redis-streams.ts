/**
 * The `redis_streams` source: reads a consumer group (XREADGROUP, COUNT = the room in the buffer),
 * XACKs each chunk once every sink committed it, takes over entries other consumers left pending
 * (XPENDING + XCLAIM), and dead-letters an entry delivered `max_deliveries` times.
 */
import { hostname } from "node:os";
import type { Redis } from "ioredis";
import { z } from "zod";
import { sleep } from "../core/clock.js";
import { SluiceError } from "../core/errors.js";
import type { Entry } from "../core/record.js";
import { classifyRedisError, isReplyError, loadRedis, type RedisModule } from "../brokers/redis.js";
import { defineComponent, type ComponentContext, type EnqueueOutcome, type Source, type SourceHandle } from "../components/contracts.js";
import { duration } from "../components/options.js";
import { ENVELOPE_FIELDS, entryRecord, exhaustedRecord, parseGroupInfo, parsePending, type EntryFormat, type PendingEntry, type RawEntry } from "./redis-streams-entries.js";

/** How long `connect` waits for the server, in ms. */
const CONNECT_TIMEOUT_MS = 10_000;
/** How long a command other than the blocking read may wait for its reply, in ms (a server stopped with SIGSTOP never closes the socket). */
const COMMAND_TIMEOUT_MS = 30_000;
/** How much longer than its BLOCK the read may wait for its reply, in ms. */
const READ_TIMEOUT_GRACE_MS = 10_000;
/** How often the group's backlog is read for the metrics, in ms. */
const BACKLOG_EVERY_MS = 5_000;
/** The shortest time between two reclaim passes, in ms. */
const MIN_RECLAIM_EVERY_MS = 1_000;

const options = z
  .strictObject({
    url: z
      .string()
      .min(1)
      .describe("Server URL: redis://[user:password@]host:6379[/db], rediss:// for TLS; write ${REDIS_URL} to keep the password out of the file"),
    stream: z.string().min(1).describe("Stream key to read; with partitions, the prefix of <stream>:0 .. <stream>:<partitions - 1> (as the redis_streams sink writes them)"),
    group: z.string().min(1).default("sluice").describe("Consumer group, created when missing (with the stream, MKSTREAM); every worker of a fleet names the same one"),
    start: z
      .union([z.enum(["0", "$"]), z.literal(0).transform(() => "0" as const)])
      .default("0")
      .describe('Where a group created by this source starts: "0" (everything already in the stream) or "$" (only entries added from then on)'),
    consumer: z.string().min(1).optional().describe("This worker's consumer name in the group; default <host name>-<pid>, unique per worker"),
    body_key: z
      .string()
      .min(1)
      .default("body")
      .describe("Entry field holding the payload as JSON; an entry without it becomes a payload of its fields (as strings)"),
    metadata_field: z
      .string()
      .min(1)
      .default("_redis")
      .describe("Payload field the entry's other fields (besides the body, id, key and event_time) go under, when it has any"),
    partitions: z
      .number()
      .int()
      .positive()
      .max(1024)
      .default(1)
      .describe("Read <stream>:0 .. <stream>:<partitions - 1> in one group (what the redis_streams sink writes with partitions); 1 reads stream itself"),
    block: duration()
      .default(2_000)
      .refine((ms) => ms >= 1 && ms <= 60_000, "must be between 1 ms and 60 s")
      .describe("Longest one XREADGROUP waits for new entries (BLOCK); default 2s"),
    claim_idle: duration()
      .default(60_000)
      .refine((ms) => ms >= 10, "must be at least 10 ms")
      .describe("An entry pending this long with a consumer that is not working on it (it died or stalled) is claimed by this one; default 60s"),
    max_deliveries: z
      .number()
      .int()
      .positive()
      .default(10)
      .describe("An entry delivered this many times and still not acked goes to the dead letters (ERR_MAX_DELIVERIES) and is acked"),
  })
  .superRefine((o, ctx) => {
    for (const key of ["body_key", "metadata_field"] as const) {
      if ((ENVELOPE_FIELDS as readonly string[]).includes(o[key])) {
        ctx.addIssue({ code: "custom", path: [key], message: `"${o[key]}" is an envelope field (${ENVELOPE_FIELDS.join(", ")})` });
      }
    }
  });

/** Everything a {@link createRedisStreamsSource} needs; the definition builds it from validated options. */
export interface RedisStreamsSourceSettings extends EntryFormat {
  /** Server URL. Never put into messages: it may hold a password. */
  readonly url: string;
  /** Every stream of the source (`stream`, or its partitions): groups are created on each. */
  readonly streams: readonly string[];
  readonly group: string;
  readonly start: "0" | "$";
  readonly consumer: string;
  /** ms */
  readonly blockMs: number;
  /** ms */
  readonly claimIdleMs: number;
  readonly maxDeliveries: number;
  /**
   * The streams this worker reads now, asked before every read and every reclaim pass (a subset of
   * `streams`, which may change between reads); default all of them.
   */
  readonly assigned?: () => readonly string[];
}

/** A chunk's checkpoint: its entry ids per stream, XACKed once the chunk is done. */
export type RedisStreamsCheckpoint = ReadonlyMap<string, readonly string[]>;

/** The two connections of one connect: the blocking read on its own, so an XACK never waits behind a BLOCK. */
interface Connection {
  readonly reader: Redis;
  readonly commands: Redis;
  /** Set when either connection closed without being asked to: the run ends with it. */
  lost: SluiceError | undefined;
  /** Called when `lost` is set. */
  onLost: () => void;
  /** Set before this process closes the connections itself (a reconnect, `close`): not a loss. */
  retired: boolean;
  /** Set before a stop closes the reader (the commands connection stays for the acks): not a loss. */
  readerRetired: boolean;
}

/** Client names carry the consumer name; Redis refuses spaces and newlines in them. */
function clientName(consumer: string, role: string): string {
  return `sluice:${consumer.replace(/[^\w.:@-]/g, "_")}:${role}`;
}

/** Whether `err` is a reply starting with `prefix` (NOGROUP, BUSYGROUP). */
function isReply(err: unknown, prefix: string): boolean {
  return isReplyError(err) && err.message.startsWith(prefix);
}

/**
 * Wraps an error of the source's connections as `ERR_SOURCE_CONNECT`: retryable for a lost or
 * refused connection, a timeout, a server loading or out of memory; permanent for a refused AUTH
 * or ACL (NOAUTH, WRONGPASS, NOPERM), a key that is not a stream (WRONGTYPE) and other replies no
 * retry clears.
 */
function sourceError(err: unknown, location: string): SluiceError {
  if (err instanceof SluiceError) return err;
  const e = classifyRedisError(err, "ERR_SOURCE_CONNECT", location);
  if (e.code === "ERR_INTERNAL") return e;
  const message = `${location}: ${e.message.replace(/^redis: /, "")}`;
  if (e.code === "ERR_SINK_REJECTED") return new SluiceError("ERR_SOURCE_CONNECT", `${message} (the key is not a stream)`, { cause: err, retryable: false, location });
  return new SluiceError("ERR_SOURCE_CONNECT", message, { cause: err, retryable: e.retryable, location });
}

/**
 * Builds a Redis Streams source (what the `redis_streams` definition's factory returns).
 *
 * `connect` opens two connections (a reader for XREADGROUP BLOCK, one for XACK, XCLAIM, XPENDING,
 * XINFO), pings, and creates the group on every stream (MKSTREAM; an existing group is fine). `run`
 * waits for room, reads at most that many entries, enqueues them and reads again while earlier
 * chunks are in flight; every max(claim_idle / 2, 1 s) it first takes over entries idle longer
 * than claim_idle. Commands are never queued while disconnected nor resent after a reconnect; a
 * lost connection ends `run` with a retryable `ERR_SOURCE_CONNECT` and the engine connects again
 * (fresh clients). Acks that could not be sent then are sent after the next connect.
 */
export function createRedisStreamsSource(settings: RedisStreamsSourceSettings, ctx: ComponentContext): Source {
  const { group, consumer, claimIdleMs, maxDeliveries } = settings;
  const location = settings.streams.length === 1 ? `redis stream ${settings.streams[0]}` : `redis streams ${settings.streams[0]}..${settings.streams.at(-1)}`;
  const assigned = settings.assigned ?? (() => settings.streams);
  const reclaimEveryMs = Math.max(claimIdleMs / 2, MIN_RECLAIM_EVERY_MS);
  const { clock, logger } = ctx;
  let current: Connection | undefined;
  /** Entry ids read by this process and not yet acked (or given back), per stream: never reclaimed from ourselves. */
  const inFlight = new Map<string, Set<string>>();
  /** Done chunks whose XACK failed with the connection: sent after the next connect. */
  const unacked: RedisStreamsCheckpoint[] = [];
  /** Which of several streams the next short read starts at, so each gets its turn. */
  let turn = 0;

  const held = (stream: string): Set<string> => {
    let ids = inFlight.get(stream);
    if (ids === undefined) inFlight.set(stream, (ids = new Set()));
    return ids;
  };
  const release = (checkpoint: RedisStreamsCheckpoint) => {
    for (const [stream, ids] of checkpoint) {
      const set = inFlight.get(stream);
      if (set === undefined) continue;
      for (const id of ids) set.delete(id);
    }
  };

  function open(ioredis: RedisModule, role: "reader" | "commands", conn: { lastError?: unknown }): Redis {
    return new ioredis.Redis(settings.url, {
      lazyConnect: true,
      enableOfflineQueue: false,
      autoResendUnfulfilledCommands: false,
      maxRetriesPerRequest: 0,
      connectTimeout: CONNECT_TIMEOUT_MS,
      commandTimeout: role === "reader" ? settings.blockMs + READ_TIMEOUT_GRACE_MS : COMMAND_TIMEOUT_MS,
      // No reconnect in the background: the engine reconnects (connect), with fresh clients.
      retryStrategy: () => null,
      connectionName: clientName(consumer, role),
    }).on("error", (err: unknown) => (conn.lastError = err));
  }

  /** Closes a connection pair for good; resolves once the acks already sent have their replies (QUIT). */
  async function retire(conn: Connection): Promise<void> {
    conn.retired = true;
    conn.readerRetired = true;
    conn.reader.disconnect();
    await conn.commands.quit().then(
      () => {},
      () => conn.commands.disconnect(),
    );
  }

  async function createGroups(commands: Redis, streams: readonly string[]): Promise<void> {
    const replies = await commands.pipeline(streams.map((s) => ["xgroup", "CREATE", s, group, settings.start, "MKSTREAM"])).exec();
    replies?.forEach(([err], i) => {
      if (err && !isReply(err, "BUSYGROUP")) throw sourceError(err, `redis stream ${streams[i]}`);
    });
  }

  async function xack(commands: Redis, checkpoint: RedisStreamsCheckpoint): Promise<void> {
    const pipeline = commands.pipeline();
    for (const [stream, ids] of checkpoint) if (ids.length > 0) pipeline.xack(stream, group, ...ids);
    const replies = await pipeline.exec();
    for (const [err] of replies ?? []) if (err) throw err;
  }

  /** Hands a chunk to the engine; entries it did not take are given back (pending here, reclaimed later). */
  async function hand(handle: SourceHandle, records: Entry[], checkpoint: RedisStreamsCheckpoint): Promise<EnqueueOutcome> {
    for (const [stream, ids] of checkpoint) {
      const set = held(stream);
      for (const id of ids) set.add(id);
    }
    const outcome = await handle.enqueue(records, checkpoint);
    if (outcome === "rejected" || outcome === "stopping") {
      release(checkpoint);
      await giveBack(checkpoint);
    }
    return outcome;
  }

  /**
   * Marks entries this process read and will not deliver as idle for claim_idle already (XCLAIM
   * IDLE, JUSTID: no delivery counted), so the next reclaim pass of any worker takes them instead
   * of waiting claim_idle for them. Best effort: otherwise they are reclaimed after claim_idle.
   */
  async function giveBack(checkpoint: RedisStreamsCheckpoint): Promise<void> {
    const conn = current;
    if (conn === undefined || conn.commands.status !== "ready") return;
    const pipeline = conn.commands.pipeline();
    for (const [stream, ids] of checkpoint) if (ids.length > 0) pipeline.xclaim(stream, group, consumer, 0, ...ids, "IDLE", claimIdleMs, "JUSTID");
    await pipeline.exec().catch(() => {});
  }

  /** Sends the XACKs that failed with an earlier connection (or a timeout) on `conn`. */
  async function ackLate(conn: Connection): Promise<void> {
    for (const checkpoint of unacked.splice(0)) {
      try {
        await xack(conn.commands, checkpoint);
      } catch (err) {
        logger.warn({ source: ctx.name, err: String(err) }, "XACK of a delivered chunk failed again; its entries will be redelivered");
      }
      release(checkpoint);
    }
  }

  /** Reads new entries once: at most `room` of them over the streams assigned now. */
  async function read(conn: Connection, handle: SourceHandle, room: number, signal: AbortSignal): Promise<EnqueueOutcome | undefined> {
    const all = assigned();
    if (all.length === 0) {
      await sleep(clock, settings.blockMs, signal).catch(() => {});
      return undefined;
    }
    // COUNT is per stream: split the room so the whole read never exceeds it, taking turns when it is smaller than the number of streams.
    let streams = all;
    if (room < all.length) {
      streams = Array.from({ length: room }, (_, i) => all[(turn + i) % all.length]!);
      turn = (turn + room) % all.length;
    }
    const count = Math.floor(room / streams.length);
    let reply: [string, RawEntry[]][] | null;
    try {
      reply = (await conn.reader.xreadgroup("GROUP", group, consumer, "COUNT", count, "BLOCK", settings.blockMs, "STREAMS", ...streams, ...streams.map(() => ">"))) as [string, RawEntry[]][] | null;
    } catch (err) {
      if (signal.aborted) return undefined;
      if (isReply(err, "NOGROUP")) {
        // The server lost the group (a restart without persistence, a deleted stream): make it again.
        logger.warn({ source: ctx.name, group, streams }, "the consumer group is missing (Redis restarted without its data, or the stream was deleted); creating it again");
        await createGroups(conn.commands, streams);
        return undefined;
      }
      throw err;
    }
    if (reply === null) return undefined;
    const records: Entry[] = [];
    const checkpoint = new Map<string, string[]>();
    for (const [stream, entries] of reply) {
      const ids: string[] = [];
      for (const [id, fields] of entries) {
        ids.push(id);
        records.push(entryRecord(handle, stream, id, fields ?? [], settings));
      }
      checkpoint.set(stream, ids);
    }
    return hand(handle, records, checkpoint);
  }

  /**
   * Takes over entries of `stream` pending longer than claim_idle with another consumer, or with
   * this one but not in flight here (read before a crash, or a read whose reply was lost).
   *
   * XPENDING IDLE + XCLAIM rather than XAUTOCLAIM: XPENDING tells each entry's delivery count
   * (what max_deliveries is about; XAUTOCLAIM does not), and the entries this process holds in
   * flight are left out before claiming (XAUTOCLAIM would claim, and count a delivery of, an
   * in-flight entry whose idle time crossed claim_idle before its next refresh). XCLAIM with
   * claim_idle as its min idle time is atomic: of two workers claiming at once, one gets an entry.
   */
  async function reclaimStream(conn: Connection, handle: SourceHandle, stream: string, signal: AbortSignal): Promise<boolean> {
    let from = "-";
    for (;;) {
      const room = await handle.waitForRoom(handle.chunkSize, signal);
      if (room === 0) return false;
      const pending = parsePending(await conn.commands.xpending(stream, group, "IDLE", claimIdleMs, from, "+", room));
      if (pending.length === 0) return true;
      from = `(${pending.at(-1)!.id}`;
      const mine = inFlight.get(stream);
      const candidates = pending.filter((p) => p.consumer !== consumer || mine?.has(p.id) !== true);
      if (candidates.length > 0 && (await claim(conn, handle, stream, candidates)) === "stopping") return false;
      if (pending.length < room) return true;
    }
  }

  async function claim(conn: Connection, handle: SourceHandle, stream: string, candidates: PendingEntry[]): Promise<EnqueueOutcome | undefined> {
    const deliveries = new Map(candidates.map((p) => [p.id, p.deliveries]));
    const claimed = (await conn.commands.xclaim(stream, group, consumer, claimIdleMs, ...deliveries.keys())) as (RawEntry | null)[];
    const records: Entry[] = [];
    const ids: string[] = [];
    let exhausted = 0;
    for (const entry of claimed) {
      if (entry === null || entry[1] === null) continue;
      const [id, fields] = entry;
      const times = deliveries.get(id) ?? 0;
      deliveries.delete(id);
      if (times >= maxDeliveries) exhausted++;
      records.push(times >= maxDeliveries ? exhaustedRecord(handle, stream, id, fields, times, settings) : entryRecord(handle, stream, id, fields, settings));
      ids.push(id);
    }
    // What was asked and not returned: claimed by another worker meanwhile, or deleted from the stream (trimmed) while pending.
    if (deliveries.size > 0) await dropTrimmed(conn, stream, [...deliveries.keys()]);
    if (records.length === 0) return undefined;
    ctx.emit({ type: "records_reclaimed", source: ctx.name, count: records.length });
    if (exhausted > 0) logger.warn({ source: ctx.name, stream, entries: exhausted, maxDeliveries }, "entries reached max_deliveries; dead-lettering them");
    return hand(handle, records, new Map([[stream, ids]]));
  }

  /** Acks away the entries of `ids` that no longer exist in `stream`: they cannot be delivered (Redis 7 already dropped them from the pending list). */
  async function dropTrimmed(conn: Connection, stream: string, ids: string[]): Promise<void> {
    const replies = await conn.commands.pipeline(ids.map((id) => ["xrange", stream, id, id])).exec();
    const gone = ids.filter((_, i) => {
      const [err, range] = replies?.[i] ?? [];
      return !err && Array.isArray(range) && range.length === 0;
    });
    if (gone.length === 0) return;
    await xack(conn.commands, new Map([[stream, gone]]));
    logger.warn({ source: ctx.name, stream, entries: gone.length }, "pending entries were deleted from the stream (trimmed) before they were acked; they cannot be delivered");
  }

  /** Emits the group's pending entries and lag, summed over the assigned streams, every few seconds until `signal` aborts. */
  async function reportBacklog(conn: Connection, signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      try {
        const streams = assigned();
        const replies = await conn.commands.pipeline(streams.map((s) => ["xinfo", "GROUPS", s])).exec();
        let pending = 0;
        let lag: number | undefined = 0;
        for (const [err, reply] of replies ?? []) {
          const info = err ? undefined : parseGroupInfo(reply, group);
          pending += info?.pending ?? 0;
          lag = lag === undefined || info?.lag === undefined ? undefined : lag + info.lag;
        }
        ctx.emit({ type: "source_backlog", source: ctx.name, pending, lag });
      } catch (err) {
        // The read loop finds a lost connection; a missed report only leaves the gauges a few seconds old.
        logger.debug({ source: ctx.name, err: String(err) }, "could not read the group's backlog");
      }
      await sleep(clock, BACKLOG_EVERY_MS, signal).catch(() => {});
    }
  }

  return {
    acks: "individual",
    whenFull: "wait",
    workingIntervalMs: claimIdleMs / 3,

    async connect(signal) {
      if (current !== undefined) void retire(current);
      current = undefined;
      const ioredis = await loadRedis();
      const errors: { lastError?: unknown } = {};
      const conn: Connection = { reader: open(ioredis, "reader", errors), commands: open(ioredis, "commands", errors), lost: undefined, onLost: () => {}, retired: false, readerRetired: false };
      const abort = () => void retire(conn);
      signal.addEventListener("abort", abort, { once: true });
      try {
        await Promise.all([conn.reader.connect(), conn.commands.connect()]);
        await Promise.all([conn.reader.ping(), conn.commands.ping()]);
        await createGroups(conn.commands, settings.streams);
      } catch (err) {
        void retire(conn);
        // A refused AUTH reaches connect() as "Connection is closed."; the server's reply came as an event.
        throw sourceError(isReplyError(errors.lastError) ? errors.lastError : err, location);
      } finally {
        signal.removeEventListener("abort", abort);
      }
      const onEnd = (role: "reader" | "commands") => {
        if (conn.retired || conn.lost !== undefined || (role === "reader" && conn.readerRetired)) return;
        const why = errors.lastError instanceof Error ? `: ${errors.lastError.message}` : "";
        conn.lost = new SluiceError("ERR_SOURCE_CONNECT", `${location}: connection lost${why}`, { cause: errors.lastError, location });
        conn.onLost();
      };
      conn.reader.on("end", () => onEnd("reader"));
      conn.commands.on("end", () => onEnd("commands"));
      current = conn;
      await ackLate(conn);
    },

    async run(handle, signal) {
      const conn = current;
      if (conn === undefined || conn.lost !== undefined) throw conn?.lost ?? new SluiceError("ERR_SOURCE_CONNECT", "redis_streams source: run before connect", { location });
      const stop = new AbortController();
      const onStop = () => {
        stop.abort();
        // A read blocked for up to `block` must not hold the stop: its entries stay pending here and are reclaimed later.
        conn.readerRetired = true;
        conn.reader.disconnect();
      };
      conn.onLost = onStop;
      signal.addEventListener("abort", onStop, { once: true });
      const backlog = reportBacklog(conn, stop.signal);
      let nextReclaim = clock.now();
      try {
        while (!stop.signal.aborted) {
          if (clock.now() >= nextReclaim) {
            await ackLate(conn);
            for (const stream of assigned()) {
              try {
                if (!(await reclaimStream(conn, handle, stream, stop.signal))) break;
              } catch (err) {
                if (stop.signal.aborted) break;
                if (isReply(err, "NOGROUP")) continue;
                throw err;
              }
            }
            nextReclaim = clock.now() + reclaimEveryMs;
          }
          const room = await handle.waitForRoom(handle.chunkSize, stop.signal);
          if (room === 0) break;
          if ((await read(conn, handle, room, stop.signal)) === "stopping") break;
        }
      } catch (err) {
        if (!signal.aborted) throw conn.lost ?? sourceError(err, location);
      } finally {
        signal.removeEventListener("abort", onStop);
        conn.onLost = () => {};
        stop.abort();
        await backlog;
      }
      if (conn.lost !== undefined && !signal.aborted) throw conn.lost;
    },

    async ack(checkpoint) {
      const cp = checkpoint as RedisStreamsCheckpoint;
      const conn = current;
      try {
        // The reader may be gone (a stop, a lost reader); the acks need only this connection.
        if (conn === undefined || conn.commands.status !== "ready") throw conn?.lost ?? new SluiceError("ERR_SOURCE_CONNECT", "not connected", { location });
        await xack(conn.commands, cp);
      } catch (err) {
        const e = sourceError(err, location);
        if (!e.retryable) {
          release(cp);
          throw e;
        }
        // Still in flight for the reclaim pass: the next connect sends it.
        unacked.push(cp);
        throw new SluiceError("ERR_SOURCE_CONNECT", `XACK failed (sent again after reconnecting): ${e.message}`, { cause: e, location });
      }
      release(cp);
    },

    async inProgress(checkpoint) {
      const conn = current;
      if (conn === undefined || conn.commands.status !== "ready") return;
      const pipeline = conn.commands.pipeline();
      for (const [stream, ids] of checkpoint as RedisStreamsCheckpoint) {
        const mine = inFlight.get(stream);
        const still = ids.filter((id) => mine?.has(id) === true);
        // Min idle 0 and JUSTID: resets the entries' idle time without counting a delivery, so no other worker claims them.
        if (still.length > 0) pipeline.xclaim(stream, group, consumer, 0, ...still, "JUSTID");
      }
      if (pipeline.length > 0) await pipeline.exec();
    },

    async close() {
      const conn = current;
      current = undefined;
      if (conn !== undefined) await retire(conn);
    },
  };
}

/** The default consumer name: unique per worker process on a host. */
function defaultConsumer(): string {
  return `${hostname()}-${process.pid}`;
}

/**
 * The `redis_streams` source: reads a consumer group with XREADGROUP (created when missing), XACKs
 * each chunk after every sink committed it, reclaims entries idle past `claim_idle`, and
 * dead-letters entries delivered `max_deliveries` times.
 */
export const definition = defineComponent<typeof options, Source>({
  type: "redis_streams",
  summary: "Reads a Redis Streams consumer group; acks entries once committed, reclaims those of dead consumers",
  options,
  create(opts, ctx) {
    return createRedisStreamsSource(
      {
        url: opts.url,
        streams: opts.partitions === 1 ? [opts.stream] : Array.from({ length: opts.partitions }, (_, i) => `${opts.stream}:${i}`),
        group: opts.group,
        start: opts.start,
        consumer: opts.consumer ?? defaultConsumer(),
        bodyKey: opts.body_key,
        metadataField: opts.metadata_field,
        blockMs: Math.max(1, Math.round(opts.block)),
        claimIdleMs: Math.round(opts.claim_idle),
        maxDeliveries: opts.max_deliveries,
      },
      ctx,
    );
  },
});
