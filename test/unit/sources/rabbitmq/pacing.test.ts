import { describe, expect, it } from "vitest";
import { capFor, GET_BELOW, RedeliveryPacing } from "../../../../src/sources/rabbitmq/pacing.js";

describe("rabbitmq RedeliveryPacing", () => {
  it("starts each connection with one get, and streams once a first delivery comes with no redelivery in flight", () => {
    const p = new RedeliveryPacing(10, 1000);
    expect(p.taking()).toEqual({ how: "get" });
    p.took(1);
    expect(p.taking()).toEqual({ how: "consume", prefetch: 1000 });
    p.connected();
    expect(p.taking()).toEqual({ how: "get" });
    p.empty();
    expect(p.taking()).toEqual({ how: "consume", prefetch: 1000 });
  });

  it("streams classic queues at once: a redelivery they do not count is taken as it comes", () => {
    const p = new RedeliveryPacing(10, 1000);
    p.took(undefined);
    expect(p.taking()).toEqual({ how: "consume", prefetch: 1000 });
  });

  it("limits what is in flight by the highest delivery count: a consumer while the limit is large, single gets near max_deliveries", () => {
    const p = new RedeliveryPacing(10, 1000);
    p.took(2);
    expect(p.taking()).toEqual({ how: "consume", prefetch: 256 });
    p.took(7);
    expect(p.taking()).toEqual({ how: "get" });
    expect(p.mayTake()).toBe(true);
    for (let i = 0; i < 6; i++) p.took(2);
    // 8 in flight, the limit for a message delivered 7 times: no more until acks.
    expect(p.inFlight).toBe(8);
    expect(p.mayTake()).toBe(false);
    p.answered(1, 1);
    expect(p.mayTake()).toBe(true);
    // Delivered max_deliveries times: alone in flight.
    p.took(10);
    expect(p.mayTake()).toBe(false);
  });

  it("goes back to streaming only on a first delivery while no counted redelivery is in flight", () => {
    const p = new RedeliveryPacing(10, 1000);
    p.took(3);
    p.took(1);
    expect(p.careful).toBe(true);
    p.empty();
    expect(p.careful).toBe(true);
    p.answered(2, 1);
    p.took(1);
    expect(p.careful).toBe(false);
    // Another worker died: its messages come back counted, and the consumer must make way for gets.
    p.took(9);
    expect(p.taking()).toEqual({ how: "get" });
  });

  it("capFor: 2^(max - count), at least 1, at most the prefetch; get below GET_BELOW", () => {
    expect(capFor(2, 10, 1000)).toBe(256);
    expect(capFor(2, 10, 100)).toBe(100);
    expect(capFor(10, 10, 1000)).toBe(1);
    expect(capFor(12, 10, 1000)).toBe(1);
    expect(capFor(2, 3, 1000)).toBe(2);
    expect(GET_BELOW).toBeGreaterThan(capFor(7, 10, 1000));
  });
});
