/**
 * The `nats_jetstream` source's durable consumer: checked, created, updated or bound to at
 * connect, with a permanent error for what no retry fixes.
 */
import type { ConsumerConfig, ConsumerInfo, JetStreamManager } from "@nats-io/jetstream";
import { isStreamNotFound, unlessAborted, type NatsModules } from "../../brokers/nats.js";
import { SluiceError } from "../../core/errors.js";
import type { Logger } from "../../core/events.js";

/** The server's `ack_wait` when a consumer has none set, ms. */
const SERVER_ACK_WAIT_MS = 30_000;

/**
 * The consumer's `max_ack_pending`: `exactly` a configured value, or `at_least` this worker's
 * buffer bound plus one pull (the default). The limit is the consumer's, shared by every worker of
 * a fleet, so a default never lowers what another worker (a larger buffer) or an operator set.
 */
export type MaxAckPending = { readonly tag: "exactly"; readonly value: number } | { readonly tag: "at_least"; readonly value: number };

/** The limit to give a consumer that has `current` (undefined: a consumer being created). */
function ackPendingFor(want: MaxAckPending, current: number | undefined): number {
  if (want.tag === "exactly" || current === undefined) return want.value;
  // -1: no limit.
  return current === -1 || current >= want.value ? current : want.value;
}

/**
 * The consumer's `ack_wait`, ms: `exactly` a configured value, or `at_least` the default. Like
 * {@link MaxAckPending} the wait is the consumer's, shared by a fleet: a worker that set its own
 * shorter default on connect had the chunks other workers held redelivered, so a default only
 * raises it.
 */
export type AckWait = { readonly tag: "exactly"; readonly ms: number } | { readonly tag: "at_least"; readonly ms: number };

/** The `ack_wait` (ns) to give a consumer whose `ack_wait` is `current` ns (undefined: a consumer being created). */
function ackWaitFor(nats: NatsModules, want: AckWait, current: number | undefined): number {
  const ns = nats.core.nanos(want.ms);
  if (want.tag === "exactly" || current === undefined) return ns;
  return Math.max(current, ns);
}

/** The subjects a consumer filters on, none when it takes the whole stream. */
function filtersOf(c: ConsumerConfig): string[] {
  const plural = c.filter_subjects ?? [];
  return c.filter_subject === undefined || c.filter_subject === "" ? [...plural] : [c.filter_subject, ...plural];
}

/** What the source wants of its consumer. */
export interface ConsumerSettings {
  readonly stream: string;
  readonly consumer: string;
  readonly bind: boolean;
  readonly filterSubject?: string | undefined;
  /** Where the consumer starts when this source creates it first; see {@link ConsumerSettings.resumeAt}. */
  readonly deliver: "all" | "new";
  /**
   * Where a consumer created again (deleted under a run) starts: the stream sequence after the
   * consumer's ack floor as last read. Undefined until the source had a consumer; then `deliver`.
   */
  readonly resumeAt?: number | undefined;
  readonly ackWait: AckWait;
  readonly maxDeliver: number;
  readonly maxAckPending: MaxAckPending;
}

/**
 * Where a created consumer starts. Once the source had a consumer, from the sequence after its ack
 * floor, whatever `deliver` says: `new` would skip the backlog (delivered or not) of a consumer
 * deleted under a run, and `all` replay the whole stream. Every message at or below the floor was
 * acked (by any worker of the fleet), so nothing is skipped; a floor read a while ago only means
 * the messages acked since are delivered again, which their stable ids absorb.
 */
function startOf(nats: NatsModules, s: ConsumerSettings): Partial<ConsumerConfig> {
  if (s.resumeAt !== undefined) return { deliver_policy: nats.js.DeliverPolicy.StartSequence, opt_start_seq: s.resumeAt };
  return { deliver_policy: s.deliver === "all" ? nats.js.DeliverPolicy.All : nats.js.DeliverPolicy.New };
}

/**
 * The stream sequence at or below which a consumer has nothing left to deliver, from its info: its
 * ack floor, or, before it delivered anything, the sequence before its start (nats-server 2.9
 * reports an ack floor of 0 for a `new` consumer until its first ack). Never below `known`, a floor
 * read before: a floor only rises, and a consumer created again by another worker from a floor
 * older than `known` had every message up to `known` acked before.
 */
export function floorOf(info: ConsumerInfo, known: number | undefined): number {
  const floor = info.delivered.consumer_seq === 0 ? Math.max(info.ack_floor.stream_seq, info.delivered.stream_seq) : info.ack_floor.stream_seq;
  return Math.max(floor, known ?? 0);
}

/** The consumer's config as the source creates it, or updates one whose config is `current`. */
function wanted(nats: NatsModules, s: ConsumerSettings, current?: ConsumerConfig): Partial<ConsumerConfig> {
  return {
    durable_name: s.consumer,
    ack_policy: nats.js.AckPolicy.Explicit,
    ack_wait: ackWaitFor(nats, s.ackWait, current === undefined ? undefined : (current.ack_wait ?? nats.core.nanos(SERVER_ACK_WAIT_MS))),
    ...startOf(nats, s),
    ...(s.filterSubject === undefined ? {} : { filter_subject: s.filterSubject }),
    max_ack_pending: ackPendingFor(s.maxAckPending, current?.max_ack_pending),
    // The server never gives up on a message: sluice does, after max_deliver deliveries, with a
    // dead letter. A server limit would leave a message that reached it un-acked and never
    // delivered again, neither delivered nor dead-lettered.
    max_deliver: -1,
  };
}

