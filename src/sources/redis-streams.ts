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
import { isReplyError, loadRedis, type RedisModule } from "../brokers/redis.js";
import { defineComponent, type ComponentContext, type EnqueueOutcome, type Source, type SourceHandle } from "../components/contracts.js";
import { duration } from "../components/options.js";
import { ENVELOPE_FIELDS, entryRecord, exhaustedRecord, type EntryFormat, type PendingEntry, type RawEntry } from "./redis-streams-entries.js";
import { ConsumerGroup, isReply, sourceError, type RedisStreamsCheckpoint } from "./redis-streams-group.js";

export type { RedisStreamsCheckpoint } from "./redis-streams-group.js";

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

/** The two connections of one connect: the blocking read on its own, so an XACK never waits behind a BLOCK. */
interface Connection {
  readonly reader: Redis;
  /** The group's other commands, on the second connection. */
  readonly group: ConsumerGroup;
  /** Set when either connection closed without being asked to: the run ends with it. */
  lost: SluiceError | undefined;
  /** Called when `lost` is set. */
  onLost: () => void;
  /** Set before this process closes both connections itself (a reconnect, `close`): not a loss. */
  retired: boolean;
  /** Set before a stop closes the reader (the other connection stays for the acks): not a loss. */
  readerRetired: boolean;
}

