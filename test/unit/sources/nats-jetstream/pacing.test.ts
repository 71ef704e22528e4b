import { describe, expect, it } from "vitest";
import { capFor, RedeliveryPacing } from "../../../../src/sources/nats-jetstream/pacing.js";

describe("RedeliveryPacing", () => {
  it("starts each connection at pulls of one and doubles them with every pull of fresh messages, up to the largest pull", () => {
    const p = new RedeliveryPacing(1000, 10);
    const sizes: number[] = [];
    for (let i = 0; i < 12; i++) {
      const n = p.next(5000);
      sizes.push(n);
      p.handed(n);
      p.pulled(n, 1);
    }
    expect(sizes).toEqual([1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 1000]);
    expect(p.full()).toBe(false);
    p.connected();
    expect(p.next(5000)).toBe(1);
    expect(p.next(0)).toBe(1);
  });

  it("after a redelivery pulls one message at a time and holds what is in flight to 2^(max_deliver - count)", () => {
    const p = new RedeliveryPacing(1000, 3);
    p.handed(1);
    p.pulled(1, 2);
    expect(p.next(1000)).toBe(1);
    expect(p.full()).toBe(false);
    p.handed(1);
    p.pulled(1, 2);
    expect(p.full()).toBe(true);
    p.answered(1);
    expect(p.full()).toBe(false);
    // A message at max_deliver: nothing else may join it in flight.
    p.handed(1);
    p.pulled(1, 3);
    expect(p.full()).toBe(true);
    p.answered(1);
    // Fresh messages with something else still in flight keep the limit; with nothing else, lift it.
    p.handed(1);
    p.pulled(1, 1);
    expect(p.next(1000)).toBe(1);
    p.answered(2);
    p.handed(1);
    p.pulled(1, 1);
    expect(p.full()).toBe(false);
    expect(p.next(1000)).toBe(2);
  });

  it("limits by count: 2^(max_deliver - count), between 1 and the largest pull", () => {
    expect([1, 2, 5, 9, 10, 11].map((c) => capFor(c, 10, 1000))).toEqual([512, 256, 32, 2, 1, 1]);
    expect(capFor(2, 100, 1000)).toBe(1000);
  });
});
