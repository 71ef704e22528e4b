/**
 * The machine's RabbitMQ for tests: its URL, publishing with confirms, reading a queue back without
 * consuming it, counting and deleting queues. Each test uses its own queues.
 */
import amqp, { type ChannelModel, type Options } from "amqplib";
import type { StoredRecord } from "../contract/sink-contract.js";
import type { JsonObject } from "../../src/core/record.js";
import { EVENT_TIME_HEADER, KEY_HEADER } from "../../src/brokers/rabbitmq.js";
import { requireService } from "./services.js";

export const RABBITMQ_URL = process.env.SLUICE_RABBITMQ_URL ?? "amqp://guest:guest@127.0.0.1:5672";

/** Whether RabbitMQ answers (the test file skips, or fails under SLUICE_REQUIRE_SERVICES=1, when not). */
export function hasRabbitmq(url: string = RABBITMQ_URL): Promise<boolean> {
  const address = new URL(url);
  return requireService("RabbitMQ", address.hostname, Number(address.port || 5672));
}

/** A connection whose errors do not crash the test process. */
export async function rabbitConnect(url: string = RABBITMQ_URL): Promise<ChannelModel> {
  const conn = await amqp.connect(url);
  conn.on("error", () => undefined);
  return conn;
}

/** Declares `queue` durable (quorum unless `type` says classic), with `args`. */
export async function declareQueue(conn: ChannelModel, queue: string, type: "quorum" | "classic" = "quorum", args: Record<string, unknown> = {}): Promise<void> {
  const ch = await conn.createChannel();
  await ch.assertQueue(queue, { durable: true, arguments: { "x-queue-type": type, ...args } });
  await ch.close();
}

/** Publishes each body (objects as JSON) to `queue` (or `exchange` with `routingKey`), persistent, and waits for every confirm. */
export async function publishAll(
  conn: ChannelModel,
  target: { queue: string } | { exchange: string; routingKey: string },
  bodies: readonly (JsonObject | string)[],
  props: (i: number) => Options.Publish = () => ({}),
): Promise<void> {
  const ch = await conn.createConfirmChannel();
  const [exchange, routingKey] = "queue" in target ? ["", target.queue] : [target.exchange, target.routingKey];
  for (let i = 0; i < bodies.length; i++) {
    const b = bodies[i]!;
    if (!ch.publish(exchange, routingKey, Buffer.from(typeof b === "string" ? b : JSON.stringify(b)), { persistent: true, ...props(i) })) {
      await new Promise((r) => ch.once("drain", r));
    }
  }
  await ch.waitForConfirms();
  await ch.close();
}

/** Messages ready in `queue` (0 when it does not exist). */
export async function readyCount(conn: ChannelModel, queue: string): Promise<number> {
  const ch = await conn.createChannel();
  ch.on("error", () => undefined);
  try {
    return (await ch.checkQueue(queue)).messageCount;
  } catch {
    return 0;
  } finally {
    await ch.close().catch(() => undefined);
  }
}

/** A message as a test reads it back. */
export interface ReadMessage {
  readonly body: string;
  readonly messageId: string | undefined;
  readonly persistent: boolean;
  readonly headers: Record<string, unknown>;
}

/**
 * Every message in `queue`, left in the queue: consumed unacked without a prefetch limit (as many
 * as the queue counts ready), then put back by closing the channel.
 */
export async function peekQueue(conn: ChannelModel, queue: string): Promise<ReadMessage[]> {
  const ch = await conn.createChannel();
  ch.on("error", () => undefined);
  const out: ReadMessage[] = [];
  try {
    const ready = (await ch.checkQueue(queue)).messageCount;
    if (ready === 0) return out;
    // A quorum queue delivers little without a prefetch limit: one larger than any test queue.
    await ch.prefetch(65_535);
    await new Promise<void>((resolve) => {
      void ch.consume(queue, (m) => {
        if (m === null) return resolve();
        out.push({ body: m.content.toString("utf8"), messageId: m.properties.messageId as string | undefined, persistent: m.properties.deliveryMode === 2, headers: m.properties.headers ?? {} });
        if (out.length === ready) resolve();
      });
    });
  } finally {
    await ch.close().catch(() => undefined);
  }
  return out;
}

/** A message written by the `rabbitmq` sink as the sink contract compares it. */
export function storedFromMessage(m: ReadMessage): StoredRecord {
  const key = m.headers[KEY_HEADER];
  const time = m.headers[EVENT_TIME_HEADER];
  return {
    id: m.messageId ?? "",
    key: typeof key === "string" ? key : Buffer.isBuffer(key) ? key.toString("utf8") : null,
    eventTime: typeof time === "string" ? time : null,
    payload: JSON.parse(m.body) as JsonObject,
  };
}

/** Deletes queues (and exchanges), ignoring those that are not there. */
export async function deleteQueues(conn: ChannelModel, queues: Iterable<string>, exchanges: Iterable<string> = []): Promise<void> {
  const ch = await conn.createChannel();
  ch.on("error", () => undefined);
  for (const q of queues) await ch.deleteQueue(q).catch(() => undefined);
  for (const e of exchanges) await ch.deleteExchange(e).catch(() => undefined);
  await ch.close().catch(() => undefined);
}
