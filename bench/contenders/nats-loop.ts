/**
 * Baseline: the hand-written JetStream pull consumer: `fetch({ max_messages: 1000 })` on the
 * durable consumer the runner created, then per message `JSON.parse`, the transform and `ack()`;
 * the next fetch once this one is drained. The acks are flushed before the connection closes.
 */
import { jetstream } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { done, readBrokerTask } from "./broker-protocol.js";

const FETCH = 1000;
const EXPIRES_MS = 5000;

const { task, transform } = await readBrokerTask();
const nc = await connect({ servers: task.url });
const consumer = await jetstream(nc).consumers.get(task.stream, task.group);
let count = 0;
while (count < task.records) {
  const messages = await consumer.fetch({ max_messages: Math.min(FETCH, task.records - count), expires: EXPIRES_MS });
  for await (const m of messages) {
    if (transform(JSON.parse(m.string()) as Record<string, unknown>) !== null) count++;
    m.ack();
  }
}
await nc.flush();
await nc.close();
done(count);
