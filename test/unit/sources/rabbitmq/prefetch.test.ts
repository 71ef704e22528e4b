import { describe, expect, it } from "vitest";
import { BytePrefetch } from "../../../../src/sources/rabbitmq/prefetch.js";

const MiB = 1024 * 1024;

describe("rabbitmq BytePrefetch", () => {
  it("is the count prefetch when the buffer has no byte bound", () => {
    expect(new BytePrefetch(10_000, undefined).for(undefined)).toBe(10_000);
    expect(new BytePrefetch(10_000, undefined).for(MiB)).toBe(10_000);
  });

  it("is 1 until a message size is known", () => {
    expect(new BytePrefetch(10_000, 64 * MiB).for(undefined)).toBe(1);
  });

  it("plans for 80% of max_bytes at the mean size, never above the count prefetch, never below 1", () => {
    expect(new BytePrefetch(10_000, 64 * MiB).for(256 * 1024)).toBe(204);
    expect(new BytePrefetch(10_000, 64 * MiB).for(200)).toBe(10_000);
    expect(new BytePrefetch(10_000, 64 * MiB).for(100 * MiB)).toBe(1);
  });

  it("keeps its choice while the mean wanders within the band, so the consumer is not restarted for noise", () => {
    const p = new BytePrefetch(10_000, 64 * MiB);
    expect(p.for(256 * 1024)).toBe(204);
    // 204 messages of 300 KiB are 60 MiB: still within the byte bound.
    expect(p.for(300 * 1024)).toBe(204);
    // 204 of 200 KiB plan for 62% of it: above the 40% at which it grows.
    expect(p.for(200 * 1024)).toBe(204);
  });

  it("shrinks as soon as its messages in flight would exceed max_bytes at the mean size", () => {
    const p = new BytePrefetch(10_000, 64 * MiB);
    expect(p.for(256 * 1024)).toBe(204);
    // 204 of 330 KiB are 65.7 MiB.
    expect(p.for(330 * 1024)).toBe(158);
  });

  it("grows again when the messages got much smaller, up to the count prefetch", () => {
    const p = new BytePrefetch(10_000, 64 * MiB);
    expect(p.for(256 * 1024)).toBe(204);
    expect(p.for(100 * 1024)).toBe(524);
    expect(p.for(100)).toBe(10_000);
    expect(p.for(1000)).toBe(10_000);
  });
});
