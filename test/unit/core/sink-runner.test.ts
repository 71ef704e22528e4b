import { setMaxListeners } from "node:events";
import { describe, expect, it } from "vitest";
import type { AdaptiveSettings, Concurrency } from "../../../src/core/adaptive-concurrency.js";
import type { BackoffPolicy } from "../../../src/core/backoff.js";
import { DeadLetterWriter } from "../../../src/core/dead-letters.js";
import { SluiceError } from "../../../src/core/errors.js";
import { silentLogger, type InternalEvent } from "../../../src/core/events.js";
import { mulberry32 } from "../../../src/core/random.js";
import type { Entry } from "../../../src/core/record.js";
import { SinkRunner, type BatchOptions, type RetryOptions } from "../../../src/core/sink-runner.js";
import { FakeClock, flush } from "../../helpers/fake-clock.js";
import { driveUntil, guardClock, makeEntry, MemoryDeadLetterStore, MemorySink, type WriteStep } from "../../helpers/memory.js";

interface HarnessOptions {
  readonly sink: MemorySink;
  readonly batch?: Partial<BatchOptions>;
  readonly retry?: Partial<RetryOptions>;
  readonly connectTimeoutMs?: number;
  readonly concurrency?: Concurrency;
  readonly random?: () => number;
}

/**
 * A SinkRunner on a FakeClock starting at t=0, with a real DeadLetterWriter over an in-memory
 * store. `done` logs every onDone call; `settled` counts the records reported done; `limits` logs
 * every concurrency limit reported, with the time.
 */
function harness(o: HarnessOptions) {
  const clock = new FakeClock(0);
  o.sink.clock ??= clock;
  const random = o.random ?? mulberry32(3);
  const abort = new AbortController();
  // Every write of a MemorySink in flight waits on this signal; the adaptive tests run a dozen at once.
  setMaxListeners(64, abort.signal);
  const dlq = new MemoryDeadLetterStore();
  const events: InternalEvent[] = [];
  const done: { ids: string[]; deadLettered: boolean; at: number }[] = [];
  const limits: { at: number; limit: number }[] = [];
  const engineClock = guardClock(clock);
  const deadLetters = new DeadLetterWriter(dlq, engineClock, random, { initialMs: 10, maxMs: 100, multiplier: 2 }, silentLogger, abort.signal);
  const runner = new SinkRunner({
    name: "sink",
    sink: o.sink,
    batch: { maxRecords: 100, maxBytes: 1_000_000, maxWaitMs: 1000, ...o.batch },
    retry: { maxAttempts: 5, maxElapsedMs: 600_000, backoff: { initialMs: 100, maxMs: 10_000, multiplier: 2 }, ...o.retry },
    connectTimeoutMs: o.connectTimeoutMs,
    concurrency: o.concurrency ?? 1,
    clock: engineClock,
    random,
    emit: (e) => {
      events.push(e);
      if (e.type === "concurrency_limit") limits.push({ at: clock.now(), limit: e.limit });
    },
    logger: silentLogger,
    deadLetters,
    signal: abort.signal,
    onDone: (records, deadLettered) => done.push({ ids: records.map((r) => r.id), deadLettered, at: clock.now() }),
  });
  const settled = () => done.reduce((n, d) => n + d.ids.length, 0);
  return {
    clock,
    runner,
    dlq,
    events,
    done,
    limits,
    abort,
    settled,
    /** The concurrency limit reported last. */
    limit: () => limits.at(-1)?.limit,
    /** Drives the clock until `n` records are reported done. */
    until: (n: number) => driveUntil(clock, () => settled() >= n),
  };
}

function entries(n: number, o: { bytes?: number; key?: (i: number) => string | undefined; prefix?: string } = {}): Entry[] {
  return Array.from({ length: n }, (_, i) => makeEntry(`${o.prefix ?? "r"}-${i}`, { bytes: o.bytes ?? 10, key: o.key?.(i) }));
}

const always =
  (step: WriteStep) =>
  (): WriteStep =>
    step;

