// Publishes sensor readings to RabbitMQ the way a producer should for sluice's guarantee:
// persistent messages, a message_id per reading, publisher confirms.
//   node examples/rabbitmq-sqlite/publish.mjs [count]
// Environment: RABBITMQ_URL (default amqp://guest:guest@127.0.0.1:5672), PLANT (default plant).
import amqp from "amqplib";

const count = Number(process.argv[2] ?? 1000);
const url = process.env.RABBITMQ_URL || "amqp://guest:guest@127.0.0.1:5672";
const plant = process.env.PLANT || "plant";

const conn = await amqp.connect(url);
const channel = await conn.createConfirmChannel();
for (let n = 1; n <= count; n++) {
  const sensor = `s-${n % 10}`;
  const reading = { id: `${plant}-reading-${n}`, sensor, value: 20 + (n % 50) / 10, ts: new Date().toISOString() };
  const routingKey = `${plant}.${sensor}.readings`;
  const more = channel.publish("amq.topic", routingKey, Buffer.from(JSON.stringify(reading)), {
    persistent: true,
    messageId: reading.id,
    contentType: "application/json",
  });
  if (!more) await new Promise((resolve) => channel.once("drain", resolve));
}
// Resolves once the broker confirmed every message: only then are they safe in the queue.
await channel.waitForConfirms();
await conn.close();
console.log(`published ${count} readings to amq.topic (${plant}.<sensor>.readings)`);
