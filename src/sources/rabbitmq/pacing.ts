/**
 * How the `rabbitmq` source takes messages so that a record that crashes the worker reaches
 * `max_deliveries` alone rather than with every message delivered with it.
 *
 * Every message delivered and not yet acked when a worker dies is delivered again, and a quorum
 * queue counts each delivery (`x-delivery-count`). With a consumer's prefetch of thousands, a
 * poison record's neighbours were delivered with it on every crash and dead-lettered with it
 * (`ERR_MAX_DELIVERIES`). A prefetch cannot be changed under a running consumer, and a consumer
 * pushes up to its prefetch before the source sees any delivery count, so:
 *
 * - Every connect starts `careful`, with one `basic.get`: what a crashed worker left behind comes
 *   back first. A message with count `c` > 1 limits the messages in flight to
 *   2^(max_deliveries - c) (one once `c` reaches `max_deliveries`), as the `nats_jetstream`
 *   source does. While that limit is at least {@link GET_BELOW}, messages come from a consumer
 *   whose prefetch is the limit (a `get` on a quorum queue is a Raft round with an fsync, tens of
 *   ms: one at a time took a minute for the 10,000 messages a crash leaves); below it, one `get`
 *   at a time, each message's count seen before the next is taken. A consumer pushes up to its
 *   prefetch before their counts are seen, so a limit is kept exactly only in `get` mode: the last
 *   few deliveries of a poison record, where it matters.
 * - `streaming`: a consumer with the full prefetch. Entered when a message delivered for the
 *   first time (or one the queue does not count: classic queues) is taken while no counted
 *   redelivery is in flight, or a `get` finds the queue empty with none in flight. Left when a
 *   counted redelivery arrives (another worker died, and its messages are due again).
 *
 * Classic queues count nothing, so they stream after the first message and a poison record there
 * is not isolated (the README says so).
 */
/** Below this limit of messages in flight, messages are taken one `get` at a time. */
export const GET_BELOW = 16;

/** How the source takes messages now: one `get` at a time, or a consumer with this prefetch. */
export type Taking = { readonly how: "get" } | { readonly how: "consume"; readonly prefetch: number };

export class RedeliveryPacing {
  private mode: "careful" | "streaming" = "careful";
  /** Most messages in flight while careful; Infinity while no counted redelivery was seen. */
  private cap = Number.POSITIVE_INFINITY;
  /** Messages taken (got or delivered) and not yet answered. */
  private taken = 0;
  /** Of those, the ones the queue counted as delivered more than once. */
  private counted = 0;

  /** `maxDeliveries`: the source's; `most`: the largest number of messages in flight (the prefetch). */
  constructor(
    private readonly maxDeliveries: number,
    private readonly most: number,
  ) {}

  /** A new channel: nothing in flight on it, and what a crash left behind may be due. */
  connected(): void {
    this.mode = "careful";
    this.cap = Number.POSITIVE_INFINITY;
    this.taken = 0;
    this.counted = 0;
  }

  /** Whether a counted redelivery was seen and the messages in flight are limited. */
  get careful(): boolean {
    return this.mode === "careful";
  }

  /** How to take messages now (see the class). */
  taking(): Taking {
    if (this.mode === "streaming") return { how: "consume", prefetch: this.most };
    if (this.cap < GET_BELOW || this.cap === Number.POSITIVE_INFINITY) return { how: "get" };
    return { how: "consume", prefetch: Math.min(this.cap, this.most) };
  }

  /** Messages in flight. */
  get inFlight(): number {
    return this.taken;
  }

  /** Whether another message may be taken now (for `get`; a consumer's prefetch bounds itself). */
  mayTake(): boolean {
    return this.taken < this.cap;
  }

  /** A message was taken; `count` is its deliveries, this one included (undefined: the queue does not count). */
  took(count: number | undefined): void {
    this.taken++;
    if (count !== undefined && count > 1) {
      this.counted++;
      this.cap = Math.min(this.cap, capFor(count, this.maxDeliveries, this.most));
      this.mode = "careful";
      return;
    }
    if (this.mode === "careful" && this.counted === 0) this.stream();
  }

  /** A `get` found the queue empty: stream, unless a counted redelivery is still in flight. */
  empty(): void {
    if (this.counted === 0) this.stream();
  }

  /** `n` messages answered (acked or rejected), `counted` of them counted redeliveries. */
  answered(n: number, counted: number): void {
    this.taken = Math.max(0, this.taken - n);
    this.counted = Math.max(0, this.counted - counted);
  }

  private stream(): void {
    this.mode = "streaming";
    this.cap = Number.POSITIVE_INFINITY;
  }
}

/** Most messages in flight once one with `count` deliveries was seen: 2^(maxDeliveries - count), between 1 and `most`. */
export function capFor(count: number, maxDeliveries: number, most: number): number {
  const left = maxDeliveries - count;
  if (left <= 0) return 1;
  return Math.max(1, Math.min(most, 2 ** Math.min(left, 30)));
}
