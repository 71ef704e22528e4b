/**
 * A fake {@link Clock} for tests: time moves only when the test says so, and timers fire in
 * due-time order (ties in the order they were set), each with `now()` equal to its due time.
 */
import type { Clock } from "../../src/core/clock.js";

interface Timer {
  readonly at: number;
  readonly order: number;
  readonly fn: () => void;
}

/**
 * A manually driven clock. `advance(ms)` fires every timer due within the step, including timers
 * that those callbacks set, then leaves `now()` at the end of the step.
 *
 * Gotchas: `advance` is synchronous, so promise continuations of a fired timer run only after it
 * returns; use {@link FakeClock.advanceAsync} when a timer's continuation sets the next timer (a
 * retry loop, a sleep in a loop). A timer set for 0 ms (or a negative or NaN delay) fires on the
 * next advance, even `advance(0)`, never synchronously.
 */
export class FakeClock implements Clock {
  private current: number;
  private counter = 0;
  private timers: Timer[] = [];

  /** Starts at `start` ms since the epoch (default 2024-01-01T00:00:00Z). */
  constructor(start: number = Date.UTC(2024, 0, 1)) {
    this.current = start;
  }

  now(): number {
    return this.current;
  }

  setTimer(ms: number, fn: () => void): () => void {
    const delay = Number.isFinite(ms) && ms > 0 ? ms : 0;
    const timer: Timer = { at: this.current + delay, order: this.counter++, fn };
    this.timers.push(timer);
    return () => {
      this.timers = this.timers.filter((t) => t !== timer);
    };
  }

  /** Number of timers set and neither fired nor cancelled. */
  get pendingTimers(): number {
    return this.timers.length;
  }

  /** Due time of the earliest pending timer, or undefined when none is pending. */
  nextTimerAt(): number | undefined {
    return this.next(Number.POSITIVE_INFINITY)?.at;
  }

  /** Moves time forward by `ms`, firing due timers in order. */
  advance(ms: number): void {
    if (!(ms >= 0)) throw new RangeError(`FakeClock.advance: ${ms} is not a non-negative number of ms`);
    const target = this.current + ms;
    for (let timer = this.next(target); timer !== undefined; timer = this.next(target)) {
      this.fire(timer);
    }
    this.current = target;
  }

  /**
   * Like {@link FakeClock.advance}, but lets pending promise continuations and immediates run
   * before and after each timer, so code that awaits a timer and then sets the next one is driven
   * through the whole step.
   */
  async advanceAsync(ms: number): Promise<void> {
    if (!(ms >= 0)) throw new RangeError(`FakeClock.advanceAsync: ${ms} is not a non-negative number of ms`);
    const target = this.current + ms;
    await flush();
    for (let timer = this.next(target); timer !== undefined; timer = this.next(target)) {
      this.fire(timer);
      await flush();
    }
    this.current = target;
    await flush();
  }

  private next(limit: number): Timer | undefined {
    let best: Timer | undefined;
    for (const t of this.timers) {
      if (t.at > limit) continue;
      if (best === undefined || t.at < best.at || (t.at === best.at && t.order < best.order)) best = t;
    }
    return best;
  }

  private fire(timer: Timer): void {
    this.timers = this.timers.filter((t) => t !== timer);
    this.current = Math.max(this.current, timer.at);
    timer.fn();
  }
}

/** Resolves after queued microtasks and one turn of immediates have run. */
export function flush(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}
