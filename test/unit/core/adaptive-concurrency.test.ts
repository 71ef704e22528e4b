import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { AdaptiveConcurrency, type AdaptiveSettings, type WriteOutcome } from "../../../src/core/adaptive-concurrency.js";
import { FakeClock } from "../../helpers/fake-clock.js";

const DEFAULTS: AdaptiveSettings = { tag: "adaptive", initial: 1, max: 16, decreaseRatio: 0.9, ewmaAlpha: 0.4, rttDeviationScale: 2.5 };

function controller(settings: Partial<AdaptiveSettings> = {}) {
  const clock = new FakeClock(0);
  const c = new AdaptiveConcurrency({ ...DEFAULTS, ...settings }, clock);
  /**
   * One round: `idleMs` idle, then takes `slots` slots (default: as many as the limit allows), lets
   * `rttMs` pass, and reports each batch (observe, then release, as the sink runner does). With
   * rounds of the past mean latency, the idle ms makes each round end just past its window.
   * Returns the limit after.
   */
  const round = (rttMs: number, tag: WriteOutcome["tag"] = "ok", slots = Number.POSITIVE_INFINITY, idleMs = 1): number => {
    clock.advance(idleMs);
    let taken = 0;
    while (taken < slots && c.tryAcquire()) taken++;
    const startedAt = clock.now();
    clock.advance(rttMs);
    for (let i = 0; i < taken; i++) {
      c.observe({ tag, startedAt });
      c.release();
    }
    return c.limit;
  };
  return { clock, c, round };
}

