/**
 * The redis_streams source against the machine's Redis, beyond the contract suite: the group and
 * where it starts, ids stable across redeliveries, the envelope and metadata fields, malformed
 * bodies, XACK only after commit, COUNT bounded by the room, reclaiming a dead consumer's entries,
 * max_deliveries, a slow chunk kept from other workers, a killed connection, partitions, and the
 * CLI end to end and with permanent errors. Each test reads its own stream (random suffix) and
 * deletes it; connections are killed only by their own client ids.
 */
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import type { Redis } from "ioredis";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import type { Sink } from "../../src/components/contracts.js";
import { MemoryBuffer } from "../../src/core/buffer.js";
import { systemClock } from "../../src/core/clock.js";
import { SluiceError } from "../../src/core/errors.js";
import { silentLogger, type InternalEvent } from "../../src/core/events.js";
import { Pipeline, type PipelineStatus } from "../../src/core/pipeline.js";
import type { JsonObject, SluiceRecord } from "../../src/core/record.js";
import { Metrics } from "../../src/observability/metrics.js";
import { definition as redisStreams } from "../../src/sources/redis-streams.js";
import { ConsumerGroup } from "../../src/sources/redis-streams-group.js";
import { deleteKeys, REDIS_URL, redisClient, uniqueName } from "../helpers/brokers.js";
import { canStartBroker, startRedisServer, type BrokerServer } from "../helpers/broker-servers.js";
import { killClis, runCli, startCli } from "../helpers/cli.js";
import { MemoryDeadLetterStore } from "../helpers/memory.js";
import { CapturingLogger } from "../helpers/source-harness.js";
import { requireService } from "../helpers/services.js";

const address = new URL(REDIS_URL);
const hasRedis = await requireService("Redis", address.hostname, Number(address.port || 6379));

/** A sink that records what it was given and commits only while its gate is open. */
class HeldSink implements Sink {
  readonly maxInFlight = 1;
  readonly attempted = new Set<string>();
  readonly committed = new Map<string, SluiceRecord>();
  /** The size of the chunk each record came in, by record id (the engine's ticket). */
  readonly chunkSize = new Map<string, number>();
  private open: boolean;
  private waiters: (() => void)[] = [];

  constructor(open: boolean) {
    this.open = open;
  }

  release(): void {
    this.open = true;
    for (const w of this.waiters.splice(0)) w();
  }

  async connect(): Promise<void> {}

  async write(records: readonly SluiceRecord[], signal: AbortSignal): Promise<void> {
    for (const r of records) {
      this.attempted.add(r.id);
      this.chunkSize.set(r.id, (r as unknown as { ticket: { records: number } }).ticket.records);
    }
    if (!this.open) {
      await new Promise<void>((resolve, reject) => {
        this.waiters.push(resolve);
        signal.addEventListener("abort", () => reject(new SluiceError("ERR_ABORTED", "write aborted")), { once: true });
      });
    }
    for (const r of records) this.committed.set(r.id, r);
  }

  async close(): Promise<void> {}
}

interface Run {
  readonly pipeline: Pipeline;
  readonly sink: HeldSink;
  readonly deadLetters: MemoryDeadLetterStore;
  readonly events: InternalEvent[];
  readonly metrics: Metrics;
  /** What the source logged. */
  readonly logger: CapturingLogger;
  readonly done: Promise<PipelineStatus>;
  stop(): Promise<PipelineStatus>;
}

