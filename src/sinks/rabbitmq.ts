/**
 * The `rabbitmq` sink: one persistent message per record (`message_id` = the record id), published
 * on a confirm channel with `mandatory`, to an exchange or a queue; a write resolves only once the
 * broker confirmed every message, and a message it returned (unroutable) or nacked is a failure.
 */
import type { ChannelModel, ConfirmChannel, Message } from "amqplib";
import { z } from "zod";
import {
  bindQueue,
  checkExchange,
  classifyAmqpError,
  CLOSE_TIMEOUT_MS,
  ensureQueue,
  EVENT_TIME_HEADER,
  KEY_HEADER,
  MAX_SHORT_STRING,
  openAmqpConnection,
  quietChannel,
  rabbitmqOptions,
  safeUrl,
  type QueueSettings,
} from "../brokers/rabbitmq.js";
import { SluiceError } from "../core/errors.js";
import type { SluiceRecord } from "../core/record.js";
import { defineComponent, writeResult, type RecordFailure, type Sink, type WriteResult } from "../components/contracts.js";
import { duration } from "../components/options.js";

/** Batches the sink takes at once, all on its one confirm channel. */
const MAX_IN_FLIGHT = 4;

const options = z
  .strictObject({
    url: rabbitmqOptions.url,
    heartbeat: rabbitmqOptions.heartbeat,
    exchange: z.string().optional().describe("Exchange to publish to (it must exist); default \"\", the default exchange, which routes to the queue named by the routing key"),
    routing_key: z.string().optional().describe("Routing key of every message; default the queue's name"),
    queue: z
      .string()
      .min(1)
      .optional()
      .describe("Queue declared durable at connect when missing (and bound to exchange with routing_key when both are set); with the default exchange, the target"),
    queue_type: rabbitmqOptions.queue_type,
    queue_arguments: rabbitmqOptions.queue_arguments,
    confirm_timeout: duration()
      .default(30_000)
      .refine((ms) => ms >= 1, "must be at least 1 ms")
      .describe("How long a write may take to send its messages and get the broker's confirms before the batch is retried; default 30s"),
  })
  .superRefine((o, ctx) => {
    if (o.queue === undefined && (o.exchange === undefined || o.exchange === "")) {
      ctx.addIssue({ code: "custom", path: ["queue"], message: "give a queue, or an exchange (with routing_key) to publish to" });
    }
    if (o.queue_type !== undefined && o.queue === undefined) ctx.addIssue({ code: "custom", path: ["queue_type"], message: "queue_type needs a queue" });
    if (o.queue_arguments !== undefined && o.queue === undefined) ctx.addIssue({ code: "custom", path: ["queue_arguments"], message: "queue_arguments needs a queue" });
  });

/** Everything a {@link createRabbitmqSink} needs; the definition builds it from validated options. */
export interface RabbitmqSinkSettings {
  readonly url: string;
  /** ms */
  readonly heartbeatMs: number;
  /** "" for the default exchange. */
  readonly exchange: string;
  readonly routingKey: string;
  readonly queue?: QueueSettings | undefined;
  /** ms */
  readonly confirmTimeoutMs: number;
}

/** The publish properties of one record: persistent, `message_id` = its id, its key and event time in headers. */
function properties(record: SluiceRecord): { persistent: true; messageId: string; contentType: string; headers: Record<string, string>; timestamp?: number } {
  const headers: Record<string, string> = {};
  if (record.key !== undefined) headers[KEY_HEADER] = record.key;
  if (record.eventTime !== undefined) headers[EVENT_TIME_HEADER] = new Date(record.eventTime).toISOString();
  return { persistent: true, messageId: record.id, contentType: "application/json", headers };
}

/** Resolves once the channel's socket buffer drained, or the channel closed (its publishes then fail with "channel closed"). */
function drained(ch: ConfirmChannel): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      ch.off("drain", done);
      ch.off("close", done);
      resolve();
    };
    ch.on("drain", done);
    ch.on("close", done);
  });
}

/** A `rabbitmq` sink's settings from its validated options: without an exchange, the default exchange routes to the queue. */
function settingsFrom(opts: z.output<typeof options>): RabbitmqSinkSettings {
  const queue = opts.queue;
  return {
    url: opts.url,
    heartbeatMs: opts.heartbeat,
    exchange: opts.exchange ?? "",
    routingKey: opts.routing_key ?? queue ?? "",
    queue: queue === undefined ? undefined : { name: queue, type: opts.queue_type, arguments: opts.queue_arguments },
    confirmTimeoutMs: opts.confirm_timeout,
  };
}

