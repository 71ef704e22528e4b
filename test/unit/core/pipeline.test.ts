import { describe, expect, it } from "vitest";
import type { Transform } from "../../../src/components/contracts.js";
import { sleep } from "../../../src/core/clock.js";
import { SluiceError } from "../../../src/core/errors.js";
import type { JsonObject } from "../../../src/core/record.js";
import { FakeClock } from "../../helpers/fake-clock.js";
import {
  makePipeline,
  malformed,
  MemoryDeadLetterStore,
  MemorySink,
  MemorySource,
  type MemoryInput,
  type TestPipeline,
  type WriteCall,
  type WriteStep,
} from "../../helpers/memory.js";

/** `n` payloads `{ id: "r-<i>", v: i }`, keyed `k: "k<i % keys>"` when `keys` is given. */
function payloads(n: number, keys?: number): JsonObject[] {
  return Array.from({ length: n }, (_, i): JsonObject => (keys === undefined ? { id: `r-${i}`, v: i } : { id: `r-${i}`, v: i, k: `k${i % keys}` }));
}

function ids(n: number): string[] {
  return Array.from({ length: n }, (_, i) => `r-${i}`);
}

/** Fails the record with id `id` of every write that holds it, permanently (per record). */
function rejectRecord(id: string, then: (call: WriteCall) => WriteStep = () => "ok"): (call: WriteCall) => WriteStep {
  return (call) => {
    const index = call.ids.indexOf(id);
    return index >= 0 ? { fail: [{ index, retryable: false }] } : then(call);
  };
}

/** At the end of a run: nothing in flight, counters add up, and no component saw a contract violation. */
function expectBalanced(tp: TestPipeline, received: number): void {
  const s = tp.metrics.snapshot();
  expect(s.received).toBe(received);
  expect(s.in_flight).toBe(0);
  expect(s.delivered + s.dead_lettered + s.dropped).toBe(s.received);
  expect(tp.pipeline.bufferUsage()).toEqual({ records: 0, bytes: 0 });
  for (const c of [...tp.sources, ...tp.sinks]) expect(c.violations).toEqual([]);
}

function step(stage: string, apply: Transform["apply"]): { stage: string; transform: Transform } {
  return { stage, transform: { apply } };
}

