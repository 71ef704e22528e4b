/**
 * The `rabbitmq` source: consumes a durable queue with manual acks and a prefetch no larger than
 * the buffer, acks each message once its record is committed by every sink, and rejects (nack
 * without requeue) a message whose record was dead-lettered, so the queue's dead-letter exchange
 * gets it when it has one.
 */
import type { Channel, ChannelModel, Message } from "amqplib";
import { z } from "zod";
import {
  bindQueue,
  classifyAmqpError,
  CLOSE_TIMEOUT_MS,
  ensureQueue,
  openAmqpConnection,
  quietChannel,
  rabbitmqOptions,
  safeUrl,
  type QueueSettings,
} from "../../brokers/rabbitmq.js";
import { SluiceError } from "../../core/errors.js";
import { DEFAULTS } from "../../config/defaults.js";
import { Wakeup } from "../../core/wakeup.js";
import { defineComponent, type ComponentContext, type Source, type SourceHandle } from "../../components/contracts.js";
import { RecordSizeEstimate } from "../../components/record-size.js";
import { deliveries, messageEntry, type RabbitChunk } from "./messages.js";
import { RedeliveryPacing } from "./pacing.js";
import { BytePrefetch } from "./prefetch.js";

/** AMQP's largest prefetch count (an unsigned short). */
const MAX_PREFETCH = 65_535;
/** While a counted redelivery is in flight and the queue is empty: how often it is looked at again, ms. */
const EMPTY_POLL_MS = 200;

const options = z
  .strictObject({
    url: rabbitmqOptions.url,
    heartbeat: rabbitmqOptions.heartbeat,
    queue: z.string().min(1).describe("Queue to consume; declared durable when missing (see queue_type), used as it is when it exists"),
    exchange: z.string().min(1).optional().describe("Exchange the queue is bound to (with routing_key) at connect; it must exist"),
    routing_key: z.string().optional().describe("Binding key of the queue on exchange (topic exchanges: * and # wildcards); default \"\""),
    queue_type: rabbitmqOptions.queue_type,
    queue_arguments: rabbitmqOptions.queue_arguments,
    prefetch: z
      .number()
      .int()
      .min(1)
      .max(MAX_PREFETCH)
      .optional()
      .describe("Most messages the broker delivers without an ack (basic.qos); default and at most buffer.max_records"),
    max_deliveries: z
      .number()
      .int()
      .min(1)
      .default(10)
      .describe("A message delivered more times than this (quorum queues count; classic queues do not) is dead-lettered (ERR_MAX_DELIVERIES); default 10"),
  })
  .superRefine((o, ctx) => {
    if (o.routing_key !== undefined && o.exchange === undefined) ctx.addIssue({ code: "custom", path: ["routing_key"], message: "a routing_key needs an exchange" });
  });

/** Everything a {@link createRabbitmqSource} needs; the definition builds it from validated options. */
export interface RabbitmqSourceSettings {
  readonly url: string;
  /** ms */
  readonly heartbeatMs: number;
  readonly queue: QueueSettings;
  readonly exchange?: string | undefined;
  readonly routingKey: string;
  /** undefined: the buffer's `max_records`; never more. */
  readonly prefetch?: number | undefined;
  readonly maxDeliveries: number;
}

/** A `rabbitmq` source's settings from its validated options. */
function settingsFrom(opts: z.output<typeof options>): RabbitmqSourceSettings {
  return {
    url: opts.url,
    heartbeatMs: opts.heartbeat,
    queue: { name: opts.queue, type: opts.queue_type, arguments: opts.queue_arguments },
    exchange: opts.exchange,
    routingKey: opts.routing_key ?? "",
    prefetch: opts.prefetch,
    maxDeliveries: opts.max_deliveries,
  };
}

/**
 * Builds a RabbitMQ source (what the `rabbitmq` definition's factory returns).
 *
 * Each engine `connect` opens a new connection and channel (closing the previous ones, which makes
 * the broker requeue what they had not acked), and the following `run` starts a consumer on it
 * with manual acks and `basic.qos` = the prefetch. The broker then delivers at most that many
 * messages not yet acked, and every record in the buffer is one, so the prefetch is the
 * backpressure: nothing more arrives until a commit acks something. It is never above
 * `buffer.max_records`, nor above what fits `buffer.max_bytes` at the mean message size
 * ({@link BytePrefetch}; a new consumer when that moves). `run` hands the delivered
 * messages over room first (only what the buffer has room for, by records and by bytes at the
 * running average size) and rejects with a retryable error when the connection, the channel or the
 * consumer is gone; the engine reconnects with its backoff. Acks are `individual`: each chunk acks
 * its own messages (or nacks without requeue those whose records were dead-lettered).
 */
