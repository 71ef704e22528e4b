/**
 * JetStream messages as the `nats_jetstream` source hands them to the engine: the record (or dead
 * letter) of each message, with the envelope its headers carry, and the chunk that acks them.
 */
import type { JsMsg } from "@nats-io/jetstream";
import { EVENT_TIME_HEADER, KEY_HEADER } from "../../brokers/nats.js";
import { parseMessageObject } from "../../components/message-json.js";
import { SluiceError } from "../../core/errors.js";
import type { Entry } from "../../core/record.js";
import type { ServiceEnvelope, SourceHandle } from "../../components/contracts.js";

/**
 * A chunk's checkpoint: its messages, and which of them were dead-lettered for having been
 * delivered too often (terminated rather than acked once the dead letter is committed).
 */
export interface JetStreamChunk {
  readonly messages: JsMsg[];
  /** Indexes into `messages`; undefined when none. */
  terminate: number[] | undefined;
}

/** A header value as the sink wrote it (percent-encoded); as it is when it is not valid percent-encoding (another producer's). */
function decodeHeader(value: string): string {
  try {
    return decodeURIComponent(value);
  } catch {
    return value;
  }
}

/** The envelope a message carries in its headers; its id is `<stream>:<sequence>` when it has no `Nats-Msg-Id`. */
function envelopeOf(m: JsMsg, stream: string): ServiceEnvelope {
  const h = m.headers;
  if (h === undefined) return { id: `${stream}:${m.seq}` };
  const id = h.get("Nats-Msg-Id");
  const time = h.get(EVENT_TIME_HEADER);
  const eventTime = time === "" ? Number.NaN : Date.parse(time);
  return {
    id: id === "" ? `${stream}:${m.seq}` : decodeHeader(id),
    key: h.has(KEY_HEADER) ? decodeHeader(h.get(KEY_HEADER)) : undefined,
    eventTime: Number.isNaN(eventTime) ? undefined : eventTime,
  };
}

/**
 * The entry for one message, added to `chunk` with it: a record of the JSON object it holds; a
 * dead letter (`ERR_MAX_DELIVERIES`, marked in `chunk` to be terminated) when it was delivered more
 * than `maxDeliver` times; a dead letter (`ERR_RECORD_MALFORMED`) when it is not a JSON object.
 * Dead letters keep the message's text as `raw` and say where it is: `<stream> seq <n>`.
 */
export function addMessage(handle: SourceHandle, chunk: JetStreamChunk, entries: Entry[], m: JsMsg, stream: string, maxDeliver: number): void {
  entries.push(toEntry(handle, chunk, m, stream, maxDeliver));
  chunk.messages.push(m);
}

function toEntry(handle: SourceHandle, chunk: JetStreamChunk, m: JsMsg, stream: string, maxDeliver: number): Entry {
  const seq = m.seq;
  const envelope = envelopeOf(m, stream);
  const text = m.string();
  const where = `${stream} seq ${seq}`;
  const deliveries = m.info.deliveryCount;
  if (deliveries > maxDeliver) {
    (chunk.terminate ??= []).push(chunk.messages.length);
    const message = `nats: message delivered ${deliveries} times, more than max_deliver ${maxDeliver}, without being committed`;
    return handle.malformed(text, seq, new SluiceError("ERR_MAX_DELIVERIES", message, { location: where }), envelope);
  }
  const value = parseMessageObject(text, where);
  if (value instanceof SluiceError) return handle.malformed(text, seq, value, envelope);
  return handle.record(value, m.data.length, seq, text, envelope);
}
