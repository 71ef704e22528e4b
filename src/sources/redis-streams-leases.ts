/**
 * Partition leases of an ordered `redis_streams` fleet (`ordered: true`): which worker reads each
 * partition stream, so that one key's entries are read by one worker at a time, in entry order.
 *
 * A lease is a key `<partition>:lease:<group>` holding the owner's token, set with SET NX PX
 * `lease_ttl`, renewed (compare-and-renew) every `lease_ttl / 3` and deleted (compare-and-delete)
 * when given up. Workers find each other in a registry, a sorted set `<stream>:workers:<group>` of
 * tokens scored by when their heartbeat expires (the server's clock: no skew between workers),
 * and each takes at most `ceil(partitions / live workers)`. The state machine is
 * {@link PartitionLeases}; the Redis side is {@link redisLeaseStore} and {@link readHeld}. Why this
 * keeps order, and what a worker that lost a lease does, is in docs/architecture.md.
 */
import type { Redis } from "ioredis";
import { sleep, type Clock } from "../core/clock.js";
import type { Logger } from "../core/events.js";
import type { ByteReply } from "./redis-streams-entries.js";

/**
 * Where a held partition is. `claiming`: just taken (or the connection was renewed); entries the
 * group delivered before and never acked must be claimed and handed over before any new one is
 * read. `reading`: new entries are read. `releasing`: over this worker's share; nothing new is
 * read, and the lease is given up once its chunks in flight are acked.
 */
export type PartitionState = "claiming" | "reading" | "releasing";

/** The Redis side of the leases, one worker's view (its token, the ttl); injectable for tests. */
export interface LeaseStore {
  /** Heartbeats the worker and renews those of `held` that are still its own; the live workers (itself included) and the partitions of `held` it lost. */
  heartbeat(held: readonly string[]): Promise<{ live: number; lost: string[] }>;
  /** Takes free leases of `candidates`, in order, at most `max`; the partitions taken. */
  acquire(candidates: readonly string[], max: number): Promise<string[]>;
  /** Deletes the leases of `partitions` that are still the worker's own. */
  release(partitions: readonly string[]): Promise<void>;
  /** Takes the worker out of the registry. */
  leave(): Promise<void>;
}

/** What changed in one step, for the `source_leases` event. */
export interface LeaseChange {
  readonly owned: number;
  readonly acquired: number;
  readonly lost: number;
}

/** Everything {@link PartitionLeases} needs. */
export interface PartitionLeasesOptions {
  /** Every partition stream of the source, in order. */
  readonly partitions: readonly string[];
  /** ms */
  readonly ttlMs: number;
  /** This worker's token (its consumer name and a random part). */
  readonly token: string;
  readonly store: LeaseStore;
  readonly clock: Clock;
  readonly logger: Logger;
  /** Source name, for logs. */
  readonly source: string;
  readonly onChange: (change: LeaseChange) => void;
}

interface Held {
  state: PartitionState;
  /** Until when (clock ms) the lease is surely still ours: when the last renewal that succeeded was sent, plus the ttl. */
  validUntil: number;
}

/** FNV-1a of the token: where in the partition list this worker starts looking for free leases, so workers do not all race for the same one. */
function offsetOf(token: string, n: number): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < token.length; i++) {
    h ^= token.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return (h >>> 0) % n;
}

/**
 * One worker's leases. {@link tick} (every `ttl / 3`, and at each connect) heartbeats, renews,
 * drops what was lost, takes free partitions up to the fair share and marks those over it for
 * release; the read loop asks {@link reading} and {@link claiming} before each read, reports a
 * claim pass done ({@link claimed}) and a lease a read found gone ({@link lost}), and gives up the
 * partitions being released once their chunks are done ({@link release}). Ticks never overlap.
 */
export class PartitionLeases {
  private readonly held = new Map<string, Held>();
  private ticking: Promise<void> = Promise.resolve();
  /** Set by the first heartbeat sent: before it, this worker is in no registry and holds nothing. */
  private joined = false;

