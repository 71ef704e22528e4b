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
import type { JsonObject, SluiceRecord } from "../../../src/core/record.js";
import type { ChainStep } from "../../../src/core/transform-chain.js";
import { Metrics } from "../../../src/observability/metrics.js";
import { FakeClock } from "../../helpers/fake-clock.js";
import { guardClock, makePipeline, MemoryDeadLetterStore, MemorySource, runToEnd, type TestPipeline } from "../../helpers/memory.js";

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
    expect(tp.deadLetters.entries[0]!.message).toMatch(/changed the record's id/);
    expectBalanced(tp, 1000);
  });

  it("checks key, source and the time received too, after an await as well as after a sync call", async () => {
    const rewrite = step("transform:module", async (p, record) => {
      await Promise.resolve();
      const r = record as unknown as { key: string | undefined; source: string; ticket: unknown };
      if (p.v === 0) r.key = "k";
      if (p.v === 1) r.source = "elsewhere";
      if (p.v === 2) r.ticket = { receivedAt: 0 };
      return p;
    });
    const tp = makePipeline({ inputs: payloads(4), chunkSize: 4, transforms: [rewrite] });
    expect(await tp.run()).toEqual({ tag: "completed" });
    expect([...tp.sink.committed.keys()]).toEqual(["r-3"]);
    expect(tp.deadLetters.entries.map((e) => [e.record.id, e.record.source, e.code, /changed the record's (\w+)/.exec(e.message)?.[1]])).toEqual([
      ["r-0", "src", "ERR_TRANSFORM_ENVELOPE", "key"],
      ["r-1", "src", "ERR_TRANSFORM_ENVELOPE", "source"],
      ["r-2", "src", "ERR_TRANSFORM_ENVELOPE", "receivedAt"],
    ]);
    // The chunk's ticket was put back: it is acked.
    expect(tp.source.ackCalls.at(-1)).toBe(4);
    expectBalanced(tp, 4);
  });

  it("lets a transform read the envelope and change the payload", async () => {
    const useId = step("transform:module", (p, record: SluiceRecord) => ({ ...p, from: `${record.source}/${record.id}` }));
    const tp = makePipeline({ inputs: payloads(2), transforms: [useId] });
    await tp.run();
    expect(tp.sink.committed.get("r-1")!.payload).toEqual({ id: "r-1", v: 1, from: "src/r-1" });
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

  it("counts parts against the buffer as they are produced: pull waits, and the bound is passed by one split at most", async () => {
    const maxRecords = 100;
    let peak = 0;
    const split = step("transform:module", (p) => Array.from({ length: 30 }, (_, part) => ({ ...p, part })));
    const tp = makePipeline({ inputs: payloads(50), chunkSize: 10, transforms: [split], limits: { maxRecords } });
    const write = tp.sink.write.bind(tp.sink);
    tp.sink.write = (records, signal) => {
      peak = Math.max(peak, tp.buffer.usage().records);
      return write(records, signal);
    };
    expect(await tp.run()).toEqual({ tag: "completed" });
    // Each chunk of 10 holds 10 records; each split of one of them adds 29 as it is produced.
    expect(peak).toBeGreaterThan(maxRecords);
    expect(peak).toBeLessThanOrEqual(maxRecords + 29);
    expect(tp.metrics.snapshot().delivered).toBe(1500);
    expectBalanced(tp, 1500);
  });

  it("runs 20 records split 100,000 ways each to the end, never holding two splits' parts at once", async () => {
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
    // One split larger than the whole bound passes alone: the next record waits until its parts are written.
    expect(mostHeld).toBeLessThanOrEqual(100_000);
    expect(peakBuffer).toBeLessThanOrEqual(20 + 100_000);
    expect(buffer.usage()).toEqual({ records: 0, bytes: 0 });
  }, 60_000);
});
