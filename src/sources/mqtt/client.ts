/**
 * The `mqtt` source's connection: one mqtt.js client per engine `connect`, speaking MQTT 5, with
 * the client's automatic acknowledgements turned off (see {@link openMqttConnection}), and the
 * classification of its errors.
 */
import { readFile } from "node:fs/promises";
import { resolve } from "node:path";
import type { IClientOptions, MqttClient } from "mqtt";
import { classify, SluiceError } from "../../core/errors.js";
import type { MqttMessage } from "./messages.js";

/** How long a connection attempt waits for CONNACK, and the subscription for SUBACK, in ms. */
const CONNECT_TIMEOUT_MS = 10_000;
/** MQTT 5's largest Receive Maximum. */
export const MAX_RECEIVE_MAXIMUM = 65_535;

/**
 * CONNACK and SUBACK reason codes no retry clears: unsupported protocol version (132), client id
 * not valid (133), bad user name or password (134), not authorized (135), banned (138), bad
 * authentication method (140), topic filter invalid (143), shared or wildcard subscriptions not
 * supported (158, 162).
 */
const PERMANENT_REASON_CODES = new Set([132, 133, 134, 135, 138, 140, 143, 158, 162]);

/** Everything a connection needs from the source's settings. */
export interface MqttConnectionSettings {
  readonly url: string;
  readonly topics: readonly string[];
  readonly qos: 1 | 2;
  readonly clientId: string;
  readonly clean: boolean;
  /** s; MQTT 5's Session Expiry Interval, 0xFFFFFFFF for never. */
  readonly sessionExpirySeconds: number;
  readonly receiveMaximum: number;
  /** s */
  readonly keepaliveSeconds: number;
  readonly username?: string | undefined;
  readonly password?: string | undefined;
  readonly tls?: { readonly ca?: string | undefined; readonly cert?: string | undefined; readonly key?: string | undefined; readonly rejectUnauthorized: boolean } | undefined;
}

/** An open connection: its client, whether the broker kept a session for the client id, and how it tells what arrives and what goes wrong. */
export interface MqttConnection {
  readonly client: MqttClient;
  readonly sessionPresent: boolean;
  /** Sends what the chunks earned, oldest first, on this connection only; false when it is gone (the broker redelivers). */
  acknowledge(chunks: readonly Acknowledgements[]): boolean;
  /** Why the connection is down; undefined while it is up. */
  readonly down: () => string | undefined;
  /** Ends the connection: with a DISCONNECT (`graceful`, after what was sent), or by closing the socket. */
  end(graceful: boolean): Promise<void>;
}

/** Packet identifiers to acknowledge: PUBACK for each of `puback` (QoS 1), PUBREC for each of `pubrec` (QoS 2). */
export interface Acknowledgements {
  readonly puback: readonly number[];
  readonly pubrec: readonly number[];
}

/** First byte of a PUBACK and of a PUBREC (packet types 4 and 5, no flags). */
const PUBACK = 0x40;
const PUBREC = 0x50;

/**
 * The PUBACKs and PUBRECs of `chunks` in one buffer, in order: each 4 bytes (type, remaining
 * length 2, packet identifier), the MQTT 5 form for reason code 0 (success) without properties.
 */
export function acknowledgementBytes(chunks: readonly Acknowledgements[]): Buffer {
  let n = 0;
  for (const c of chunks) n += c.puback.length + c.pubrec.length;
  const out = Buffer.allocUnsafe(n * 4);
  let at = 0;
  const put = (type: number, id: number) => {
    out[at] = type;
    out[at + 1] = 2;
    out.writeUInt16BE(id, at + 2);
    at += 4;
  };
  for (const c of chunks) {
    for (const id of c.puback) put(PUBACK, id);
    for (const id of c.pubrec) put(PUBREC, id);
  }
  return out;
}

/** mqtt.js, imported on first use only: a pipeline without an MQTT source never pays for loading it. */
let mqttModule: Promise<typeof import("mqtt")> | undefined;

/** The sentinel the ack hook fails with, so that mqtt.js sends nothing; its `error` event is then ignored. */
const HELD = new Error("sluice holds this acknowledgement until the record is committed");

/**
 * Wraps an mqtt.js error as a {@link SluiceError} with `code`: a CONNACK or SUBACK refusal in
 * {@link PERMANENT_REASON_CODES} (bad credentials, not authorized) and a TLS file that cannot be
 * read are permanent; anything else (refused, reset, timed out, server unavailable) is retryable.
 */
export function classifyMqttError(err: unknown, location: string): SluiceError {
  if (err instanceof SluiceError) return err;
  const wrapped = classify(err, "ERR_SOURCE_CONNECT");
  if (wrapped.code === "ERR_INTERNAL") return wrapped;
  const message = `mqtt: ${err instanceof Error ? err.message : String(err)}`;
  const reason = (err as { code?: unknown } | null)?.code;
  const permanent = typeof reason === "number" && PERMANENT_REASON_CODES.has(reason);
  return new SluiceError("ERR_SOURCE_CONNECT", message, { cause: err, retryable: !permanent, location });
}

