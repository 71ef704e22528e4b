/**
 * The `redis_streams` source: reads a consumer group (XREADGROUP, COUNT = the room in the buffer),
 * XACKs each chunk once every sink committed it, takes over entries other consumers left pending
 * (XPENDING + XCLAIM), and dead-letters an entry delivered `max_deliveries` times.
 */
import { randomBytes } from "node:crypto";
import type { Redis } from "ioredis";
import { sleep } from "../core/clock.js";
import { SluiceError } from "../core/errors.js";
import type { Entry } from "../core/record.js";
import { CLIENT_OPTIONS, COMMAND_TIMEOUT_MS, isReplyError, loadRedis, quitWithin, within, type RedisModule } from "../brokers/redis.js";
import { defineComponent, type ComponentContext, type EnqueueOutcome, type Source, type SourceHandle } from "../components/contracts.js";
import { RecordSizeEstimate } from "../components/record-size.js";
import { entryRecord, exhaustedRecord, readRecords, type ByteReply, type PendingEntry } from "./redis-streams-entries.js";
import { ConsumerGroup, isReply, sourceError, type RedisStreamsCheckpoint } from "./redis-streams-group.js";
import { defineLeaseScripts, PartitionLeases, readHeld, redisLeaseStore } from "./redis-streams-leases.js";
import { options, orderedConflicts, settingsFrom, type RedisStreamsSourceSettings } from "./redis-streams-options.js";

export type { RedisStreamsCheckpoint } from "./redis-streams-group.js";
export type { RedisStreamsSourceSettings } from "./redis-streams-options.js";

/** How much longer than its BLOCK the read may wait for its reply, in ms. */
const READ_TIMEOUT_GRACE_MS = 10_000;
/** How often the group's backlog is read for the metrics, in ms. */
const BACKLOG_EVERY_MS = 5_000;
/** The shortest time between two reclaim passes, in ms. */
const MIN_RECLAIM_EVERY_MS = 1_000;
/**
 * A consumer of the group with no pending entries that has not read for this many times
 * max(claim_idle, block) is a worker gone for good: the reclaim pass deletes it.
 */
const GONE_CONSUMER_IDLES = 10;

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

