import { describe, expect, it } from "vitest";
import { chaosOptions, withChaos, type ChaosOptions } from "../../../src/components/chaos.js";
import type { Sink, WriteResult } from "../../../src/components/contracts.js";
import { SluiceError } from "../../../src/core/errors.js";
import { mulberry32 } from "../../../src/core/random.js";
import type { SluiceRecord } from "../../../src/core/record.js";
import { FakeClock, flush } from "../../helpers/fake-clock.js";
import { makeRecords } from "../../helpers/records.js";

const signal = new AbortController().signal;

/** An in-memory sink that records what it was given and answers with `respond`. */
function recordingSink(respond: (records: readonly SluiceRecord[]) => WriteResult | void = () => {}) {
  const calls: string[][] = [];
  const sink: Sink = {
    maxInFlight: 3,
    async connect() {},
    async close() {},
    async write(records) {
      calls.push(records.map((r) => r.id));
      return respond(records);
    },
  };
  return { sink, calls };
}

function opts(input: Record<string, unknown>): ChaosOptions {
  return chaosOptions.parse(input);
}

function indexes(result: WriteResult | void): number[] {
  return (result?.failures ?? []).map((f) => f.index);
}

describe("mulberry32", () => {
  it("repeats its sequence for a seed, differs across seeds, and stays in [0, 1)", () => {
    const a = mulberry32(42);
    const b = mulberry32(42);
    const c = mulberry32(43);
    const seqA = Array.from({ length: 1000 }, a);
    expect(Array.from({ length: 1000 }, b)).toEqual(seqA);
    expect(Array.from({ length: 1000 }, c)).not.toEqual(seqA);
    expect(seqA.every((x) => x >= 0 && x < 1)).toBe(true);
    // Roughly uniform: a broken generator (constant, or stuck in one half) fails this.
    const mean = seqA.reduce((s, x) => s + x, 0) / seqA.length;
    expect(mean).toBeGreaterThan(0.45);
    expect(mean).toBeLessThan(0.55);
    // Pinned values: the sequence is part of the contract (a seed must replay the same chaos).
    expect(mulberry32(1)()).toBeCloseTo(0.6270739405881613, 15);
  });
});

describe("chaos options", () => {
  it("defaults to no chaos and normalizes latency", () => {
    expect(chaosOptions.parse({})).toEqual({ failure_rate: 0, permanent_failure_rate: 0, latency: { min: 0, max: 0 } });
    expect(chaosOptions.parse({ latency: "250ms" }).latency).toEqual({ min: 250, max: 250 });
    expect(chaosOptions.parse({ latency: { min: "10ms", max: "1s" } }).latency).toEqual({ min: 10, max: 1000 });
    expect(chaosOptions.parse({ seed: 7 }).seed).toBe(7);
  });

  it.each([
    [{ failure_rate: 1.5 }],
    [{ permanent_failure_rate: -0.1 }],
    [{ latency: { min: "2s", max: "1s" } }],
    [{ latency: { min: 1 } }],
    [{ seed: 1.5 }],
    [{ failure_rat: 0.1 }],
  ])("rejects %j", (input) => {
    expect(chaosOptions.safeParse(input).success).toBe(false);
  });
});

