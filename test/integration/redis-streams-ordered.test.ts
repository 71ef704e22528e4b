/**
 * The redis_streams source with `ordered: true` against the machine's Redis: two sources in one
 * process share the partitions fairly and hand them over when one stops; a dead worker's unacked
 * entries are claimed, in entry order, before anything newer; a worker whose lease was taken stops
 * reading that partition at once and takes it back when it is free. Each test uses its own streams
 * (random prefix) and deletes them with their lease and registry keys.
 */
import type { Redis } from "ioredis";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import type { Sink } from "../../src/components/contracts.js";
import { partitionStream } from "../../src/brokers/redis.js";
import { MemoryBuffer } from "../../src/core/buffer.js";
import { systemClock } from "../../src/core/clock.js";
import type { InternalEvent } from "../../src/core/events.js";
import { Pipeline, type PipelineStatus } from "../../src/core/pipeline.js";
import type { SluiceRecord } from "../../src/core/record.js";
import { definition as redisStreams } from "../../src/sources/redis-streams.js";
import { deleteKeys, REDIS_URL, redisClient, uniqueName } from "../helpers/brokers.js";
import { MemoryDeadLetterStore } from "../helpers/memory.js";
import { CapturingLogger } from "../helpers/source-harness.js";
import { requireService } from "../helpers/services.js";

const address = new URL(REDIS_URL);
const hasRedis = await requireService("Redis", address.hostname, Number(address.port || 6379));

/** One committed record: which worker, its key and version. */
interface Commit {
  readonly worker: string;
  readonly id: string;
  readonly key: string;
  readonly v: number;
}

/** A sink that appends what it commits to a log shared by every worker of the test, in commit order. */
class LoggingSink implements Sink {
  readonly maxInFlight = 4;
  constructor(
    private readonly worker: string,
    private readonly log: Commit[],
  ) {}
  async connect(): Promise<void> {}
  async write(records: readonly SluiceRecord[]): Promise<void> {
    // A little latency, so batches of several lanes overlap as with a real database.
    await new Promise((r) => setTimeout(r, 2));
    for (const r of records) this.log.push({ worker: this.worker, id: r.id, key: r.key!, v: r.payload.v as number });
  }
  async close(): Promise<void> {}
}

interface Worker {
  readonly name: string;
  readonly events: InternalEvent[];
  readonly logger: CapturingLogger;
  readonly pipeline: Pipeline;
  readonly done: Promise<PipelineStatus>;
  /** Partitions held after the last lease change. */
  owned(): number;
}

const workers: Worker[] = [];

function startWorker(name: string, options: Record<string, unknown>, log: Commit[]): Worker {
  const events: InternalEvent[] = [];
  const logger = new CapturingLogger();
  const ctx = { name: "src", dataDir: "/tmp", baseDir: "/tmp", clock: systemClock, logger, emit: (e: InternalEvent) => void events.push(e) };
  const source = redisStreams.create(redisStreams.options.parse({ url: REDIS_URL, consumer: name, block: 100, ordered: true, lease_ttl: "1s", ...options }), ctx);
  const pipeline = new Pipeline({
    sources: [{ name: "src", source, connectBackoff: { initialMs: 5, maxMs: 50, multiplier: 2 } }],
    transforms: [],
    sinks: [
      {
        name: "out",
        sink: new LoggingSink(name, log),
        batch: { maxRecords: 20, maxBytes: 1024 * 1024, maxWaitMs: 5 },
        retry: { maxAttempts: 3, maxElapsedMs: 60_000, backoff: { initialMs: 5, maxMs: 20, multiplier: 2 } },
        concurrency: 4,
      },
    ],
    deadLetter: new MemoryDeadLetterStore(),
    buffer: new MemoryBuffer({ maxRecords: 200, maxBytes: 64 * 1024 * 1024 }),
    whenFull: "block",
    chunkSize: 50,
    shutdownTimeoutMs: 5_000,
    emit: (e) => void events.push(e),
  });
  const worker: Worker = {
    name,
    events,
    logger,
    pipeline,
    done: pipeline.run(),
    owned: () => {
      const last = events.filter((e) => e.type === "source_leases").at(-1);
      return last?.type === "source_leases" ? last.owned : 0;
    },
  };
  workers.push(worker);
  return worker;
}

