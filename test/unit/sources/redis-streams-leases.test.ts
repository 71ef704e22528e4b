/**
 * The partition lease state machine of an ordered redis_streams fleet, on a fake clock, with a
 * store in memory that keeps leases and heartbeats as Redis would (an expiry per key, on the same
 * clock). The scripts themselves run against the real Redis in
 * test/integration/redis-streams-ordered.test.ts.
 */
import { describe, expect, it } from "vitest";
import { silentLogger } from "../../../src/core/events.js";
import { PartitionLeases, type LeaseChange, type LeaseStore } from "../../../src/sources/redis-streams-leases.js";
import { FakeClock } from "../../helpers/fake-clock.js";

const TTL = 3_000;

/** Leases and registry as Redis keeps them: values with an expiry time on `clock`. */
class World {
  readonly leases = new Map<string, { token: string; until: number }>();
  readonly workers = new Map<string, number>();
  constructor(readonly clock: FakeClock) {}

  owner(partition: string): string | undefined {
    const l = this.leases.get(partition);
    return l !== undefined && l.until > this.clock.now() ? l.token : undefined;
  }

  store(token: string): LeaseStore {
    const now = () => this.clock.now();
    return {
      heartbeat: async (held) => {
        this.workers.set(token, now() + TTL);
        for (const [t, until] of this.workers) if (until < now()) this.workers.delete(t);
        const lost: string[] = [];
        for (const p of held) {
          if (this.owner(p) === token) this.leases.set(p, { token, until: now() + TTL });
          else lost.push(p);
        }
        return { live: this.workers.size, lost };
      },
      acquire: async (candidates, max) => {
        const taken: string[] = [];
        for (const p of candidates) {
          if (taken.length >= max) break;
          if (this.owner(p) !== undefined) continue;
          this.leases.set(p, { token, until: now() + TTL });
          taken.push(p);
        }
        return taken;
      },
      release: async (partitions) => {
        for (const p of partitions) if (this.owner(p) === token) this.leases.delete(p);
      },
      leave: async () => void this.workers.delete(token),
    };
  }
}

const PARTITIONS = ["s:0", "s:1", "s:2", "s:3", "s:4", "s:5"];

function worker(world: World, token: string, changes: LeaseChange[] = []): PartitionLeases {
  return new PartitionLeases({
    partitions: PARTITIONS,
    ttlMs: TTL,
    token,
    store: world.store(token),
    clock: world.clock,
    logger: silentLogger,
    source: "src",
    onChange: (c) => changes.push(c),
  });
}

/** Claims every partition waiting for it and releases every partition being released (what the read loop does with no chunk in flight). */
async function settle(l: PartitionLeases): Promise<void> {
  for (const p of l.releasing()) await l.release(p);
  for (const p of l.claiming()) l.claimed(p);
}