/**
 * Builds a RabbitMQ sink (what the `rabbitmq` definition's factory returns).
 *
 * `connect` opens the connection and a confirm channel, makes sure the queue exists (and its
 * binding), and that the exchange does. A write publishes every record of the batch at once
 * (waiting for `drain` when the socket's buffer is full) and resolves once each publish was
 * confirmed. A message the broker returned as unroutable (`mandatory`: no queue bound for its
 * routing key) is a permanent per-record failure (`ERR_SINK_REJECTED`), unless the sink declared
 * the queue itself (`queue`): then the queue was deleted under it, and the batch fails retryably,
 * the next write reconnecting and declaring it again; a nack (a queue refusing
 * it: `x-overflow: reject-publish`, an internal error), a channel closed under the write or no
 * confirm within `confirm_timeout` fails the batch, retryably: the retry publishes it again, so a
 * message may be in the queue twice (the broker has no idempotent publish), and consumers dedupe
 * by `message_id` (sluice's `rabbitmq` source does). A write after the connection was lost opens a
 * new one first.
 */
export function createRabbitmqSink(settings: RabbitmqSinkSettings): Sink {
  const { exchange, routingKey } = settings;
  const location = `rabbitmq ${safeUrl(settings.url)} ${exchange === "" ? `queue ${routingKey}` : `exchange ${exchange} routing key ${routingKey}`}`;
  let conn: ChannelModel | undefined;
  let channel: ConfirmChannel | undefined;
  /** Why the channel is gone; undefined while it is open. */
  let down: string | undefined;
  /** A {@link reopen} under way. */
  let reopening: Promise<void> | undefined;
  /** Message ids the broker returned and whose confirm has not come yet (a return comes before its message's confirm), with how many. */
  const returned = new Map<string, number>();

  async function open(signal: AbortSignal): Promise<void> {
    const c = await openAmqpConnection(settings.url, settings.heartbeatMs, signal, location, "ERR_SINK_CONNECT");
    try {
      if (settings.queue !== undefined) {
        await ensureQueue(c, settings.queue, location, "ERR_SINK_CONNECT");
        if (exchange !== "") await bindQueue(c, settings.queue.name, exchange, routingKey, location, "ERR_SINK_CONNECT");
      } else await checkExchange(c, exchange, location, "ERR_SINK_CONNECT");
      const ch = await quietChannel(() => c.createConfirmChannel());
      const gone = (why: string) => {
        if (channel === ch) down ??= why;
      };
      c.on("close", (err?: Error) => gone(`connection closed${err ? `: ${err.message}` : ""}`));
      ch.on("close", () => gone("channel closed"));
      ch.on("return", (m: Message) => {
        const id = m.properties.messageId as string;
        returned.set(id, (returned.get(id) ?? 0) + 1);
      });
      const previous = conn;
      conn = c;
      channel = ch;
      down = undefined;
      returned.clear();
      if (previous !== undefined) void previous.close().catch(() => undefined);
    } catch (err) {
      void c.close().catch(() => undefined);
      throw classifyAmqpError(err, "ERR_SINK_CONNECT", location);
    }
  }

  /** A new connection in place of a lost one, shared by the writes in flight; its failure is retryable (the broker may be back soon). */
  function reopen(signal: AbortSignal): Promise<void> {
    reopening ??= open(signal)
      .catch((err: unknown) => {
        const e = classifyAmqpError(err, "ERR_SINK_WRITE", location);
        throw new SluiceError("ERR_SINK_WRITE", `rabbitmq: ${down ?? "connection lost"}, and opening a new one failed: ${e.message}`, { cause: e, retryable: true, location });
      })
      .finally(() => (reopening = undefined));
    return reopening;
  }

  /** Whether the confirm of `id` follows a return of it; takes one return off the count. */
  function takeReturn(id: string): boolean {
    const n = returned.get(id);
    if (n === undefined) return false;
    if (n <= 1) returned.delete(id);
    else returned.set(id, n - 1);
    return true;
  }

  return {
    maxInFlight: MAX_IN_FLIGHT,

    connect: open,

    async write(records, signal): Promise<WriteResult | void> {
      if (channel === undefined || down !== undefined) await reopen(signal);
      const ch = channel;
      if (ch === undefined) throw new SluiceError("ERR_INTERNAL", "rabbitmq sink: write before connect", { location });
      if (signal.aborted) throw new SluiceError("ERR_ABORTED", "rabbitmq sink: aborted before writing", { cause: signal.reason, location });
      if (records.length === 0) return {};

      const failures: RecordFailure[] = [];
      const confirms: Promise<number>[] = [];
      let retry: SluiceError | undefined;
      // The deadline covers waiting for `drain` too: a broker that stops reading (a blocked
      // connection, a hung node) never drains the socket, and the write would wait for ever.
      let timer: NodeJS.Timeout | undefined;
      const timedOut = new Promise<"timeout">((resolve) => (timer = setTimeout(() => resolve("timeout"), settings.confirmTimeoutMs)));
      for (let index = 0; index < records.length; index++) {
        const record = records[index]!;
        let body: Buffer;
        let props: ReturnType<typeof properties>;
        try {
          if (Buffer.byteLength(record.id, "utf8") > MAX_SHORT_STRING) throw new Error(`its id is longer than AMQP's ${MAX_SHORT_STRING} bytes for message_id`);
          // The JSON as the source read it, when no transform changed the payload: no second serialization.
          body = Buffer.from(record.text ?? JSON.stringify(record.payload), "utf8");
          props = properties(record);
        } catch (err) {
          // A payload JSON cannot represent (a cycle, a BigInt), an invalid event time, an id too long: only this record is bad.
          const message = `rabbitmq sink: record ${record.id} cannot be published: ${(err as Error).message}`;
          failures.push({ index, error: new SluiceError("ERR_SINK_REJECTED", message, { cause: err, location }) });
          continue;
        }
        let more = true;
        const confirmed = new Promise<number>((resolve, reject) => {
          try {
            more = ch.publish(exchange, routingKey, body, { ...props, mandatory: true }, (err: unknown) => (err === null || err === undefined ? resolve(index) : reject(err)));
          } catch (err) {
            reject(err);
          }
        });
        confirms.push(
          confirmed.then(
            (i) => {
              const wasReturned = takeReturn(props.messageId);
              if (wasReturned && settings.queue !== undefined) {
                // The queue the sink declared (and bound) routes every message: returned, it was deleted
                // under the sink. Not the record's fault: the next write reconnects, declaring it again.
                if (channel === ch) down ??= `queue ${settings.queue.name} is gone (a message came back unroutable)`;
                retry ??= new SluiceError("ERR_SINK_WRITE", `rabbitmq: the broker returned record ${record.id} as unroutable: queue ${settings.queue.name} was deleted?`, {
                  retryable: true,
                  location,
                });
              } else if (wasReturned) {
                const message = `rabbitmq: the broker returned record ${record.id} as unroutable: no queue is bound to exchange ${exchange === "" ? "(default)" : exchange} for routing key ${routingKey}`;
                failures.push({ index: i, error: new SluiceError("ERR_SINK_REJECTED", message, { location }) });
              }
              return i;
            },
            (err: unknown) => {
              const e = classifyAmqpError(err, "ERR_SINK_WRITE", location);
              if (e.code === "ERR_INTERNAL" && err instanceof RangeError) {
                // A header table too large for a frame (amqplib's RangeError): this record's fault alone.
                failures.push({ index, error: new SluiceError("ERR_SINK_REJECTED", `rabbitmq sink: record ${record.id} cannot be published: ${err.message}`, { cause: err, location }) });
              } else {
                // "message nacked" (a queue refused it), "channel closed" (the connection was lost): the batch is retried.
                retry ??= e.code === "ERR_INTERNAL" ? e : new SluiceError("ERR_SINK_WRITE", e.message, { cause: err, retryable: true, location });
              }
              return index;
            },
          ),
        );
        if (!more && (await Promise.race([drained(ch), timedOut])) === "timeout") break;
      }

      const outcome = await Promise.race([Promise.all(confirms), timedOut]);
      clearTimeout(timer);
      if (outcome === "timeout") {
        throw new SluiceError("ERR_SINK_WRITE", `rabbitmq: no confirm for ${records.length} messages within confirm_timeout (${settings.confirmTimeoutMs} ms), or no room to send them`, {
          retryable: true,
          location,
        });
      }
      if (retry !== undefined) throw retry;
      return writeResult(failures);
    },

    async close() {
      const c = conn;
      conn = undefined;
      channel = undefined;
      if (c === undefined) return;
      // Every write waited for its confirms: nothing is left to flush.
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([c.close().catch(() => undefined), new Promise<void>((resolve) => (timer = setTimeout(resolve, CLOSE_TIMEOUT_MS)))]);
      clearTimeout(timer);
    },
  };
}

/**
 * The `rabbitmq` sink: one persistent message per record (body: the payload as JSON; `message_id`
 * = the record id; headers `sluice-key`, `sluice-event-time`), published with confirms and
 * `mandatory` to an exchange or a queue (declared when missing).
 */
export const definition = defineComponent<typeof options, Sink>({
  type: "rabbitmq",
  summary: "Publishes records to RabbitMQ as persistent messages with publisher confirms; message_id = record id",
  options,
  create: (opts) => createRabbitmqSink(settingsFrom(opts)),
});