export function createRabbitmqSource(settings: RabbitmqSourceSettings, ctx: ComponentContext): Source {
  const queue = settings.queue.name;
  const location = `rabbitmq ${safeUrl(settings.url)} queue ${queue}`;
  const prefetch = Math.min(settings.prefetch ?? MAX_PREFETCH, ctx.bufferRecords ?? DEFAULTS.buffer.max_records, MAX_PREFETCH);
  const sizes = new RecordSizeEstimate();
  let conn: ChannelModel | undefined;
  let channel: Channel | undefined;
  /** Why the connection, channel or consumer is gone; undefined while consuming. */
  let down: string | undefined;
  /** The consumer on the current channel, if one runs, and the prefetch it was started for. */
  let consumerTag: string | undefined;
  let consumerPrefetch: number | undefined;
  /** Whether messages are taken one at a time or streamed (see {@link RedeliveryPacing}). */
  const pacing = new RedeliveryPacing(settings.maxDeliveries, prefetch);
  /** The prefetch that fits the buffer's byte bound at the mean message size (see {@link BytePrefetch}). */
  const byBytes = new BytePrefetch(prefetch, ctx.bufferBytes);
  /** Messages of the current channel not yet handed to the buffer (at most the prefetch). */
  let waiting: Message[] = [];
  /** Wakes `run` when messages arrive, an ack is sent or the connection drops. */
  const wakeup = new Wakeup();
  const poke = () => wakeup.poke();

  const lost = () => new SluiceError("ERR_SOURCE_CONNECT", `rabbitmq: ${down ?? "connection lost"}`, { retryable: true, location });

  /**
   * Closes a connection (what its channel had not acked goes back to the queue), waiting at most
   * {@link CLOSE_TIMEOUT_MS}. The channel first: amqplib writes a channel's frames through its own
   * stream, muxed onto the socket later, but the connection's close straight onto the socket, so
   * closing the connection alone can overtake the channel's last acks (seen: hundreds of messages
   * back in the queue after a run that acked them all). The channel's close goes behind its acks,
   * and its close-ok comes once the broker has them.
   */
  async function end(c: ChannelModel | undefined, ch: Channel | undefined): Promise<void> {
    if (c === undefined) return;
    let timer: NodeJS.Timeout | undefined;
    const closing = (async () => {
      await ch?.close().catch(() => undefined);
      await c.close().catch(() => undefined);
    })();
    const late = await Promise.race([closing.then(() => false), new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), CLOSE_TIMEOUT_MS)))]);
    clearTimeout(timer);
    if (late) {
      ctx.logger.warn(
        { component: ctx.name, code: "ERR_SOURCE_CONNECT" },
        `rabbitmq: the connection did not close within ${CLOSE_TIMEOUT_MS} ms; acks not yet received by the broker are lost, and their messages will be delivered again`,
      );
    }
  }

  /** Starts a consumer for a prefetch of `wanted`, less the messages still in flight from before. */
  async function startConsuming(ch: Channel, wanted: number): Promise<void> {
    try {
      await ch.prefetch(Math.max(1, wanted - pacing.inFlight));
      const reply = await ch.consume(
        queue,
        (m) => {
          if (channel !== ch) return;
          // null: the broker cancelled the consumer (the queue was deleted).
          if (m === null) down ??= `the broker cancelled the consumer of queue ${queue} (deleted?)`;
          else {
            pacing.took(deliveries(m));
            waiting.push(m);
          }
          poke();
        },
        { noAck: false },
      );
      consumerTag = reply.consumerTag;
      consumerPrefetch = wanted;
    } catch (err) {
      throw classifyAmqpError(err, "ERR_SOURCE_CONNECT", location);
    }
  }

  /** Cancels the consumer (what it delivered stays in flight and is handed over as usual). */
  async function stopConsuming(ch: Channel): Promise<void> {
    const tag = consumerTag;
    consumerTag = undefined;
    if (tag !== undefined) await ch.cancel(tag).catch((err: unknown) => {
      throw classifyAmqpError(err, "ERR_SOURCE_CONNECT", location);
    });
  }

  /** Hands delivered messages to the buffer, room first; false when the pipeline stops taking records. */
  async function hand(handle: SourceHandle, ch: Channel, signal: AbortSignal): Promise<boolean> {
    const n = await sizes.room(handle, Math.min(waiting.length, handle.chunkSize), signal);
    if (n === 0 || signal.aborted) return false;
    if (down !== undefined || channel !== ch) throw lost();
    const taken = waiting.slice(0, n);
    waiting = waiting.slice(taken.length);
    const entries = taken.map((m) => messageEntry(handle, m, queue, settings.maxDeliveries));
    sizes.observe(entries);
    const chunk: RabbitChunk = { channel: ch, messages: taken, entries };
    // Never acked when the pipeline stops: the broker requeues them when the channel closes.
    return (await handle.enqueue(entries, chunk)) !== "stopping";
  }

  return {
    acks: "individual",
    whenFull: "wait",

    async connect(signal) {
      const previous = conn;
      const previousChannel = channel;
      conn = undefined;
      channel = undefined;
      waiting = [];
      down = "connecting";
      await end(previous, previousChannel);
      const c = await openAmqpConnection(settings.url, settings.heartbeatMs, signal, location, "ERR_SOURCE_CONNECT");
      try {
        await ensureQueue(c, settings.queue, location, "ERR_SOURCE_CONNECT");
        if (settings.exchange !== undefined) await bindQueue(c, queue, settings.exchange, settings.routingKey, location, "ERR_SOURCE_CONNECT");
        const ch = await quietChannel(() => c.createChannel());
        await ch.prefetch(prefetch);
        const gone = (why: string) => {
          if (channel === ch) {
            down ??= why;
            poke();
          }
        };
        c.on("close", (err?: Error) => gone(`connection closed${err ? `: ${err.message}` : ""}`));
        ch.on("close", () => gone("channel closed"));
        if (signal.aborted) throw new SluiceError("ERR_ABORTED", "rabbitmq: aborted", { location });
        conn = c;
        channel = ch;
        consumerTag = undefined;
        pacing.connected();
        down = undefined;
      } catch (err) {
        await end(c, undefined);
        throw classifyAmqpError(err, "ERR_SOURCE_CONNECT", location);
      }
    },

    async run(handle, signal) {
      const ch = channel;
      if (ch === undefined) throw new SluiceError("ERR_INTERNAL", "rabbitmq source: run before connect", { location });
      await wakeup.loop(signal, async () => {
        if (down !== undefined || channel !== ch) throw lost();
        const taking = pacing.taking();
        const wanted = taking.how === "consume" ? Math.min(taking.prefetch, byBytes.for(sizes.bytes)) : undefined;
        // A consumer whose prefetch is not the one wanted now is cancelled (a prefetch cannot change under it).
        if (consumerTag !== undefined && consumerPrefetch !== wanted) await stopConsuming(ch);
        if (waiting.length > 0) {
          if (!(await hand(handle, ch, signal))) return "stop";
        } else if (wanted !== undefined) {
          // The consumer starts here, not in `connect`: `sluice validate` connects and closes, and a
          // consumer would take messages and put them back, each a delivery counted by a quorum queue.
          // It starts once at most half its prefetch is still in flight from before, and takes the rest;
          // deliveries may come while it starts, with nobody to wake: look again before waiting.
          if (consumerTag === undefined && pacing.inFlight <= wanted / 2) await startConsuming(ch, wanted);
          else await wakeup.sleep();
        } else if (!pacing.mayTake()) {
          await wakeup.sleep();
        } else {
          if ((await sizes.room(handle, 1, signal)) === 0 || signal.aborted) return "stop";
          const m = await ch.get(queue, { noAck: false }).catch((err: unknown) => {
            throw classifyAmqpError(err, "ERR_SOURCE_CONNECT", location);
          });
          if (m === false) {
            pacing.empty();
            // A counted redelivery in flight and nothing else due: wait for its ack, or look again soon.
            if (pacing.careful) await wakeup.sleep(EMPTY_POLL_MS);
            return;
          }
          pacing.took(deliveries(m));
          waiting.push(m);
        }
      });
    },

    ack(checkpoint) {
      const chunk = checkpoint as RabbitChunk;
      // A chunk of an earlier channel: its delivery tags mean nothing on this one, and its messages came again.
      if (chunk.channel !== channel || down !== undefined) return;
      pacing.answered(chunk.messages.length, chunk.messages.filter((m) => (deliveries(m) ?? 1) > 1).length);
      poke();
      try {
        chunk.messages.forEach((m, i) => {
          // Dead-lettered (by a sink, a transform, as malformed or for max_deliveries): rejected without
          // requeue, so the queue's dead-letter exchange gets the message when it has one; else it is dropped, as an ack would.
          if (chunk.entries[i]!.deadLettered) chunk.channel.nack(m, false, false);
          else chunk.channel.ack(m);
        });
      } catch (err) {
        // The channel closed under the acks: the broker redelivers what it did not get.
        throw classifyAmqpError(err, "ERR_SOURCE_CONNECT", location);
      }
    },

    async close() {
      const c = conn;
      const ch = channel;
      // The consumer first, and its cancel-ok awaited: a quorum queue applies the acks sent before it
      // first. Closed without it under load, some runs found hundreds of acked messages back in the
      // queue: the channel's end reached the queue before its last acks did.
      if (ch !== undefined && consumerTag !== undefined && down === undefined) await stopConsuming(ch).catch(() => undefined);
      conn = undefined;
      channel = undefined;
      waiting = [];
      down = "closed";
      // The acks already written go first (see `end`); what was not acked is requeued by the broker.
      await end(c, ch);
    },
  };
}

/**
 * The `rabbitmq` source: a durable queue (declared when missing, optionally bound to an
 * exchange) consumed with manual acks, each message acked once committed, or rejected into the
 * queue's dead-letter exchange when its record was dead-lettered. Record ids from the payload,
 * else `message_id`, else `<source>:<hash of the body>`.
 */
export const definition = defineComponent<typeof options, Source>({
  type: "rabbitmq",
  summary: "Consumes a RabbitMQ queue with manual acks; each message acked once committed",
  options,
  create: (opts, ctx) => createRabbitmqSource(settingsFrom(opts), ctx),
});