  constructor(private readonly o: PartitionLeasesOptions) {}

  /** Partitions new entries are read from now. */
  reading(): string[] {
    return this.inState("reading");
  }

  /** Held partitions whose unacked entries must be claimed before anything new is read. */
  claiming(): string[] {
    return this.inState("claiming");
  }

  /** Partitions over the share, waiting for their chunks in flight before their lease is given up. */
  releasing(): string[] {
    return this.inState("releasing");
  }

  /** Whether a partition waits for its claim pass or its release: the read loop should come back between reads soon. */
  changing(): boolean {
    for (const h of this.held.values()) if (h.state !== "reading") return true;
    return false;
  }

  /** Partitions held, in any state. */
  owned(): number {
    return this.held.size;
  }

  /** The claim pass of `partition` is done: read new entries from it. */
  claimed(partition: string): void {
    const h = this.held.get(partition);
    if (h?.state === "claiming") h.state = "reading";
  }

  /** Every held partition needs a claim pass again (a new connection: a read's reply may have been lost with the old one). */
  reclaimAll(): void {
    for (const h of this.held.values()) if (h.state === "reading") h.state = "claiming";
  }

  /** A read found the lease of `partition` gone or another worker's: stop reading it at once. */
  lost(partition: string): void {
    if (!this.drop(partition)) return;
    this.o.onChange({ owned: this.held.size, acquired: 0, lost: 1 });
  }

  private drop(partition: string): boolean {
    if (!this.held.delete(partition)) return false;
    this.o.logger.warn({ source: this.o.source, partition }, "partition lease lost (expired or taken by another worker): no longer reading it; its chunks in flight finish, and the new owner delivers them again");
    return true;
  }

  /** Gives up the lease of `partition` (its chunks in flight are done). */
  async release(partition: string): Promise<void> {
    if (this.held.get(partition)?.state !== "releasing") return;
    await this.o.store.release([partition]);
    this.held.delete(partition);
    this.o.logger.info({ source: this.o.source, partition }, "partition lease given up: over this worker's share");
    this.o.onChange({ owned: this.held.size, acquired: 0, lost: 0 });
  }

  /** Drops leases not renewed within the ttl (the connection is down): another worker may hold them now. */
  expire(): void {
    const now = this.o.clock.now();
    for (const [partition, h] of this.held) if (now > h.validUntil) this.lost(partition);
  }

  /** One round of heartbeat, renewal, takeover and rebalancing; rejects when Redis could not be asked (nothing changed then). */
  tick(): Promise<void> {
    const next = this.ticking.then(() => this.round());
    this.ticking = next.catch(() => {});
    return next;
  }