/** Where {@link setUpConsumer} logs, and the signal that ends its API calls at once. */
export interface SetUpContext {
  readonly logger: Logger;
  readonly component: string;
  readonly signal: AbortSignal;
}

/**
 * Checks that the stream exists, then gets the consumer: created when missing (unless `bind`),
 * else checked to be a pull consumer with explicit acks and, unless `bind`, to filter exactly
 * `filter_subject` (nothing when unset: a filtering consumer is refused, not silently read in
 * part) and updated to the source's `ack_wait` (see {@link AckWait}), `max_ack_pending` (see
 * {@link MaxAckPending}) and `max_deliver`. A bound consumer is left as it is; its
 * `ack_wait` must be at least the source's (the `working()` ticks are paced by the source's), and
 * a server `max_deliver` at or below the source's is logged as a warning.
 *
 * Each API call ends with `ERR_ABORTED` as soon as `how.signal` aborts. Rejects with a permanent `ERR_SOURCE_CONNECT` naming the problem (a missing stream, a missing
 * consumer with `bind`, a consumer the source cannot use); anything else the JetStream API throws
 * is passed on, for the caller to classify.
 */
export async function setUpConsumer(nats: NatsModules, jsm: JetStreamManager, s: ConsumerSettings, how: SetUpContext): Promise<ConsumerInfo> {
  const { stream, consumer } = s;
  const { logger, component } = how;
  const location = `nats stream ${stream} consumer ${consumer}`;
  const refuse = (message: string, cause?: unknown) => new SluiceError("ERR_SOURCE_CONNECT", `nats: ${message}`, { cause, retryable: false, location });
  const call = <T>(work: Promise<T>) => unlessAborted(work, how.signal, location);
  try {
    await call(jsm.streams.info(stream));
  } catch (err) {
    if (isStreamNotFound(err)) throw refuse(`stream ${stream} does not exist; create it (the nats_jetstream sink's create_stream can)`, err);
    throw err;
  }
  let info: ConsumerInfo | undefined;
  try {
    info = await call(jsm.consumers.info(stream, consumer));
  } catch (err) {
    if (!(err instanceof nats.js.JetStreamApiError && err.code === nats.js.JetStreamApiCodes.ConsumerNotFound)) throw err;
  }
  const config = wanted(nats, s, info?.config);
  if (info === undefined) {
    if (s.bind) throw refuse(`consumer ${consumer} of stream ${stream} does not exist, and bind: true does not create it`);
    return call(jsm.consumers.add(stream, config));
  }
  const c = info.config;
  if (c.deliver_subject !== undefined && c.deliver_subject !== "") throw refuse(`consumer ${consumer} of stream ${stream} is a push consumer; sluice needs a pull consumer`);
  if (c.ack_policy !== nats.js.AckPolicy.Explicit) throw refuse(`consumer ${consumer} of stream ${stream} has ack_policy ${c.ack_policy}; sluice needs explicit acks`);
  if (s.bind) {
    // working() ticks every third of the source's ack_wait: a shorter wait at the server would redeliver chunks still in flight.
    const ackWait = c.ack_wait ?? nats.core.nanos(SERVER_ACK_WAIT_MS);
    if (ackWait < nats.core.nanos(s.ackWait.ms)) {
      throw refuse(`consumer ${consumer} has ack_wait ${ackWait / 1e6} ms, less than this source's ack_wait ${s.ackWait.ms} ms; set ack_wait to at most the consumer's`);
    }
    if (c.max_deliver !== undefined && c.max_deliver > 0 && c.max_deliver <= s.maxDeliver) {
      logger.warn(
        { component, consumer_max_deliver: c.max_deliver, max_deliver: s.maxDeliver },
        "the bound consumer stops redelivering before max_deliver: a message that reaches its limit is neither delivered nor dead-lettered",
      );
    }
    return info;
  }
  const filters = filtersOf(c);
  if (s.filterSubject === undefined && filters.length > 0) {
    throw refuse(
      `consumer ${consumer} of stream ${stream} filters ${filters.join(", ")}, and filter_subject is not set (the whole stream); set filter_subject to it, or bind: true to use the consumer as it is`,
    );
  }
  if (s.filterSubject !== undefined && (filters.length !== 1 || filters[0] !== s.filterSubject)) {
    throw refuse(`consumer ${consumer} of stream ${stream} filters ${filters.join(", ") || "nothing"}, not ${s.filterSubject}; delete it or use another consumer name`);
  }
  if (c.ack_wait === config.ack_wait && c.max_ack_pending === config.max_ack_pending && c.max_deliver === config.max_deliver) return info;
  return call(jsm.consumers.update(stream, consumer, { ack_wait: config.ack_wait, max_ack_pending: config.max_ack_pending, max_deliver: config.max_deliver }));
}
