/**
 * What a transform may not do to the engine (issue 12, points 3, 5 and 6): hang it (a promise that
 * never settles is dead-lettered at the step's `timeout`, and a hard abort does not wait for it),
 * blow the buffer's bound by splitting (parts count against it as they are produced; more than
 * `max_split` parts dead-letters the record), or rewrite the envelope (the record is dead-lettered
 * with its real id).
 */
import { describe, expect, it } from "vitest";
import type { Sink, Transform } from "../../../src/components/contracts.js";
import { MemoryBuffer } from "../../../src/core/buffer.js";
import { silentLogger } from "../../../src/core/events.js";
import { Pipeline } from "../../../src/core/pipeline.js";
import type { JsonObject } from "../../../src/core/record.js";
import { mapTransform, type PayloadFunction } from "../../../src/transforms/module.js";
import type { ChainStep } from "../../../src/core/transform-chain.js";
import { Metrics } from "../../../src/observability/metrics.js";
import { FakeClock } from "../../helpers/fake-clock.js";
import { guardClock, makePipeline, MemoryDeadLetterStore, MemorySink, MemorySource, runToEnd, type TestPipeline } from "../../helpers/memory.js";

function payloads(n: number): JsonObject[] {
  return Array.from({ length: n }, (_, i): JsonObject => ({ id: `r-${i}`, v: i }));
}

function step(stage: string, apply: Transform["apply"], limits: Partial<Pick<ChainStep, "timeoutMs" | "maxSplit">> = {}): ChainStep {
  return { stage, transform: { apply }, ...limits };
}

function expectBalanced(tp: TestPipeline, received: number): void {
  const s = tp.metrics.snapshot();
  expect(s.received).toBe(received);
  expect(s.in_flight).toBe(0);
  expect(s.delivered + s.dead_lettered + s.dropped).toBe(s.received);
  expect(tp.pipeline.bufferUsage()).toEqual({ records: 0, bytes: 0 });
}

describe("a transform that never settles", () => {
  it("dead-letters the record with ERR_TRANSFORM_TIMEOUT at the step's timeout, and the run goes on", async () => {
    const hang = step("transform:module", (p) => (p.v === 2 ? new Promise<never>(() => {}) : Promise.resolve(p)), { timeoutMs: 30_000 });
    const tp = makePipeline({ inputs: payloads(5), chunkSize: 2, transforms: [hang] });
    const started = tp.clock.now();
    expect(await tp.run()).toEqual({ tag: "completed" });
    expect(tp.clock.now() - started).toBeGreaterThanOrEqual(30_000);
    expect([...tp.sink.committed.keys()].sort()).toEqual(["r-0", "r-1", "r-3", "r-4"]);
    expect(tp.deadLetters.entries.map((e) => [e.record.id, e.sink, e.code])).toEqual([["r-2", "transform:module", "ERR_TRANSFORM_TIMEOUT"]]);
    expect(tp.source.ackCalls.at(-1)).toBe(5);
    expectBalanced(tp, 5);
  });

  it("ignores a timed-out promise that settles later: the record is not also delivered, nor settled twice", async () => {
    const clock = new FakeClock();
    let late: ((p: JsonObject) => void) | undefined;
    const slow = step(
      "transform:module",
      (p) => (p.v === 0 ? new Promise<JsonObject>((resolve) => (late = resolve)) : p),
      { timeoutMs: 1000 },
    );
    const tp = makePipeline({ inputs: payloads(3), chunkSize: 3, transforms: [slow], clock });
    expect(await tp.run()).toEqual({ tag: "completed" });
    late!({ id: "r-0", v: 0, late: true });
    await new Promise((resolve) => setImmediate(resolve));
    expect(tp.sink.committed.has("r-0")).toBe(false);
    expect(tp.deadLetters.entries.map((e) => e.code)).toEqual(["ERR_TRANSFORM_TIMEOUT"]);
    expectBalanced(tp, 3);
  });

  it("does not hold a stop past shutdown_timeout: the record waiting for it stays un-acked", async () => {
    const hang = step("transform:module", () => new Promise<never>(() => {}), { timeoutMs: 600_000 });
    const source = new MemorySource(payloads(3), { end: "wait" });
    const tp = makePipeline({ sources: [source], transforms: [hang], shutdownTimeoutMs: 2000 });
    const running = tp.start();
    await tp.drive(() => tp.metrics.snapshot().received === 3);
    const stoppedAt = tp.clock.now();
    tp.pipeline.stop();
    expect(await tp.run(running)).toEqual({ tag: "timed_out", unacked: 3 });
    expect(tp.clock.now() - stoppedAt).toBe(2000);
    expect(tp.source.ackCalls).toEqual([]);
    expect(tp.deadLetters.entries).toEqual([]);
  });
});