/** Polls `cond` every 10 ms of real time; throws after `timeoutMs`. */
async function until(cond: () => boolean | Promise<boolean>, what: string, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const runs: Run[] = [];

/** Runs the source with `options` (the machine's Redis unless they name a `url`) into a {@link HeldSink}, on a memory buffer of `maxRecords`. */
function start(
  options: Record<string, unknown>,
  o: { open?: boolean; maxRecords?: number; maxBytes?: number; chunkSize?: number; shutdownTimeoutMs?: number } = {},
): Run {
  const sink = new HeldSink(o.open ?? true);
  const deadLetters = new MemoryDeadLetterStore();
  const events: InternalEvent[] = [];
  const metrics = new Metrics(["out"], silentLogger, () => Date.now());
  const emit = (e: InternalEvent) => {
    events.push(e);
    metrics.handle(e);
  };
  const logger = new CapturingLogger();
  const ctx = { name: "src", dataDir: tmpdir(), baseDir: tmpdir(), clock: systemClock, logger, emit };
  const parsed = redisStreams.options.parse({ url: REDIS_URL, ...options });
  const source = redisStreams.create(parsed, ctx);
  const pipeline = new Pipeline({
    sources: [{ name: "src", source, connectBackoff: { initialMs: 5, maxMs: 50, multiplier: 2 } }],
    transforms: [],
    sinks: [{ name: "out", sink, batch: { maxRecords: 10, maxBytes: 1024 * 1024, maxWaitMs: 5 }, retry: { maxAttempts: 3, maxElapsedMs: 60_000, backoff: { initialMs: 5, maxMs: 20, multiplier: 2 } }, concurrency: 1 }],
    deadLetter: deadLetters,
    buffer: new MemoryBuffer({ maxRecords: o.maxRecords ?? 10_000, maxBytes: o.maxBytes ?? 64 * 1024 * 1024 }),
    whenFull: "block",
    chunkSize: o.chunkSize ?? 10,
    shutdownTimeoutMs: o.shutdownTimeoutMs ?? 5_000,
    emit,
  });
  const done = pipeline.run();
  const run: Run = {
    pipeline,
    sink,
    deadLetters,
    events,
    metrics,
    logger,
    done,
    stop: () => {
      pipeline.stop();
      return done;
    },
  };
  runs.push(run);
  return run;
}

/** Entries of the group not yet acked, over all its consumers. */
async function pendingCount(redis: Redis, stream: string, group: string): Promise<number> {
  const summary = (await redis.xpending(stream, group)) as [number, ...unknown[]];
  return Number(summary[0]);
}

/** Adds `bodies` as entries with only a body field; returns their entry ids. */
async function addBodies(redis: Redis, stream: string, bodies: JsonObject[]): Promise<string[]> {
  const pipeline = redis.pipeline();
  for (const b of bodies) pipeline.xadd(stream, "*", "body", JSON.stringify(b));
  const replies = await pipeline.exec();
  return replies!.map(([, id]) => id as string);
}

/** The names of the group's consumers on `stream`, sorted. */
async function consumerNames(redis: Redis, stream: string, group = "sluice"): Promise<string[]> {
  const consumers = (await redis.xinfo("CONSUMERS", stream, group)) as string[][];
  return consumers.map((fields) => fields[fields.indexOf("name") + 1]!).sort();
}

const payloadsOf = (run: Run) => [...run.sink.committed.values()].map((r) => r.payload);
const received = (run: Run) => run.events.reduce((n, e) => n + (e.type === "records_received" ? e.count : 0), 0);

describe.skipIf(!hasRedis)("redis_streams source", () => {
  let redis: Redis;
  const prefixes: string[] = [];
  const stream = (): string => {
    const name = uniqueName("sluice-src-");
    prefixes.push(name);
    return name;
  };

  beforeAll(() => {
    redis = redisClient();
  });
  afterEach(async () => {
    for (const r of runs.splice(0)) {
      r.pipeline.stop();
      await r.done;
    }
  });
  afterAll(async () => {
    for (const p of prefixes) await deleteKeys(redis, p);
    await redis.quit();
  });

  it('creates a missing group: start "0" reads what is there, "$" only what comes after', async () => {
    const s = stream();
    await addBodies(redis, s, [{ n: 0 }, { n: 1 }, { n: 2 }]);
    const fromStart = start({ stream: s, group: "from-start" });
    const fromNow = start({ stream: s, group: "from-now", start: "$" });
    await until(() => fromStart.sink.committed.size === 3, "the 3 entries read from the start");
    await until(async () => ((await redis.xinfo("GROUPS", s)) as unknown[]).length === 2, "both groups created");
    await addBodies(redis, s, [{ n: 3 }]);
    await until(() => fromNow.sink.committed.size === 1 && fromStart.sink.committed.size === 4, "the new entry read by both");
    expect(payloadsOf(fromNow)).toEqual([{ n: 3 }]);
    expect(payloadsOf(fromStart).map((p) => p.n)).toEqual([0, 1, 2, 3]);
  });

  it("creates the stream too when it does not exist yet (MKSTREAM)", async () => {
    const s = stream();
    const run = start({ stream: s });
    await until(async () => (await redis.exists(s)) === 1, "the stream created");
    await addBodies(redis, s, [{ n: 1 }]);
    await until(() => run.sink.committed.size === 1, "the entry read");
  });

  it("keeps ids across a redelivery to another consumer: the payload's id, else the entry's id field, else <stream>:<entry id>", async () => {
    const s = stream();
    const entryIds = [
      await redis.xadd(s, "*", "body", JSON.stringify({ id: "from-payload", n: 0 })),
      await redis.xadd(s, "*", "id", "from-entry", "body", JSON.stringify({ n: 1 })),
      await redis.xadd(s, "*", "body", JSON.stringify({ n: 2 })),
    ];
    const expected = ["from-payload", "from-entry", `${s}:${entryIds[2]}`];
    const first = start({ stream: s, consumer: "first", claim_idle: 200 }, { open: false, shutdownTimeoutMs: 50 });
    await until(() => first.sink.attempted.size === 3, "3 records attempted");
    expect((await first.stop()).tag).toBe("timed_out");
    expect([...first.sink.attempted]).toEqual(expected);
    expect(await pendingCount(redis, s, "sluice")).toBe(3);

    const second = start({ stream: s, consumer: "second", claim_idle: 200 });
    await until(() => second.sink.committed.size === 3, "the 3 records redelivered");
    expect([...second.sink.committed.keys()]).toEqual(expected);
    await until(async () => (await pendingCount(redis, s, "sluice")) === 0, "all acked");
    expect(second.events.reduce((n, e) => n + (e.type === "records_reclaimed" ? e.count : 0), 0)).toBe(3);
  });

  it("fills key and event time from the entry, keeps other fields as metadata, and reads another producer's entries (no body) as all their fields", async () => {
    const s = stream();
    await redis.xadd(s, "*", "id", "a", "body", '{"v":1}', "key", "k1", "event_time", "2026-01-02T03:04:05.000Z", "trace", "t-1");
    await redis.xadd(s, "*", "id", "b", "body", '{"v":2}', "key", "k2");
    await redis.xadd(s, "*", "id", "c", "temp", "21.5", "unit", "C", "key", "k3");
    const foreign = await redis.xadd(s, "*", "device", "d-7", "event_time", "2026-01-02T03:04:05.000Z", "key", "k4");
    const run = start({ stream: s });
    await until(() => run.sink.committed.size === 4, "4 records");
    const [a, b, c] = ["a", "b", "c"].map((id) => run.sink.committed.get(id)!);
    expect(a).toMatchObject({ key: "k1", eventTime: Date.parse("2026-01-02T03:04:05.000Z"), payload: { v: 1, _redis: { trace: "t-1" } } });
    expect(a!.text).toBeUndefined();
    // The body as read, passed on for sinks to write without serializing again.
    expect(b).toMatchObject({ key: "k2", eventTime: undefined, payload: { v: 2 }, text: '{"v":2}' });
    // Without a body every field is payload: its id is found there by id_field; key and time stay data (no key_field, time_field).
    expect(c).toMatchObject({ key: undefined, eventTime: undefined, payload: { id: "c", temp: "21.5", unit: "C", key: "k3" } });
    expect(run.sink.committed.get(`${s}:${foreign}`)).toMatchObject({
      key: undefined,
      eventTime: undefined,
      payload: { device: "d-7", event_time: "2026-01-02T03:04:05.000Z", key: "k4" },
    });
  });

  it("dead-letters a body that is not a JSON object, located by stream and entry id, and acks it", async () => {
    const s = stream();
    const [bad, array, good] = [await redis.xadd(s, "*", "body", "{not json"), await redis.xadd(s, "*", "body", "[1,2]"), await redis.xadd(s, "*", "body", '{"ok":true}')];
    const run = start({ stream: s });
    await until(() => run.sink.committed.size === 1 && run.deadLetters.entries.length === 2, "1 delivered, 2 dead-lettered");
    const [first, second] = run.deadLetters.entries;
    expect(first).toMatchObject({ code: "ERR_RECORD_MALFORMED", raw: "{not json", sink: "source:src" });
    expect(first!.message).toContain(`${s} entry ${bad}`);
    expect(second).toMatchObject({ code: "ERR_RECORD_MALFORMED", raw: "[1,2]" });
    expect(second!.message).toContain(`${s} entry ${array}`);
    expect(run.sink.committed.get(`${s}:${good}`)?.payload).toEqual({ ok: true });
    await until(async () => (await pendingCount(redis, s, "sluice")) === 0, "all acked");
  });

  it("XACKs only after the sink committed, and reports pending and lag", async () => {
    const s = stream();
    await addBodies(redis, s, Array.from({ length: 30 }, (_, n) => ({ n })));
    const run = start({ stream: s }, { open: false });
    await until(() => run.sink.attempted.size > 0 && run.events.some((e) => e.type === "source_backlog"), "a write started and a backlog report");
    await new Promise((r) => setTimeout(r, 100));
    expect(await pendingCount(redis, s, "sluice")).toBe(30);
    expect(run.sink.committed.size).toBe(0);
    expect(run.events.find((e) => e.type === "source_backlog")).toMatchObject({ pending: expect.any(Number), lag: expect.any(Number) });
    run.sink.release();
    await until(() => run.sink.committed.size === 30, "30 committed");
    await until(async () => (await pendingCount(redis, s, "sluice")) === 0, "all acked");
    const text = await run.metrics.registry.metrics();
    expect(text).toMatch(/sluice_source_pending\{source="src"\} \d+/);
    expect(text).toMatch(/sluice_source_lag\{source="src"\} \d+/);
  });

  it("never has more entries pending than the buffer holds plus one chunk", async () => {
    const s = stream();
    await addBodies(redis, s, Array.from({ length: 400 }, (_, n) => ({ n })));
    const run = start({ stream: s }, { open: false, maxRecords: 20, chunkSize: 10 });
    let most = 0;
    // Before the source created the group there is nothing pending.
    const sample = async () => (most = Math.max(most, await pendingCount(redis, s, "sluice").catch(() => 0)));
    await until(async () => (await sample()) > 0 && run.sink.attempted.size > 0, "the buffer filling");
    for (let i = 0; i < 20; i++) {
      await sample();
      await new Promise((r) => setTimeout(r, 10));
    }
    expect(most).toBeLessThanOrEqual(20);
    run.sink.release();
    await until(async () => (await sample(), run.sink.committed.size === 400), "400 committed");
    expect(most).toBeLessThanOrEqual(30);
  });

  it("reads no more entries than the buffer's byte bound holds, sized by the entries read so far", async () => {
    const s = stream();
    // About 520 bytes per entry: the byte bound holds 10 of them, the record bound 10,000.
    const pad = "x".repeat(500);
    await addBodies(redis, s, Array.from({ length: 300 }, (_, n) => ({ n, pad })));
    const run = start({ stream: s }, { open: false, maxBytes: 5_300, chunkSize: 100 });
    let most = 0;
    const sample = async () => (most = Math.max(most, await pendingCount(redis, s, "sluice").catch(() => 0)));
    await until(async () => (await sample()) > 0 && run.sink.attempted.size > 0, "the buffer filling");
    for (let i = 0; i < 30; i++) {
      await sample();
      await new Promise((r) => setTimeout(r, 10));
    }
    expect(most).toBeLessThanOrEqual(11);
    run.sink.release();
    await until(async () => (await sample(), run.sink.committed.size === 300), "300 committed");
    expect(most).toBeLessThanOrEqual(11);
    await until(async () => (await pendingCount(redis, s, "sluice")) === 0, "all acked");
  });

  it("reclaims a dead consumer's entries after claim_idle and counts them", async () => {
    const s = stream();
    await redis.xgroup("CREATE", s, "sluice", "0", "MKSTREAM");
    await addBodies(redis, s, Array.from({ length: 20 }, (_, n) => ({ n })));
    // Another worker reads everything and dies without acking.
    await redis.xreadgroup("GROUP", "sluice", "dead", "COUNT", 100, "STREAMS", s, ">");
    const run = start({ stream: s, claim_idle: 200 });
    // New entries keep coming meanwhile: reading them must not keep the reclaim pass from running.
    let live = true;
    const producing = (async () => {
      for (let i = 0; live; i++) {
        await addBodies(redis, s, [{ live: i }]);
        await new Promise((r) => setTimeout(r, 2));
      }
    })();
    await until(() => payloadsOf(run).filter((p) => p.n !== undefined).length === 20, "the dead consumer's 20 entries delivered", 10_000);
    live = false;
    await producing;
    await until(async () => (await pendingCount(redis, s, "sluice")) === 0, "all acked");
    expect(await run.metrics.registry.metrics()).toMatch(/sluice_source_reclaimed_total\{source="src"\} 20/);
  });

  it("dead-letters an entry delivered max_deliveries times (ERR_MAX_DELIVERIES) and acks it instead of delivering it again", async () => {
    const s = stream();
    await redis.xgroup("CREATE", s, "sluice", "0", "MKSTREAM");
    const [poison] = await addBodies(redis, s, [{ poison: true }]);
    // Three workers in turn read it and crashed: delivered 3 times.
    await redis.xreadgroup("GROUP", "sluice", "w1", "COUNT", 1, "STREAMS", s, ">");
    await redis.xclaim(s, "sluice", "w2", 0, poison!);
    await redis.xclaim(s, "sluice", "w3", 0, poison!);
    await addBodies(redis, s, [{ fine: true }]);
    const run = start({ stream: s, claim_idle: 100, max_deliveries: 3 });
    await until(() => run.deadLetters.entries.length === 1 && run.sink.committed.size === 1, "the poison entry dead-lettered, the other delivered");
    const [dead] = run.deadLetters.entries;
    expect(dead).toMatchObject({ code: "ERR_MAX_DELIVERIES", raw: '{"poison":true}' });
    expect(dead!.record.id).toBe(`${s}:${poison}`);
    expect(dead!.message).toMatch(/delivered 3 times/);
    await until(async () => (await pendingCount(redis, s, "sluice")) === 0, "the poison entry acked");
    expect(run.sink.attempted.has(`${s}:${poison}`)).toBe(false);
  });

  it("hands each claimed entry delivered more than once as a chunk of its own, in entry order, so a poison entry does not take its neighbours to max_deliveries", async () => {
    const s = stream();
    await redis.xgroup("CREATE", s, "sluice", "0", "MKSTREAM");
    // Entries 0-2: a worker read them and died (delivered once). Entries 3-5: that happened twice (a record among them may crash workers).
    const once = await addBodies(redis, s, [{ n: 0 }, { n: 1 }, { n: 2 }]);
    await redis.xreadgroup("GROUP", "sluice", "w1", "COUNT", 100, "STREAMS", s, ">");
    const twice = await addBodies(redis, s, [{ n: 3 }, { n: 4 }, { n: 5 }]);
    await redis.xreadgroup("GROUP", "sluice", "w1", "COUNT", 100, "STREAMS", s, ">");
    await redis.xclaim(s, "sluice", "w2", 0, ...twice);
    const run = start({ stream: s, claim_idle: 100, max_deliveries: 5 });
    await until(() => run.sink.committed.size === 6, "all six delivered");
    expect(twice.map((id) => run.sink.chunkSize.get(`${s}:${id}`))).toEqual([1, 1, 1]);
    // Delivered once: together (the first pass may grant room for one record only, before any size is known).
    expect(Math.max(...once.map((id) => run.sink.chunkSize.get(`${s}:${id}`)!))).toBeGreaterThan(1);
    expect(payloadsOf(run).map((p) => p.n)).toEqual([0, 1, 2, 3, 4, 5]);
  });

  it("acks away, with a warning, a dead consumer's entries that were trimmed from the stream before they could be reclaimed", async () => {
    const s = stream();
    await redis.xgroup("CREATE", s, "sluice", "0", "MKSTREAM");
    const ids = await addBodies(redis, s, Array.from({ length: 6 }, (_, n) => ({ n })));
    await redis.xreadgroup("GROUP", "sluice", "dead", "COUNT", 100, "STREAMS", s, ">");
    await redis.xdel(s, ids[1]!, ids[4]!);
    const run = start({ stream: s, claim_idle: 100 });
    await until(() => run.sink.committed.size === 4, "the 4 entries still in the stream delivered");
    await until(async () => (await pendingCount(redis, s, "sluice")) === 0, "nothing left pending");
    expect(payloadsOf(run).map((p) => p.n)).toEqual([0, 2, 3, 5]);
    expect(run.logger.at("warn").find((l) => /deleted from the stream/.test(l.msg ?? ""))?.obj).toMatchObject({ stream: s, entries: 2 });
  });

  it("keeps a chunk that a slow sink holds past claim_idle from another worker on the same group", async () => {
    const s = stream();
    await redis.xgroup("CREATE", s, "sluice", "0", "MKSTREAM");
    await addBodies(redis, s, Array.from({ length: 10 }, (_, n) => ({ n })));
    // Long enough that a loaded machine's late timers do not let the idle time cross it between two refreshes (every claim_idle / 3).
    const slow = start({ stream: s, consumer: "slow", claim_idle: 1_000 }, { open: false });
    await until(() => received(slow) === 10, "the slow worker read the 10 entries");
    const other = start({ stream: s, consumer: "other", claim_idle: 1_000 });
    await until(() => other.events.some((e) => e.type === "source_connected"), "the other worker connected");
    // Several claim_idle periods and reclaim passes of the other worker (every 1 s).
    await new Promise((r) => setTimeout(r, 3_500));
    expect(other.events.filter((e) => e.type === "records_reclaimed")).toEqual([]);
    expect(received(other)).toBe(0);
    const pending = (await redis.xpending(s, "sluice", "-", "+", 100)) as [string, string, number, number][];
    expect(pending.map(([, consumer, , deliveries]) => [consumer, deliveries])).toEqual(Array.from({ length: 10 }, () => ["slow", 1]));
    slow.sink.release();
    await until(() => slow.sink.committed.size === 10, "the slow worker committed its entries");
    await until(async () => (await pendingCount(redis, s, "sluice")) === 0, "all acked");
  });

  it("deletes its own consumer from the group when it stops with nothing pending, and keeps it while entries are pending with it", async () => {
    const s = stream();
    await addBodies(redis, s, Array.from({ length: 5 }, (_, n) => ({ n })));
    const clean = start({ stream: s, consumer: "clean" });
    await until(() => clean.sink.committed.size === 5, "5 committed");
    await until(async () => (await pendingCount(redis, s, "sluice")) === 0, "all acked");
    expect(await consumerNames(redis, s)).toEqual(["clean"]);
    expect((await clean.stop()).tag).toBe("stopped");
    expect(await consumerNames(redis, s)).toEqual([]);

    await addBodies(redis, s, Array.from({ length: 5 }, (_, n) => ({ n: n + 5 })));
    const stuck = start({ stream: s, consumer: "stuck" }, { open: false, shutdownTimeoutMs: 50 });
    await until(() => stuck.sink.attempted.size === 5, "5 attempted");
    expect((await stuck.stop()).tag).toBe("timed_out");
    // Its entries stay pending with it, for another worker to claim.
    expect(await consumerNames(redis, s)).toEqual(["stuck"]);
    expect(await pendingCount(redis, s, "sluice")).toBe(5);
  });

  it("deletes, atomically, the group's consumers that have nothing pending and have not read for 10 x max(claim_idle, block); never one with pending entries", async () => {
    const s = stream();
    await redis.xgroup("CREATE", s, "sluice", "0", "MKSTREAM");
    const [held] = await addBodies(redis, s, [{ n: 0 }]);
    await redis.xgroup("CREATECONSUMER", s, "sluice", "gone");
    await redis.xreadgroup("GROUP", "sluice", "holding", "COUNT", 1, "STREAMS", s, ">");
    await redis.xgroup("CREATECONSUMER", s, "sluice", "me");
    await new Promise((r) => setTimeout(r, 150));
    await redis.xgroup("CREATECONSUMER", s, "sluice", "fresh");
    const group = new ConsumerGroup(redis, "sluice", "me");
    expect(await group.dropIdle(s, 100)).toBe(1);
    expect(await consumerNames(redis, s)).toEqual(["fresh", "holding", "me"]);
    expect(await group.leave([s, `${s}-no-such-stream`])).toEqual([s]);
    expect(await consumerNames(redis, s)).toEqual(["fresh", "holding"]);
    // The entry moved off "holding": it goes once idle, with nothing pending.
    await redis.xclaim(s, "sluice", "other", 0, held!);
    await new Promise((r) => setTimeout(r, 150));
    expect(await group.dropIdle(s, 100)).toBe(2);
    expect(await consumerNames(redis, s)).toEqual(["other"]);
    expect(await pendingCount(redis, s, "sluice")).toBe(1);

    // The source's reclaim pass does it: with claim_idle and block at 10 ms, consumers idle 100 ms go.
    await redis.xgroup("CREATECONSUMER", s, "sluice", "left-behind");
    const run = start({ stream: s, consumer: "worker", claim_idle: 10, block: 10 });
    await until(() => run.sink.committed.size === 1, "the held entry reclaimed and committed");
    await until(async () => !(await consumerNames(redis, s)).includes("left-behind"), "left-behind deleted", 5_000);
    expect(await consumerNames(redis, s)).toContain("worker");
  });

  it("reconnects after its connections are killed and loses nothing", async () => {
    const s = stream();
    const consumer = uniqueName("killed-");
    const run = start({ stream: s, consumer, claim_idle: 200, block: 100 });
    await until(() => run.events.some((e) => e.type === "source_connected"), "connected");
    const total = 300;
    let added = 0;
    const producing = (async () => {
      while (added < total) {
        await addBodies(redis, s, Array.from({ length: 10 }, (_, i) => ({ n: added + i })));
        added += 10;
        await new Promise((r) => setTimeout(r, 5));
      }
    })();
    await until(() => run.sink.committed.size >= 50, "50 committed");
    const clients = (await redis.client("LIST")) as string;
    const ids = clients
      .split("\n")
      .filter((line) => line.includes(` name=sluice:${consumer}:`))
      .map((line) => /\bid=(\d+)/.exec(line)![1]!);
    expect(ids).toHaveLength(2);
    for (const id of ids) await redis.client("KILL", "ID", id);
    await producing;
    await until(() => new Set(payloadsOf(run).map((p) => p.n)).size === total, "every entry delivered");
    await until(async () => (await pendingCount(redis, s, "sluice")) === 0, "all acked");
    expect(run.events.some((e) => e.type === "source_connect_failed" && e.attempt === 0)).toBe(true);
    expect(run.events.filter((e) => e.type === "source_connected").length).toBeGreaterThanOrEqual(2);
  });

  it("creates its group again when the stream or the group is deleted under a blocked read", async () => {
    const s = stream();
    const run = start({ stream: s, block: 5_000 });
    await until(async () => (await redis.exists(s)) === 1, "the stream created");
    await addBodies(redis, s, [{ n: 0 }]);
    await until(() => run.sink.committed.size === 1, "the first entry");
    // The reader is blocked again (5 s): deleting the stream unblocks it with UNBLOCKED, destroying the group with NOGROUP.
    await new Promise((r) => setTimeout(r, 50));
    await redis.del(s);
    await until(async () => (await redis.exists(s)) === 1, "the stream created again");
    await addBodies(redis, s, [{ n: 1 }]);
    await until(() => run.sink.committed.size === 2, "the entry after the deletion");
    await new Promise((r) => setTimeout(r, 50));
    await redis.xgroup("DESTROY", s, "sluice");
    await until(async () => ((await redis.xinfo("GROUPS", s)) as unknown[]).length === 1, "the group created again");
    await addBodies(redis, s, [{ n: 2 }]);
    await until(() => run.sink.committed.size >= 3, "the entry after the group was destroyed");
    expect(new Set(payloadsOf(run).map((p) => p.n))).toEqual(new Set([0, 1, 2]));
    expect(run.events.filter((e) => e.type === "source_connect_failed")).toEqual([]);
  });

  it("with start: $, creates a lost group again after the last entry it read, not at the end: an entry added meanwhile is delivered", async () => {
    const s = stream();
    const consumer = uniqueName("regroup-");
    const run = start({ stream: s, start: "$", block: 5_000, consumer });
    await until(async () => (await redis.exists(s)) === 1, "the stream created");
    await addBodies(redis, s, [{ n: 0 }]);
    await until(() => run.sink.committed.size === 1, "the first entry");
    await new Promise((r) => setTimeout(r, 50));
    // Under the blocked read: the group is gone and an entry added before the reader can see the loss.
    await redis.multi().xgroup("DESTROY", s, "sluice").xadd(s, "*", "body", JSON.stringify({ n: 1 })).exec();
    await until(() => run.sink.committed.size === 2, "the entry added while the group was missing");
    // The same across a reconnect: both connections killed in the transaction that destroys the group and adds an entry.
    const ids = ((await redis.client("LIST")) as string)
      .split("\n")
      .filter((line) => line.includes(` name=sluice:${consumer}:`))
      .map((line) => /\bid=(\d+)/.exec(line)![1]!);
    expect(ids).toHaveLength(2);
    const tx = redis.multi().xgroup("DESTROY", s, "sluice").xadd(s, "*", "body", JSON.stringify({ n: 2 }));
    for (const id of ids) tx.client("KILL", "ID", id);
    await tx.exec();
    await until(() => run.sink.committed.size === 3, "the entry added while the group was missing and the connections down");
    expect(new Set(payloadsOf(run).map((p) => p.n))).toEqual(new Set([0, 1, 2]));
  });

  it("reads <stream>:0 .. <stream>:2 with partitions: 3", async () => {
    const s = stream();
    for (let p = 0; p < 3; p++) await addBodies(redis, `${s}:${p}`, Array.from({ length: 5 }, (_, n) => ({ p, n })));
    const run = start({ stream: s, partitions: 3 }, { chunkSize: 2 });
    await until(() => run.sink.committed.size === 15, "15 records from 3 streams");
    for (let p = 0; p < 3; p++) {
      expect(payloadsOf(run).filter((x) => x.p === p).map((x) => x.n)).toEqual([0, 1, 2, 3, 4]);
      await until(async () => (await pendingCount(redis, `${s}:${p}`, "sluice")) === 0, `partition ${p} acked`);
    }
  });
});

describe.skipIf(!hasRedis)("redis_streams source through sluice run", () => {
  let redis: Redis;
  let dir: string;
  const prefix = uniqueName("sluice-src-cli-");

  beforeAll(async () => {
    redis = redisClient();
    dir = await mkdtemp(join(tmpdir(), "sluice-redis-src-cli-"));
  });
  afterAll(async () => {
    killClis();
    await deleteKeys(redis, prefix);
    await redis.quit();
    await rm(dir, { recursive: true, force: true });
  });

  it("carries records from a redis_streams sink to this source across partitions, ids and keys intact, and stops cleanly", async () => {
    const ingest = join(dir, "ingest.yaml");
    const worker = join(dir, "worker.yaml");
    const db = join(dir, "out.db");
    await writeFile(
      ingest,
      `data_dir: ${join(dir, "ingest-data")}
sources:
  readings: { type: generator, count: 2000, keys: 20, key_field: sensor }
sinks:
  queue: { type: redis_streams, url: ${REDIS_URL}, stream: ${prefix}, partitions: 3 }
`,
    );
    await writeFile(
      worker,
      `data_dir: ${join(dir, "worker-data")}
sources:
  queue: { type: redis_streams, url: ${REDIS_URL}, stream: ${prefix}, partitions: 3, group: workers, block: 200ms }
sinks:
  db: { type: sqlite, path: ${db}, batch: { max_wait: 10ms } }
`,
    );
    const produced = await runCli(["run", ingest, "--summary-json", join(dir, "ingest.json"), "--no-progress"], { cwd: dir });
    expect(produced.code, produced.stderr).toBe(0);

    const cli = startCli(worker, join(dir, "worker.json"), dir);
    const rows = () => {
      try {
        const conn = new Database(db, { readonly: true });
        try {
          return (conn.prepare("select count(*) as n from records").get() as { n: number }).n;
        } finally {
          conn.close();
        }
      } catch {
        return 0;
      }
    };
    await until(() => rows() === 2000, "2000 rows", 60_000);
    cli.process.kill("SIGTERM");
    expect((await cli.exited).code, cli.output()).toBe(0);
    const conn = new Database(db, { readonly: true });
    const sample = conn.prepare("select id, key from records where id = 'readings-1'").get() as { id: string; key: string } | undefined;
    conn.close();
    expect(sample?.key).toMatch(/^sensor-/);
    for (let p = 0; p < 3; p++) expect(await pendingCount(redis, `${prefix}:${p}`, "workers")).toBe(0);
  }, 90_000);

  it("exits 1 at once, naming the source, when the key holds something other than a stream (WRONGTYPE)", async () => {
    const key = `${prefix}-string`;
    await redis.set(key, "not a stream");
    const config = join(dir, "wrongtype.yaml");
    await writeFile(
      config,
      `data_dir: ${join(dir, "wrongtype-data")}
sources:
  queue: { type: redis_streams, url: ${REDIS_URL}, stream: ${key} }
sinks:
  out: { type: blackhole }
`,
    );
    const started = Date.now();
    const result = await runCli(["run", config, "--no-progress"], { cwd: dir });
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/source queue/);
    expect(result.stderr).toMatch(/WRONGTYPE/);
    expect(result.stderr).toContain(key);
    expect(Date.now() - started).toBeLessThan(15_000);
  }, 30_000);
});

