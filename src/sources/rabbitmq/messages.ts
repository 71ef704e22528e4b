/**
 * AMQP messages as the `rabbitmq` source hands them to the engine: the record (or dead letter) of
 * each message, with the envelope its properties and headers carry, and the chunk that acks them.
 */
import { isUtf8 } from "node:buffer";
import { createHash } from "node:crypto";
import type { Channel, Message } from "amqplib";
import { EVENT_TIME_HEADER, KEY_HEADER } from "../../brokers/rabbitmq.js";
import { parseMessageObject } from "../../components/message-json.js";
import { SluiceError } from "../../core/errors.js";
import type { Entry } from "../../core/record.js";
import type { ServiceEnvelope, SourceHandle } from "../../components/contracts.js";

/**
 * A chunk's checkpoint: the channel its messages came on, the messages and their entries (in the
 * same order). Delivery tags are valid only on the channel that delivered them (acking one on
 * another channel, or twice, closes the channel), so a chunk of an earlier channel acks nothing:
 * the broker gave its messages to the next channel again.
 */
export interface RabbitChunk {
  readonly channel: Channel;
  readonly messages: Message[];
  readonly entries: Entry[];
}

/** Bytes of a message that is not UTF-8 shown in its dead letter's message, base64. */
const RAW_PREFIX_BYTES = 256;

/**
 * The position part of a record id when neither the payload nor `message_id` gives one: 128 bits
 * of SHA-256 of the body. A redelivery has the same body, so the same id; two messages with equal
 * bodies have the same id too, and an idempotent sink keeps one.
 */
export function bodyPosition(body: Buffer): string {
  return createHash("sha256").update(body).digest("base64url").slice(0, 22);
}

/** A header's value as text, when it is one. */
function headerText(value: unknown): string | undefined {
  if (typeof value === "string") return value;
  if (Buffer.isBuffer(value)) return value.toString("utf8");
  return undefined;
}

/**
 * The envelope a message carries: id from `message_id`, key from the `sluice-key` header, event
 * time from the `sluice-event-time` header, else from the `timestamp` property (seconds).
 */
export function envelopeOf(m: Message): ServiceEnvelope {
  const p = m.properties;
  const headers = (p.headers ?? {}) as Record<string, unknown>;
  const id = typeof p.messageId === "string" && p.messageId !== "" ? p.messageId : undefined;
  const key = headerText(headers[KEY_HEADER]);
  const time = headerText(headers[EVENT_TIME_HEADER]);
  let eventTime = time === undefined ? Number.NaN : Date.parse(time);
  if (Number.isNaN(eventTime) && typeof p.timestamp === "number") eventTime = p.timestamp * 1000;
  return { id, key, eventTime: Number.isNaN(eventTime) ? undefined : eventTime };
}

/**
 * How many times the broker has delivered the message, this delivery included, when it counts
 * (quorum queues: the `x-delivery-count` header, the number of earlier deliveries, absent on the
 * first); undefined when it does not (classic queues only say `redelivered`).
 */
export function deliveries(m: Message): number | undefined {
  const count = (m.properties.headers as Record<string, unknown> | undefined)?.["x-delivery-count"];
  if (typeof count === "number") return count + 1;
  return m.fields.redelivered ? undefined : 1;
}

/**
 * The entry for one message: a record of the JSON object it holds; a dead letter
 * (`ERR_MAX_DELIVERIES`) when the broker delivered it more than `maxDeliveries` times; a dead letter
 * (`ERR_RECORD_MALFORMED`) when it is not a JSON object, or not UTF-8 (decoding would put U+FFFD
 * in place of the bad bytes and store a record that is not what was sent). Dead letters keep the body as `raw` and
 * say where the message is: `queue <q>`.
 */
export function messageEntry(handle: SourceHandle, m: Message, queue: string, maxDeliveries: number): Entry {
  const text = m.content.toString("utf8");
  const position = bodyPosition(m.content);
  const envelope = envelopeOf(m);
  const where = `queue ${queue}`;
  const count = deliveries(m);
  if (count !== undefined && count > maxDeliveries) {
    const message = `rabbitmq: message delivered ${count} times, more than max_deliveries ${maxDeliveries}, without being committed`;
    return handle.malformed(text, position, new SluiceError("ERR_MAX_DELIVERIES", message, { location: where }), envelope);
  }
  if (!isUtf8(m.content)) {
    // The raw is text, so it shows the bad bytes as U+FFFD; the message keeps the exact bytes (as the file source does).
    const kept = m.content.subarray(0, RAW_PREFIX_BYTES);
    const cut = m.content.length > RAW_PREFIX_BYTES ? `first ${RAW_PREFIX_BYTES} bytes` : "bytes";
    return handle.malformed(text, position, new SluiceError("ERR_RECORD_MALFORMED", `message is not valid UTF-8 (its ${cut} in base64: ${kept.toString("base64")})`, { location: where }), envelope);
  }
  const value = parseMessageObject(text, where);
  if (value instanceof SluiceError) return handle.malformed(text, position, value, envelope);
  return handle.record(value, m.content.length, position, text, envelope);
}