describe("a transform that rewrites the envelope", () => {
  it("dead-letters every record whose id it set, under the record's real id: never one row for 1,000 records", async () => {
    const setId = step("transform:module", (p, record) => {
      (record as { id: string }).id = "same";
      return p;
    });
    const tp = makePipeline({ inputs: payloads(1000), chunkSize: 100, transforms: [setId], limits: { maxRecords: 10_000 } });
    expect(await tp.run()).toEqual({ tag: "completed" });
    expect(tp.sink.committed.size).toBe(0);
    const s = tp.metrics.snapshot();
    expect([s.delivered, s.dead_lettered]).toEqual([0, 1000]);
    expect(new Set(tp.deadLetters.entries.map((e) => e.record.id)).size).toBe(1000);
    expect(tp.deadLetters.entries[0]).toMatchObject({ code: "ERR_TRANSFORM_ENVELOPE", sink: "transform:module" });
    expect(tp.deadLetters.entries[0]!.message).toMatch(/wrote the record's id/);
    expectBalanced(tp, 1000);
  });

  it("gets a frozen view: no ticket, no bookkeeping, so neither receivedAt nor a chunk's ack can be reached", async () => {
    const seen: unknown[] = [];
    const look = step("transform:module", async (p, record) => {
      await Promise.resolve();
      seen.push(record);
      return p;
    });
    const tp = makePipeline({ inputs: payloads(2), transforms: [look] });
    const receivedAt = tp.clock.now();
    await tp.run();
    const view = seen[0] as Record<string, unknown>;
    expect(Object.isFrozen(view)).toBe(true);
    expect(Object.keys(view).sort()).toEqual(["attempts", "eventTime", "id", "key", "receivedAt", "source"]);
    expect("ticket" in view || "pendingSinks" in view || "payload" in view).toBe(false);
    // What the reviewer did: `record.ticket.receivedAt = 0` now throws (no ticket), and the time is the engine's.
    expect(() => ((view as { ticket: { receivedAt: number } }).ticket.receivedAt = 0)).toThrow(TypeError);
    expect(tp.sink.committed.get("r-0")!.receivedAt).toBe(receivedAt);
  });

  it("a view kept and written after its call cannot merge records: strict code dead-letters the writer, sloppy code changes nothing", async () => {
    const strict = (): PayloadFunction => {
      let prev: { id: string } | undefined;
      return (p, record) => {
        if (prev) prev.id = "same";
        prev = record as { id: string };
        return p;
      };
    };
    const tpStrict = makePipeline({ inputs: payloads(5), transforms: [{ stage: "transform:module", transform: mapTransform(strict()) }] });
    expect(await tpStrict.run()).toEqual({ tag: "completed" });
    expect([...tpStrict.sink.committed.keys()]).toEqual(["r-0"]);
    expect(tpStrict.deadLetters.entries.map((e) => [e.record.id, e.code])).toEqual(["r-1", "r-2", "r-3", "r-4"].map((id) => [id, "ERR_TRANSFORM_ENVELOPE"]));
    expectBalanced(tpStrict, 5);

    // A sloppy-mode function, as a CommonJS module has: writes to the frozen view are ignored there.
    const sloppy = new Function("state", "return function (p, record) { if (state.prev) state.prev.id = 'same'; state.prev = record; return p; }")({}) as PayloadFunction;
    const tpSloppy = makePipeline({ inputs: payloads(5), transforms: [{ stage: "transform:module", transform: mapTransform(sloppy) }] });
    expect(await tpSloppy.run()).toEqual({ tag: "completed" });
    expect([...tpSloppy.sink.committed.keys()].sort()).toEqual(["r-0", "r-1", "r-2", "r-3", "r-4"]);
    expect(tpSloppy.metrics.snapshot().delivered).toBe(5);
  });

  it("lets a transform read the envelope and change the payload", async () => {
    const useId = step("transform:module", (p, record) => ({ ...p, from: `${record.source}/${record.id}`, at: record.receivedAt, attempts: record.attempts }));
    const tp = makePipeline({ inputs: payloads(2), transforms: [useId] });
    const at = tp.clock.now();
    await tp.run();
    expect(tp.sink.committed.get("r-1")!.payload).toEqual({ id: "r-1", v: 1, from: "src/r-1", at, attempts: 0 });
  });

  it("builds no view for a function that does not declare record", () => {
    expect(mapTransform((p) => p).takesRecord).toBe(false);
    expect(mapTransform((p, _record) => p).takesRecord).toBe(true);
  });
});

describe("a hard abort while a transform's promise waits", () => {
  it("transforms nothing more of the chunk and hands nothing to the aborted sinks", async () => {
    let calls = 0;
    const hangFirst = step("transform:module", (p) => {
      calls++;
      return p.v === 0 ? new Promise<never>(() => {}) : Promise.resolve(p);
    }, { timeoutMs: 600_000 });
    const source = new MemorySource(payloads(5), { end: "wait" });
    const tp = makePipeline({ sources: [source], chunkSize: 5, transforms: [hangFirst], shutdownTimeoutMs: 2000 });
    const running = tp.start();
    await tp.drive(() => tp.metrics.snapshot().received === 5);
    tp.pipeline.stop();
    expect(await tp.run(running)).toEqual({ tag: "timed_out", unacked: 5 });
    expect(calls).toBe(1);
    expect(tp.sink.writes).toEqual([]);
    expect(tp.source.ackCalls).toEqual([]);
  });
});

describe("a transform that splits records", () => {
  it("dead-letters a record split past max_split with the count, and keeps the others", async () => {
    const split = step("transform:module", (p) => Array.from({ length: p.v === 1 ? 100_000 : 3 }, (_, part) => ({ ...p, part })), { maxSplit: 10_000 });
    const tp = makePipeline({ inputs: payloads(3), transforms: [split] });
    expect(await tp.run()).toEqual({ tag: "completed" });
    expect(tp.deadLetters.entries.map((e) => [e.record.id, e.code])).toEqual([["r-1", "ERR_TRANSFORM_SPLIT"]]);
    expect(tp.deadLetters.entries[0]!.message).toMatch(/into 100000 records, more than max_split \(10000\)/);
    expect(tp.sink.committed.size).toBe(6);
    expectBalanced(tp, 7);
  });

  it("counts parts against the buffer as they are produced: usage never passes max_records", async () => {
    const maxRecords = 100;
    let peak = 0;
    const sample = () => (peak = Math.max(peak, tp.buffer.usage().records));
    const split = step("transform:module", (p) => Array.from({ length: 30 }, (_, part) => ({ ...p, part })));
    const look = step("transform:look", (p) => {
      sample();
      return p;
    });
    const tp = makePipeline({ inputs: payloads(50), chunkSize: 10, transforms: [split, look], limits: { maxRecords } });
    const write = tp.sink.write.bind(tp.sink);
    tp.sink.write = (records, signal) => {
      sample();
      return write(records, signal);
    };
    expect(await tp.run()).toEqual({ tag: "completed" });
    expect(peak).toBeGreaterThan(maxRecords / 2);
    expect(peak).toBeLessThanOrEqual(maxRecords);
    expect(tp.metrics.snapshot().delivered).toBe(1500);
    expectBalanced(tp, 1500);
  });

  it("two splits in a row (200 ways, then 2) run to the end within max_records: no deadlock", async () => {
    const maxRecords = 100;
    let peak = 0;
    const a = step("transform:a", (p) => Array.from({ length: 200 }, (_, part) => ({ ...p, part })));
    const b = step("transform:b", (p) => {
      peak = Math.max(peak, tp.buffer.usage().records);
      return [{ ...p, half: 0 }, { ...p, half: 1 }];
    });
    const tp = makePipeline({ inputs: payloads(3), chunkSize: 3, transforms: [a, b], limits: { maxRecords } });
    expect(await tp.run()).toEqual({ tag: "completed" });
    expect(tp.sink.committed.size).toBe(1200);
    expect(tp.sink.committed.has("r-2#199#1")).toBe(true);
    expect(peak).toBeLessThanOrEqual(maxRecords);
    expectBalanced(tp, 1200);
  });

  it("counts each part at its own size against max_bytes, not its record's", async () => {
    const maxBytes = 20_000;
    let peak = 0;
    const big = "x".repeat(1000);
    const split = step("transform:module", (p) => Array.from({ length: 50 }, (_, part) => ({ ...p, part, big })));
    const tp = makePipeline({ inputs: payloads(4), chunkSize: 1, transforms: [split], limits: { maxRecords: 10_000, maxBytes } });
    const write = tp.sink.write.bind(tp.sink);
    tp.sink.write = (records, signal) => {
      peak = Math.max(peak, tp.buffer.usage().bytes);
      return write(records, signal);
    };
    expect(await tp.run()).toEqual({ tag: "completed" });
    // 50 parts of ~1 KB do not fit 20 KB: counted at the parent's ~20 bytes they all would.
    expect(peak).toBeGreaterThan(maxBytes / 2);
    expect(peak).toBeLessThanOrEqual(maxBytes);
    expectBalanced(tp, 200);
  });

  it("passes the bound by one part only when the chain's own records fill it", async () => {
    let peak = 0;
    const split = step("transform:module", (p) => {
      peak = Math.max(peak, tp.buffer.usage().records);
      return [p, { ...p, second: true }];
    });
    // A chunk as large as the whole bound: nothing else can free room for the first part.
    const tp = makePipeline({ inputs: payloads(10), chunkSize: 10, transforms: [split], limits: { maxRecords: 10 } });
    const write = tp.sink.write.bind(tp.sink);
    tp.sink.write = (records, signal) => {
      peak = Math.max(peak, tp.buffer.usage().records);
      return write(records, signal);
    };
    expect(await tp.run()).toEqual({ tag: "completed" });
    expect(peak).toBe(11);
    expectBalanced(tp, 20);
  });

  it("stops producing parts at the hard abort while a split waits for room: the record stays un-acked", async () => {
    let produced = 0;
    const split = step("transform:module", (p) => Array.from({ length: 50 }, (_, part) => ({ ...p, part })));
    const count = step("transform:count", (p) => {
      produced++;
      return p;
    });
    // Every write hangs: the room the first parts take never comes back.
    const sink = new MemorySink({ schedule: () => "hang" });
    const tp = makePipeline({ inputs: payloads(2), chunkSize: 2, transforms: [split, count], sinks: [sink], limits: { maxRecords: 10 }, shutdownTimeoutMs: 2000 });
    const running = tp.start();
    await tp.drive(() => produced === 8);
    tp.pipeline.stop();
    expect(await tp.run(running)).toEqual({ tag: "timed_out", unacked: 10 });
    expect(produced).toBe(8);
    expect(tp.source.ackCalls).toEqual([]);
  });

  it("runs 20 records split 100,000 ways each to the end within max_records", async () => {
    const clock = new FakeClock();
    let produced = 0;
    let written = 0;
    let mostHeld = 0;
    const split: ChainStep = step(
      "transform:module",
      (p) => {
        mostHeld = Math.max(mostHeld, produced - written);
        produced += 100_000;
        return Array.from({ length: 100_000 }, (_, part) => ({ part, of: p.v as number }));
      },
      { maxSplit: 100_000 },
    );
    const sink: Sink = {
      maxInFlight: 4,
      connect: () => Promise.resolve(),
      write: (records) => {
        written += records.length;
        return Promise.resolve();
      },
      close: () => Promise.resolve(),
    };
    const buffer = new MemoryBuffer({ maxRecords: 10_000, maxBytes: 64 * 1024 * 1024 });
    const metrics = new Metrics(["out"], silentLogger, () => clock.now());
    let peakBuffer = 0;
    const source = new MemorySource(payloads(20));
    source.clock = clock;
    const pipeline = new Pipeline({
      sources: [{ name: "src", source }],
      transforms: [split],
      sinks: [{ name: "out", sink, batch: { maxRecords: 1000, maxBytes: 1024 * 1024 * 1024, maxWaitMs: 100 }, retry: { maxAttempts: 1, maxElapsedMs: 1000, backoff: { initialMs: 1, maxMs: 1, multiplier: 1 } }, concurrency: 4 }],
      deadLetter: new MemoryDeadLetterStore(),
      buffer,
      whenFull: "block",
      chunkSize: 1000,
      shutdownTimeoutMs: 1000,
      clock: guardClock(clock),
      logger: silentLogger,
      emit: (e) => {
        metrics.handle(e);
        peakBuffer = Math.max(peakBuffer, buffer.usage().records);
      },
    });
    expect(await runToEnd(pipeline, clock, { maxSteps: 100_000 })).toEqual({ tag: "completed" });
    const s = metrics.snapshot();
    expect([s.received, s.delivered, s.dead_lettered]).toEqual([2_000_000, 2_000_000, 0]);
    expect(written).toBe(2_000_000);
    // Parts are handed on in slices of the free room: the buffer's bound holds throughout.
    expect(mostHeld).toBeLessThanOrEqual(100_000);
    expect(peakBuffer).toBeLessThanOrEqual(10_000);
    expect(buffer.usage()).toEqual({ records: 0, bytes: 0 });
  }, 60_000);
});
