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

/** Publishes each payload (as JSON) to `topic` with `qos`; resolves once the broker acknowledged every one. */
export async function publishAll(url: string, topic: string, payloads: readonly object[], qos: 0 | 1 | 2 = 1): Promise<void> {
  const c = await mqttClient(url);
  try {
    await Promise.all(payloads.map((p) => c.publishAsync(topic, JSON.stringify(p), { qos })));
  } finally {
    await c.endAsync();
  }
}
