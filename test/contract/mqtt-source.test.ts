/**
 * The source contract suite against the `mqtt` source, on the machine's Mosquitto: each test its
 * own topic and client id, whose persistent session is made before the test and removed after it.
 */
import { describe } from "vitest";
import type { JsonObject } from "../../src/core/record.js";
import { definition } from "../../src/sources/mqtt/source.js";
import { uniqueName } from "../helpers/brokers.js";
import { createSession, MQTT_URL, publishAll, removeSession } from "../helpers/mqtt.js";
import { requireService } from "../helpers/services.js";
import { runSourceContract } from "./source-contract.js";

const address = new URL(MQTT_URL);
const hasMosquitto = await requireService("Mosquitto", address.hostname, Number(address.port || 1883));

describe.skipIf(!hasMosquitto)("mqtt source", () => {
  runSourceContract("mqtt", () => {
    const name = uniqueName("sluice-src-contract-");
    const topic = `sluice/contract/${name}`;
    let published = false;
    return {
      // The session exists before anything is published, so the broker queues it all for sluice.
      setup: () => createSession(MQTT_URL, name, topic),
      create: (ctx) => definition.create(definition.options.parse({ url: MQTT_URL, topics: topic, client_id: name }), ctx),
      // Published once: a later run gets what was not acknowledged from the broker, as a worker would.
      // No `id` in the payload: ids come from the topic and a hash of the payload, which redelivery keeps.
      produce: async (total) => {
        if (published) return;
        published = true;
        await publishAll(MQTT_URL, topic, Array.from({ length: total }, (_, n) => ({ n })));
      },
      indexOf: (payload: JsonObject) => payload.n as number,
      dispose: () => removeSession(MQTT_URL, name),
    };
  });
});
