/**
 * The producers waiting for room in a buffer, first come first served, and how fast room frees
 * up. Both buffers (`buffer.ts`, `durable-buffer.ts`) keep their waiting pushes here; each says
 * what fits and what admitting means.
 */
import type { PushResult } from "./buffer.js";

/** What a buffer tells its {@link WaitingLine}. */
export interface LineHooks<T> {
  /** Whether `item`, at the head of the line, fits in the buffer now. */
  fits(item: T): boolean;
  /** Takes `item` into the buffer; what its push answers. */
  admit(item: T): PushResult | Promise<PushResult>;
  /** What a push answers when it leaves the line without room (the buffer closed, or its signal aborted). */
  closed(): PushResult | Promise<PushResult>;
  /** A waiter left on its signal: the buffer may now be empty. */
  left(): void;
}

interface Waiter<T> {
  readonly item: T;
  readonly records: number;
  readonly bytes: number;
  readonly resolve: (result: PushResult | Promise<PushResult>) => void;
  readonly signal: AbortSignal | undefined;
  readonly onAbort: () => void;
}

/**
 * Time constant of the drain rate, ms: releases count with weight `e^(-age / 5 s)`. Long enough
 * that a sink writing a batch every second or two reads as a steady rate, short enough that a sink
 * that stalled reads as one within seconds (after 15 s, 5% of the rate it had).
 */
const RATE_TAU_MS = 5000;

/**
 * Waiting pushes in arrival order, whatever their size. Only the head may be admitted, and a
 * push that does not wait may not pass anyone waiting (the buffer checks `length`), so the head
 * holds a reservation: room freed while it waits stays free until it has what it needs, and a
 * large chunk is not overtaken by small ones for ever. A waiter whose signal aborts leaves the
 * line at once, wherever it is, and the next ones are admitted if they fit now.
 *
 * The line also measures how fast its buffer frees room ({@link freed}), exponentially weighted
 * over about 5 s, so that a producer can be told how long it would wait ({@link expectedWait})
 * before it joins.
 */
export class WaitingLine<T> {
  private readonly waiters: Waiter<T>[] = [];
  private waitingRecords = 0;
  private waitingBytes = 0;
  private freedRecords = 0;
  private freedBytes = 0;
  private freedAt = 0;
  /** Sources waiting for room before they fetch (see {@link whenFreed}). */
  private freedWaiters: (() => void)[] = [];

  constructor(
    private readonly hooks: LineHooks<T>,
    private readonly now: () => number,
  ) {}

  /** Pushes waiting. */
  get length(): number {
    return this.waiters.length;
  }

  /** Records of every waiting push. */
  get records(): number {
    return this.waitingRecords;
  }

  /** Bytes of every waiting push, as its buffer counts them. */
  get bytes(): number {
    return this.waitingBytes;
  }

  /** Joins the line at its end; resolves with what admitting answers, or `closed` when the line closes or `signal` aborts first. */
  join(item: T, records: number, bytes: number, signal: AbortSignal | undefined): Promise<PushResult> {
    return new Promise((resolve) => {
      const waiter: Waiter<T> = {
        item,
        records,
        bytes,
        resolve,
        signal,
        onAbort: () => {
          const i = this.waiters.indexOf(waiter);
          if (i < 0) return;
          this.waiters.splice(i, 1);
          this.waitingRecords -= records;
          this.waitingBytes -= bytes;
          resolve(this.hooks.closed());
          // The head may have been what held the next ones back.
          this.admit();
          this.hooks.left();
        },
      };
      signal?.addEventListener("abort", waiter.onAbort, { once: true });
      this.waiters.push(waiter);
      this.waitingRecords += records;
      this.waitingBytes += bytes;
    });
  }

  /** Admits waiters from the head for as long as the head fits. Call it whenever room frees. */
  admit(): void {
    while (this.waiters.length > 0 && this.hooks.fits(this.waiters[0]!.item)) {
      const w = this.waiters.shift()!;
      this.waitingRecords -= w.records;
      this.waitingBytes -= w.bytes;
      w.signal?.removeEventListener("abort", w.onAbort);
      w.resolve(this.hooks.admit(w.item));
    }
  }

  /**
   * Resolves the next time the buffer frees room (after its waiters were admitted) or closes: for
   * a source that waits for room before it fetches and then looks again.
   */
  whenFreed(): Promise<void> {
    return new Promise((resolve) => this.freedWaiters.push(resolve));
  }

  /** Every waiter leaves with the `closed` answer. */
  close(): void {
    this.wakeFreed();
    for (const w of this.waiters.splice(0)) {
      w.signal?.removeEventListener("abort", w.onAbort);
      w.resolve(this.hooks.closed());
    }
    this.waitingRecords = 0;
    this.waitingBytes = 0;
  }

  /** The buffer released room: feeds the drain rate. Does not admit (call {@link admit}). */
  freed(records: number, bytes: number): void {
    this.decay();
    this.freedRecords += records;
    this.freedBytes += bytes;
  }

  /** Wakes the {@link whenFreed} waiters; the buffer calls it after {@link admit}, so chunks already waiting go first. */
  wakeFreed(): void {
    if (this.freedWaiters.length === 0) return;
    for (const w of this.freedWaiters.splice(0)) w();
  }

  /**
   * How long, in ms, until the buffer frees `records` records and `bytes` bytes at the rate it
   * freed room lately (a dimension at 0 or below needs nothing). 0 when nothing is needed;
   * `Infinity` when something is and the buffer freed nothing lately (a stalled sink).
   */
  expectedWait(records: number, bytes: number): number {
    this.decay();
    let wait = 0;
    for (const [need, freed] of [
      [records, this.freedRecords],
      [bytes, this.freedBytes],
    ] as const) {
      if (need <= 0) continue;
      // The weighted sum of what was freed is rate x tau for a steady rate.
      wait = Math.max(wait, freed > 0 ? (need * RATE_TAU_MS) / freed : Infinity);
    }
    return wait;
  }

  private decay(): void {
    const now = this.now();
    const f = Math.exp(-Math.max(0, now - this.freedAt) / RATE_TAU_MS);
    this.freedRecords *= f;
    this.freedBytes *= f;
    this.freedAt = now;
  }
}