describe("Pipeline, end to end in memory", () => {
  it("delivers every record once, acks the last checkpoint and closes everything", async () => {
    const tp = makePipeline({ inputs: payloads(25), chunkSize: 4, batch: { maxRecords: 3 } });
    expect(await tp.run()).toEqual({ tag: "completed" });
    expect(tp.pipeline.status()).toEqual({ tag: "done", status: { tag: "completed" } });

    expect([...tp.sink.committed.keys()].sort()).toEqual(ids(25).sort());
    expect(tp.sink.commitLog).toHaveLength(25);
    expect(tp.sink.writes.every((w) => w.ids.length <= 3)).toBe(true);
    expect(tp.source.ackCalls.at(-1)).toBe(25);
    const s = tp.metrics.snapshot();
    expect(s.delivered).toBe(25);
    expect(s.sinks).toEqual({ sink: { delivered: 25, new: 25, already_present: 0, dead_lettered: 0 } });
    expectBalanced(tp, 25);
    expect(tp.source.closed && tp.sink.closed && tp.deadLetters.opened && tp.deadLetters.closed).toBe(true);
    expect(tp.deadLetters.entries).toEqual([]);
  });

  it("ends even when a component's close never settles (its service stopped answering): closeAll has its own deadline", async () => {
    const tp = makePipeline({ inputs: payloads(5) });
    tp.sink.close = () => new Promise<void>(() => {});
    const t0 = tp.clock.now();
    expect(await tp.run()).toEqual({ tag: "completed" });
    expect(tp.clock.now() - t0).toBeLessThanOrEqual(6_000);
    expect(tp.source.closed && tp.deadLetters.closed).toBe(true);
  });

  it("runs only once", async () => {
    const tp = makePipeline({ inputs: payloads(1) });
    await tp.run();
    await expect(tp.pipeline.run()).rejects.toMatchObject({ code: "ERR_INTERNAL" });
  });

  it("completes with no input at all", async () => {
    const tp = makePipeline({ inputs: [] });
    expect(await tp.run()).toEqual({ tag: "completed" });
    expect(tp.source.ackCalls).toEqual([]);
    expectBalanced(tp, 0);
  });

  describe("fan-out to two sinks", () => {
    it("counts a record delivered once, when both sinks committed it, and only then acks", async () => {
      const a = new MemorySink({ name: "a" });
      const b = new MemorySink({ name: "b", schedule: () => ({ delayMs: 500, then: "ok" }) });
      const tp = makePipeline({ inputs: payloads(6), sinks: [a, b], chunkSize: 3, batch: { maxRecords: 3 } });
      const running = tp.start();
      await tp.drive(() => a.committed.size === 6);
      // `a` has everything, `b` nothing yet: no record is delivered, no checkpoint moves.
      expect(b.committed.size).toBe(0);
      expect(tp.metrics.snapshot().delivered).toBe(0);
      expect(tp.source.ackCalls).toEqual([]);

      expect(await tp.run(running)).toEqual({ tag: "completed" });
      expect(b.committed.size).toBe(6);
      const s = tp.metrics.snapshot();
      expect(s.delivered).toBe(6);
      expect(s.sinks).toEqual({ a: { delivered: 6, new: 6, already_present: 0, dead_lettered: 0 }, b: { delivered: 6, new: 6, already_present: 0, dead_lettered: 0 } });
      expect(tp.source.ackCalls.at(-1)).toBe(6);
      expectBalanced(tp, 6);
    });

    it("counts a record dead-lettered once when one sink gives up on it", async () => {
      const a = new MemorySink({ name: "a" });
      const b = new MemorySink({ name: "b", schedule: rejectRecord("r-3") });
      const tp = makePipeline({ inputs: payloads(8), sinks: [a, b], chunkSize: 4 });
      expect(await tp.run()).toEqual({ tag: "completed" });

      expect(a.committed.size).toBe(8);
      expect(b.committed.has("r-3")).toBe(false);
      expect(b.committed.size).toBe(7);
      const s = tp.metrics.snapshot();
      expect(s.delivered).toBe(7);
      expect(s.dead_lettered).toBe(1);
      expect(s.sinks).toEqual({ a: { delivered: 8, new: 8, already_present: 0, dead_lettered: 0 }, b: { delivered: 7, new: 7, already_present: 0, dead_lettered: 1 } });
      expect(tp.deadLetters.entries).toHaveLength(1);
      expect(tp.deadLetters.entries[0]).toMatchObject({ sink: "b", code: "ERR_SINK_REJECTED", attempts: 1, record: { id: "r-3" } });
      expect(tp.source.ackCalls.at(-1)).toBe(8);
      expectBalanced(tp, 8);
    });

    it("counts a record dead-lettered by both sinks once, with one dead letter per sink", async () => {
      const a = new MemorySink({ name: "a", schedule: rejectRecord("r-1") });
      const b = new MemorySink({ name: "b", schedule: rejectRecord("r-1") });
      const tp = makePipeline({ inputs: payloads(4), sinks: [a, b] });
      await tp.run();
      const s = tp.metrics.snapshot();
      expect(s.dead_lettered).toBe(1);
      expect(s.delivered).toBe(3);
      expect(s.sinks).toEqual({ a: { delivered: 3, new: 3, already_present: 0, dead_lettered: 1 }, b: { delivered: 3, new: 3, already_present: 0, dead_lettered: 1 } });
      expect(tp.deadLetters.entries.map((e) => e.sink).sort()).toEqual(["a", "b"]);
      expectBalanced(tp, 4);
    });

    it("counts a record already present only when every sink already held it; each sink has its own split", async () => {
      // a held r-0..r-5 from an earlier run, b r-3..r-9; r-5 fails in b after an attempt that committed the rest.
      const a = new MemorySink({ name: "a", stored: ids(6) });
      const b = new MemorySink({ name: "b", stored: ids(10).slice(3), schedule: rejectRecord("r-5") });
      const tp = makePipeline({ inputs: payloads(12), sinks: [a, b], chunkSize: 4, batch: { maxRecords: 4 } });
      expect(await tp.run()).toEqual({ tag: "completed" });
      const s = tp.metrics.snapshot();
      expect(s.sinks).toEqual({
        a: { delivered: 12, new: 6, already_present: 6, dead_lettered: 0 },
        b: { delivered: 11, new: 5, already_present: 6, dead_lettered: 1 },
      });
      // Delivered by both: r-0..r-4 and r-6..r-11; already in both: r-3, r-4.
      expect([s.delivered, s.already_present]).toEqual([11, 2]);
      const summary = tp.metrics.summary(1);
      expect(summary.records).toMatchObject({ delivered: 11, new: 9, already_present: 2, dead_lettered: 1 });
      expect(await tp.metrics.registry.getSingleMetricAsString("sluice_records_already_present_total")).toMatch(/\{sink="a"\} 6\n.*\{sink="b"\} 6/s);
      expectBalanced(tp, 12);
    });
  });

  it("dead-letters malformed source input with stage source:<name>, keeps the raw line, delivers the rest", async () => {
    const inputs: MemoryInput[] = [{ id: "r-0" }, malformed("{oops"), { id: "r-2" }, { id: "r-3" }, malformed("]["), malformed("nope")];
    const tp = makePipeline({ sources: [new MemorySource(inputs, { name: "files" })], chunkSize: 2 });
    expect(await tp.run()).toEqual({ tag: "completed" });

    expect([...tp.sink.committed.keys()]).toEqual(["r-0", "r-2", "r-3"]);
    const dead = tp.deadLetters.entries;
    expect(dead.map((e) => [e.sink, e.code, e.raw, e.record.id, e.attempts])).toEqual([
      ["source:files", "ERR_RECORD_MALFORMED", "{oops", "files:mem-1", 0],
      ["source:files", "ERR_RECORD_MALFORMED", "][", "files:mem-4", 0],
      ["source:files", "ERR_RECORD_MALFORMED", "nope", "files:mem-5", 0],
    ]);
    const s = tp.metrics.snapshot();
    expect([s.delivered, s.dead_lettered]).toEqual([3, 3]);
    // The chunk made only of malformed input is acked too.
    expect(tp.source.ackCalls.at(-1)).toBe(6);
    expectBalanced(tp, 6);
  });

  describe("transforms", () => {
    it("counts a filtered record as dropped{filtered} and still acks its chunk, even a chunk filtered entirely", async () => {
      // With chunks of 2, records 2 and 3 make up a whole chunk that the filter empties.
      const filter = step("transform:module", (p) => ([2, 3, 5].includes(p.v as number) ? null : p));
      const tp = makePipeline({ inputs: payloads(8), chunkSize: 2, transforms: [filter] });
      expect(await tp.run()).toEqual({ tag: "completed" });

      expect([...tp.sink.committed.keys()]).toEqual(["r-0", "r-1", "r-4", "r-6", "r-7"]);
      const s = tp.metrics.snapshot();
      expect([s.delivered, s.dropped]).toEqual([5, 3]);
      const prom = await tp.metrics.registry.getSingleMetricAsString("sluice_records_dropped_total");
      expect(prom).toContain('sluice_records_dropped_total{reason="filtered"} 3');
      expect(tp.source.ackCalls.at(-1)).toBe(8);
      expectBalanced(tp, 8);
    });

    it("filters a last chunk entirely and still acks it", async () => {
      const filter = step("transform:module", (p) => ((p.v as number) >= 4 ? null : p));
      const tp = makePipeline({ inputs: payloads(6), chunkSize: 2, transforms: [filter] });
      await tp.run();
      expect(tp.source.ackCalls.at(-1)).toBe(6);
      expectBalanced(tp, 6);
    });

    it("splits a record into parts with ids <id>#0, <id>#1, counted as received", async () => {
      const split = step("transform:module", (p) => [
        { ...p, part: 0 },
        { ...p, part: 1 },
      ]);
      const tp = makePipeline({ inputs: payloads(3), transforms: [split] });
      await tp.run();
      expect(tp.sink.commitLog).toEqual(["r-0#0", "r-0#1", "r-1#0", "r-1#1", "r-2#0", "r-2#1"]);
      expect(tp.sink.committed.get("r-1#1")!.payload).toEqual({ id: "r-1", v: 1, part: 1 });
      const s = tp.metrics.snapshot();
      expect([s.received, s.delivered]).toEqual([6, 6]);
      expect(tp.source.ackCalls.at(-1)).toBe(3);
      expectBalanced(tp, 6);
    });

    it("dead-letters a record whose transform throws, with stage transform:<name> and a classified code", async () => {
      const boom = step("transform:boom", async (p) => {
        switch (p.v) {
          case 1:
            throw new Error("cannot enrich");
          case 2:
            throw new SluiceError("ERR_RECORD_INVALID", "missing field");
          case 3:
            throw new TypeError("x.y is undefined");
          default:
            return p;
        }
      });
      const sync = step("transform:sync", (p) => {
        if (p.v === 4) throw new Error("sync failure");
        return p;
      });
      const tp = makePipeline({ inputs: payloads(6), chunkSize: 3, transforms: [sync, boom] });
      expect(await tp.run()).toEqual({ tag: "completed" });

      expect([...tp.sink.committed.keys()]).toEqual(["r-0", "r-5"]);
      expect(tp.deadLetters.entries.map((e) => [e.record.id, e.sink, e.code, e.attempts]).sort()).toEqual([
        ["r-1", "transform:boom", "ERR_TRANSFORM_FAILED", 0],
        ["r-2", "transform:boom", "ERR_RECORD_INVALID", 0],
        ["r-3", "transform:boom", "ERR_INTERNAL", 0],
        ["r-4", "transform:sync", "ERR_TRANSFORM_FAILED", 0],
      ]);
      const s = tp.metrics.snapshot();
      expect([s.delivered, s.dead_lettered]).toEqual([2, 4]);
      expect(tp.source.ackCalls.at(-1)).toBe(6);
      expectBalanced(tp, 6);
    });

    it("keeps source order through async transforms that finish in reverse order", async () => {
      const clock = new FakeClock();
      // Later records wait less, so any concurrency inside the chain would reorder them.
      const slow = step("transform:slow", async (p) => {
        await sleep(clock, 100 - (p.v as number) * 10);
        return { ...p, slow: true };
      });
      const fast = step("transform:fast", (p) => Promise.resolve({ ...p, fast: true }));
      const tp = makePipeline({ inputs: payloads(10), chunkSize: 4, transforms: [slow, fast], batch: { maxRecords: 3 }, clock });
      await tp.run();
      expect(tp.sink.commitLog).toEqual(ids(10));
      expect(tp.sink.committed.get("r-9")!.payload).toEqual({ id: "r-9", v: 9, slow: true, fast: true });
      expectBalanced(tp, 10);
    });
  });

  describe("when the buffer is full", () => {
    it("drop_newest drops whole chunks, counts every drop, and still acks them", async () => {
      const sink = new MemorySink({ schedule: () => ({ delayMs: 1000, then: "ok" }) });
      const tp = makePipeline({
        inputs: payloads(20),
        sinks: [sink],
        whenFull: "drop_newest",
        limits: { maxRecords: 4 },
        chunkSize: 2,
        batch: { maxRecords: 2, maxWaitMs: 0 },
      });
      expect(await tp.run()).toEqual({ tag: "completed" });

      const dropped = tp.source.outcomes.filter((o) => o.outcome === "dropped");
      expect(dropped.length).toBeGreaterThan(0);
      expect(tp.source.outcomes.every((o) => o.outcome === "accepted" || o.outcome === "dropped")).toBe(true);
      const s = tp.metrics.snapshot();
      expect(s.dropped).toBe(dropped.length * 2);
      expect(s.delivered).toBe(20 - s.dropped);
      expect(sink.committed.size).toBe(s.delivered);
      const prom = await tp.metrics.registry.getSingleMetricAsString("sluice_records_dropped_total");
      expect(prom).toContain(`sluice_records_dropped_total{reason="buffer_full"} ${s.dropped}`);
      expect(tp.source.ackCalls.at(-1)).toBe(20);
      expectBalanced(tp, 20);
    });

    it("reject answers a push source `rejected` at once; rejected records are not received", async () => {
      const source = new MemorySource(payloads(20), { acks: "individual", whenFull: "reject" });
      const sink = new MemorySink({ schedule: () => ({ delayMs: 1000, then: "ok" }) });
      const tp = makePipeline({ sources: [source], sinks: [sink], whenFull: "reject", limits: { maxRecords: 4 }, chunkSize: 2 });
      await tp.run();
      const rejected = source.outcomes.filter((o) => o.outcome === "rejected");
      const accepted = source.outcomes.filter((o) => o.outcome === "accepted");
      expect(rejected.length).toBeGreaterThan(0);
      expect(rejected.length + accepted.length).toBe(10);
      const s = tp.metrics.snapshot();
      expect(s.received).toBe(accepted.length * 2);
      expect(s.dropped).toBe(0);
      expect(sink.committed.size).toBe(s.received);
      // No time passed while the source was refused: it was never made to wait.
      expect(tp.events.some((e) => e.type === "backpressure")).toBe(false);
      expectBalanced(tp, accepted.length * 2);
    });

    it("reject makes a pull source wait instead (backpressure), and nothing is lost", async () => {
      const sink = new MemorySink({ schedule: () => ({ delayMs: 1000, then: "ok" }) });
      const tp = makePipeline({ inputs: payloads(20), sinks: [sink], whenFull: "reject", limits: { maxRecords: 4 }, chunkSize: 2 });
      await tp.run();
      expect(tp.source.outcomes.every((o) => o.outcome === "accepted")).toBe(true);
      expect(sink.committed.size).toBe(20);
      expect(tp.events.some((e) => e.type === "backpressure" && e.seconds > 0)).toBe(true);
      expectBalanced(tp, 20);
    });
  });

  describe("stopping", () => {
    it("graceful stop: takes no new records, drains what is in flight, flushes partial batches at once", async () => {
      const source = new MemorySource(payloads(1000), { gapMs: 10 });
      const sink = new MemorySink({ schedule: () => ({ delayMs: 30, then: "ok" }) });
      const tp = makePipeline({ sources: [source], sinks: [sink], chunkSize: 5, batch: { maxRecords: 7, maxWaitMs: 60_000 }, shutdownTimeoutMs: 10_000 });
      const t0 = tp.clock.now();
      let draining: unknown;
      tp.clock.setTimer(105, () => {
        tp.pipeline.stop();
        draining = tp.pipeline.status();
        tp.pipeline.stop();
      });
      expect(await tp.run()).toEqual({ tag: "stopped" });

      expect(draining).toEqual({ tag: "draining", deadline: t0 + 105 + 10_000 });
      const taken = source.outcomes.filter((o) => o.outcome === "accepted");
      expect(taken.length).toBe(10);
      expect(sink.committed.size).toBe(50);
      expect(source.ackCalls.at(-1)).toBe(50);
      // The partial batch left at stop time was written then, not after max_wait (60 s).
      expect(tp.clock.now() - t0).toBeLessThan(1000);
      expectBalanced(tp, 50);
    });

    it("stop with a hung sink ends at shutdown_timeout: timed_out, and the undelivered chunk is never acked", async () => {
      const source = new MemorySource(payloads(6), { end: "wait" });
      const sink = new MemorySink({ schedule: (call) => (call.n === 0 ? "ok" : "hang") });
      const tp = makePipeline({ sources: [source], sinks: [sink], chunkSize: 3, batch: { maxRecords: 3 }, shutdownTimeoutMs: 1000 });
      const t0 = tp.clock.now();
      tp.clock.setTimer(50, () => tp.pipeline.stop());
      expect(await tp.run()).toEqual({ tag: "timed_out", unacked: 3 });

      expect(tp.clock.now()).toBe(t0 + 50 + 1000);
      expect(sink.writes.map((w) => w.ids)).toEqual([
        ["r-0", "r-1", "r-2"],
        ["r-3", "r-4", "r-5"],
      ]);
      expect(source.ackCalls).toEqual([3]);
      expect(tp.metrics.snapshot().in_flight).toBe(3);
      expect(sink.closed && source.closed).toBe(true);
    });

    it("times out at shutdown_timeout while a source is still returning from its stop, leaving it behind", async () => {
      const source = new MemorySource(payloads(6), { end: "wait", lingerMs: 3000 });
      const sink = new MemorySink({ schedule: () => "hang" });
      const tp = makePipeline({ sources: [source], sinks: [sink], chunkSize: 2, shutdownTimeoutMs: 1000 });
      const t0 = tp.clock.now();
      tp.clock.setTimer(100, () => tp.pipeline.stop());
      expect(await tp.run()).toEqual({ tag: "timed_out", unacked: 6 });
      expect(tp.clock.now()).toBe(t0 + 100 + 1000);
      expect(source.ackCalls).toEqual([]);
    });

    it("a source that ignores the stop does not hold the run past shutdown_timeout; its undelivered records stay un-acked", async () => {
      /** Enqueues its inputs, then never returns, whatever the signal says (a read stuck in the kernel). */
      class DeafSource extends MemorySource {
        override async run(handle: Parameters<MemorySource["run"]>[0]): Promise<void> {
          await super.run(handle, new AbortController().signal);
          await new Promise<void>(() => {});
        }
      }
      const source = new DeafSource(payloads(6));
      // The first batch commits; the second hangs until the hard abort.
      const sink = new MemorySink({ schedule: (call) => (call.n === 0 ? "ok" : "hang") });
      const tp = makePipeline({ sources: [source], sinks: [sink], chunkSize: 3, batch: { maxRecords: 3 }, shutdownTimeoutMs: 2000 });
      const t0 = tp.clock.now();
      tp.clock.setTimer(50, () => tp.pipeline.stop());
      expect(await tp.run()).toEqual({ tag: "timed_out", unacked: 3 });
      expect(tp.clock.now()).toBe(t0 + 50 + 2000);
      expect(source.ackCalls).toEqual([3]);
      expect(source.closed).toBe(true);
    });

    it.each([
      ["a plain Error", new Error("file vanished"), "ERR_SOURCE_READ"],
      ["a SluiceError", new SluiceError("ERR_CONFIG_INVALID", "bad cursor"), "ERR_CONFIG_INVALID"],
      ["a TypeError", new TypeError("undefined is not iterable"), "ERR_INTERNAL"],
    ])("a source that throws %s fails the run, after draining what it had enqueued", async (_name, thrown, code) => {
      const source = new MemorySource(payloads(10), { failAfterChunks: 2, failWith: thrown });
      const tp = makePipeline({ sources: [source], chunkSize: 2 });
      const status = await tp.run();
      expect(status).toMatchObject({ tag: "failed", unacked: 0, error: { code } });
      if (status.tag === "failed" && !(thrown instanceof SluiceError)) expect(status.error.cause).toBe(thrown);
      expect([...tp.sink.committed.keys()]).toEqual(ids(4));
      expect(source.ackCalls.at(-1)).toBe(4);
      expectBalanced(tp, 4);
    });
  });

  it("fails the run at once, without waiting out shutdown_timeout, when a sink cannot connect for good", async () => {
    const source = new MemorySource(payloads(6));
    const sink = new MemorySink({ connectError: new SluiceError("ERR_SINK_CONNECT", "table has the wrong shape", { retryable: false }) });
    const tp = makePipeline({ sources: [source], sinks: [sink], chunkSize: 2 });
    const t0 = tp.clock.now();
    const status = await tp.run();
    expect(status).toMatchObject({ tag: "failed", error: { code: "ERR_SINK_CONNECT", message: "table has the wrong shape" } });
    expect(sink.connectCalls).toHaveLength(1);
    expect(tp.clock.now() - t0).toBeLessThan(1000);
    expect(source.ackCalls).toEqual([]);
  });

  describe("a sink that cannot connect", () => {
    const refused = () => new MemorySink({ connectFailures: Number.POSITIVE_INFINITY });

    it("ends the run failed at connect_timeout with ERR_SINK_CONNECT, without waiting out shutdown_timeout; nothing acked", async () => {
      const tp = makePipeline({ inputs: payloads(6), sinks: [refused()], chunkSize: 2, connectTimeoutMs: 30_000, shutdownTimeoutMs: 60_000 });
      const t0 = tp.clock.now();
      const status = await tp.run();
      expect(tp.clock.now() - t0).toBe(30_000);
      expect(status).toMatchObject({ tag: "failed", unacked: 6, error: { code: "ERR_SINK_CONNECT" } });
      if (status.tag === "failed") expect(status.error.message).toBe(`sink sink could not connect within 30 s: connect refused (${tp.sink.connectCalls.length})`);
      expect(tp.source.ackCalls).toEqual([]);
      expect(tp.sink.writes).toEqual([]);
      expect(tp.metrics.sinksDown(30_000)).toEqual([`sink sink: connecting, down 30 s: connect refused (${tp.sink.connectCalls.length})`]);
    });

    it("is named while down: sink_connect_failed events with since when and why, and the metrics' sinksDown", async () => {
      const source = new MemorySource(payloads(2), { end: "wait" });
      const tp = makePipeline({ sources: [source], sinks: [refused()] });
      const t0 = tp.clock.now();
      const running = tp.start();
      await tp.drive(() => tp.clock.now() - t0 >= 45_000);
      const failed = tp.events.filter((e) => e.type === "sink_connect_failed");
      expect(failed.length).toBeGreaterThan(3);
      expect(failed.every((e) => e.type === "sink_connect_failed" && e.downSince === t0 && e.sink === "sink")).toBe(true);
      expect(tp.metrics.sinksDown(30_000)).toEqual([expect.stringMatching(/^sink sink: connecting, down 4\d s: connect refused \(\d+\)$/)]);
      tp.pipeline.stop();
      await tp.run(running);
    });

    it("a stop while a sink has never connected ends at once (not after shutdown_timeout), leaving the records un-acked", async () => {
      const source = new MemorySource(payloads(6), { end: "wait" });
      const tp = makePipeline({ sources: [source], sinks: [refused()], chunkSize: 2, shutdownTimeoutMs: 30_000 });
      const t0 = tp.clock.now();
      const running = tp.start();
      await tp.drive(() => tp.metrics.snapshot().received === 6 && tp.clock.now() - t0 >= 5_000);
      const stoppedAt = tp.clock.now();
      tp.pipeline.stop();
      const status = await tp.run(running);
      expect(tp.clock.now() - stoppedAt).toBeLessThan(1000);
      expect(status).toMatchObject({ tag: "failed", unacked: 6, error: { code: "ERR_SINK_CONNECT" } });
      if (status.tag === "failed") expect(status.error.message).toMatch(/^stopped before sink sink connected \(down 5(\.\d)? s: connect refused \(\d+\)\)$/);
      expect(source.ackCalls).toEqual([]);
      expect(tp.sink.closed && tp.source.closed).toBe(true);
    });

    it("a stop while a sink has never connected and nothing is in flight is a clean stop", async () => {
      const source = new MemorySource([], { end: "wait" });
      const tp = makePipeline({ sources: [source], sinks: [refused()], shutdownTimeoutMs: 30_000 });
      const running = tp.start();
      await tp.drive(() => tp.sink.connectCalls.length >= 3);
      const stoppedAt = tp.clock.now();
      tp.pipeline.stop();
      expect(await tp.run(running)).toEqual({ tag: "stopped" });
      expect(tp.clock.now() - stoppedAt).toBeLessThan(1000);
    });

    it("a stop once every sink has connected still drains, even while one retries its writes", async () => {
      const source = new MemorySource(payloads(4), { end: "wait" });
      const sink = new MemorySink({ connectFailures: 2, schedule: ["retryable", "retryable"] });
      const tp = makePipeline({ sources: [source], sinks: [sink], chunkSize: 2, batch: { maxWaitMs: 0 }, shutdownTimeoutMs: 30_000 });
      const running = tp.start();
      await tp.drive(() => sink.writes.length >= 1);
      tp.pipeline.stop();
      expect(await tp.run(running)).toEqual({ tag: "stopped" });
      expect([...sink.committed.keys()].sort()).toEqual(ids(4).sort());
      expectBalanced(tp, 4);
    });
  });

  it("acks checkpoints in order and only over contiguous done chunks", async () => {
    // Keyless chunks go round robin over 2 lanes: chunk 0 (slow) on lane 0, chunk 1 on lane 1.
    const sink = new MemorySink({ schedule: (call) => (call.ids.includes("r-0") ? { delayMs: 1000, then: "ok" } : "ok") });
    const tp = makePipeline({ inputs: payloads(12), sinks: [sink], chunkSize: 2, concurrency: 2, batch: { maxRecords: 2, maxWaitMs: 0 } });
    const running = tp.start();
    await tp.drive(() => sink.committed.has("r-3"));
    // Chunk 1 is committed, chunk 0 is not: its checkpoint must not move.
    expect(sink.committed.has("r-0")).toBe(false);
    expect(tp.source.ackCalls).toEqual([]);

    await tp.run(running);
    expect(tp.source.ackCalls.at(-1)).toBe(12);
    // Strictly increasing, never overlapping (the source checks both and records violations).
    expect(tp.source.violations).toEqual([]);
    expectBalanced(tp, 12);
  });

  it("retries a failing dead-letter store and loses nothing; the checkpoint waits for the dead letter", async () => {
    const dlq = new MemoryDeadLetterStore(2);
    const source = new MemorySource(payloads(9));
    // What the dead-letter store held at each ack. (Asserted afterwards: the engine reports, and
    // so hides, errors thrown by a source's ack.)
    const durableAtAck: [unknown, string[]][] = [];
    source.ackHook = (cp) => void durableAtAck.push([cp, dlq.entries.map((e) => e.record.id)]);
    const tp = makePipeline({ sources: [source], sinks: [new MemorySink({ schedule: rejectRecord("r-4") })], deadLetter: dlq, chunkSize: 3, batch: { maxRecords: 3 } });
    expect(await tp.run()).toEqual({ tag: "completed" });
    expect(dlq.writeCalls).toBe(3);
    expect(dlq.entries).toHaveLength(1);
    expect(dlq.entries[0]).toMatchObject({ sink: "sink", code: "ERR_SINK_REJECTED", record: { id: "r-4" } });
    expect(source.ackCalls.at(-1)).toBe(9);
    // r-4 is in the chunk ending at 6: acking 6 or later before its dead letter is durable would lose it.
    for (const [cp, durable] of durableAtAck) if ((cp as number) >= 6) expect(durable).toEqual(["r-4"]);
    const s = tp.metrics.snapshot();
    expect([s.delivered, s.dead_lettered]).toEqual([8, 1]);
    expectBalanced(tp, 9);
  });

  it("holds received == delivered + dead_lettered + dropped at the end, with every outcome mixed", async () => {
    const inputs: MemoryInput[] = [...payloads(30, 3), malformed("x")];
    const filter = step("transform:module", (p) => (p.v === 7 ? null : p.v === 8 ? [p, { ...p, extra: true }] : p));
    const sink = new MemorySink({
      schedule: rejectRecord("r-11", (call) => (call.n % 3 === 1 ? "retryable" : "ok")),
    });
    const tp = makePipeline({ inputs, sinks: [sink], transforms: [filter], chunkSize: 4, concurrency: 2, batch: { maxRecords: 3 } });
    await tp.run();
    const s = tp.metrics.snapshot();
    // 31 inputs, one split into two: 32 received; r-7 dropped; r-11 and the malformed line dead-lettered.
    expect([s.received, s.delivered, s.dead_lettered, s.dropped]).toEqual([32, 29, 2, 1]);
    expect(s.retried).toBeGreaterThan(0);
    expect(tp.source.ackCalls.at(-1)).toBe(31);
    expectBalanced(tp, 32);
  });

  it("shows a sink's adaptive concurrency limit in sluice_sink_concurrency_limit as it changes", async () => {
    const sink = new MemorySink({ maxInFlight: 8, schedule: () => ({ delayMs: 50, then: "ok" }) });
    const tp = makePipeline({
      inputs: payloads(400, 40),
      sinks: [sink],
      chunkSize: 20,
      concurrency: { tag: "adaptive", initial: 1, max: 6, decreaseRatio: 0.9, ewmaAlpha: 0.4, rttDeviationScale: 2.5 },
      batch: { maxRecords: 5, maxWaitMs: 0 },
    });
    const gauge = async () => (await tp.metrics.registry.getSingleMetric("sluice_sink_concurrency_limit")!.get()).values.map((v) => [v.labels.sink, v.value]);
    expect(await gauge()).toEqual([["sink", 1]]);
    await tp.run();
    const reported = tp.events.flatMap((e) => (e.type === "concurrency_limit" ? [e.limit] : []));
    expect(reported.length).toBeGreaterThan(2);
    expect(await gauge()).toEqual([["sink", reported.at(-1)]]);
    expect(reported.at(-1)).toBeGreaterThan(1);
    expectBalanced(tp, 400);
  });

  describe("a pull source that cannot save its progress", () => {
    /** A source whose acks fail while `failing` says so, and whose close fails if its last ack did. */
    class UnsavedSource extends MemorySource {
      failing = true;
      private lastFailed = false;
      override async ack(checkpoint: unknown): Promise<void> {
        await super.ack(checkpoint);
        this.lastFailed = this.failing;
        if (this.failing) throw new SluiceError("ERR_SOURCE_READ", "EROFS: read-only file system", { location: "/data/checkpoints/src.json" });
      }
      override async close(): Promise<void> {
        await super.close();
        if (this.lastFailed) throw new SluiceError("ERR_SOURCE_READ", "EROFS: read-only file system", { location: "/data/checkpoints/src.json" });
      }
    }

    it("ends failed with ERR_CHECKPOINT_WRITE after delivering everything", async () => {
      const source = new UnsavedSource(payloads(30));
      const tp = makePipeline({ sources: [source] });
      const status = await tp.run();
      expect(status).toMatchObject({
        tag: "failed",
        unacked: 0,
        error: { code: "ERR_CHECKPOINT_WRITE", location: "/data/checkpoints/src.json", message: "source src: progress not saved (EROFS: read-only file system); its records were delivered, but the next run starts again from the last checkpoint saved" },
      });
      expect([...tp.sink.committed.keys()].sort()).toEqual(ids(30).sort());
      expectBalanced(tp, 30);
    });

    it("ends completed when a later ack saved it", async () => {
      const source = new UnsavedSource(payloads(30));
      source.ackHook = () => {
        if (source.ackCalls.length >= 2) source.failing = false;
      };
      const tp = makePipeline({ sources: [source] });
      expect(await tp.run()).toEqual({ tag: "completed" });
      expect([...tp.sink.committed.keys()].sort()).toEqual(ids(30).sort());
    });
  });

  it("ends failed with ERR_DEAD_LETTER_WRITE once dead letters keep failing past deadLetterMaxElapsedMs, leaving their records un-acked", async () => {
    const inputs: MemoryInput[] = [...payloads(10), malformed("{oops"), ...payloads(9).map((p) => ({ ...p, id: `s-${String(p.id)}` }))];
    const tp = makePipeline({ inputs, deadLetter: new MemoryDeadLetterStore(Number.POSITIVE_INFINITY), deadLetterMaxElapsedMs: 2000, shutdownTimeoutMs: 60_000 });
    const started = tp.clock.now();
    const status = await tp.run();
    expect(status).toMatchObject({ tag: "failed", unacked: 10, error: { code: "ERR_DEAD_LETTER_WRITE", message: expect.stringContaining("dead letters could not be written for") } });
    // The chunk holding the malformed line is never acked: the next run reads it again.
    expect(tp.source.ackCalls).toEqual([10]);
    // Ended at once, not after shutdown_timeout.
    expect(tp.clock.now() - started).toBeLessThan(10_000);
    expect(tp.events).toContainEqual({ type: "dead_letter_write_failed", code: "ERR_DEAD_LETTER_WRITE", message: "dead-letter store unavailable" });
  });
});