  /**
   * Ticks every ttl / 3 until `signal` aborts. A tick that fails (Redis unreachable; the read loop
   * reports that) drops the leases not renewed within the ttl.
   */
  async keep(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      await sleep(this.o.clock, this.o.ttlMs / 3, signal).catch(() => {});
      if (signal.aborted) return;
      try {
        await this.tick();
      } catch (err) {
        this.expire();
        this.o.logger.debug({ source: this.o.source, err: String(err) }, "could not renew the partition leases");
      }
    }
  }

  /** Gives up every lease and leaves the registry (a clean close); best effort, the leases expire anyway. */
  async leave(): Promise<void> {
    await this.ticking;
    if (!this.joined) return;
    const partitions = [...this.held.keys()];
    this.held.clear();
    await this.o.store.release(partitions);
    await this.o.store.leave();
    if (partitions.length > 0) this.o.onChange({ owned: 0, acquired: 0, lost: 0 });
  }

  private inState(state: PartitionState): string[] {
    const out: string[] = [];
    for (const [partition, h] of this.held) if (h.state === state) out.push(partition);
    return out;
  }

  private async round(): Promise<void> {
    const { store, clock, partitions, ttlMs } = this.o;
    const sentAt = clock.now();
    const renewing = [...this.held.keys()];
    this.joined = true;
    const { live, lost } = await store.heartbeat(renewing);
    const gone = new Set(lost);
    let lostNow = 0;
    for (const partition of renewing) {
      const h = this.held.get(partition);
      if (h === undefined) continue;
      if (!gone.has(partition)) h.validUntil = sentAt + ttlMs;
      else if (this.drop(partition)) lostNow++;
    }
    const share = Math.ceil(partitions.length / Math.max(1, live));
    let active = this.held.size - this.releasing().length;
    // Under the share: first keep what is being released, then take free partitions.
    for (const partition of this.releasing()) {
      if (active >= share) break;
      this.held.get(partition)!.state = "reading";
      active++;
    }
    let acquired = 0;
    if (active < share) {
      const start = offsetOf(this.o.token, partitions.length);
      const free: string[] = [];
      for (let i = 0; i < partitions.length; i++) {
        const partition = partitions[(start + i) % partitions.length]!;
        if (!this.held.has(partition)) free.push(partition);
      }
      const takenAt = clock.now();
      for (const partition of await store.acquire(free, share - active)) {
        this.held.set(partition, { state: "claiming", validUntil: takenAt + ttlMs });
        acquired++;
        this.o.logger.info({ source: this.o.source, partition, live }, "partition lease taken; claiming its unacked entries before reading new ones");
      }
    }
    // Over the share (more workers came): give up partitions, the ones not read yet first.
    if (active > share) {
      const order = [...this.claiming(), ...this.reading().reverse()];
      for (const partition of order.slice(0, active - share)) this.held.get(partition)!.state = "releasing";
    }
    if (acquired > 0 || lostNow > 0) this.o.onChange({ owned: this.held.size, acquired, lost: lostNow });
  }
}