describe("withChaos", () => {
  it("passes everything through unchanged when no chaos is configured", async () => {
    const { sink, calls } = recordingSink();
    const chaotic = withChaos(sink, opts({}), new FakeClock(), () => {
      throw new Error("no draw expected");
    });
    expect(chaotic.maxInFlight).toBe(3);
    await chaotic.write(makeRecords(3), signal);
    await chaotic.write([], signal);
    expect(calls).toEqual([["r-0", "r-1", "r-2"], []]);
  });

  it("fails the whole write before writing with retryable ERR_CHAOS_TRANSIENT", async () => {
    const { sink, calls } = recordingSink();
    const chaotic = withChaos(sink, opts({ failure_rate: 1 }), new FakeClock());
    const err = await chaotic.write(makeRecords(3), signal).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(SluiceError);
    expect(err).toMatchObject({ code: "ERR_CHAOS_TRANSIENT", retryable: true });
    expect(calls).toEqual([]);
  });

  it("fails records permanently by index, passes only the others, and repeats exactly with the same seed", async () => {
    async function run(seed: number) {
      const { sink, calls } = recordingSink();
      const chaotic = withChaos(sink, opts({ permanent_failure_rate: 0.25, seed }), new FakeClock(), Math.random);
      const results = [];
      for (let batch = 0; batch < 5; batch++) results.push(await chaotic.write(makeRecords(40, { start: batch * 40 }), signal));
      return { results, calls };
    }
    const a = await run(2024);
    const b = await run(2024);
    const c = await run(2025);
    expect(a.results.map(indexes)).toEqual(b.results.map(indexes));
    expect(a.results.map(indexes)).not.toEqual(c.results.map(indexes));

    const total = a.results.reduce((n, r) => n + indexes(r).length, 0);
    expect(total).toBeGreaterThan(20);
    expect(total).toBeLessThan(80);
    a.results.forEach((result, batch) => {
      const failed = new Set(indexes(result));
      const expectedIds = makeRecords(40, { start: batch * 40 })
        .filter((_, i) => !failed.has(i))
        .map((r) => r.id);
      expect(a.calls[batch]).toEqual(expectedIds);
      for (const f of result?.failures ?? []) expect(f.error).toMatchObject({ code: "ERR_CHAOS_PERMANENT", retryable: false });
    });
  });

  it("uses the injected random when no seed is set", async () => {
    const draws = [0.1, 0.9, 0.1, 0.9];
    const { sink, calls } = recordingSink();
    const chaotic = withChaos(sink, opts({ permanent_failure_rate: 0.5 }), new FakeClock(), () => draws.shift()!);
    expect(indexes(await chaotic.write(makeRecords(4), signal))).toEqual([0, 2]);
    expect(calls).toEqual([["r-1", "r-3"]]);
  });

  it("maps the inner sink's failures back to the original indexes, merged in index order", async () => {
    // Records 0, 2 and 5 fail by chaos; the inner sink sees [1, 3, 4, 6, 7] and fails its 0th and 3rd (records 1 and 6).
    const draws = [0, 0.9, 0, 0.9, 0.9, 0, 0.9, 0.9];
    const innerError = new SluiceError("ERR_SINK_REJECTED", "inner says no");
    const { sink, calls } = recordingSink(() => ({
      failures: [
        { index: 3, error: innerError },
        { index: 0, error: innerError },
      ],
    }));
    const chaotic = withChaos(sink, opts({ permanent_failure_rate: 0.5 }), new FakeClock(), () => draws.shift()!);
    const result = await chaotic.write(makeRecords(8), signal);
    expect(calls).toEqual([["r-1", "r-3", "r-4", "r-6", "r-7"]]);
    expect(result?.failures?.map((f) => [f.index, f.error.code])).toEqual([
      [0, "ERR_CHAOS_PERMANENT"],
      [1, "ERR_SINK_REJECTED"],
      [2, "ERR_CHAOS_PERMANENT"],
      [5, "ERR_CHAOS_PERMANENT"],
      [6, "ERR_SINK_REJECTED"],
    ]);
  });

  it("does not call the inner sink when every record failed, and rejects an out-of-range inner index", async () => {
    const { sink, calls } = recordingSink();
    const all = withChaos(sink, opts({ permanent_failure_rate: 1 }), new FakeClock());
    expect(indexes(await all.write(makeRecords(3), signal))).toEqual([0, 1, 2]);
    expect(calls).toEqual([]);

    const liar = recordingSink(() => ({ failures: [{ index: 9, error: new SluiceError("ERR_SINK_WRITE", "x") }] }));
    const chaotic = withChaos(liar.sink, opts({ permanent_failure_rate: 0.5 }), new FakeClock(), () => 0.9);
    await expect(chaotic.write(makeRecords(2), signal)).rejects.toMatchObject({ code: "ERR_INTERNAL" });
  });

  it("delays each write by the latency on the injected clock, uniformly within {min, max}", async () => {
    const clock = new FakeClock();
    const { sink, calls } = recordingSink();
    const chaotic = withChaos(sink, opts({ latency: { min: 100, max: 300 } }), clock, () => 0.5);
    let done = false;
    const pending = chaotic.write(makeRecords(1), signal).then(() => (done = true));
    await flush();
    expect(clock.nextTimerAt()).toBe(clock.now() + 200);
    clock.advance(199);
    await flush();
    expect(done).toBe(false);
    expect(calls).toEqual([]);
    clock.advance(1);
    await pending;
    expect(calls).toEqual([["r-0"]]);
  });

  it("stops waiting on abort and never writes", async () => {
    const clock = new FakeClock();
    const { sink, calls } = recordingSink();
    const chaotic = withChaos(sink, opts({ latency: 1000 }), clock);
    const controller = new AbortController();
    const pending = chaotic.write(makeRecords(1), controller.signal);
    controller.abort(new SluiceError("ERR_ABORTED", "deadline"));
    await expect(pending).rejects.toMatchObject({ code: "ERR_ABORTED" });
    clock.advance(1000);
    expect(calls).toEqual([]);
    expect(clock.pendingTimers).toBe(0);
  });
});
