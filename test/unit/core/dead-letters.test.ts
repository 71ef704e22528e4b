import { describe, expect, it } from "vitest";
import type { DeadLetter } from "../../../src/components/contracts.js";
import { DeadLetterWriter } from "../../../src/core/dead-letters.js";
import type { SluiceError } from "../../../src/core/errors.js";
import { silentLogger, type InternalEvent } from "../../../src/core/events.js";
import { FakeClock, flush } from "../../helpers/fake-clock.js";
import { driveUntil, makeEntry, MemoryDeadLetterStore } from "../../helpers/memory.js";

function letter(id: string): DeadLetter {
  return { record: makeEntry(id), raw: undefined, sink: "sink", code: "ERR_SINK_REJECTED", message: "bad", attempts: 1, firstFailureAt: 0, lastFailureAt: 0 };
}

function writer(store: MemoryDeadLetterStore) {
  const clock = new FakeClock(0);
  const abort = new AbortController();
  const w = new DeadLetterWriter(store, clock, () => 0.5, { initialMs: 100, maxMs: 1000, multiplier: 2 }, silentLogger, abort.signal);
  return { clock, abort, w };
}

describe("DeadLetterWriter", () => {
  it("retries a failing store with backoff and calls back only once the entries are durable", async () => {
    const store = new MemoryDeadLetterStore(2);
    const { clock, w } = writer(store);
    let committedAt: number | undefined;
    w.add([letter("a")], () => (committedAt = clock.now()));
    await flush();
    expect(committedAt).toBeUndefined();
    await driveUntil(clock, () => committedAt !== undefined);
    // Backoff 50 ms, then 100 ms (random 0.5 of caps 100 and 200).
    expect(committedAt).toBe(150);
    expect(store.writeCalls).toBe(3);
    expect(store.entries.map((e) => e.record.id)).toEqual(["a"]);
  });

  it("writes entries queued during a write together in the next one, in order", async () => {
    const store = new MemoryDeadLetterStore(1);
    const { clock, w } = writer(store);
    const done: string[] = [];
    w.add([letter("a")], () => done.push("a"));
    w.add([letter("b"), letter("c")], () => done.push("bc"));
    w.add([letter("d")], () => done.push("d"));
    await driveUntil(clock, () => done.length === 3);
    expect(done).toEqual(["a", "bc", "d"]);
    expect(store.entries.map((e) => e.record.id)).toEqual(["a", "b", "c", "d"]);
    // One failed write of "a", then "a" alone, then b, c and d in one write.
    expect(store.writeCalls).toBe(3);
  });

  it("gives up at the deadline without calling back, and flush still resolves", async () => {
    const store = new MemoryDeadLetterStore(Number.POSITIVE_INFINITY);
    const { clock, abort, w } = writer(store);
    let committed = false;
    w.add([letter("a")], () => (committed = true));
    await clock.advanceAsync(10_000);
    abort.abort();
    await w.flush();
    expect(committed).toBe(false);
    expect(clock.pendingTimers).toBe(0);
  });

  it("flush resolves when entries are added after the deadline (a late dead letter must not wedge the writer)", async () => {
    const store = new MemoryDeadLetterStore();
    const { abort, w } = writer(store);
    abort.abort();
    let committed = false;
    w.add([letter("late")], () => (committed = true));
    let flushed = false;
    void w.flush().then(() => (flushed = true));
    // Bounded wait on microtasks only: a wedged writer makes flush() spin on microtasks forever,
    // which no timer (not even the test timeout) can interrupt.
    for (let i = 0; i < 50 && !flushed; i++) await Promise.resolve();
    if (!flushed) {
      // Break the spin so the failure is reported instead of hanging the worker.
      (w as unknown as { running: unknown }).running = undefined;
      (w as unknown as { queue: unknown[] }).queue = [];
    }
    expect(flushed).toBe(true);
    expect(committed).toBe(false);
    expect(store.writeCalls).toBe(0);
  });

  it("reports failing writes and the recovery, for readiness", async () => {
    const store = new MemoryDeadLetterStore(2);
    const clock = new FakeClock(0);
    const events: InternalEvent[] = [];
    const w = new DeadLetterWriter(store, clock, () => 0.5, { initialMs: 100, maxMs: 1000, multiplier: 2 }, silentLogger, new AbortController().signal, {
      maxElapsedMs: 60_000,
      emit: (e) => events.push(e),
      giveUp: () => expect.unreachable(),
    });
    let committed = false;
    w.add([letter("a")], () => (committed = true));
    await driveUntil(clock, () => committed);
    w.add([letter("b")], () => {});
    await w.flush();
    expect(events).toEqual([
      { type: "dead_letter_write_failed", code: "ERR_DEAD_LETTER_WRITE", message: "dead-letter store unavailable" },
      { type: "dead_letter_write_failed", code: "ERR_DEAD_LETTER_WRITE", message: "dead-letter store unavailable" },
      { type: "dead_letter_write_recovered" },
    ]);
  });

  it("gives up a write that keeps failing past maxElapsedMs: never calls back, writes nothing more, says why", async () => {
    const store = new MemoryDeadLetterStore(Number.POSITIVE_INFINITY);
    const clock = new FakeClock(0);
    const gaveUp: SluiceError[] = [];
    const w = new DeadLetterWriter(store, clock, () => 0.5, { initialMs: 100, maxMs: 1000, multiplier: 2 }, silentLogger, new AbortController().signal, {
      maxElapsedMs: 2000,
      emit: () => {},
      giveUp: (e) => gaveUp.push(e),
    });
    let committed = false;
    w.add([letter("a")], () => (committed = true));
    await driveUntil(clock, () => gaveUp.length > 0);
    expect(clock.now()).toBeGreaterThanOrEqual(2000);
    const calls = store.writeCalls;
    w.add([letter("b")], () => (committed = true));
    await clock.advanceAsync(10_000);
    await w.flush();
    expect(committed).toBe(false);
    expect(store.writeCalls).toBe(calls);
    expect(gaveUp).toHaveLength(1);
    expect(gaveUp[0]).toMatchObject({ code: "ERR_DEAD_LETTER_WRITE", message: expect.stringMatching(/^dead letters could not be written for 2(\.\d)? s \(\d+ attempts; the last: dead-letter store unavailable\); their records are not acked/) });
    expect(clock.pendingTimers).toBe(0);
  });

  it("opens a store that could not open at start before its first write, within the write's retries", async () => {
    const store = new MemoryDeadLetterStore();
    let refusals = 2;
    const open = store.open.bind(store);
    store.open = async () => {
      if (refusals-- > 0) throw Object.assign(new Error("disk I/O error"), { code: "SQLITE_IOERR_SHMSIZE" });
      return open();
    };
    const { clock, w } = writer(store);
    expect(await w.open()).toMatchObject({ code: "ERR_DEAD_LETTER_WRITE", message: "disk I/O error" });
    expect(store.opened).toBe(false);
    let committed = false;
    w.add([letter("a")], () => (committed = true));
    await driveUntil(clock, () => committed);
    expect(store.opened).toBe(true);
    expect(store.entries.map((e) => e.record.id)).toEqual(["a"]);
  });
});