describe.skipIf(!canStartBroker("redis-server", "redis_streams source credentials test"))("redis_streams source on a private Redis with a password", () => {
  let server: BrokerServer | undefined;
  let dir: string;

  beforeAll(async () => {
    server = await startRedisServer({ password: "right-password" });
    dir = await mkdtemp(join(tmpdir(), "sluice-redis-src-auth-"));
  });
  afterAll(async () => {
    await server?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it.each([
    ["a wrong password", ":wrong-password@"],
    ["no password", ""],
  ])("exits 1 at once with a clear message naming the source and stream, not the password, on %s", async (_what, auth) => {
    const config = join(dir, `auth-${auth.length}.yaml`);
    await writeFile(
      config,
      `data_dir: ${join(dir, `data-${auth.length}`)}
sources:
  queue: { type: redis_streams, url: "redis://${auth}127.0.0.1:${server!.port}", stream: events }
sinks:
  out: { type: blackhole }
`,
    );
    const started = Date.now();
    const result = await runCli(["run", config, "--no-progress"], { cwd: dir });
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/source queue cannot connect: redis stream events: (WRONGPASS|NOAUTH)/);
    expect(result.stderr).not.toContain("wrong-password");
    expect(Date.now() - started).toBeLessThan(15_000);
  }, 30_000);
});

describe.skipIf(!canStartBroker("redis-server", "redis_streams source restart test"))("redis_streams source on a private Redis that restarts", () => {
  let server: BrokerServer | undefined;
  let redis: Redis | undefined;

  beforeAll(async () => {
    server = await startRedisServer();
    redis = redisClient(server.url);
  });
  afterAll(async () => {
    for (const r of runs.splice(0)) await r.stop();
    await redis?.quit().catch(() => undefined);
    await server?.stop();
  });

  it("reconnects after Redis is killed and restarted (AOF) mid-run, and delivers every entry once acked", async () => {
    const s = "events";
    await addBodies(redis!, s, Array.from({ length: 500 }, (_, n) => ({ n })));
    const run = start({ url: server!.url, stream: s, claim_idle: 200, block: 100 });
    await until(() => run.sink.committed.size >= 100, "100 committed");
    await server!.restart();
    await addBodies(redis!, s, Array.from({ length: 500 }, (_, i) => ({ n: 500 + i })));
    await until(() => new Set(payloadsOf(run).map((p) => p.n)).size === 1000, "all 1000 delivered", 30_000);
    await until(async () => (await pendingCount(redis!, s, "sluice")) === 0, "all acked");
    expect(run.events.some((e) => e.type === "source_connect_failed" && e.attempt === 0)).toBe(true);
  }, 60_000);

  it("stops within shutdown_timeout when Redis stops answering (SIGSTOP) under a blocked read", async () => {
    const s = "hung";
    await addBodies(redis!, s, [{ n: 0 }]);
    const run = start({ url: server!.url, stream: s, block: 5_000 }, { shutdownTimeoutMs: 1_000 });
    await until(() => run.sink.committed.size === 1, "the first entry");
    await new Promise((r) => setTimeout(r, 50));
    server!.signal("SIGSTOP");
    try {
      const started = Date.now();
      const status = await run.stop();
      // shutdown_timeout, then at most the close bounds (the source's LEAVE and QUIT) and a margin.
      expect(Date.now() - started).toBeLessThan(1_000 + 5_000);
      expect(status.tag).toBe("stopped");
    } finally {
      server!.signal("SIGCONT");
    }
  }, 60_000);
});