describe("partition leases", () => {
  it("a worker alone takes every partition, and reads none before its claim pass", async () => {
    const world = new World(new FakeClock());
    const changes: LeaseChange[] = [];
    const a = worker(world, "a", changes);
    await a.tick();
    expect(a.claiming()).toHaveLength(6);
    expect(a.reading()).toEqual([]);
    expect(changes).toEqual([{ owned: 6, acquired: 6, lost: 0 }]);
    await settle(a);
    expect(a.reading()).toHaveLength(6);
    expect(a.changing()).toBe(false);
  });

  it("workers that join share the partitions fairly; a lease moves only after its holder let it go", async () => {
    const world = new World(new FakeClock());
    const [a, b, c] = [worker(world, "a"), worker(world, "b"), worker(world, "c")];
    await a.tick();
    await settle(a);
    await b.tick();
    expect(b.owned()).toBe(0); // all taken: b waits for a to give some up
    await a.tick(); // a sees 2 live workers: its share is 3, 3 are released once their chunks are done
    expect(a.releasing()).toHaveLength(3);
    expect(a.reading()).toHaveLength(3);
    await b.tick();
    expect(b.owned()).toBe(0); // still a's until released
    await settle(a);
    await b.tick();
    expect(b.claiming()).toHaveLength(3);
    await settle(b);
    await c.tick();
    for (const w of [a, b]) {
      await w.tick();
      await settle(w);
    }
    await c.tick();
    await settle(c);
    expect([a.owned(), b.owned(), c.owned()]).toEqual([2, 2, 2]);
    const owners = PARTITIONS.map((p) => world.owner(p));
    expect(new Set(owners).size).toBe(3);
    expect(owners.filter((o) => o === undefined)).toEqual([]);
  });

  it("a partition being released is kept when the share grows again", async () => {
    const world = new World(new FakeClock());
    const [a, b] = [worker(world, "a"), worker(world, "b")];
    await a.tick();
    await settle(a);
    await b.tick();
    await a.tick();
    expect(a.releasing()).toHaveLength(3);
    await b.leave(); // b stopped before taking any
    await a.tick();
    expect(a.releasing()).toEqual([]);
    expect(a.reading()).toHaveLength(6);
  });

  it("the leases of a worker that died expire and are taken over, each to be claimed first", async () => {
    const world = new World(new FakeClock());
    const changes: LeaseChange[] = [];
    const [a, b] = [worker(world, "a"), worker(world, "b", changes)];
    await a.tick();
    await settle(a);
    await b.tick();
    await a.tick();
    await settle(a);
    await b.tick();
    await settle(b);
    expect(b.owned()).toBe(3);
    // a dies: no more ticks. Before its ttl nothing moves; after it, b takes a's partitions.
    world.clock.advance(TTL / 3);
    await b.tick();
    expect(b.owned()).toBe(3);
    for (let i = 0; i < 3; i++) {
      world.clock.advance(TTL / 3);
      await b.tick();
    }
    expect(b.owned()).toBe(6);
    expect(b.claiming()).toHaveLength(3);
    expect(changes.at(-1)).toEqual({ owned: 6, acquired: 3, lost: 0 });
  });

  it("a worker paused past its ttl finds its leases lost when it renews, and stops reading them", async () => {
    const world = new World(new FakeClock());
    const changes: LeaseChange[] = [];
    const [a, b] = [worker(world, "a", changes), worker(world, "b")];
    await a.tick();
    await settle(a);
    world.clock.advance(TTL + 1); // a is paused; its leases expire
    await b.tick();
    expect(b.owned()).toBe(6);
    await a.tick();
    expect(a.reading()).toEqual([]);
    expect(changes.at(-1)).toMatchObject({ owned: 0, lost: 6 });
  });

  it("a read that finds a lease gone drops that partition at once", async () => {
    const world = new World(new FakeClock());
    const changes: LeaseChange[] = [];
    const a = worker(world, "a", changes);
    await a.tick();
    await settle(a);
    a.lost("s:2");
    expect(a.reading()).not.toContain("s:2");
    expect(changes.at(-1)).toEqual({ owned: 5, acquired: 0, lost: 1 });
    a.lost("s:2");
    expect(changes).toHaveLength(2);
  });

  it("without renewals (Redis unreachable) leases are dropped once the ttl since the last renewal passed", async () => {
    const world = new World(new FakeClock());
    const a = worker(world, "a");
    await a.tick();
    await settle(a);
    world.clock.advance(TTL);
    a.expire();
    expect(a.owned()).toBe(6);
    world.clock.advance(1);
    a.expire();
    expect(a.owned()).toBe(0);
  });

  it("keep renews every ttl / 3; while Redis cannot be asked, leases are dropped once the ttl since the last renewal passed", async () => {
    const clock = new FakeClock();
    const world = new World(clock);
    const store = world.store("a");
    let down = false;
    const a = new PartitionLeases({
      partitions: PARTITIONS,
      ttlMs: TTL,
      token: "a",
      store: { ...store, heartbeat: (held) => (down ? Promise.reject(new Error("connection lost")) : store.heartbeat(held)) },
      clock,
      logger: silentLogger,
      source: "src",
      onChange: () => {},
    });
    await a.tick();
    await settle(a);
    const stop = new AbortController();
    const kept = a.keep(stop.signal);
    for (let i = 0; i < 6; i++) await clock.advanceAsync(TTL / 3);
    expect(PARTITIONS.map((p) => world.owner(p))).toEqual(PARTITIONS.map(() => "a")); // renewed past two ttls
    down = true;
    // The last renewal was sent at 2 ttl: the leases hold to 3 ttl, and the tick after drops them.
    for (let i = 0; i < 3; i++) await clock.advanceAsync(TTL / 3);
    expect(a.owned()).toBe(6);
    await clock.advanceAsync(TTL / 3);
    expect(a.owned()).toBe(0);
    stop.abort();
    await kept;
  });

  it("a new connection sends every held partition through its claim pass again", async () => {
    const world = new World(new FakeClock());
    const a = worker(world, "a");
    await a.tick();
    await settle(a);
    a.reclaimAll();
    expect(a.claiming()).toHaveLength(6);
    expect(a.reading()).toEqual([]);
  });

  it("leave gives every lease up and leaves the registry", async () => {
    const world = new World(new FakeClock());
    const a = worker(world, "a");
    await a.tick();
    await a.leave();
    expect(PARTITIONS.map((p) => world.owner(p))).toEqual(PARTITIONS.map(() => undefined));
    expect(world.workers.size).toBe(0);
  });
});
