/**
 * The `rabbitmq` source's prefetch bounded by bytes as well as by messages.
 *
 * AMQP's prefetch counts messages; its byte form (`basic.qos` prefetch-size) is not implemented by
 * RabbitMQ. Every message delivered and not acked is held by sluice (a record in the buffer, or
 * delivered and waiting for room), so the messages in flight must fit `buffer.max_bytes` as well as
 * `buffer.max_records`. The count that fits is the byte bound over the mean message size seen so
 * far; a new consumer is started to change it (a prefetch cannot change under a running one), so
 * it is chosen with headroom ({@link TARGET}) and chosen again only when the mean moved it out of
 * a band around it: above the byte bound (too many bytes would be in flight), or below
 * {@link REGROW} of what now fits (too few for speed). Before any message was seen, nothing tells
 * how many fit: the prefetch is 1 until one has.
 */

/** The share of the byte bound a newly chosen prefetch plans for at the mean size. */
const TARGET = 0.8;
/** A prefetch planning for less than this share of the byte bound is chosen again (larger). */
const REGROW = 0.4;

export class BytePrefetch {
  /** The prefetch chosen last; undefined before a message size was known. */
  private chosen: number | undefined;

  /**
   * `most`: the prefetch by count (`prefetch`, at most `buffer.max_records`); `maxBytes`: the
   * buffer's byte bound (undefined: none, the prefetch is `most`).
   */
  constructor(
    private readonly most: number,
    private readonly maxBytes: number | undefined,
  ) {}

  /** The prefetch for messages of `mean` bytes on average (undefined: none seen yet). */
  for(mean: number | undefined): number {
    if (this.maxBytes === undefined) return this.most;
    if (mean === undefined || mean <= 0) return this.chosen ?? 1;
    const fits = this.maxBytes / mean;
    const c = this.chosen;
    const grow = c !== undefined && c < this.most && c < REGROW * fits;
    if (c === undefined || c > fits || grow) this.chosen = Math.max(1, Math.min(this.most, Math.floor(TARGET * fits)));
    return this.chosen!;
  }
}
