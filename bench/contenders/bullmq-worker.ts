/**
 * Baseline: a BullMQ worker on the queue the runner filled, `concurrency` jobs at a time, each job
 * the transform of its data (a reading, which BullMQ stored as JSON and parses), completed jobs
 * removed. Exits once `records` jobs completed.
 */
import { Worker } from "bullmq";
import { Redis } from "ioredis";
import { fail } from "./protocol.js";
import { done, readBrokerTask } from "./broker-protocol.js";

const { task, transform } = await readBrokerTask();
// BullMQ's workers need maxRetriesPerRequest: null (blocking commands).
const connection = new Redis(task.url, { maxRetriesPerRequest: null });
let count = 0;
let finished: () => void = () => {};
const all = new Promise<void>((resolve) => (finished = resolve));
const worker = new Worker(
  task.stream,
  async (job) => {
    transform(job.data as Record<string, unknown>);
  },
  { connection, concurrency: task.concurrency, removeOnComplete: { count: 0 }, removeOnFail: { count: 0 } },
);
worker.on("completed", () => {
  if (++count === task.records) finished();
});
worker.on("failed", (_job, err) => fail(`bullmq: a job failed: ${err.message}`));
await all;
await worker.close();
await connection.quit();
done(count);
