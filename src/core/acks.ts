import type { AckTicket } from "./record.js";

/**
 * Moves one source's checkpoint over the contiguous prefix of done chunks. Chunks finish out of
 * order (lanes, retries, several sinks); the source is told only about a checkpoint whose chunk
 * and every earlier chunk are done, so a crash never skips an undelivered record.
 *
 * `ack` calls are serialized and coalesced: while one runs, later progress is folded into the
 * next call, so a slow checkpoint store never sees concurrent or out-of-order calls.
 */
export class AckTracker {
  private nextSeq = 0;
  private issued = 0;
  private readonly done = new Map<number, unknown>();
  private latest: { checkpoint: unknown } | undefined;
  private running: Promise<void> | undefined;

  /**
   * @param ack the source's ack, called in order and never concurrently
   * @param onError called when `ack` rejects; the next progress retries with the newer checkpoint
   */
  constructor(
    private readonly ack: (checkpoint: unknown) => Promise<void> | void,
    private readonly onError: (err: unknown) => void,
  ) {}

  /** The sequence number for the next chunk of this source. */
  nextTicketSeq(): number {
    return this.issued++;
  }

  /** Marks a ticket's chunk done; acks the source if the contiguous prefix grew. */
  complete(ticket: AckTicket): void {
    if (ticket.seq !== this.nextSeq) {
      this.done.set(ticket.seq, ticket.checkpoint);
      return;
    }
    let checkpoint = ticket.checkpoint;
    this.nextSeq++;
    while (this.done.has(this.nextSeq)) {
      checkpoint = this.done.get(this.nextSeq);
      this.done.delete(this.nextSeq);
      this.nextSeq++;
    }
    this.latest = { checkpoint };
    this.kick();
  }

  /** Resolves once every ack already due has been handed to the source. */
  async flush(): Promise<void> {
    while (this.running) await this.running;
  }

  /** Chunks issued but not yet acked to the source. */
  outstanding(): number {
    return this.issued - this.nextSeq;
  }

  private kick(): void {
    if (this.running) return;
    // Cleared in `finally`, which always runs after this assignment: an ack that throws
    // synchronously would otherwise finish drain() before `running` is set, leaving it set forever
    // (no ack ever again, and flush() spinning).
    this.running = this.drain().finally(() => {
      this.running = undefined;
      if (this.latest) this.kick();
    });
  }

  private async drain(): Promise<void> {
    while (this.latest) {
      const { checkpoint } = this.latest;
      this.latest = undefined;
      try {
        await this.ack(checkpoint);
      } catch (err) {
        this.onError(err);
      }
    }
  }
}
