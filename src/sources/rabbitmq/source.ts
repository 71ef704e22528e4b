/**
 * The `rabbitmq` source: consumes a durable queue with manual acks and a prefetch no larger than
 * the buffer, acks each message once its record is committed by every sink, and rejects (nack
 * without requeue) a message whose record was dead-lettered, so the queue's dead-letter exchange
 * gets it when it has one.
 */
import type { Channel, ChannelModel, ConsumeMessage } from "amqplib";
import { z } from "zod";
import {
  bindQueue,
  classifyAmqpError,
  ensureQueue,
  openAmqpConnection,
  queueDeclareOptions,
  quietChannel,
  rabbitmqConnectionOptions,
  safeUrl,
  type QueueSettings,
} from "../../brokers/rabbitmq.js";
import { SluiceError } from "../../core/errors.js";
import { defineComponent, type ComponentContext, type Source } from "../../components/contracts.js";
import { RecordSizeEstimate } from "../../components/record-size.js";
import { messageEntry, type RabbitChunk } from "./messages.js";

/** `buffer.max_records` when the context does not say (a source built outside a pipeline). */
const DEFAULT_BUFFER_RECORDS = 10_000;
/** `buffer.max_bytes` when the context does not say. */
const DEFAULT_BUFFER_BYTES = 64 * 1024 * 1024;
/** AMQP's largest prefetch count (an unsigned short). */
const MAX_PREFETCH = 65_535;
/** How long `close` waits for the connection to close, ms. */
const CLOSE_TIMEOUT_MS = 5_000;

