/**
 * How much the `nats_jetstream` source pulls and keeps in flight, so that a record that crashes
 * the worker reaches `max_deliver` alone rather than with every message delivered with it.
 *
 * Every message delivered and not yet acked when a worker dies comes back with one delivery more.
 * With pulls of up to 1000 and a buffer's worth in flight, a poison record's neighbours were
 * delivered with it on every crash and dead-lettered with it (`ERR_MAX_DELIVERIES`) after
 * `max_deliver` crashes. So: pulls start at one message after each connect and double with each
 * pull of fresh messages (the server hands out due redeliveries before new messages, so a fresh
 * message says none is due). A redelivered message with delivery count `c` switches to pulls of
 * one message (its count is known before the next is taken) and limits the messages in flight to
 * 2^(max_deliver - c) for the highest `c` seen, one once `c` reaches `max_deliver`, until a pull
 * with nothing else in flight brings a fresh message. A message with `max_deliver` deliveries is
 * thus never in flight with another: the poison crashes alone, and a neighbour that shared
 * crashes with it earlier stays at or below `max_deliver` and is committed.
 *
 * Not covered: redeliveries that come due while pulls are large (a worker restarted sooner than
 * `ack_wait` after its crash, with fresh messages to read) arrive together in one pull.
 */
export class RedeliveryPacing {
  /** Most messages the next pull may take outside redeliveries. */
  private window = 1;
  /** Most messages in flight; Infinity while no redelivery was seen. */
  private cap = Number.POSITIVE_INFINITY;
  /** Messages handed over and not yet acked. */
  private inFlight = 0;

  /** `maxPull`: the largest pull; `maxDeliver`: the source's. */
  constructor(
    private readonly maxPull: number,
    private readonly maxDeliver: number,
  ) {}

  /** A new connection: its first pulls may meet due redeliveries, so they start at one message. */
  connected(): void {
    this.window = 1;
    this.cap = Number.POSITIVE_INFINITY;
  }

  /** Whether the next pull must wait for acks (until one comes, or `ack_wait` redelivers them anyway). */
  full(): boolean {
    return this.inFlight >= this.cap;
  }

  /** Most messages the next pull may take, at most `limit` (the buffer's room, a chunk). */
  next(limit: number): number {
    if (this.cap !== Number.POSITIVE_INFINITY) return 1;
    return Math.max(1, Math.min(limit, this.window));
  }

  /** `n` messages handed to the engine. */
  handed(n: number): void {
    this.inFlight += n;
  }

  /** `n` messages acked (or terminated). */
  answered(n: number): void {
    this.inFlight = Math.max(0, this.inFlight - n);
  }

  /** A pull ended: `count` messages, the highest delivery count among them `most` (0 when none). */
  pulled(count: number, most: number): void {
    if (most > 1) {
      this.cap = Math.min(this.cap, capFor(most, this.maxDeliver, this.maxPull));
      this.window = 1;
      return;
    }
    if (count === 0) return;
    if (this.cap !== Number.POSITIVE_INFINITY) {
      if (this.inFlight > count) return;
      this.cap = Number.POSITIVE_INFINITY;
    }
    this.window = Math.min(this.window * 2, this.maxPull);
  }
}

/** Most messages in flight once one with `count` deliveries was seen: 2^(maxDeliver - count), between 1 and `maxPull`. */
export function capFor(count: number, maxDeliver: number, maxPull: number): number {
  const left = maxDeliver - count;
  if (left <= 0) return 1;
  return Math.min(maxPull, 2 ** Math.min(left, 30));
}
