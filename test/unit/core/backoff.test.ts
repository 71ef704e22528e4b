import { describe, expect, it } from "vitest";
import { backoffDelay, type BackoffPolicy } from "../../../src/core/backoff.js";
import { classify, ERROR_CODES, SluiceError, type ErrorCode } from "../../../src/core/errors.js";
import { mulberry32 } from "../../../src/core/random.js";

describe("backoffDelay (exponential, full jitter)", () => {
  const policy: BackoffPolicy = { initialMs: 100, maxMs: 1000, multiplier: 2 };

  it.each([
    // retry, random, expected: the cap grows initial * multiplier^(retry-1) and stops at maxMs
    [1, 0, 0],
    [1, 0.5, 50],
    [1, 0.999, 99],
    [2, 0.5, 100],
    [3, 0.5, 200],
    [4, 0.999, 799],
    [5, 0.999, 999],
    [50, 0.999, 999],
    [0, 0.5, 50],
  ])("retry %i with random %f waits %i ms", (retry, r, expected) => {
    expect(backoffDelay(policy, retry, () => r)).toBe(expected);
  });

  it("stays within [0, cap] for every retry and spreads over the range", () => {
    const random = mulberry32(42);
    for (let retry = 1; retry <= 12; retry++) {
      const cap = Math.min(policy.maxMs, policy.initialMs * 2 ** (retry - 1));
      const delays = Array.from({ length: 200 }, () => backoffDelay(policy, retry, random));
      for (const d of delays) {
        expect(Number.isInteger(d)).toBe(true);
        expect(d).toBeGreaterThanOrEqual(0);
        expect(d).toBeLessThanOrEqual(cap);
      }
      // Full jitter, not "cap minus a little": both halves of the range are used.
      expect(Math.min(...delays)).toBeLessThan(cap / 4);
      expect(Math.max(...delays)).toBeGreaterThan((cap * 3) / 4);
    }
  });

  it("does not overflow for huge retry numbers", () => {
    expect(backoffDelay(policy, 10_000, () => 0.5)).toBe(500);
  });
});

describe("classify", () => {
  class CustomTypeError extends TypeError {}
  const passthrough = new SluiceError("ERR_SINK_REJECTED", "bad row", { location: "sink:pg" });
  const retryableOverride = new SluiceError("ERR_SINK_REJECTED", "deadlock", { retryable: true });

  type Row = [name: string, thrown: unknown, fallback: ErrorCode | undefined, code: ErrorCode, retryable: boolean];
  const table: Row[] = [
    ["TypeError", new TypeError("x is not a function"), undefined, "ERR_INTERNAL", false],
    ["RangeError", new RangeError("invalid array length"), "ERR_SOURCE_READ", "ERR_INTERNAL", false],
    ["ReferenceError", new ReferenceError("y is not defined"), undefined, "ERR_INTERNAL", false],
    ["SyntaxError", new SyntaxError("Unexpected token"), "ERR_DEAD_LETTER_WRITE", "ERR_INTERNAL", false],
    ["a TypeError subclass", new CustomTypeError("nope"), undefined, "ERR_INTERNAL", false],
    ["a plain Error, default fallback", new Error("ECONNRESET"), undefined, "ERR_SINK_WRITE", true],
    ["a plain Error, given fallback", new Error("ENOENT"), "ERR_SOURCE_READ", "ERR_SOURCE_READ", true],
    ["a plain Error, permanent fallback", new Error("bad"), "ERR_TRANSFORM_FAILED", "ERR_TRANSFORM_FAILED", false],
    ["a thrown string", "socket hang up", undefined, "ERR_SINK_WRITE", true],
    ["a thrown object", { code: "ETIMEDOUT" }, "ERR_SINK_CONNECT", "ERR_SINK_CONNECT", true],
    ["undefined", undefined, undefined, "ERR_SINK_WRITE", true],
    ["a SluiceError", passthrough, "ERR_SINK_WRITE", "ERR_SINK_REJECTED", false],
    ["a SluiceError with retryable override", retryableOverride, undefined, "ERR_SINK_REJECTED", true],
  ];

  it.each(table)("%s -> code and retryable", (_name, thrown, fallback, code, retryable) => {
    const e = fallback === undefined ? classify(thrown) : classify(thrown, fallback);
    expect(e).toBeInstanceOf(SluiceError);
    expect(e.code).toBe(code);
    expect(e.retryable).toBe(retryable);
  });

  it("passes a SluiceError through unchanged (same instance)", () => {
    expect(classify(passthrough)).toBe(passthrough);
    expect(classify(passthrough).location).toBe("sink:pg");
  });

  it("keeps the original as cause and its message", () => {
    const original = new Error("connection reset by peer");
    const e = classify(original);
    expect(e.cause).toBe(original);
    expect(e.message).toBe("connection reset by peer");

    const bug = new TypeError("cannot read properties of undefined");
    const internal = classify(bug, "ERR_SINK_WRITE");
    expect(internal.cause).toBe(bug);
    expect(internal.message).toBe(bug.message);

    expect(classify("plain text").message).toBe("plain text");
    expect(classify("plain text").cause).toBe("plain text");
  });

  it("never makes a programmer error retryable, whatever the fallback", () => {
    const retryableCodes = (Object.keys(ERROR_CODES) as ErrorCode[]).filter((c) => ERROR_CODES[c].retryable);
    expect(retryableCodes.length).toBeGreaterThan(0);
    for (const fallback of retryableCodes) {
      for (const bug of [new TypeError("t"), new RangeError("r"), new ReferenceError("f"), new SyntaxError("s")]) {
        const e = classify(bug, fallback);
        expect(e.code).toBe("ERR_INTERNAL");
        expect(e.retryable).toBe(false);
      }
    }
  });
});