/** Resolves with undefined once `signal` aborts. */
function aborted(signal: AbortSignal): Promise<undefined> {
  return new Promise((resolve) => (signal.aborted ? resolve(undefined) : signal.addEventListener("abort", () => resolve(undefined), { once: true })));
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
  const reclaimEveryMs = Math.max(claimIdleMs / 2, MIN_RECLAIM_EVERY_MS);
  const goneConsumerMs = GONE_CONSUMER_IDLES * Math.max(claimIdleMs, settings.blockMs);
  const { clock, logger } = ctx;
  const log = { source: ctx.name };
  let current: Connection | undefined;
  /** This run's name in the leases and the registry: the consumer name and a random part, so a restarted worker never takes its predecessor's leases for its own. */
  const token = `${consumer}/${randomBytes(4).toString("hex")}`;
  const lease = settings.lease;
  const leases =
    lease === undefined
      ? undefined
      : new PartitionLeases({
          partitions: settings.streams,
          ttlMs: lease.ttlMs,
          token,
          store: redisLeaseStore(
            () => {
              const group = commands();
              if (group === undefined) throw current?.lost ?? new SluiceError("ERR_SOURCE_CONNECT", `${location}: not connected`, { location });
              return group.redis;
            },
            { stream: lease.stream, group: settings.group, token, ttlMs: lease.ttlMs },
          ),
          clock,
          logger,
          source: ctx.name,
          onChange: (change) => ctx.emit({ type: "source_leases", source: ctx.name, ...change }),
        });
  /** The streams read now, asked before every read and every reclaim pass: all of them, or with leases those held (which change between reads). */
  const assigned = leases !== undefined ? () => leases.reading() : () => settings.streams;
  /** Ends the lease keeper at close. */
  const closing = new AbortController();
  let keeper: Promise<void> | undefined;
  /** Chunks read by this process and not yet acked (or given back): their entries are never reclaimed from ourselves. A set of chunks, not of ids: no per-entry work on the hot path. */
  const inFlight = new Set<RedisStreamsCheckpoint>();
  /** Done chunks whose XACK failed with the connection: sent again after the next connect (still in flight meanwhile). */
  const unacked: RedisStreamsCheckpoint[] = [];
  /** Set once the server refused the script that deletes gone consumers (an ACL without EVAL): not tried again. */
  let dropRefused = false;
  /** Which of several streams the next short read starts at, so each gets its turn. */
  let turn = 0;
  /** Per stream, where its group is created again when it goes missing: the last entry id read here (at first the group's position when this process created it). Empty until the first connect created the groups. */
  const resumeAt = new Map<string, string>();
  /** The body field's name as the reader's replies carry it (bytes). */
  const bodyKeyBytes = Buffer.from(settings.bodyKey);
  /** The entries' average size: COUNT must fit the byte bound too (entries read that do not fit sit pending in the group, ageing toward claim_idle, while sluice is full). */
  const sizes = new RecordSizeEstimate();

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
  /** Whether a chunk in flight here holds entries of `stream`. */
  const busy = (stream: string): boolean => {
    for (const checkpoint of inFlight) if (checkpoint.has(stream)) return true;
    return false;
  };

  function open(ioredis: RedisModule, role: "reader" | "commands", errors: { last?: unknown }): Redis {
    const redis = new ioredis.Redis(settings.url, {
      ...CLIENT_OPTIONS,
      commandTimeout: role === "reader" ? settings.blockMs + READ_TIMEOUT_GRACE_MS : COMMAND_TIMEOUT_MS,
      // No reconnect in the background: the engine reconnects (connect), with fresh clients.
      retryStrategy: () => null,
      connectionName: clientName(consumer, role),
    }).on("error", (err: unknown) => (errors.last = err));
    if (leases !== undefined) defineLeaseScripts(redis);
    return redis;
  }

  /** Closes a connection pair for good; resolves once the acks already sent have their replies (QUIT). */
  async function retire(conn: Connection): Promise<void> {
    conn.retired = true;
    conn.readerRetired = true;
    conn.reader.disconnect();
    await quitWithin(conn.group.redis);
  }

  /** Hands a chunk to the engine; entries it did not take are given back to the group. */
  async function hand(handle: SourceHandle, records: Entry[], checkpoint: RedisStreamsCheckpoint): Promise<EnqueueOutcome> {
    sizes.observe(records);
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

  /** Reads new entries once: at most `count` of them over the streams assigned now; null when none came. */
  async function fetch(conn: Connection, count: number, signal: AbortSignal): Promise<ByteReply | null> {
    const all = assigned();
    if (all.length === 0) {
      await sleep(clock, settings.blockMs, signal).catch(() => {});
      return null;
    }
    // COUNT is per stream: split the room so the whole read never exceeds it, taking turns when it is smaller than the number of streams.
    let streams = all;
    if (count < all.length) {
      streams = Array.from({ length: count }, (_, i) => all[(turn + i) % all.length]!);
      turn = (turn + count) % all.length;
    }
    const perStream = Math.floor(count / streams.length);
    try {
      if (leases !== undefined) return await readHeld(conn.reader, leases, { group: settings.group, consumer, token, blockMs: settings.blockMs }, streams, perStream);
      return (await conn.reader.xreadgroupBuffer("GROUP", settings.group, consumer, "COUNT", perStream, "BLOCK", settings.blockMs, "STREAMS", ...streams, ...streams.map(() => ">"))) as ByteReply | null;
    } catch (err) {
      if (signal.aborted) return null;
      // NOGROUP: the group is gone (destroyed, or Redis restarted without its data); UNBLOCKED: the stream was deleted under the read.
      if (!isReply(err, "NOGROUP") && !isReply(err, "UNBLOCKED")) throw err;
      logger.warn({ ...log, group: settings.group, streams }, "the consumer group is missing; creating it again");
      await conn.group.recreate(streams, resumeAt);
      return null;
    }
  }

  /** Builds a read's records and hands them over as one chunk. */
  function take(handle: SourceHandle, reply: ByteReply): Promise<EnqueueOutcome> {
    const records: Entry[] = [];
    const checkpoint = new Map<string, string[]>();
    for (const [name, entries] of reply) {
      const stream = name.toString();
      const ids = readRecords(handle, stream, entries, settings, bodyKeyBytes, records);
      checkpoint.set(stream, ids);
      if (ids.length > 0) resumeAt.set(stream, ids.at(-1)!);
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
  async function reclaim(group: ConsumerGroup, handle: SourceHandle, stream: string, signal: AbortSignal, idleMs = claimIdleMs): Promise<boolean> {
    let after: string | undefined;
    for (;;) {
      const may = await sizes.room(handle, handle.chunkSize, signal);
      if (may === 0) return false;
      const pending = await group.idle(stream, idleMs, after, may);
      if (pending.length === 0) return true;
      after = pending.at(-1)!.id;
      const mine = heldIn(stream);
      // Ordered: whatever is in flight here is being delivered here, even if a worker that lost the lease moved it back to its name.
      const candidates = pending.filter((p) => !mine.has(p.id) || (leases === undefined && p.consumer !== consumer));
      if (candidates.length > 0 && (await claim(group, handle, stream, candidates, idleMs)) === "stopping") return false;
      if (pending.length < may) return true;
    }
  }

  async function claim(group: ConsumerGroup, handle: SourceHandle, stream: string, candidates: PendingEntry[], idleMs: number): Promise<EnqueueOutcome | undefined> {
    /** Deliveries so far per entry asked for; what is left after the claim was not returned. */
    const asked = new Map(candidates.map((p) => [p.id, p.deliveries]));
    const claimed = await group.claim(stream, idleMs, [...asked.keys()]);
    /**
     * In entry order (ordered sources need it). An entry delivered more than once already (maybe
     * with a record that crashes the worker) is a chunk of its own: only a poison entry reaches
     * max_deliveries, not the neighbours it was claimed with.
     */
    const chunks: { records: Entry[]; ids: string[]; alone: boolean }[] = [];
    let count = 0;
    let exhausted = 0;
    for (const entry of claimed) {
      if (entry === null || entry[1] === null) continue;
      const [id, fields] = entry;
      const times = asked.get(id) ?? 0;
      asked.delete(id);
      const alone = times > 1 && times < maxDeliveries;
      if (times >= maxDeliveries) exhausted++;
      const record = times >= maxDeliveries ? exhaustedRecord(handle, stream, id, fields, times, settings) : entryRecord(handle, stream, id, fields, settings);
      let chunk = chunks.at(-1);
      if (alone || chunk === undefined || chunk.alone) {
        chunk = { records: [], ids: [], alone };
        chunks.push(chunk);
      }
      chunk.records.push(record);
      chunk.ids.push(id);
      count++;
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
    if (count === 0) return undefined;
    ctx.emit({ type: "records_reclaimed", source: ctx.name, count });
    if (exhausted > 0) logger.warn({ ...log, stream, entries: exhausted, maxDeliveries }, "entries were delivered max_deliveries times without being committed; dead-lettering them");
    let outcome: EnqueueOutcome | undefined;
    for (const chunk of chunks) {
      // Stopping: the rest stay pending here, claimed, for the next reclaim pass of any worker.
      if (outcome === "stopping") break;
      outcome = await hand(handle, chunk.records, new Map([[stream, chunk.ids]]));
    }
    return outcome;
  }

  /**
   * Deletes the consumers of `stream` that have no pending entries and have not read for
   * `goneConsumerMs` (workers that stopped without deleting theirs, or died with nothing pending).
   * A connection error goes up like the reclaim pass's; a refused script is warned about once.
   */
  async function dropGone(group: ConsumerGroup, stream: string): Promise<void> {
    if (dropRefused) return;
    try {
      const dropped = await group.dropIdle(stream, goneConsumerMs);
      if (dropped > 0) logger.info({ ...log, stream, consumers: dropped }, "deleted consumers of the group that had no pending entries and had not read for a long time");
    } catch (err) {
      if (!isReplyError(err) || isReply(err, "NOGROUP")) throw err;
      if (sourceError(err, location).retryable) return;
      dropRefused = true;
      logger.warn({ ...log, stream, err: err.message }, "could not delete gone consumers of the group (is EVAL allowed?); they stay in the group");
    }
  }

  /** Emits the group's pending entries and lag over the assigned streams every few seconds until `signal` aborts. */
  async function reportBacklog(group: ConsumerGroup, signal: AbortSignal): Promise<void> {
    const stopped = aborted(signal);
    while (!signal.aborted) {
      try {
        // Left behind at the stop: a server that stops answering must not hold the run's end for the command timeout.
        const backlog = await Promise.race([group.backlog(assigned()), stopped]);
        if (backlog !== undefined) ctx.emit({ type: "source_backlog", source: ctx.name, ...backlog });
      } catch (err) {
        // The read loop finds a lost connection; a missed report only leaves the gauges a few seconds old.
        logger.debug({ ...log, err: String(err) }, "could not read the group's backlog");
      }
      await sleep(clock, BACKLOG_EVERY_MS, signal).catch(() => {});
    }
  }

  /**
   * Ordered: gives up the leases being released whose chunks are all done, then claims what the
   * previous owner of each partition just taken left unacked, in entry order, before any new entry
   * of it is read. Called between reads only, so no read of a stream released here is on the way.
   * False when the run is stopping.
   */
  async function settleLeases(l: PartitionLeases, group: ConsumerGroup, handle: SourceHandle, signal: AbortSignal): Promise<boolean> {
    for (const stream of l.releasing()) if (!busy(stream)) await l.release(stream);
    for (const stream of l.claiming()) {
      try {
        if (!(await reclaim(group, handle, stream, signal, 0))) return false;
      } catch (err) {
        // No group (the stream deleted, Redis restarted without its data): nothing is pending; the read makes the group again.
        if (!isReply(err, "NOGROUP")) throw err;
      }
      l.claimed(stream);
    }
    return true;
  }

  /** Tells the broker a slow chunk is still being worked on; not for ordered sources, whose partitions nobody else claims from while the lease is held. */
  const working: Pick<Source, "inProgress" | "workingIntervalMs"> =
    leases !== undefined
      ? {}
      : {
          workingIntervalMs: claimIdleMs / 3,
          async inProgress(checkpoint) {
            const cp = checkpoint as RedisStreamsCheckpoint;
            // Idle time back to 0 without counting a delivery: no other worker claims a chunk that is only slow.
            if (inFlight.has(cp)) await commands()?.setIdle(cp);
          },
        };

  return {
    acks: "individual",
    whenFull: "wait",
    ...working,

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
        // `start` only for this process's first creation: a group lost since (Redis restarted without its data) starts where this process stopped reading.
        if (resumeAt.size > 0) await conn.group.recreate(settings.streams, resumeAt);
        else {
          await conn.group.create(settings.streams, settings.start);
          for (const [stream, id] of await conn.group.delivered(settings.streams)) resumeAt.set(stream, id);
        }
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
      // Replies of reads may have been lost with the old connection: claim before reading again.
      leases?.reclaimAll();
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
      let ahead: Promise<ByteReply | null> | undefined;
      const loop = async () => {
        if (leases !== undefined) {
          // Joins the fleet here, not in connect: `sluice validate` connects and closes, and must not make a running fleet rebalance.
          await leases.tick();
          // Renewed from then to close, also while run is not running (a stop draining, a reconnect).
          keeper ??= leases.keep(closing.signal);
        }
        while (!stop.signal.aborted) {
          if (ahead === undefined && leases !== undefined && !(await settleLeases(leases, conn.group, handle, stop.signal))) break;
          if (ahead === undefined && clock.now() >= nextReclaim) {
            await ackLate(conn.group);
            for (const stream of assigned()) {
              try {
                if (!(await reclaim(conn.group, handle, stream, stop.signal))) break;
                await dropGone(conn.group, stream);
              } catch (err) {
                // A stream deleted meanwhile: the read finds it and makes its group again.
                if (!isReply(err, "NOGROUP")) throw err;
              }
            }
            nextReclaim = clock.now() + reclaimEveryMs;
          }
          if (ahead === undefined) {
            const may = await sizes.room(handle, handle.chunkSize, stop.signal);
            if (may === 0) break;
            ahead = fetch(conn, may, stop.signal);
          }
          const reply = await ahead;
          ahead = undefined;
          if (reply === null) continue;
          const read = reply.reduce((n, [, entries]) => n + entries.length, 0);
          // Room for more than this reply right now, in records and in bytes: ask for it before building this one (unless a reclaim pass or a lease change is due, which goes first).
          const entryBytes = sizes.bytes;
          if (entryBytes !== undefined && clock.now() < nextReclaim && !leases?.changing() && handle.expectedWait(read + 1, (read + 1) * entryBytes) === 0) {
            const may = (await handle.waitForRoom(handle.chunkSize + read, stop.signal, entryBytes)) - read;
            if (may > 0) {
              ahead = fetch(conn, may, stop.signal);
              // Awaited on the next turn; a stop in between leaves it to fail unheard (its entries are reclaimed).
              ahead.catch(() => {});
            }
          }
          if ((await take(handle, reply)) === "stopping") break;
        }
      };
      try {
        const looping = loop();
        looping.catch(() => {});
        // At a stop, what the loop awaits (a read or a command to a server that stopped answering) is left behind: its entries stay pending here for a later claim.
        await Promise.race([looping, aborted(stop.signal)]);
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

    async close() {
      closing.abort();
      await within(keeper ?? Promise.resolve());
      // Given up at once, not left to expire: the next owner claims what a stop could not drain.
      await within(leases?.leave() ?? Promise.resolve()).catch((err: unknown) => logger.warn({ ...log, err: String(err) }, "could not give up the partition leases; they expire after lease_ttl"));
      const conn = current;
      current = undefined;
      if (conn === undefined) return;
      // Leave the group where nothing is pending here: else every worker named after its host and pid stays in it forever.
      if (conn.group.redis.status === "ready") {
        await within(conn.group.leave(settings.streams)).catch((err: unknown) => logger.warn({ ...log, err: String(err) }, "could not delete this consumer from the group; another worker deletes it later"));
      }
      await retire(conn);
    },
  };
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
  create: (opts, ctx) => createRedisStreamsSource(settingsFrom(opts), ctx),
  conflicts: orderedConflicts,
});
