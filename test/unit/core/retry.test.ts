import { describe, expect, it } from "vitest";
import { SluiceError } from "../../../src/core/errors.js";
import { retry, Retry, type RetryPolicy } from "../../../src/core/retry.js";
import { FakeClock } from "../../helpers/fake-clock.js";

const backoff = { initialMs: 100, maxMs: 1000, multiplier: 2 };
const transient = new SluiceError("ERR_SINK_WRITE", "lock timeout");
const permanent = new SluiceError("ERR_SINK_REJECTED", "bad row");

describe("Retry.decide", () => {
  it.each<[string, RetryPolicy, SluiceError, number, number, string]>([
    // name, policy, error, attempts made, ms passed, expected decision
    ["retries a retryable error", { backoff }, transient, 1, 0, "retry 50"],
    ["gives up a permanent error at once", { backoff }, permanent, 1, 0, "give_up permanent"],
    ["retries a permanent error with retry: all", { backoff, retry: "all" }, permanent, 1, 0, "retry 50"],
    ["gives up after maxAttempts", { backoff, maxAttempts: 3 }, transient, 3, 0, "give_up exhausted"],
    ["counts the wait against maxElapsedMs (next_attempt)", { backoff, maxElapsedMs: 1000 }, transient, 1, 960, "give_up exhausted"],
    ["counts only the failing time with elapsed: failing", { backoff, maxElapsedMs: 1000, elapsed: "failing" }, transient, 1, 960, "retry 50"],
    ["keeps minDelayMs", { backoff, minDelayMs: 80 }, transient, 1, 0, "retry 80"],
    ["waits the cap itself without jitter", { backoff: { ...backoff, jitter: "none" } }, transient, 2, 0, "retry 200"],
  ])("%s", (_name, policy, error, attempts, passed, expected) => {
    const clock = new FakeClock();
    const r = new Retry(policy, { clock, random: () => 0.5, signal: new AbortController().signal });
    for (let i = 0; i < attempts; i++) r.begin();
    clock.advance(passed);
    const d = r.decide(error);
    expect(d.tag === "retry" ? `retry ${d.delayMs}` : `give_up ${d.reason}`).toBe(expected);
  });
});

describe("retry()", () => {
  it("retries with backoff on the injected clock until the operation succeeds, classifying what it throws", async () => {
    const clock = new FakeClock();
    const failures: string[] = [];
    let calls = 0;
    const done = retry(
      async () => {
        if (++calls < 3) throw new Error("ECONNREFUSED");
        return "up";
      },
      { backoff, clock, random: () => 0.5, signal: new AbortController().signal, fallback: "ERR_SINK_CONNECT", onFailure: (e, n) => failures.push(`${n}:${e.code}`) },
    );
    await clock.advanceAsync(49);
    expect(calls).toBe(1);
    await clock.advanceAsync(1000);
    expect(await done).toEqual({ tag: "done", value: "up", attempts: 3 });
    expect(failures).toEqual(["1:ERR_SINK_CONNECT", "2:ERR_SINK_CONNECT"]);
  });

  it("never retries a programmer error", async () => {
    const clock = new FakeClock();
    const out = await retry(() => Promise.reject(new TypeError("x is undefined")), { backoff, clock, random: () => 0.5, signal: new AbortController().signal, fallback: "ERR_SINK_WRITE" });
    expect(out.tag === "gave_up" && out.error.code).toBe("ERR_INTERNAL");
  });

  it("ends its wait at once when the signal aborts, with the last real failure", async () => {
    const clock = new FakeClock();
    const abort = new AbortController();
    const out = retry(() => Promise.reject(new Error("down")), { backoff, clock, random: () => 0.5, signal: abort.signal, fallback: "ERR_SOURCE_CONNECT" });
    await clock.advanceAsync(0);
    abort.abort();
    const ended = await out;
    expect(ended.tag).toBe("aborted");
    expect(ended.tag === "aborted" && ended.error?.message).toBe("down");
    expect(clock.pendingTimers).toBe(0);
  });
});