/** Client names carry the consumer name (to find a worker's connections in CLIENT LIST); Redis refuses spaces and newlines in them. */
function clientName(consumer: string, role: string): string {
  return `sluice:${consumer.replace(/[^\w.:@-]/g, "_")}:${role}`;
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
  const { consumer, claimIdleMs, maxDeliveries } = settings;
  const location = settings.streams.length === 1 ? `redis stream ${settings.streams[0]}` : `redis streams ${settings.streams[0]}..${settings.streams.at(-1)}`;
  const assigned = settings.assigned ?? (() => settings.streams);
  const reclaimEveryMs = Math.max(claimIdleMs / 2, MIN_RECLAIM_EVERY_MS);
  const { clock, logger } = ctx;
  const log = { source: ctx.name };
  let current: Connection | undefined;
  /** Chunks read by this process and not yet acked (or given back): their entries are never reclaimed from ourselves. A set of chunks, not of ids: no per-entry work on the hot path. */
  const inFlight = new Set<RedisStreamsCheckpoint>();
  /** Done chunks whose XACK failed with the connection: sent again after the next connect (still in flight meanwhile). */
  const unacked: RedisStreamsCheckpoint[] = [];
  /** Which of several streams the next short read starts at, so each gets its turn. */
  let turn = 0;

  const hold = (checkpoint: RedisStreamsCheckpoint) => void inFlight.add(checkpoint);
  const release = (checkpoint: RedisStreamsCheckpoint) => void inFlight.delete(checkpoint);
  /** The entry ids of `stream` in flight here, for a reclaim pass (at most every second). */
  const heldIn = (stream: string): Set<string> => {
    const ids = new Set<string>();
    for (const checkpoint of inFlight) for (const id of checkpoint.get(stream) ?? []) ids.add(id);
    return ids;
  };
  /** The current connection pair when its command connection is up (the reader may be closed by a stop). */
  const commands = (): ConsumerGroup | undefined => (current?.group.redis.status === "ready" ? current.group : undefined);

  function open(ioredis: RedisModule, role: "reader" | "commands", errors: { last?: unknown }): Redis {
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
    }).on("error", (err: unknown) => (errors.last = err));
  }

  /** Closes a connection pair for good; resolves once the acks already sent have their replies (QUIT). */
  async function retire(conn: Connection): Promise<void> {
    conn.retired = true;
    conn.readerRetired = true;
    conn.reader.disconnect();
    await conn.group.redis.quit().then(
      () => {},
      () => conn.group.redis.disconnect(),
    );
  }

  /** Hands a chunk to the engine; entries it did not take are given back to the group. */
  async function hand(handle: SourceHandle, records: Entry[], checkpoint: RedisStreamsCheckpoint): Promise<EnqueueOutcome> {
    hold(checkpoint);
    const outcome = await handle.enqueue(records, checkpoint);
    if (outcome === "rejected" || outcome === "stopping") {
      release(checkpoint);
      // Idle for claim_idle already: the next reclaim pass of any worker takes them. Best effort: else after claim_idle.
      await commands()
        ?.setIdle(checkpoint, claimIdleMs)
        .catch(() => {});
    }
    return outcome;
  }

  /** Sends the XACKs that failed earlier (a lost connection, a timeout). */
  async function ackLate(group: ConsumerGroup): Promise<void> {
    for (const checkpoint of unacked.splice(0)) {
      await group.ack(checkpoint).catch((err: unknown) => logger.warn({ ...log, err: String(err) }, "XACK of a delivered chunk failed again; its entries will be delivered again"));
      release(checkpoint);
    }
  }

  /** Reads new entries once: at most `room` of them over the streams assigned now; null when none came. */
  async function fetch(conn: Connection, room: number, signal: AbortSignal): Promise<[string, RawEntry[]][] | null> {
    const all = assigned();
    if (all.length === 0) {
      await sleep(clock, settings.blockMs, signal).catch(() => {});
      return null;
    }
    // COUNT is per stream: split the room so the whole read never exceeds it, taking turns when it is smaller than the number of streams.
    let streams = all;
    if (room < all.length) {
      streams = Array.from({ length: room }, (_, i) => all[(turn + i) % all.length]!);
      turn = (turn + room) % all.length;
    }
    const count = Math.floor(room / streams.length);
    try {
      return (await conn.reader.xreadgroup("GROUP", settings.group, consumer, "COUNT", count, "BLOCK", settings.blockMs, "STREAMS", ...streams, ...streams.map(() => ">"))) as
        | [string, RawEntry[]][]
        | null;
    } catch (err) {
      if (signal.aborted) return null;
      // NOGROUP: the group is gone (destroyed, or Redis restarted without its data); UNBLOCKED: the stream was deleted under the read.
      if (!isReply(err, "NOGROUP") && !isReply(err, "UNBLOCKED")) throw err;
      logger.warn({ ...log, group: settings.group, streams }, "the consumer group is missing; creating it again");
      await conn.group.create(streams, settings.start);
      return null;
    }
  }

  /** Builds a read's records and hands them over as one chunk. */
  function take(handle: SourceHandle, reply: [string, RawEntry[]][]): Promise<EnqueueOutcome> {
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
   * this one but not in flight here (read before a crash, or a read whose reply was lost), a chunk
   * at a time, each waiting for room first. False when the run is stopping.
   *
   * XPENDING IDLE + XCLAIM rather than XAUTOCLAIM: XPENDING tells each entry's delivery count
   * (what max_deliveries is about; XAUTOCLAIM does not), and the entries this process holds in
   * flight are left out before claiming (XAUTOCLAIM would claim, and count a delivery of, an
   * in-flight entry whose idle time crossed claim_idle before its next refresh). XCLAIM with
   * claim_idle as its min idle time is atomic: of two workers claiming at once, one gets an entry.
   */
  async function reclaim(group: ConsumerGroup, handle: SourceHandle, stream: string, signal: AbortSignal): Promise<boolean> {
    let after: string | undefined;
    for (;;) {
      const room = await handle.waitForRoom(handle.chunkSize, signal);
      if (room === 0) return false;
      const pending = await group.idle(stream, claimIdleMs, after, room);
      if (pending.length === 0) return true;
      after = pending.at(-1)!.id;
      const mine = heldIn(stream);
      const candidates = pending.filter((p) => p.consumer !== consumer || !mine.has(p.id));
      if (candidates.length > 0 && (await claim(group, handle, stream, candidates)) === "stopping") return false;
      if (pending.length < room) return true;
    }
  }

  async function claim(group: ConsumerGroup, handle: SourceHandle, stream: string, candidates: PendingEntry[]): Promise<EnqueueOutcome | undefined> {
    /** Deliveries so far per entry asked for; what is left after the claim was not returned. */
    const asked = new Map(candidates.map((p) => [p.id, p.deliveries]));
    const claimed = await group.claim(stream, claimIdleMs, [...asked.keys()]);
    const records: Entry[] = [];
    const ids: string[] = [];
    let exhausted = 0;
    for (const entry of claimed) {
      if (entry === null || entry[1] === null) continue;
      const [id, fields] = entry;
      const times = asked.get(id) ?? 0;
      asked.delete(id);
      if (times >= maxDeliveries) {
        exhausted++;
        records.push(exhaustedRecord(handle, stream, id, fields, times, settings));
      } else {
        records.push(entryRecord(handle, stream, id, fields, settings));
      }
      ids.push(id);
    }
    // Not returned: claimed by another worker meanwhile, or deleted from the stream (trimmed) while pending.
    if (asked.size > 0) {
      const gone = await group.missing(stream, [...asked.keys()]);
      if (gone.length > 0) {
        // Redis 7 dropped them from the pending list itself; older servers claimed them for us as nil.
        await group.ack(new Map([[stream, gone]]));
        logger.warn({ ...log, stream, entries: gone.length }, "pending entries were deleted from the stream (trimmed) before they were acked; they cannot be delivered");
      }
    }
    if (records.length === 0) return undefined;
    ctx.emit({ type: "records_reclaimed", source: ctx.name, count: records.length });
    if (exhausted > 0) logger.warn({ ...log, stream, entries: exhausted, maxDeliveries }, "entries were delivered max_deliveries times without being committed; dead-lettering them");
    return hand(handle, records, new Map([[stream, ids]]));
  }

  /** Emits the group's pending entries and lag over the assigned streams every few seconds until `signal` aborts. */
  async function reportBacklog(group: ConsumerGroup, signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      try {
        const { pending, lag } = await group.backlog(assigned());
        ctx.emit({ type: "source_backlog", source: ctx.name, pending, lag });
      } catch (err) {
        // The read loop finds a lost connection; a missed report only leaves the gauges a few seconds old.
        logger.debug({ ...log, err: String(err) }, "could not read the group's backlog");
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
      const errors: { last?: unknown } = {};
      const conn: Connection = {
        reader: open(ioredis, "reader", errors),
        group: new ConsumerGroup(open(ioredis, "commands", errors), settings.group, consumer),
        lost: undefined,
        onLost: () => {},
        retired: false,
        readerRetired: false,
      };
      const abort = () => void retire(conn);
      signal.addEventListener("abort", abort, { once: true });
      try {
        await Promise.all([conn.reader.connect(), conn.group.redis.connect()]);
        await Promise.all([conn.reader.ping(), conn.group.redis.ping()]);
        await conn.group.create(settings.streams, settings.start);
      } catch (err) {
        void retire(conn);
        // A refused AUTH reaches connect() as "Connection is closed."; the server's reply came as an event.
        throw sourceError(isReplyError(errors.last) ? errors.last : err, location);
      } finally {
        signal.removeEventListener("abort", abort);
      }
      const onEnd = (role: "reader" | "commands") => {
        if (conn.retired || conn.lost !== undefined || (role === "reader" && conn.readerRetired)) return;
        const why = errors.last instanceof Error ? `: ${errors.last.message}` : "";
        conn.lost = new SluiceError("ERR_SOURCE_CONNECT", `${location}: connection lost${why}`, { cause: errors.last, location });
        conn.onLost();
      };
      conn.reader.on("end", () => onEnd("reader"));
      conn.group.redis.on("end", () => onEnd("commands"));
      current = conn;
      await ackLate(conn.group);
    },

    async run(handle, signal) {
      const conn = current;
      if (conn === undefined || conn.lost !== undefined) throw conn?.lost ?? new SluiceError("ERR_SOURCE_CONNECT", "redis_streams source: run before connect", { location });
      const stop = new AbortController();
      const onStop = () => {
        stop.abort();
        // A read blocked for up to `block` must not hold the stop: what it read stays pending here and is reclaimed later.
        conn.readerRetired = true;
        conn.reader.disconnect();
      };
      conn.onLost = onStop;
      signal.addEventListener("abort", onStop, { once: true });
      const backlog = reportBacklog(conn.group, stop.signal);
      let nextReclaim = clock.now();
      /** The next read, sent before the last one's records are built when there is room for both: Redis answers it meanwhile. */
      let ahead: Promise<[string, RawEntry[]][] | null> | undefined;
      try {
        while (!stop.signal.aborted) {
          if (ahead === undefined && clock.now() >= nextReclaim) {
            await ackLate(conn.group);
            for (const stream of assigned()) {
              try {
                if (!(await reclaim(conn.group, handle, stream, stop.signal))) break;
              } catch (err) {
                // A stream deleted meanwhile: the read finds it and makes its group again.
                if (!isReply(err, "NOGROUP")) throw err;
              }
            }
            nextReclaim = clock.now() + reclaimEveryMs;
          }
          if (ahead === undefined) {
            const room = await handle.waitForRoom(handle.chunkSize, stop.signal);
            if (room === 0) break;
            ahead = fetch(conn, room, stop.signal);
          }
          const reply = await ahead;
          ahead = undefined;
          if (reply === null) continue;
          const read = reply.reduce((n, [, entries]) => n + entries.length, 0);
          // Room for more than this reply right now: ask for it before building this one (unless a reclaim pass is due, which goes first).
          if (clock.now() < nextReclaim && handle.expectedWait(read + 1, 0) === 0) {
            const room = (await handle.waitForRoom(handle.chunkSize + read, stop.signal)) - read;
            if (room > 0) {
              ahead = fetch(conn, room, stop.signal);
              // Awaited on the next turn; a stop in between leaves it to fail unheard (its entries are reclaimed).
              ahead.catch(() => {});
            }
          }
          if ((await take(handle, reply)) === "stopping") break;
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
      try {
        const group = commands();
        if (group === undefined) throw current?.lost ?? new SluiceError("ERR_SOURCE_CONNECT", `${location}: not connected`, { location });
        await group.ack(cp);
      } catch (err) {
        const e = sourceError(err, location);
        if (!e.retryable) {
          release(cp);
          throw e;
        }
        // Kept in flight (not reclaimed from ourselves) until the XACK is sent again.
        unacked.push(cp);
        throw new SluiceError("ERR_SOURCE_CONNECT", `XACK failed, sent again later: ${e.message}`, { cause: e, location });
      }
      release(cp);
    },

    async inProgress(checkpoint) {
      const cp = checkpoint as RedisStreamsCheckpoint;
      // Idle time back to 0 without counting a delivery: no other worker claims a chunk that is only slow.
      if (inFlight.has(cp)) await commands()?.setIdle(cp);
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
