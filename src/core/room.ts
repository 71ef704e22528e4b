/**
 * The room accounting both buffers share for split parts (`Buffer.grow`, `hasRoom`, `whenPartRoom`;
 * the engine's side is `split.ts`): the bound check and the line of waits for freed room.
 */
import type { BufferLimits } from "./buffer.js";

/** Parts waiting for a buffer to give room back. */
export class Room {
  private waiters: (() => void)[] = [];

  constructor(private readonly limits: BufferLimits) {}

  /** True when `records` and `bytes` more on top of `held` stay within the limits. */
  fits(heldRecords: number, heldBytes: number, records: number, bytes: number): boolean {
    return heldRecords + records <= this.limits.maxRecords && heldBytes + bytes <= this.limits.maxBytes;
  }

  /** Resolves at the next {@link freed}: the caller checks again (room may have been taken meanwhile). */
  whenFreed(): Promise<void> {
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  /** Room was given back: wakes every wait. */
  freed(): void {
    if (this.waiters.length === 0) return;
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }
}