describe("SinkRunner", () => {
  describe("batching", () => {
    it("cuts batches at max_records; the rest waits max_wait from its first record", async () => {
      const sink = new MemorySink();
      const h = harness({ sink, batch: { maxRecords: 4, maxWaitMs: 1000 } });
      void h.runner.start();
      await flush();
      h.runner.accept(entries(10));
      await h.until(10);
      expect(sink.writes.map((w) => [w.at, w.ids.length])).toEqual([
        [0, 4],
        [0, 4],
        [1000, 2],
      ]);
      expect(sink.commitLog).toEqual(entries(10).map((e) => e.id));
    });

    it("cuts batches at max_bytes, and sends a record larger than max_bytes alone", async () => {
      const sink = new MemorySink();
      const h = harness({ sink, batch: { maxBytes: 250, maxWaitMs: 1000 } });
      void h.runner.start();
      await flush();
      const [a, b, c] = entries(3, { bytes: 100 });
      const big = makeEntry("big", { bytes: 1000 });
      const [d, e] = entries(2, { bytes: 100, prefix: "s" });
      h.runner.accept([a!, b!, c!, big, d!, e!]);
      await h.until(6);
      expect(sink.writes.map((w) => w.ids)).toEqual([["r-0", "r-1"], ["r-2"], ["big"], ["s-0", "s-1"]]);
      // Only the last batch, under both limits, waited for max_wait.
      expect(sink.writes.map((w) => w.at)).toEqual([0, 0, 0, 1000]);
    });

    it("writes a partial batch when max_wait passes since its first record, not earlier", async () => {
      const sink = new MemorySink();
      const h = harness({ sink, batch: { maxRecords: 10, maxWaitMs: 1000 } });
      void h.runner.start();
      await flush();
      h.runner.accept(entries(1));
      await h.clock.advanceAsync(500);
      h.runner.accept([makeEntry("late")]);
      await h.clock.advanceAsync(499);
      expect(sink.writes).toEqual([]);
      await h.clock.advanceAsync(1);
      expect(sink.writes.map((w) => [w.at, w.ids])).toEqual([[1000, ["r-0", "late"]]]);
    });

    it("drain() writes a partial batch at once instead of waiting for max_wait", async () => {
      const sink = new MemorySink();
      const h = harness({ sink, batch: { maxRecords: 10, maxWaitMs: 60_000 } });
      void h.runner.start();
      await flush();
      h.runner.accept(entries(3));
      await h.clock.advanceAsync(10);
      expect(sink.writes).toEqual([]);
      h.runner.drain();
      await flush();
      expect(sink.writes.map((w) => [w.at, w.ids.length])).toEqual([[10, 3]]);
    });
  });

  describe("coalescing (the sink's preferredWrite)", () => {
    it("joins the batches waiting in a lane into one write, whole and in order, up to the sink's records", async () => {
      const sink = new MemorySink({ preferredWrite: { maxRecords: 10, maxBytes: 1_000_000 }, schedule: always({ delayMs: 100, then: "ok" }) });
      const h = harness({ sink, batch: { maxRecords: 4, maxWaitMs: 1000 } });
      void h.runner.start();
      await flush();
      h.runner.accept(entries(30));
      await h.until(30);
      // Two batches of 4 fit in 10, a third would not; the last write is a batch and the partial one after it.
      expect(sink.writes.map((w) => [w.at, w.ids.length])).toEqual([
        [0, 8],
        [100, 8],
        [200, 8],
        [300, 6],
      ]);
      expect(sink.commitLog).toEqual(entries(30).map((e) => e.id));
      // Each write's records are reported done once, after that write committed.
      expect(h.done.map((d) => [d.at, d.ids.length])).toEqual([
        [100, 8],
        [200, 8],
        [300, 8],
        [400, 6],
      ]);
    });

    it("keeps to the sink's bytes, and still writes a single batch larger than them", async () => {
      const sink = new MemorySink({ preferredWrite: { maxRecords: 1000, maxBytes: 250 } });
      const h = harness({ sink, batch: { maxRecords: 2, maxWaitMs: 1000 } });
      void h.runner.start();
      await flush();
      const small = entries(5, { bytes: 50 });
      const big = entries(2, { bytes: 200, prefix: "big" });
      h.runner.accept([...small, ...big]);
      await h.until(7);
      // Batches of 2: 100, 100, 250 (r-4 and big-0), 200 bytes. The first two fit in 250 together, the third not with
      // them; it is 250 alone, and big-1 would take it past. A batch over the bound still goes: big-1, with a max of 150.
      expect(sink.writes.map((w) => w.ids)).toEqual([["r-0", "r-1", "r-2", "r-3"], ["r-4", "big-0"], ["big-1"]]);
      const alone = new MemorySink({ preferredWrite: { maxRecords: 1000, maxBytes: 150 } });
      const h2 = harness({ sink: alone, batch: { maxRecords: 2, maxWaitMs: 1000 } });
      void h2.runner.start();
      await flush();
      h2.runner.accept(entries(4, { bytes: 200 }));
      await h2.until(4);
      expect(alone.writes.map((w) => w.ids.length)).toEqual([2, 2]);
    });

    it("writes one batch at a time when the sink prefers nothing larger", async () => {
      const sink = new MemorySink({ schedule: always({ delayMs: 100, then: "ok" }) });
      const h = harness({ sink, batch: { maxRecords: 4, maxWaitMs: 1000 } });
      void h.runner.start();
      await flush();
      h.runner.accept(entries(12));
      await h.until(12);
      expect(sink.writes.map((w) => w.ids.length)).toEqual([4, 4, 4]);
    });

    it("retries a joined write whole and reports its records done only after the retry committed", async () => {
      const sink = new MemorySink({ preferredWrite: { maxRecords: 100, maxBytes: 1_000_000 }, schedule: ["ok", "retryable", "ok"] });
      const h = harness({ sink, batch: { maxRecords: 3, maxWaitMs: 1000 }, random: () => 0.999 });
      void h.runner.start();
      await flush();
      h.runner.accept(entries(3));
      // The lane is writing the first batch; these wait and go out joined.
      h.runner.accept(entries(7, { prefix: "s" }));
      await h.until(10);
      expect(sink.writes.map((w) => [w.at, w.ids.length])).toEqual([
        [0, 3],
        [0, 7],
        [99, 7],
      ]);
      expect(h.done).toEqual([
        { ids: ["r-0", "r-1", "r-2"], deadLettered: false, at: 0 },
        { ids: entries(7, { prefix: "s" }).map((e) => e.id), deadLettered: false, at: 99 },
      ]);
      expect(sink.commitLog).toEqual([...entries(3), ...entries(7, { prefix: "s" })].map((e) => e.id));
    });

    it("maps per-record failures of a joined write to their records: only those are dead-lettered", async () => {
      const sink = new MemorySink({
        preferredWrite: { maxRecords: 100, maxBytes: 1_000_000 },
        schedule: [{ delayMs: 10, then: "ok" }, { fail: [{ index: 4, retryable: false }] }],
      });
      const h = harness({ sink, batch: { maxRecords: 2, maxWaitMs: 1000 } });
      void h.runner.start();
      await flush();
      h.runner.accept(entries(2));
      h.runner.accept(entries(6, { prefix: "s" }));
      await h.until(8);
      expect(sink.writes.map((w) => w.ids.length)).toEqual([2, 6]);
      expect(h.dlq.entries.map((e) => e.record.id)).toEqual(["s-4"]);
      expect(h.done.filter((d) => d.deadLettered).flatMap((d) => d.ids)).toEqual(["s-4"]);
      expect(h.done.filter((d) => !d.deadLettered).flatMap((d) => d.ids).sort()).toEqual(["r-0", "r-1", "s-0", "s-1", "s-2", "s-3", "s-5"]);
      expect(h.settled()).toBe(8);
    });
  });

  describe("retry", () => {
    it("retries a retryable failure after full-jitter backoff delays within their caps", async () => {
      const sink = new MemorySink({ schedule: ["retryable", "retryable", "retryable", "ok"] });
      const h = harness({ sink, random: () => 0.999, retry: { backoff: { initialMs: 100, maxMs: 10_000, multiplier: 2 } } });
      void h.runner.start();
      await flush();
      h.runner.accept(entries(2));
      h.runner.drain();
      await h.until(2);
      // Caps 100, 200, 400 ms; random 0.999 takes the top of each range.
      expect(sink.writes.map((w) => w.at)).toEqual([0, 99, 298, 697]);
      const retried = h.events.filter((e) => e.type === "records_retried");
      expect(retried.map((e) => [e.count, e.code, e.delayMs])).toEqual([
        [2, "ERR_SINK_WRITE", 99],
        [2, "ERR_SINK_WRITE", 199],
        [2, "ERR_SINK_WRITE", 399],
      ]);
      expect(h.done).toEqual([{ ids: ["r-0", "r-1"], deadLettered: false, at: 697 }]);
      expect(sink.committed.get("r-0")!.attempts).toBe(4);
    });

    it("waits exactly the jittered delay it reports, never more than the cap", async () => {
      const policy: BackoffPolicy = { initialMs: 50, maxMs: 1000, multiplier: 3 };
      const sink = new MemorySink({ schedule: always("retryable") });
      const h = harness({ sink, random: mulberry32(11), retry: { maxAttempts: 12, backoff: policy } });
      void h.runner.start();
      await flush();
      h.runner.accept(entries(1));
      h.runner.drain();
      await h.until(1);
      const gaps = sink.writes.slice(1).map((w, i) => w.at - sink.writes[i]!.at);
      const reported = h.events.flatMap((e) => (e.type === "records_retried" ? [e.delayMs] : []));
      expect(gaps).toHaveLength(11);
      expect(gaps).toEqual(reported);
      gaps.forEach((gap, i) => {
        expect(gap).toBeGreaterThanOrEqual(0);
        expect(gap).toBeLessThanOrEqual(Math.min(policy.maxMs, policy.initialMs * policy.multiplier ** i));
      });
      // Jittered, not the cap every time.
      expect(new Set(gaps.slice(4)).size).toBeGreaterThan(1);
    });

    it("dead-letters after max_attempts with the last error code, the attempts and the first/last failure times", async () => {
      const sink = new MemorySink({ schedule: ["retryable", { throw: new Error("ECONNRESET") }, { throw: new SluiceError("ERR_CHAOS_TRANSIENT", "flaky") }] });
      const h = harness({ sink, random: () => 0.5, retry: { maxAttempts: 3 } });
      void h.runner.start();
      await flush();
      h.runner.accept(entries(2));
      h.runner.drain();
      await h.until(2);
      expect(sink.writes.map((w) => w.at)).toEqual([0, 50, 150]);
      expect(sink.committed.size).toBe(0);
      expect(h.dlq.entries.map((e) => ({ ...e, record: e.record.id }))).toEqual(
        ["r-0", "r-1"].map((id) => ({
          record: id,
          raw: undefined,
          sink: "sink",
          code: "ERR_CHAOS_TRANSIENT",
          message: "flaky",
          attempts: 3,
          firstFailureAt: 0,
          lastFailureAt: 150,
        })),
      );
      expect(h.done).toEqual([{ ids: ["r-0", "r-1"], deadLettered: true, at: 150 }]);
      expect(h.events.filter((e) => e.type === "records_dead_lettered")).toEqual([{ type: "records_dead_lettered", sink: "sink", code: "ERR_CHAOS_TRANSIENT", count: 2, firstRecordId: "r-0", message: "flaky" }]);
    });

    it("dead-letters once max_elapsed would pass, and starts no attempt after it", async () => {
      const sink = new MemorySink({ schedule: always("retryable") });
      const h = harness({
        sink,
        random: () => 0.999,
        retry: { maxAttempts: 100, maxElapsedMs: 1000, backoff: { initialMs: 300, maxMs: 300, multiplier: 1 } },
      });
      void h.runner.start();
      await flush();
      h.runner.accept(entries(1));
      h.runner.drain();
      await h.until(1);
      // Attempts at 0, 299, 598, 897; the next would start at 1196, past max_elapsed.
      expect(sink.writes.map((w) => w.at)).toEqual([0, 299, 598, 897]);
      expect(h.dlq.entries).toHaveLength(1);
      expect(h.dlq.entries[0]).toMatchObject({ code: "ERR_SINK_WRITE", attempts: 4, firstFailureAt: 0, lastFailureAt: 897 });
    });

    it("commits the good records of a batch and retries or dead-letters only the failing ones", async () => {
      const sink = new MemorySink({
        schedule: [
          {
            fail: [
              { index: 1, retryable: true },
              { index: 3, retryable: false },
            ],
          },
          "ok",
        ],
      });
      const h = harness({ sink, random: () => 0.5 });
      void h.runner.start();
      await flush();
      h.runner.accept(entries(4));
      h.runner.drain();
      await h.until(4);
      expect(sink.writes.map((w) => w.ids)).toEqual([["r-0", "r-1", "r-2", "r-3"], ["r-1"]]);
      expect(sink.commitLog).toEqual(["r-0", "r-2", "r-1"]);
      expect(h.dlq.entries.map((e) => [e.record.id, e.code, e.attempts, e.message])).toEqual([["r-3", "ERR_SINK_REJECTED", 1, "record r-3 violates a constraint"]]);
      expect(h.events.filter((e) => e.type === "records_retried").map((e) => e.count)).toEqual([1]);
      expect(h.done.map((d) => [d.ids, d.deadLettered])).toEqual([
        [["r-0", "r-2"], false],
        [["r-3"], true],
        [["r-1"], false],
      ]);
    });

    it("dead-letters a record that keeps failing on its own while the rest of its batch is committed", async () => {
      const sink = new MemorySink({
        schedule: (call) => {
          const index = call.ids.indexOf("r-2");
          return index >= 0 ? { fail: [{ index, retryable: true }] } : "ok";
        },
      });
      const h = harness({ sink, random: () => 0.5, retry: { maxAttempts: 3 } });
      void h.runner.start();
      await flush();
      h.runner.accept(entries(4));
      h.runner.drain();
      await h.until(4);
      expect(sink.writes.map((w) => w.ids)).toEqual([["r-0", "r-1", "r-2", "r-3"], ["r-2"], ["r-2"]]);
      expect(h.dlq.entries.map((e) => [e.record.id, e.code, e.attempts, e.firstFailureAt, e.lastFailureAt])).toEqual([["r-2", "ERR_SINK_WRITE", 3, 0, 150]]);
    });

    it.each([
      ["a permanent SluiceError", "permanent" as WriteStep, "ERR_SINK_REJECTED"],
      ["a TypeError (a bug)", { throw: new TypeError("cannot read properties of undefined") } as WriteStep, "ERR_INTERNAL"],
      ["a SluiceError marked not retryable", { throw: new SluiceError("ERR_SINK_WRITE", "disk full", { retryable: false }) } as WriteStep, "ERR_SINK_WRITE"],
    ])("never retries %s: the whole batch is dead-lettered after one attempt", async (_name, failure, code) => {
      const sink = new MemorySink({ schedule: [failure] });
      const h = harness({ sink });
      void h.runner.start();
      await flush();
      h.runner.accept(entries(3));
      h.runner.drain();
      await h.until(3);
      expect(sink.writes).toHaveLength(1);
      expect(h.dlq.entries.map((e) => [e.code, e.attempts])).toEqual([
        [code, 1],
        [code, 1],
        [code, 1],
      ]);
      expect(h.events.some((e) => e.type === "records_retried")).toBe(false);
    });

    it("leaves records alone (neither done nor dead-lettered) when the hard deadline aborts a retry wait", async () => {
      const sink = new MemorySink({ schedule: always("retryable") });
      const h = harness({ sink, random: () => 0.999, retry: { backoff: { initialMs: 1000, maxMs: 1000, multiplier: 1 } } });
      void h.runner.start();
      await flush();
      h.runner.accept(entries(2));
      h.runner.drain();
      await h.clock.advanceAsync(500);
      h.abort.abort();
      await h.clock.advanceAsync(5000);
      expect(sink.writes).toHaveLength(1);
      expect(h.done).toEqual([]);
      expect(h.dlq.writeCalls).toBe(0);
      expect(h.clock.pendingTimers).toBe(0);
    });
  });

  describe("concurrency", () => {
    async function maxWritesAtOnce(concurrency: number, maxInFlight: number): Promise<MemorySink> {
      const sink = new MemorySink({ maxInFlight, schedule: always({ delayMs: 100, then: "ok" }) });
      const h = harness({ sink, concurrency, batch: { maxRecords: 2, maxWaitMs: 0 } });
      void h.runner.start();
      await flush();
      h.runner.accept(entries(60, { key: (i) => `k${i % 12}` }));
      await h.until(60);
      expect(sink.committed.size).toBe(60);
      expect(sink.violations).toEqual([]);
      return sink;
    }

    it("never has more batches in flight than `concurrency`", async () => {
      expect((await maxWritesAtOnce(3, 64)).maxConcurrentWrites).toBe(3);
    });

    it("is capped by the sink's maxInFlight", async () => {
      expect((await maxWritesAtOnce(8, 2)).maxConcurrentWrites).toBe(2);
    });

    it("keeps each key's records in order across lanes and retries", async () => {
      let n = 0;
      const sink = new MemorySink({ schedule: () => (n++ % 3 === 0 ? "retryable" : { delayMs: (n * 37) % 50, then: "ok" }) });
      const h = harness({ sink, concurrency: 4, batch: { maxRecords: 3, maxWaitMs: 0 } });
      void h.runner.start();
      await flush();
      const all = entries(40, { key: (i) => `k${i % 5}` });
      h.runner.accept(all.slice(0, 20));
      h.runner.accept(all.slice(20));
      await h.until(40);
      for (const [key, order] of sink.orderByKey) {
        expect(order).toEqual(all.filter((e) => e.key === key).map((e) => e.id));
      }
    });
  });

  describe("adaptive concurrency", () => {
    const adaptive = (o: Partial<AdaptiveSettings> = {}): AdaptiveSettings => ({
      tag: "adaptive",
      initial: 1,
      max: 8,
      decreaseRatio: 0.9,
      ewmaAlpha: 0.4,
      rttDeviationScale: 2.5,
      ...o,
    });

    /** A sink whose writes take `latencyMs(now, inFlight)` and then do `then(now)`; it logs, per write, how many ran at once and the limit then. */
    function timedSink(latencyMs: (now: number, inFlight: number) => number, then: (now: number) => WriteStep = () => "ok") {
      const starts: { at: number; inFlight: number; limit: number | undefined }[] = [];
      const ref: { limit?: () => number | undefined } = {};
      const sink: MemorySink = new MemorySink({
        schedule: (call) => ({ delayMs: latencyMs(call.at, sink.inFlight), then: then(call.at) }),
        onWrite: (call) => starts.push({ at: call.at, inFlight: sink.inFlight, limit: ref.limit?.() }),
      });
      return { sink, starts, ref };
    }

    /** Time-weighted mean of the reported limit over [from, to). */
    function meanLimit(limits: readonly { at: number; limit: number }[], from: number, to: number): number {
      let sum = 0;
      for (let i = 0; i < limits.length; i++) {
        const start = Math.max(from, limits[i]!.at);
        const end = Math.min(to, limits[i + 1]?.at ?? to);
        if (end > start) sum += limits[i]!.limit * (end - start);
      }
      return sum / (to - from);
    }

    it("grows the limit one step at a time while latency stays flat, and never writes more batches at once than the limit", async () => {
      const { sink, starts, ref } = timedSink(() => 100);
      const h = harness({ sink, concurrency: adaptive({ initial: 1, max: 8 }), batch: { maxRecords: 5, maxWaitMs: 0 } });
      ref.limit = h.limit;
      void h.runner.start();
      await flush();
      const all = entries(400, { key: (i) => `k${i % 40}` });
      h.runner.accept(all);
      await h.until(400);
      expect(h.limits.map((l) => l.limit)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
      expect(starts.filter((w) => w.at === 0)).toHaveLength(1);
      for (const w of starts) expect(w.inFlight, `write at ${w.at}`).toBeLessThanOrEqual(w.limit!);
      expect(sink.maxConcurrentWrites).toBe(8);
      expect(sink.violations).toEqual([]);
      for (const [key, order] of sink.orderByKey) expect(order).toEqual(all.filter((e) => e.key === key).map((e) => e.id));
    });

    it("shrinks the limit while the sink fails with retryable errors, and grows it back after", async () => {
      const { sink } = timedSink(
        () => 100,
        (now) => (now >= 2000 && now < 3000 ? "retryable" : "ok"),
      );
      const h = harness({
        sink,
        concurrency: adaptive({ initial: 1, max: 8 }),
        batch: { maxRecords: 5, maxWaitMs: 0 },
        retry: { maxAttempts: 100, backoff: { initialMs: 50, maxMs: 200, multiplier: 2 } },
      });
      void h.runner.start();
      await flush();
      const all = entries(4000, { key: (i) => `k${i % 64}` });
      h.runner.accept(all);
      await h.until(4000);
      const at = (from: number, to: number) => h.limits.filter((l) => l.at >= from && l.at < to).map((l) => l.limit);
      expect(h.limit()).toBe(8);
      expect(Math.max(...at(0, 2000))).toBe(8);
      // Ten windows of errors: down to the floor of 1 (8 * 0.9^n, one step at least each time).
      expect(Math.min(...at(2000, 3200))).toBe(1);
      expect(Math.max(...at(3200, Number.POSITIVE_INFINITY))).toBe(8);
      expect(h.dlq.entries).toEqual([]);
      expect(sink.committed.size).toBe(4000);
      for (const [key, order] of sink.orderByKey) expect(order).toEqual(all.filter((e) => e.key === key).map((e) => e.id));
    });

    it("shrinks the limit when latency rises without errors", async () => {
      const { sink } = timedSink((now) => (now < 2000 ? 100 : 300));
      const h = harness({ sink, concurrency: adaptive({ initial: 1, max: 8 }), batch: { maxRecords: 5, maxWaitMs: 0 } });
      void h.runner.start();
      await flush();
      h.runner.accept(entries(3000, { key: (i) => `k${i % 64}` }));
      await h.until(3000);
      const before = h.limits.filter((l) => l.at < 2000);
      const after = h.limits.filter((l) => l.at >= 2000 && l.at < 2700);
      expect(before.at(-1)!.limit).toBe(8);
      expect(after.length).toBeGreaterThan(0);
      expect(after[0]!.limit).toBe(7);
      expect(h.events.some((e) => e.type === "records_retried")).toBe(false);
    });

    /**
     * Two ways a sink gets slower past N writes at once, both 100 ms per write up to N:
     * `shared`, N units of capacity shared by the writes in flight when one starts (each takes
     * 100 * inFlight / N ms); `queue`, N workers and a queue in front of them (a write waits for a
     * free worker, then takes 100 ms).
     */
    function saturatingLatency(model: "shared" | "queue", N: number): (now: number, inFlight: number) => number {
      if (model === "shared") return (_now, inFlight) => (inFlight <= N ? 100 : (100 * inFlight) / N);
      const freeAt = Array.from({ length: N }, () => 0);
      return (now) => {
        const worker = freeAt.indexOf(Math.min(...freeAt));
        const done = Math.max(now, freeAt[worker]!) + 100;
        freeAt[worker] = done;
        return done - now;
      };
    }

    it.each([
      ["shared", 2],
      ["shared", 4],
      ["shared", 10],
      ["queue", 3],
      ["queue", 6],
      ["queue", 12],
    ] as const)("settles near N when the sink gets slower past N writes at once (%s, N = %i)", async (model, N) => {
      const { sink } = timedSink(saturatingLatency(model, N));
      const h = harness({ sink, concurrency: adaptive({ initial: 1, max: 16 }), batch: { maxRecords: 5, maxWaitMs: 0 } });
      void h.runner.start();
      await flush();
      h.runner.accept(entries(6000, { key: (i) => `k${i % 128}` }));
      await h.until(6000);
      // The second half of the run, after the climb: the limit in effect at its start, and every change after.
      const end = h.clock.now();
      const late = h.limits.filter((l, i) => l.at >= end / 2 || (h.limits[i + 1]?.at ?? end) > end / 2).map((l) => l.limit);
      // Past N an increase brings no throughput, only queueing, and is taken back: N and N + 1 alternate.
      expect(Math.min(...late)).toBeGreaterThanOrEqual(N - 1);
      expect(Math.max(...late)).toBeLessThanOrEqual(N + 1);
      const mean = meanLimit(h.limits, end / 2, end);
      expect(mean).toBeGreaterThanOrEqual(N - 0.5);
      expect(mean).toBeLessThanOrEqual(N + 1);
    });

    it("sends keyless records to a lane that can write them, so a low limit does not leave batches waiting for max_wait", async () => {
      const { sink } = timedSink(() => 100);
      const h = harness({ sink, concurrency: adaptive({ initial: 1, max: 8 }), batch: { maxRecords: 10, maxWaitMs: 60_000 } });
      void h.runner.start();
      await flush();
      // Chunks of half a batch: spread round-robin over 8 lanes, each lane would hold a partial batch.
      for (let c = 0; c < 8; c++) h.runner.accept(entries(5, { prefix: `c${c}` }));
      await h.until(40);
      expect(sink.writes.map((w) => w.ids.length)).toEqual([10, 10, 10, 10]);
      expect(h.clock.now()).toBeLessThan(1000);
    });

    it("keeps each key's records in order across lanes and retries", async () => {
      let n = 0;
      const sink = new MemorySink({ schedule: () => (n++ % 3 === 0 ? "retryable" : { delayMs: (n * 37) % 50, then: "ok" }) });
      const h = harness({ sink, concurrency: adaptive({ initial: 2, max: 6 }), batch: { maxRecords: 3, maxWaitMs: 0 } });
      void h.runner.start();
      await flush();
      const all = entries(60, { key: (i) => (i % 7 === 0 ? undefined : `k${i % 5}`) });
      h.runner.accept(all.slice(0, 30));
      h.runner.accept(all.slice(30));
      await h.until(60);
      expect(sink.committed.size).toBe(60);
      for (const [key, order] of sink.orderByKey) {
        expect(order).toEqual(all.filter((e) => e.key === key).map((e) => e.id));
      }
    });

    it("is capped by the sink's maxInFlight", async () => {
      const sink = new MemorySink({ maxInFlight: 3, schedule: always({ delayMs: 100, then: "ok" }) });
      const h = harness({ sink, concurrency: adaptive({ initial: 1, max: 16 }), batch: { maxRecords: 2, maxWaitMs: 0 } });
      void h.runner.start();
      await flush();
      h.runner.accept(entries(200, { key: (i) => `k${i % 30}` }));
      await h.until(200);
      expect(Math.max(...h.limits.map((l) => l.limit))).toBe(3);
      expect(sink.maxConcurrentWrites).toBe(3);
      expect(sink.violations).toEqual([]);
    });

    it("reports a fixed concurrency once, as the number of lanes", () => {
      const h = harness({ sink: new MemorySink({ maxInFlight: 2 }), concurrency: 5 });
      expect(h.limits).toEqual([{ at: 0, limit: 2 }]);
    });
  });

  it("retries connect() with backoff until it succeeds, and writes only after", async () => {
    const sink = new MemorySink({ connectFailures: 3 });
    const h = harness({ sink, random: () => 0.5 });
    void h.runner.start();
    h.runner.accept(entries(2));
    h.runner.drain();
    await h.until(2);
    expect(sink.connectCalls).toEqual([0, 50, 150, 350]);
    expect(sink.writes.map((w) => w.at)).toEqual([350]);
    expect(sink.violations).toEqual([]);
    // Each failure names the sink, the attempt, since when it is down (its first attempt) and why.
    expect(h.events.filter((e) => e.type === "sink_connect_failed" || e.type === "sink_connected")).toEqual([
      ...[1, 2, 3].map((attempt) => ({
        type: "sink_connect_failed",
        sink: "sink",
        attempt,
        downSince: 0,
        code: "ERR_SINK_CONNECT",
        message: `connect refused (${attempt})`,
        retryable: true,
        connectTimeoutMs: undefined,
      })),
      { type: "sink_connected", sink: "sink", attempt: 4 },
    ]);
  });

  describe("connect_timeout", () => {
    /** Starts the runner; `result()` is what start() resolved with and when, or undefined while it runs. */
    function start(h: ReturnType<typeof harness>) {
      let outcome: { error: SluiceError | undefined; at: number } | undefined;
      void h.runner.start().then((error) => (outcome = { error, at: h.clock.now() }));
      return () => outcome;
    }

    it("gives up at connectTimeoutMs with ERR_SINK_CONNECT naming the sink, the timeout and the last error", async () => {
      const sink = new MemorySink({ connectFailures: Number.POSITIVE_INFINITY });
      const h = harness({ sink, connectTimeoutMs: 30_000 });
      const result = start(h);
      await driveUntil(h.clock, () => result() !== undefined);
      const { error, at } = result()!;
      expect(at).toBe(30_000);
      expect(error).toBeInstanceOf(SluiceError);
      expect(error).toMatchObject({ code: "ERR_SINK_CONNECT", retryable: false, location: "sink" });
      expect(error!.message).toBe(`sink sink could not connect within 30 s: connect refused (${sink.connectCalls.length})`);
      expect(sink.connectCalls.length).toBeGreaterThan(3);
      expect(h.runner.isConnected).toBe(false);
      // Nothing is left on the clock: no backoff wait outlives the give-up.
      expect(h.clock.pendingTimers).toBe(0);
    });

    it("cuts off an attempt that hangs, at connectTimeoutMs", async () => {
      const sink = new MemorySink({ connectDelayMs: 3_600_000 });
      const h = harness({ sink, connectTimeoutMs: 2_500 });
      const result = start(h);
      await driveUntil(h.clock, () => result() !== undefined);
      expect(result()!.at).toBe(2_500);
      expect(result()!.error!.message).toBe("sink sink could not connect within 2.5 s: the first attempt did not finish");
      expect(sink.connectCalls).toEqual([0]);
    });

    it("without one, keeps trying for as long as it takes (hours), then writes", async () => {
      const sink = new MemorySink({ connectFailures: 5000 });
      const h = harness({ sink });
      const result = start(h);
      h.runner.accept(entries(1));
      await driveUntil(h.clock, () => h.clock.now() >= 3 * 3_600_000 || result() !== undefined, { maxSteps: 100_000 });
      expect(result()).toBeUndefined();
      expect(h.runner.isConnected).toBe(false);
      await h.until(1);
      expect(result()!.error).toBeUndefined();
      expect(sink.connectCalls).toHaveLength(5001);
    });

    it("a connect that succeeds before the timeout cancels it", async () => {
      const sink = new MemorySink({ connectFailures: 2 });
      const h = harness({ sink, connectTimeoutMs: 30_000 });
      const result = start(h);
      await driveUntil(h.clock, () => result() !== undefined);
      expect(result()!.error).toBeUndefined();
      expect(h.clock.pendingTimers).toBe(0);
    });
  });
});
