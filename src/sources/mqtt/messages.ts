/**
 * MQTT messages as the `mqtt` source hands them to the engine: the record (or dead letter) of each
 * message, its id when the payload has none, and the chunk that acks them.
 */
import { hash } from "node:crypto";
import { parseMessageObject } from "../../components/message-json.js";
import { SluiceError } from "../../core/errors.js";
import type { Entry } from "../../core/record.js";
import type { SourceHandle } from "../../components/contracts.js";

/** A message as the client delivered it, waiting to be handed to the buffer. */
export interface MqttMessage {
  readonly topic: string;
  readonly payload: Buffer;
  /** 0, 1 or 2: the QoS it was delivered with (the lower of the publisher's and the subscription's). */
  readonly qos: number;
  /** The packet identifier to acknowledge (QoS 1 and 2); undefined for QoS 0. */
  readonly packetId: number | undefined;
}

/**
 * A chunk's checkpoint: the connection its messages came on, and what to send for each once the
 * chunk is committed. An acknowledgement is valid only on the connection that delivered the
 * message: after a reconnect the broker resends what was not acknowledged (and may reuse the
 * packet identifiers for other messages), so a chunk of an earlier connection acknowledges nothing.
 */
export interface MqttChunk<C> {
  readonly connection: C;
  /** Packet identifiers of QoS 1 messages: each gets a PUBACK. */
  readonly puback: number[];
  /** Packet identifiers of QoS 2 messages: each gets a PUBREC (PUBCOMP follows at the broker's PUBREL). */
  readonly pubrec: number[];
}

/**
 * The position part of a record id when the payload has none: the topic and 128 bits of SHA-256 of
 * the payload's bytes. A redelivery of a message has the same topic and bytes, so the same id; two
 * different messages with equal bytes on the same topic have the same id too, and a sink keeps one.
 */
export function messagePosition(topic: string, payload: Buffer): string {
  // One-shot hash: no Hash object per message (the same digest as createHash).
  return `${topic}:${hash("sha256", payload, "base64url").slice(0, 22)}`;
}

/**
 * The entry for one message: a record of the JSON object it holds, with the topic at `topicField`
 * when set, and the topic as the record's key (used when `key_field` finds nothing); a dead letter
 * (`ERR_RECORD_MALFORMED`, its text as `raw`, located at `topic <topic>`) when it is not a JSON object.
 */
export function messageEntry(handle: SourceHandle, m: MqttMessage, topicField: string | undefined): Entry {
  const text = m.payload.toString("utf8");
  const position = messagePosition(m.topic, m.payload);
  const envelope = { key: m.topic };
  const where = `topic ${m.topic}`;
  const payload = parseMessageObject(text, where);
  if (payload instanceof SluiceError) return handle.malformed(text, position, payload, envelope);
  if (topicField === undefined) return handle.record(payload, m.payload.length, position, text, envelope);
  payload[topicField] = m.topic;
  // The text no longer spells the payload: sinks serialize the payload itself.
  return handle.record(payload, m.payload.length + topicField.length + m.topic.length + 6, position, undefined, envelope);
}
