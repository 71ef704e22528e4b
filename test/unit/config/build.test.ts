import { describe, expect, it } from "vitest";
import { sinkSettings } from "../../../src/config/build.js";
import { sinkDrivingSchema } from "../../../src/config/schema.js";
import { systemClock } from "../../../src/core/clock.js";
import { MemorySink } from "../../helpers/memory.js";

describe("sinkSettings", () => {
  const concurrencyOf = (concurrency: unknown) => sinkSettings("out", new MemorySink(), sinkDrivingSchema.parse({ concurrency }), systemClock).concurrency;

  it("passes a fixed concurrency through as a number", () => {
    expect(concurrencyOf(3)).toBe(3);
    expect(concurrencyOf(undefined)).toBe(4);
  });

  it("turns every adaptive key into the engine's tagged settings", () => {
    expect(concurrencyOf({ adaptive: { initial: 2, max: 5, decrease_ratio: 0.5, ewma_alpha: 0.3, rtt_deviation_scale: 1.5 } })).toEqual({
      tag: "adaptive",
      initial: 2,
      max: 5,
      decreaseRatio: 0.5,
      ewmaAlpha: 0.3,
      rttDeviationScale: 1.5,
    });
    expect(concurrencyOf("adaptive")).toEqual({ tag: "adaptive", initial: 1, max: 16, decreaseRatio: 0.9, ewmaAlpha: 0.4, rttDeviationScale: 2.5 });
  });
});