async function until(cond: () => boolean | Promise<boolean>, what: string, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Adds versions [from, to) of each of `keys` keys, each to its key's partition as the redis_streams sink would (key field, body). */
async function addVersions(redis: Redis, stream: string, partitions: number, keys: number, from: number, to: number): Promise<void> {
  const pipeline = redis.pipeline();
  for (let v = from; v < to; v++) {
    for (let k = 0; k < keys; k++) {
      const key = `k${k}`;
      const id = `${key}-v${v}`;
      pipeline.xadd(partitionStream(stream, partitions, { id, key }), "*", "id", id, "key", key, "body", JSON.stringify({ v }));
    }
  }
  await pipeline.exec();
}

/** Keys whose versions were not committed in increasing order (a redelivered duplicate of the newest is fine). */
function outOfOrder(log: readonly Commit[]): string[] {
  const newest = new Map<string, number>();
  const bad = new Set<string>();
  for (const c of log) {
    const before = newest.get(c.key) ?? -1;
    if (c.v < before) bad.add(c.key);
    newest.set(c.key, Math.max(before, c.v));
  }
  return [...bad];
}

const sum = (w: Worker, type: "records_reclaimed" | "source_leases") =>
  w.events.reduce((n, e) => n + (e.type === "records_reclaimed" && type === e.type ? e.count : e.type === "source_leases" && type === e.type ? e.acquired : 0), 0);

describe.skipIf(!hasRedis)("redis_streams ordered fleet", () => {
  let redis: Redis;
  const prefixes: string[] = [];
  const name = (): string => {
    const n = uniqueName("sluice-ord-");
    prefixes.push(n);
    return n;
  };

  beforeAll(() => {
    redis = redisClient();
  });
  afterEach(async () => {
    for (const w of workers.splice(0)) {
      w.pipeline.stop();
      await w.done;
    }
  });
  afterAll(async () => {
    for (const p of prefixes) await deleteKeys(redis, p);
    await redis.quit();
  });

  it("two sources share the partitions, each under its own lease; one stops and the other takes its partitions over", async () => {
    const s = name();
    const log: Commit[] = [];
    await addVersions(redis, s, 4, 20, 0, 10);
    const a = startWorker("a", { stream: s, partitions: 4 }, log);
    await until(() => a.owned() === 4, "a alone holds the 4 partitions");
    const b = startWorker("b", { stream: s, partitions: 4 }, log);
    await until(() => a.owned() === 2 && b.owned() === 2, "2 partitions each");
    const holders = await Promise.all([0, 1, 2, 3].map((i) => redis.get(`${s}:${i}:lease:sluice`)));
    expect(holders.filter((h) => h?.startsWith("a/"))).toHaveLength(2);
    expect(holders.filter((h) => h?.startsWith("b/"))).toHaveLength(2);
    expect(await redis.zcard(`${s}:workers:sluice`)).toBe(2);
    await addVersions(redis, s, 4, 20, 10, 20);
    await until(() => log.length >= 400, "400 records");
    const aWrote = new Set(log.filter((c) => c.worker === "a").map((c) => c.key));
    const bWrote = new Set(log.filter((c) => c.worker === "b" && c.v >= 10).map((c) => c.key));
    expect([...bWrote].filter((k) => aWrote.has(k) && log.some((c) => c.worker === "a" && c.key === k && c.v >= 10))).toEqual([]);

    a.pipeline.stop();
    expect((await a.done).tag).toBe("stopped");
    await until(() => b.owned() === 4, "b holds all 4 after a stopped");
    expect(await redis.zcard(`${s}:workers:sluice`)).toBe(1);
    await addVersions(redis, s, 4, 20, 20, 30);
    await until(() => log.length >= 600, "600 records");
    expect(new Set(log.map((c) => c.id)).size).toBe(600);
    expect(log).toHaveLength(600); // handed over clean: nothing twice
    expect(outOfOrder(log)).toEqual([]);
    expect(sum(b, "source_leases")).toBe(4);
  });

  it("connect and close alone (what sluice validate does) neither join the fleet nor take a lease", async () => {
    const s = name();
    const ctx = { name: "src", dataDir: "/tmp", baseDir: "/tmp", clock: systemClock, logger: new CapturingLogger(), emit: () => {} };
    const source = redisStreams.create(redisStreams.options.parse({ url: REDIS_URL, stream: s, partitions: 2, ordered: true }), ctx);
    await source.connect!(new AbortController().signal);
    expect(await redis.exists(`${s}:workers:sluice`, `${s}:0:lease:sluice`, `${s}:1:lease:sluice`)).toBe(0);
    await source.close();
    expect(await redis.exists(`${s}:0`, `${s}:1`)).toBe(2); // the group was created, as a run's connect does
    expect(await redis.exists(`${s}:workers:sluice`, `${s}:0:lease:sluice`, `${s}:1:lease:sluice`)).toBe(0);
  });

  it("a stream deleted with its lease (Redis restarted without its data) is taken again, its group made again, and read on", async () => {
    const s = name();
    const log: Commit[] = [];
    await addVersions(redis, s, 1, 2, 0, 3);
    const a = startWorker("a", { stream: s }, log);
    await until(() => log.length === 6, "the first 6 records");
    await redis.del(s, `${s}:lease:sluice`);
    await until(() => a.events.filter((e) => e.type === "source_leases" && e.acquired === 1).length === 2, "the lease taken again");
    await addVersions(redis, s, 1, 2, 3, 6);
    await until(() => log.length === 12, "the records added after");
    expect(outOfOrder(log)).toEqual([]);
    expect(a.events.filter((e) => e.type === "source_connect_failed")).toEqual([]);
  });

  it("a dead worker's unacked entries are claimed first, in entry order, once its lease expired", async () => {
    const s = name();
    const log: Commit[] = [];
    await addVersions(redis, s, 1, 1, 0, 10);
    // A worker that read 5 entries and died: its lease still runs for 1.5 s.
    await redis.xgroup("CREATE", s, "sluice", "0");
    await redis.set(`${s}:lease:sluice`, "dead/0", "PX", 1_500);
    await redis.xreadgroup("GROUP", "sluice", "dead", "COUNT", 5, "STREAMS", s, ">");
    const b = startWorker("b", { stream: s }, log);
    await new Promise((r) => setTimeout(r, 700));
    expect(log).toEqual([]);
    expect(b.owned()).toBe(0);
    await addVersions(redis, s, 1, 1, 10, 15);
    await until(() => log.length === 15, "15 records");
    expect(log.map((c) => c.v)).toEqual(Array.from({ length: 15 }, (_, i) => i));
    expect(sum(b, "records_reclaimed")).toBe(5);
    expect(sum(b, "source_leases")).toBe(1);
    expect(Number(((await redis.xpending(s, "sluice")) as [number])[0])).toBe(0);
  });

  it("a worker whose lease was taken stops reading that partition at its next read, and reads it again once it holds it again", { timeout: 40_000 }, async () => {
    const s = name();
    const log: Commit[] = [];
    // Renewed every 10 s: within this test only a read can find the lease gone.
    const a = startWorker("a", { stream: s, partitions: 2, lease_ttl: "30s" }, log);
    await until(() => a.owned() === 2, "a holds both");
    await new Promise((r) => setTimeout(r, 300));
    // Another worker holds partition 0 now (as after a pause of a longer than its ttl).
    await redis.set(`${s}:0:lease:sluice`, "other/0", "PX", 60_000);
    await addVersions(redis, s, 2, 20, 0, 5);
    const inOther = (k: number) => partitionStream(s, 2, { id: "", key: `k${k}` }) === `${s}:0`;
    const expectedNow = Array.from({ length: 20 }, (_, k) => k).filter((k) => !inOther(k)).length * 5;
    await until(() => log.length === expectedNow && a.owned() === 1, "only partition 1's records");
    expect(a.events.some((e) => e.type === "source_leases" && e.lost === 1)).toBe(true);
    await new Promise((r) => setTimeout(r, 1_000));
    expect(log).toHaveLength(expectedNow);
    const info = (await redis.xinfo("GROUPS", `${s}:0`)) as unknown[][];
    expect(info[0]![info[0]!.indexOf("pending") + 1]).toBe(0);
    // Free again: a takes it back at its next renewal (its share is 2) and reads what waited.
    await redis.del(`${s}:0:lease:sluice`);
    await until(() => log.length === 100, "all 100 records", 30_000);
    expect(outOfOrder(log)).toEqual([]);
    expect(a.owned()).toBe(2);
  });
});