const options = z
  .strictObject({
    url: rabbitmqConnectionOptions.url,
    heartbeat: rabbitmqConnectionOptions.heartbeat,
    queue: z.string().min(1).describe("Queue to consume; declared durable when missing (see queue_type), used as it is when it exists"),
    exchange: z.string().min(1).optional().describe("Exchange the queue is bound to (with routing_key) at connect; it must exist"),
    routing_key: z.string().optional().describe("Binding key of the queue on exchange (topic exchanges: * and # wildcards); default \"\""),
    queue_type: queueDeclareOptions.queue_type,
    queue_arguments: queueDeclareOptions.queue_arguments,
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

/**
 * Builds a RabbitMQ source (what the `rabbitmq` definition's factory returns).
 *
 * Each engine `connect` opens a new connection and channel (closing the previous ones, which makes
 * the broker requeue what they had not acked) with `basic.qos` = the prefetch, and the following
 * `run` starts a consumer on it with manual acks. The broker then delivers at most that many messages not yet acked,
 * and every record in the buffer is one, so the prefetch (never above `buffer.max_records`) is the
 * backpressure: nothing more arrives until a commit acks something. `run` hands the delivered
 * messages over room first (only what the buffer has room for, by records and by bytes at the
 * running average size) and rejects with a retryable error when the connection, the channel or the
 * consumer is gone; the engine reconnects with its backoff. Acks are `individual`: each chunk acks
 * its own messages (or nacks without requeue those whose records were dead-lettered).
 */
export function createRabbitmqSource(settings: RabbitmqSourceSettings, ctx: ComponentContext): Source {
  const queue = settings.queue.name;
  const location = `rabbitmq ${safeUrl(settings.url)} queue ${queue}`;
  const prefetch = Math.min(settings.prefetch ?? MAX_PREFETCH, ctx.bufferRecords ?? DEFAULT_BUFFER_RECORDS, MAX_PREFETCH);
  const sizes = new RecordSizeEstimate();
  /** Most bytes of delivered messages held before the buffer takes them: past it the consumer is cancelled until they are taken. */
  const byteLimit = ctx.bufferBytes ?? DEFAULT_BUFFER_BYTES;
  let conn: ChannelModel | undefined;
  let channel: Channel | undefined;
  /** Why the connection, channel or consumer is gone; undefined while consuming. */
  let down: string | undefined;
  /** The channel whose consumer has started (in `run`). */
  let consuming: Channel | undefined;
  /** Messages of the current channel not yet handed to the buffer (at most the prefetch). */
  let waiting: ConsumeMessage[] = [];
  /** Body bytes of `waiting`. */
  let waitingBytes = 0;
  /** The tag of the consumer on `consuming`; undefined while paused (cancelled to start again at another prefetch, or for `waiting` being over {@link byteLimit}). */
  let consumerTag: string | undefined;
  /** The cancel of a paused consumer, awaited before the next consume. */
  let pausing: Promise<void> | undefined;
  /** The prefetch the current consumer was started for (less the messages it found unacked). */
  let consumerTarget = 1;
  /**
   * Messages delivered on the current channel and not yet acked: a cancelled consumer's stay
   * unacked, and a prefetch counts only its own consumer's, so a new consumer gets the rest.
   */
  let unacked = 0;
  /** Wakes `run` when messages arrive or the connection drops. */
  let wake: (() => void) | undefined;
  let wakeScheduled = false;

  const poke = () => {
    // One wake per turn of the event loop: the messages of one socket read make one chunk.
    if (wakeScheduled || wake === undefined) return;
    wakeScheduled = true;
    setImmediate(() => {
      wakeScheduled = false;
      const w = wake;
      wake = undefined;
      w?.();
    });
  };

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
    await Promise.race([closing, new Promise<void>((resolve) => (timer = setTimeout(resolve, CLOSE_TIMEOUT_MS)))]);
    clearTimeout(timer);
  }

  /**
   * The prefetch of a consumer started now: the configured one, lowered to what the buffer's bytes
   * hold at the running average size; 1 until a message was seen. The prefetch counts messages,
   * not bytes (RabbitMQ does not implement a size prefetch), and the broker sends a consumer its
   * whole prefetch at once (a cancel does not stop what it sent), so large messages would pile up
   * here, past the buffer's byte bound, many times over.
   */
  function consumerPrefetch(): number {
    const mean = sizes.bytes;
    return mean === undefined ? 1 : Math.max(1, Math.min(prefetch, Math.floor(byteLimit / Math.max(1, mean))));
  }

  /** Cancels the consumer on `ch` (its delivered messages stay valid to ack there); `run` starts a new one once `waiting` is empty and fewer than the prefetch are unacked. */
  function pause(ch: Channel): void {
    const tag = consumerTag;
    if (tag === undefined) return;
    consumerTag = undefined;
    pausing = ch.cancel(tag).then(
      () => undefined,
      () => {
        down ??= "cancelling the consumer failed";
        poke();
      },
    );
  }

  /** Starts a consumer with manual acks on `ch`, with {@link consumerPrefetch} (`basic.qos` applies to consumers started after it). */
  async function consume(ch: Channel): Promise<void> {
    try {
      await pausing;
      pausing = undefined;
      consumerTarget = consumerPrefetch();
      await ch.prefetch(Math.max(1, consumerTarget - unacked));
      const { consumerTag: tag } = await ch.consume(
        queue,
        (m) => {
          if (channel !== ch) return;
          // null: the broker cancelled the consumer (the queue was deleted).
          if (m === null) {
            down ??= `the broker cancelled the consumer of queue ${queue} (deleted?)`;
          } else {
            waiting.push(m);
            waitingBytes += m.content.length;
            unacked++;
            // Messages grew larger than the prefetch was set for: take no more until these are in the buffer.
            if (waitingBytes > byteLimit) pause(ch);
          }
          poke();
        },
        { noAck: false },
      );
      if (channel === ch) consumerTag = tag;
    } catch (err) {
      down ??= "consume failed";
      throw classifyAmqpError(err, "ERR_SOURCE_CONNECT", location);
    }
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
      waitingBytes = 0;
      unacked = 0;
      consumerTag = undefined;
      pausing = undefined;
      down = "connecting";
      await end(previous, previousChannel);
      const c = await openAmqpConnection(settings.url, settings.heartbeatMs, signal, location, "ERR_SOURCE_CONNECT");
      try {
        await ensureQueue(c, settings.queue, location, "ERR_SOURCE_CONNECT");
        if (settings.exchange !== undefined) await bindQueue(c, queue, settings.exchange, settings.routingKey, location, "ERR_SOURCE_CONNECT");
        const ch = await quietChannel(() => c.createChannel());
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
        down = undefined;
      } catch (err) {
        await end(c, undefined);
        throw classifyAmqpError(err, "ERR_SOURCE_CONNECT", location);
      }
    },

    async run(handle, signal) {
      const ch = channel;
      if (ch === undefined) throw new SluiceError("ERR_INTERNAL", "rabbitmq source: run before connect", { location });
      // The consumer starts here, not in `connect`: `sluice validate` connects and closes, and a
      // consumer would take messages and put them back, each a delivery counted by a quorum queue.
      if (consuming !== ch) {
        consuming = ch;
        await consume(ch);
      }
      const onAbort = () => {
        const w = wake;
        wake = undefined;
        w?.();
      };
      signal.addEventListener("abort", onAbort, { once: true });
      try {
        while (!signal.aborted) {
          if (down !== undefined || channel !== ch) throw lost();
          if (waiting.length === 0) {
            // Paused and all taken: consume again once fewer than the prefetch are unacked (acks wake
            // this loop); messages may arrive meanwhile, so look again before waiting.
            if (consumerTag === undefined && unacked < consumerPrefetch()) {
              await consume(ch);
              continue;
            }
            await new Promise<void>((resolve) => (wake = resolve));
            continue;
          }
          const n = await sizes.room(handle, Math.min(waiting.length, handle.chunkSize), signal);
          if (n === 0 || signal.aborted) return;
          if (down !== undefined || channel !== ch) throw lost();
          const taken = waiting.slice(0, n);
          waiting = waiting.slice(taken.length);
          for (const m of taken) waitingBytes -= m.content.length;
          const entries = taken.map((m) => messageEntry(handle, m, queue, settings.maxDeliveries));
          sizes.observe(entries);
          // Started before the size was known (or at another one): start again at the right prefetch.
          if (consumerPrefetch() > 2 * consumerTarget) pause(ch);
          const chunk: RabbitChunk = { channel: ch, messages: taken, entries };
          // Never acked when the pipeline stops: the broker requeues them when the channel closes.
          if ((await handle.enqueue(entries, chunk)) === "stopping") return;
        }
      } finally {
        signal.removeEventListener("abort", onAbort);
        wake = undefined;
      }
    },

    ack(checkpoint) {
      const chunk = checkpoint as RabbitChunk;
      // A chunk of an earlier channel: its delivery tags mean nothing on this one, and its messages came again.
      if (chunk.channel !== channel || down !== undefined) return;
      try {
        chunk.messages.forEach((m, i) => {
          // Dead-lettered (by a sink, a transform, as malformed or for max_deliveries): rejected without
          // requeue, so the queue's dead-letter exchange gets the message when it has one; else it is dropped, as an ack would.
          if (chunk.entries[i]!.deadLettered) chunk.channel.nack(m, false, false);
          else chunk.channel.ack(m);
        });
        unacked -= chunk.messages.length;
        if (consumerTag === undefined) poke();
      } catch (err) {
        // The channel closed under the acks: the broker redelivers what it did not get.
        throw classifyAmqpError(err, "ERR_SOURCE_CONNECT", location);
      }
    },

    async close() {
      const c = conn;
      const ch = channel;
      conn = undefined;
      channel = undefined;
      waiting = [];
      waitingBytes = 0;
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
  create(opts, ctx) {
    return createRabbitmqSource(
      {
        url: opts.url,
        heartbeatMs: opts.heartbeat,
        queue: { name: opts.queue, type: opts.queue_type, arguments: opts.queue_arguments },
        exchange: opts.exchange,
        routingKey: opts.routing_key ?? "",
        prefetch: opts.prefetch,
        maxDeliveries: opts.max_deliveries,
      },
      ctx,
    );
  },
});
