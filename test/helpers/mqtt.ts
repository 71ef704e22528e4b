/**
 * MQTT helpers for the tests against Mosquitto: sessions made and removed by client id, and a
 * publisher. Each test uses its own topic and client id (a random suffix) and removes its session.
 */
import mqtt, { type MqttClient } from "mqtt";

export const MQTT_URL = process.env.SLUICE_MQTT_URL ?? "mqtt://127.0.0.1:1883";

/** Connects an MQTT 5 client; rejects on a refused connection instead of retrying. */
export function mqttClient(url: string, options: mqtt.IClientOptions = {}): Promise<MqttClient> {
  return mqtt.connectAsync(url, { protocolVersion: 5, reconnectPeriod: 0, connectTimeout: 10_000, ...options }, false);
}

/**
 * Creates the persistent session of `clientId` subscribed to `topic` and leaves it, so the broker
 * queues for it what is published from now on (as a worker that ran before would have left it).
 */
export async function createSession(url: string, clientId: string, topic: string, qos: 1 | 2 = 1): Promise<void> {
  const c = await mqttClient(url, { clientId, clean: false, properties: { sessionExpiryInterval: 0xffff_ffff } });
  await c.subscribeAsync(topic, { qos });
  await c.endAsync();
}

/** Removes the session of `clientId` (a clean start that expires at disconnect). Never rejects. */
export async function removeSession(url: string, clientId: string): Promise<void> {
  try {
    const c = await mqttClient(url, { clientId, clean: true, properties: { sessionExpiryInterval: 0 } });
    await c.endAsync();
  } catch {
    // A broker already gone has no session to remove.
  }
}

/**
 * Publishes each payload (as JSON) to `topic` with `qos`, at most 10 unacknowledged at once (under
 * Mosquitto's default Receive Maximum of 20, which mqtt.js does not keep to for QoS 2); resolves
 * once the broker acknowledged every one.
 */
export async function publishAll(url: string, topic: string, payloads: readonly object[], qos: 0 | 1 | 2 = 1): Promise<void> {
  const c = await mqttClient(url);
  try {
    for (let i = 0; i < payloads.length; i += 10) {
      await Promise.all(payloads.slice(i, i + 10).map((p) => c.publishAsync(topic, JSON.stringify(p), { qos })));
    }
  } finally {
    await c.endAsync();
  }
}

/** A message as {@link drainSession} received it. */
export interface ReceivedMessage {
  readonly topic: string;
  readonly payload: Record<string, unknown>;
  /** The broker resent it: it had been sent to an earlier connection of the session, which did not acknowledge it. */
  readonly dup: boolean;
}

/**
 * Resumes the session of `clientId` with a plain client that acknowledges on receipt, and returns
 * what the broker sends it until nothing came for `quietMs`: what the session still held.
 */
export async function drainSession(url: string, clientId: string, quietMs = 500): Promise<ReceivedMessage[]> {
  const got: ReceivedMessage[] = [];
  let last: number | undefined;
  // Listening before the connection is up: the broker resends right after CONNACK, and mqtt.js
  // emits those messages before an `await` of the connection would return.
  const c = mqtt.connect(url, { protocolVersion: 5, reconnectPeriod: 0, clientId, clean: false, properties: { sessionExpiryInterval: 0xffff_ffff } });
  c.on("message", (topic, payload, packet) => {
    got.push({ topic, payload: JSON.parse(payload.toString()) as Record<string, unknown>, dup: packet.dup });
    last = Date.now();
  });
  await new Promise<void>((resolve, reject) => {
    c.once("connect", () => resolve());
    c.once("error", reject);
  });
  last ??= Date.now();
  while (Date.now() - last < quietMs) await new Promise((r) => setTimeout(r, 50));
  await c.endAsync();
  return got;
}
