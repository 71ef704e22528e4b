// Publishes sensor readings over MQTT at QoS 1: `rounds` readings for each of 10 sensors, one
// second apart in reading time, then one late reading of s-0 (older than its last), which sluice
// must not apply.
//   node examples/mqtt-postgres/publish.mjs [rounds]
// Environment: MQTT_URL (default mqtt://127.0.0.1:1883), PLANT (default plant).
import mqtt from "mqtt";

const rounds = Number(process.argv[2] ?? 5);
const url = process.env.MQTT_URL || "mqtt://127.0.0.1:1883";
const plant = process.env.PLANT || "plant";
const start = Date.parse("2026-05-01T12:00:00Z");

const client = await mqtt.connectAsync(url, { clientId: `${plant}-publisher-${process.pid}` });
const publish = (sensor, round, value) =>
  client.publishAsync(
    `${plant}/${sensor}/readings`,
    JSON.stringify({ id: `${plant}-${sensor}-${round}`, sensor, value, unit: "C", ts: new Date(start + round * 1000).toISOString() }),
    { qos: 1 },
  );
for (let round = 1; round <= rounds; round++) {
  await Promise.all(Array.from({ length: 10 }, (_, s) => publish(`s-${s}`, round, 20 + s + round / 10)));
}
// Late: reading time before s-0's first one. upsert_latest keeps the newer row.
await publish("s-0", 0, -99);
await client.endAsync();
console.log(`published ${rounds * 10 + 1} readings to ${plant}/<sensor>/readings`);