/** Heartbeat and renewal. KEYS: registry, leases held; ARGV: token, ttl ms. Returns {live workers, indexes (1-based) of the leases lost}. */
const HEARTBEAT = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
local lost = {}
for i = 2, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then redis.call('PEXPIRE', KEYS[i], ttl) else lost[#lost + 1] = i - 1 end
end
return {redis.call('ZCARD', KEYS[1]), lost}
`;

/** Takes free leases in order. KEYS: leases; ARGV: token, ttl ms, most to take. Returns the indexes (1-based) taken. */
const ACQUIRE = `
local taken = {}
for i = 1, #KEYS do
  if #taken >= tonumber(ARGV[3]) then break end
  if redis.call('SET', KEYS[i], ARGV[1], 'NX', 'PX', ARGV[2]) then taken[#taken + 1] = i end
end
return taken
`;

/** Compare-and-delete. KEYS: leases; ARGV: token. */
const RELEASE = `
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then redis.call('DEL', KEYS[i]) end
end
return 0
`;

/**
 * The fenced read: XREADGROUP (no BLOCK) over only the streams whose lease is still this token's,
 * checked in the same script, so no entry is ever delivered to a worker that lost its lease.
 * KEYS: leases 1..n, then their streams 1..n; ARGV: token, group, consumer, count. Returns
 * {indexes (1-based) of the leases lost, the XREADGROUP reply or nil, and when nothing was read,
 * the last entry id of each stream read (to wait on with XREAD)}.
 */
const READ = `
local n = #KEYS / 2
local lost, streams = {}, {}
for i = 1, n do
  if redis.call('GET', KEYS[i]) == ARGV[1] then streams[#streams + 1] = KEYS[n + i] else lost[#lost + 1] = i end
end
if #streams == 0 then return {lost, false, {}} end
local args = {'XREADGROUP', 'GROUP', ARGV[2], ARGV[3], 'COUNT', ARGV[4], 'STREAMS'}
for _, s in ipairs(streams) do args[#args + 1] = s end
for _ = 1, #streams do args[#args + 1] = '>' end
local reply = redis.call(unpack(args))
if reply then return {lost, reply, {}} end
local last = {}
for i, s in ipairs(streams) do
  local top = redis.call('XREVRANGE', s, '+', '-', 'COUNT', 1)
  last[i] = top[1] and top[1][1] or '0-0'
end
return {lost, false, last}
`;

/** The lease key of a partition stream for a group. */
export function leaseKey(partition: string, group: string): string {
  return `${partition}:lease:${group}`;
}

/** The registry key of a source's fleet for a group. */
export function registryKey(stream: string, group: string): string {
  return `${stream}:workers:${group}`;
}

type Scripted = Redis & {
  sluiceLeaseHeartbeat(...args: (string | number)[]): Promise<[number, number[]]>;
  sluiceLeaseAcquire(...args: (string | number)[]): Promise<number[]>;
  sluiceLeaseRelease(...args: (string | number)[]): Promise<number>;
  /** The READ script with its reply as bytes (ioredis defines the `Buffer` variant of every script). */
  sluiceReadHeldBuffer(...args: (string | number)[]): Promise<[number[], ByteReply | null, Buffer[]]>;
};

const SCRIPTS = { sluiceLeaseHeartbeat: HEARTBEAT, sluiceLeaseAcquire: ACQUIRE, sluiceLeaseRelease: RELEASE, sluiceReadHeld: READ } as const;

/** Defines the lease scripts on a client (EVALSHA, EVAL when the server does not know them). */
export function defineLeaseScripts(redis: Redis): void {
  for (const [name, lua] of Object.entries(SCRIPTS)) redis.defineCommand(name, { lua });
}

/** The store of {@link PartitionLeases} on Redis, on the connection `redis()` gives at each call (it throws while there is none). */
export function redisLeaseStore(redis: () => Redis, o: { stream: string; group: string; token: string; ttlMs: number }): LeaseStore {
  const scripted = () => redis() as Scripted;
  const lease = (partition: string) => leaseKey(partition, o.group);
  const registry = registryKey(o.stream, o.group);
  return {
    async heartbeat(held) {
      const [live, lost] = await scripted().sluiceLeaseHeartbeat(1 + held.length, registry, ...held.map(lease), o.token, o.ttlMs);
      return { live: Number(live), lost: lost.map((i) => held[i - 1]!) };
    },
    async acquire(candidates, max) {
      if (candidates.length === 0 || max <= 0) return [];
      const taken = await scripted().sluiceLeaseAcquire(candidates.length, ...candidates.map(lease), o.token, o.ttlMs, max);
      return taken.map((i) => candidates[i - 1]!);
    },
    async release(partitions) {
      if (partitions.length > 0) await scripted().sluiceLeaseRelease(partitions.length, ...partitions.map(lease), o.token);
    },
    async leave() {
      await redis().zrem(registry, o.token);
    },
  };
}

/**
 * The read of an ordered source: at most `count` new entries per stream of `streams` whose lease is
 * still `token`'s (the READ script; a worker paused past its ttl gets nothing, not entries the new
 * holder would never see). Streams found lost are reported to `leases`. When nothing new was
 * there, XREAD BLOCK waits up to `blockMs` for the next entry without taking it, and null is returned.
 */
export async function readHeld(
  redis: Redis,
  leases: PartitionLeases,
  o: { group: string; consumer: string; token: string; blockMs: number },
  streams: readonly string[],
  count: number,
): Promise<ByteReply | null> {
  const [lost, reply, last] = await (redis as Scripted).sluiceReadHeldBuffer(streams.length * 2, ...streams.map((s) => leaseKey(s, o.group)), ...streams, o.token, o.group, o.consumer, count);
  for (const i of lost) leases.lost(streams[i - 1]!);
  if (reply !== null) return reply;
  const held = streams.filter((_, i) => !lost.includes(i + 1));
  if (held.length > 0) await redis.xread("COUNT", 1, "BLOCK", o.blockMs, "STREAMS", ...held, ...held.map((_, i) => last[i]!));
  return null;
}
