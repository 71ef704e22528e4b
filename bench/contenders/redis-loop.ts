/**
 * Baseline: the hand-written consumer-group loop a Node user writes without a framework, on one
 * ioredis connection: XREADGROUP COUNT 1000 (BLOCK 2 s), then per entry `JSON.parse` of the body
 * field and the transform, then XACK of the batch's ids, awaited before the next read.
 */
import { Redis } from "ioredis";
import { fail } from "./protocol.js";
import { done, readBrokerTask } from "./broker-protocol.js";

const COUNT = 1000;
const BLOCK_MS = 2000;
const BODY = "body";

const { task, transform } = await readBrokerTask();
const redis = new Redis(task.url, { maxRetriesPerRequest: 0 });
let count = 0;
while (count < task.records) {
  const reply = (await redis.xreadgroup("GROUP", task.group, "loop", "COUNT", COUNT, "BLOCK", BLOCK_MS, "STREAMS", task.stream, ">")) as
    | [string, [string, string[]][]][]
    | null;
  if (reply === null) fail(`redis loop: no entries for ${BLOCK_MS} ms after ${count} of ${task.records}`);
  const entries = reply[0]![1];
  const ids: string[] = [];
  for (const [id, fields] of entries) {
    const at = fields.indexOf(BODY);
    if (transform(JSON.parse(fields[at + 1]!) as Record<string, unknown>) !== null) count++;
    ids.push(id);
  }
  await redis.xack(task.stream, task.group, ...ids);
}
await redis.quit();
done(count);