/** The TLS options, the files read relative to `baseDir`; a file that cannot be read is a permanent error. */
async function tlsOptions(tls: MqttConnectionSettings["tls"], baseDir: string, location: string): Promise<Partial<IClientOptions>> {
  if (tls === undefined) return {};
  const read = async (what: string, path: string | undefined) => {
    if (path === undefined) return undefined;
    try {
      return await readFile(resolve(baseDir, path));
    } catch (err) {
      throw new SluiceError("ERR_SOURCE_CONNECT", `mqtt: cannot read the ${what} file ${path}: ${(err as Error).message}`, { cause: err, retryable: false, location });
    }
  };
  const [ca, cert, key] = await Promise.all([read("tls.ca", tls.ca), read("tls.cert", tls.cert), read("tls.key", tls.key)]);
  return { ca, cert, key, rejectUnauthorized: tls.rejectUnauthorized };
}

/**
 * Connects, subscribes, and delivers every message to `deliver`, unacknowledged.
 *
 * mqtt.js handles incoming packets one at a time and sends PUBACK (QoS 1) or PUBREC (QoS 2) when
 * its ack hook (`customHandleAcks`, MQTT 5 only) and `handleMessage` call back. Holding that
 * callback until commit would hold every later packet too (one message per commit, and PINGRESP
 * stuck behind it). So the hook fails with {@link HELD}: mqtt.js then sends nothing and goes on to
 * the next packet, and the source sends PUBACK or PUBREC itself once the chunk is committed,
 * written onto the client's stream, the acknowledgements of every chunk an ack covers in one write
 * (JavaScript runs one write at a time, so it never splits a packet mqtt.js is writing).
 * PUBREC, not PUBCOMP, is what is held for QoS 2: once the broker has a PUBREC it resends only
 * PUBREL, never the message, and mqtt.js keeps QoS 2 state in memory, which a SIGKILL loses. The
 * broker's PUBREL is then answered with PUBCOMP by mqtt.js (it finds no stored message).
 *
 * Backpressure is MQTT 5's Receive Maximum: the broker sends at most `receiveMaximum` QoS 1 and 2
 * messages that are not acknowledged, and every record in the buffer is one; the socket itself
 * is always read (PINGRESP must get through).
 */
export async function openMqttConnection(
  s: MqttConnectionSettings,
  baseDir: string,
  location: string,
  deliver: (m: MqttMessage) => void,
  signal: AbortSignal,
): Promise<MqttConnection> {
  const mqtt = await (mqttModule ??= import("mqtt"));
  const tls = await tlsOptions(s.tls, baseDir, location);
  let down: string | undefined;
  let lastError: string | undefined;
  const client = mqtt.connect(s.url, {
    ...tls,
    protocolVersion: 5,
    clientId: s.clientId,
    clean: s.clean,
    username: s.username,
    password: s.password,
    keepalive: s.keepaliveSeconds,
    reconnectPeriod: 0,
    connectTimeout: CONNECT_TIMEOUT_MS,
    resubscribe: false,
    properties: { sessionExpiryInterval: s.sessionExpirySeconds, receiveMaximum: s.receiveMaximum },
    customHandleAcks: (topic, payload, packet: { qos: number; messageId?: number }, done) => {
      deliver({ topic, payload, qos: packet.qos, packetId: packet.messageId });
      done(HELD);
    },
  });
  client.on("message", (topic, payload, packet) => {
    // Only QoS 0 messages reach this event: the ack hook takes the others.
    if (packet.qos === 0) deliver({ topic, payload, qos: 0, packetId: undefined });
  });
  client.on("error", (err) => {
    if (err !== HELD) lastError = err.message;
  });
  client.on("close", () => {
    down ??= `connection closed${lastError === undefined ? "" : `: ${lastError}`}`;
  });

  const abort = () => client.end(true);
  signal.addEventListener("abort", abort, { once: true });
  try {
    const connack = await new Promise<{ sessionPresent: boolean }>((resolveConnect, reject) => {
      const onConnect = (p: { sessionPresent: boolean }) => settle(() => resolveConnect(p));
      const onError = (err: Error) => {
        if (err !== HELD) settle(() => reject(err));
      };
      const onClose = () => settle(() => reject(new Error(lastError ?? (signal.aborted ? "aborted" : "connection closed before CONNACK"))));
      const settle = (then: () => void) => {
        client.off("connect", onConnect);
        client.off("error", onError);
        client.off("close", onClose);
        then();
      };
      client.on("connect", onConnect);
      client.on("error", onError);
      client.on("close", onClose);
    });
    const granted = await client.subscribeAsync(Object.fromEntries(s.topics.map((t) => [t, { qos: s.qos, rh: 1 }])));
    for (const g of granted) {
      if (g.qos === 128) throw new SluiceError("ERR_SOURCE_CONNECT", `mqtt: the broker refused the subscription to ${g.topic}`, { retryable: false, location });
    }
    return {
      client,
      sessionPresent: connack.sessionPresent,
      down: () => down,
      acknowledge(chunks) {
        if (down !== undefined || !client.connected) return false;
        const bytes = acknowledgementBytes(chunks);
        if (bytes.length > 0) client.stream.write(bytes);
        return true;
      },
      end: (graceful) =>
        new Promise<void>((done) => {
          down ??= "connection ended";
          if (graceful) client.end(false, {}, () => done());
          else client.end(true, {}, () => done());
        }),
    };
  } catch (err) {
    client.end(true);
    throw classifyMqttError(err, location);
  } finally {
    signal.removeEventListener("abort", abort);
  }
}