describe("AdaptiveConcurrency", () => {
  it("starts at `initial`, clamped to [1, max]", () => {
    expect(controller({ initial: 3, max: 8 }).c.limit).toBe(3);
    expect(controller({ initial: 20, max: 8 }).c.limit).toBe(8);
    expect(controller({ initial: 0, max: 8 }).c.limit).toBe(1);
  });

  it("hands out at most `limit` slots; a released slot can be taken again", () => {
    const { c } = controller({ initial: 2 });
    expect([c.tryAcquire(), c.tryAcquire(), c.tryAcquire()]).toEqual([true, true, false]);
    expect(c.inFlight).toBe(2);
    expect(c.available).toBe(false);
    c.release();
    expect(c.available).toBe(true);
    expect(c.tryAcquire()).toBe(true);
    expect(c.inFlight).toBe(2);
  });

  it("grows by one per window while latency stays flat and the limit is fully used, up to max", () => {
    const { round } = controller({ initial: 1, max: 5 });
    // The first window only measures: there is no past latency to compare with yet.
    expect(Array.from({ length: 8 }, () => round(100))).toEqual([1, 2, 3, 4, 5, 5, 5, 5]);
  });

  it("does not grow when the limit was not fully used in the window", () => {
    const { round } = controller({ initial: 4, max: 8 });
    // Two batches per round: a window (4 samples) spans two rounds and never sees 4 slots in use.
    expect(Array.from({ length: 8 }, () => round(100, "ok", 2))).toEqual([4, 4, 4, 4, 4, 4, 4, 4]);
  });

  it("shrinks multiplicatively on back pressure, never below 1", () => {
    const half = controller({ initial: 16, decreaseRatio: 0.5 });
    expect(Array.from({ length: 6 }, () => half.round(100, "back_pressure"))).toEqual([8, 4, 2, 1, 1, 1]);

    const big = controller({ initial: 20, max: 20 });
    big.round(100);
    // floor(20 * 0.9) = 18; floor(18 * 0.9) = 16; floor(16 * 0.9) = 14.
    expect([big.round(100, "back_pressure"), big.round(100, "back_pressure"), big.round(100, "back_pressure")]).toEqual([18, 16, 14]);

    // At small limits 0.9 still takes one off each time: floor(5 * 0.9) = 4, and so on.
    const small = controller({ initial: 5, max: 5 });
    small.round(100);
    expect(Array.from({ length: 6 }, () => small.round(100, "back_pressure"))).toEqual([4, 3, 2, 1, 1, 1]);
  });

  it("decreases once for a burst of failures of batches that were in flight together", () => {
    const { c, clock, round } = controller({ initial: 8, max: 8 });
    round(100);
    clock.advance(1);
    for (let i = 0; i < 8; i++) expect(c.tryAcquire()).toBe(true);
    const startedAt = clock.now();
    clock.advance(100);
    const changed = Array.from({ length: 8 }, () => c.observe({ tag: "back_pressure", startedAt }));
    expect(changed).toEqual([true, false, false, false, false, false, false, false]);
    expect(c.limit).toBe(7);
  });

  it("backs off on back pressure before any latency was measured", () => {
    const { round } = controller({ initial: 10, max: 10 });
    expect(round(50, "back_pressure")).toBe(9);
  });

  it("shrinks when a window's latency rises past mean + scale × deviation, and holds inside that band", () => {
    // max = initial, so the limit cannot grow while the band is explored.
    const { round } = controller({ initial: 4, max: 4, ewmaAlpha: 0.5, rttDeviationScale: 2 });
    expect(round(100)).toBe(4); // past: mean 100, variance 0
    expect(round(100)).toBe(4); // flat: hold
    // 120 > 100 + 2 * 0: a rise. Past becomes mean 110, variance 0.5 * (0 + 20 * 10) = 100 (deviation 10).
    expect(round(120)).toBe(3);
    // 125 is above the mean but within 110 + 2 * 10 = 130: hold.
    // Past becomes mean 117.5, variance 0.5 * (100 + 15 * 7.5) = 106.25 (deviation ~10.3).
    expect(round(125)).toBe(3);
    // 140 > 117.5 + 2 * 10.3 = 138.1: a rise. Past becomes mean 128.75.
    expect(round(140)).toBe(2);
    // Back at the old latency, below the (now higher) past mean, with every slot used: grows again,
    // once the window (as long as the past mean, ~129 ms) is over.
    expect([round(100), round(100)]).toEqual([2, 3]);
  });

  it("does not treat a permanent rejection as load: no latency sample, no change", () => {
    const { round, c } = controller({ initial: 3, max: 8 });
    round(100);
    expect([round(5000, "rejected"), round(5000, "rejected"), round(5000, "rejected")]).toEqual([3, 3, 3]);
    // The rejected attempts' 5 s never entered the average: 100 ms still counts as flat.
    expect(round(100)).toBe(4);
    expect(c.inFlight).toBe(0);
  });

  describe("an increase has to pay for itself", () => {
    it("takes an increase back when latency grew in proportion to the limit (no more batches per ms)", () => {
      const { c, round } = controller({ initial: 2, max: 8 });
      // A sink with 3 workers: past 3 batches at once, latency grows with the limit.
      const saturated = () => 100 * Math.max(1, c.limit / 3);
      // A slow first window makes the past deviation wide (~24 ms), so the rise rule alone would
      // hold 4 at 133 ms (within 118 + 2.5 * 24); rounds of 60 ms idle + latency outlast every window.
      const limits = [round(150, "ok", Infinity, 60), ...Array.from({ length: 9 }, () => round(saturated(), "ok", Infinity, 60))];
      // 4 batches per 133 ms are 0.030 batches/ms, as 3 per 100 ms: back to 3, and so on.
      expect(limits).toEqual([2, 3, 4, 3, 4, 3, 4, 3, 4, 3]);
    });

    it("keeps an increase that brought at least half the ideal gain in batches per ms", () => {
      for (const [rtt, next] of [
        // 5 / 110 >= (4 / 100) * (1 + 1/8): kept, and as 110 is below the past mean (130), grows again.
        [110, 6],
        // 5 / 115 < (4 / 100) * (1 + 1/8): taken back.
        [115, 4],
      ] as const) {
        const { clock, round } = controller({ initial: 4, max: 8 });
        // A slow first window puts the past mean (130 after the second) above the increase's
        // reference (100), so the rise rule (130 + 2.5 deviations of ~24.5) stays out of the way.
        expect(round(150)).toBe(4);
        clock.advance(50); // windows last the past mean: 150 ms, then 130
        expect(round(100)).toBe(5);
        clock.advance(30);
        expect(round(rtt)).toBe(next);
      }
    });

    it("does not learn the latency of an increase it took back", () => {
      const { clock, round } = controller({ initial: 3, max: 8 });
      expect(round(150)).toBe(3);
      clock.advance(50);
      expect(round(100)).toBe(4); // past mean 130
      clock.advance(30);
      expect(round(140)).toBe(3); // 4 / 140 < (3 / 100) * (1 + 1/6): taken back
      // The past mean is still 130, so 133 is above it: no growth. Had the 140 ms been learned
      // (mean 134), 133 would count as flat and the limit would grow.
      clock.advance(30);
      expect(round(133)).toBe(3);
    });
  });

  describe("which reports count", () => {
    it("ignores reports of attempts that started before the last change", () => {
      const { c, clock, round } = controller({ initial: 1, max: 8 });
      round(100);
      clock.advance(1);
      c.tryAcquire();
      const old = clock.now();
      clock.advance(100);
      expect(c.observe({ tag: "ok", startedAt: old })).toBe(true); // 1 → 2
      c.release();
      clock.advance(1000);
      // A failure of an attempt from before the increase: the increase did not cause it.
      expect(c.observe({ tag: "back_pressure", startedAt: old })).toBe(false);
      expect(c.limit).toBe(2);
      expect(c.observe({ tag: "back_pressure", startedAt: clock.now() - 10 })).toBe(true);
      expect(c.limit).toBe(1);
    });

    it("closes a window only once every slot reported, not on the batches that finished first", () => {
      const { c, clock, round } = controller({ initial: 4, max: 4 });
      round(100);
      clock.advance(1);
      for (let i = 0; i < 4; i++) c.tryAcquire();
      const startedAt = clock.now();
      clock.advance(1000);
      // Three slow batches, long after the window's end: not yet a full round.
      expect([0, 1, 2].map(() => c.observe({ tag: "ok", startedAt }))).toEqual([false, false, false]);
      expect(c.observe({ tag: "ok", startedAt })).toBe(true);
      expect(c.limit).toBe(3);
    });

    it("after a decrease, measures latency only from batches admitted under the lower limit", () => {
      const { c, clock, round } = controller({ initial: 8, max: 8 });
      round(100);
      clock.advance(1);
      for (let i = 0; i < 8; i++) c.tryAcquire();
      clock.advance(100);
      expect(c.observe({ tag: "back_pressure", startedAt: clock.now() - 100 })).toBe(true); // 8 → 7
      // Retries of batches admitted before the decrease, slow because all 8 still load the sink:
      // they describe the old limit, not the new one, so they are no latency samples.
      clock.advance(1);
      const retry = clock.now();
      clock.advance(1000);
      expect(Array.from({ length: 8 }, () => c.observe({ tag: "ok", startedAt: retry }))).toEqual(Array.from({ length: 8 }, () => false));
      expect(c.limit).toBe(7);
      for (let i = 0; i < 8; i++) c.release();
      // Batches admitted now, under 7, are measured: flat latency, every slot used, so it grows.
      expect(round(100)).toBe(8);
    });
  });

  it("keeps the limit within [1, max], grows one at a time and never hands out more slots than the limit", () => {
    const step = fc.record({
      tag: fc.constantFrom<WriteOutcome["tag"]>("ok", "ok", "ok", "back_pressure", "rejected"),
      rttMs: fc.integer({ min: 0, max: 500 }),
      acquire: fc.integer({ min: 0, max: 6 }),
      release: fc.integer({ min: 0, max: 6 }),
    });
    fc.assert(
      fc.property(
        fc.record({ initial: fc.integer({ min: 1, max: 10 }), max: fc.integer({ min: 1, max: 10 }), decreaseRatio: fc.double({ min: 0.05, max: 0.99, noNaN: true }) }),
        fc.array(step, { maxLength: 200 }),
        (settings, steps) => {
          const { c, clock } = controller({ ...settings, ewmaAlpha: 0.4, rttDeviationScale: 1 });
          for (const s of steps) {
            for (let i = 0; i < s.acquire; i++) if (c.tryAcquire()) expect(c.inFlight).toBeLessThanOrEqual(c.limit);
            clock.advance(s.rttMs);
            const before = c.limit;
            c.observe({ tag: s.tag, startedAt: clock.now() - s.rttMs });
            for (let i = 0; i < s.release; i++) c.release();
            expect(c.limit).toBeGreaterThanOrEqual(1);
            expect(c.limit).toBeLessThanOrEqual(Math.max(1, settings.max));
            if (c.limit > before) expect(c.limit).toBe(before + 1);
            if (c.limit < before) expect(c.limit).toBeGreaterThanOrEqual(Math.max(1, Math.floor(before * settings.decreaseRatio)));
          }
        },
      ),
    );
  });
});
