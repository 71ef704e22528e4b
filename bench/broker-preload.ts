/**
 * The broker section's data (bench/brokers.ts): fills a fresh Redis stream, JetStream stream or
 * BullMQ queue with the bench's sensor readings (bench/data-gen.ts, the same ~96-byte NDJSON
 * lines as the file section), and tells when a consumer group or durable consumer has read and
 * acked all of it. Nothing here is timed.
 */
import { createReadStream } from "node:fs";
import { createInterface } from "node:readline";
import type { JetStreamManager } from "@nats-io/jetstream";
import type { Redis } from "ioredis";
import { ensureDataFile } from "./data-gen.js";

/** Entries per pipelined XADD round trip, and messages published before their acks are awaited. */
const PRELOAD_BATCH = 1000;
/** BullMQ jobs per addBulk call. */
const BULLMQ_BATCH = 1000;

/** The first `records` readings of the bench file, a batch of lines at a time. */
async function* lines(records: number, batch: number): AsyncGenerator<string[]> {
  const { file } = ensureDataFile(records);
  const reader = createInterface({ input: createReadStream(file), crlfDelay: Infinity });
  let out: string[] = [];
  for await (const line of reader) {
    out.push(line);
    if (out.length === batch) {
      yield out;
      out = [];
    }
  }
  if (out.length > 0) yield out;
}

/** The entry id of the `seq`-th entry of a preloaded stream: explicit ids, so a group can start anywhere. */
export const entryId = (seq: number): string => `0-${seq}`;

/** XADDs `records` readings to `stream` (deleted first), each as field `body`, with ids 0-1 .. 0-records. */
export async function preloadRedis(redis: Redis, stream: string, records: number, onProgress: (n: number) => void): Promise<void> {
  await redis.del(stream);
  let seq = 0;
  for await (const batch of lines(records, PRELOAD_BATCH)) {
    const pipeline = redis.pipeline();
    for (const line of batch) pipeline.xadd(stream, entryId(++seq), "body", line);
    const replies = (await pipeline.exec()) ?? [];
    const failed = replies.find(([err]) => err);
    if (failed) throw failed[0];
    onProgress(seq);
  }
}

/** A fresh consumer group on `stream`, reading the entries after `after` (0: all of them). */
export async function createGroup(redis: Redis, stream: string, group: string, after = "0"): Promise<void> {
  await redis.xgroup("CREATE", stream, group, after);
}

/** True once `group` of `stream` has read up to entry `last` and has nothing pending. */
export async function groupDrained(redis: Redis, stream: string, group: string, last: string): Promise<boolean> {
  const groups = (await redis.xinfo("GROUPS", stream)) as unknown[][];
  for (const info of groups) {
    const f = new Map<string, unknown>();
    for (let i = 0; i + 1 < info.length; i += 2) f.set(String(info[i]), info[i + 1]);
    if (f.get("name") === group) return f.get("last-delivered-id") === last && Number(f.get("pending")) === 0;
  }
  return false;
}

/** Creates `stream` (file storage, subject `<stream>.readings`; deleted first) and publishes `records` readings to it. */
export async function preloadJetStream(
  jsm: JetStreamManager,
  publish: (subject: string, data: string) => Promise<unknown>,
  stream: string,
  records: number,
  onProgress: (n: number) => void,
): Promise<string> {
  const subject = `${stream}.readings`;
  await jsm.streams.delete(stream).catch(() => false);
  await jsm.streams.add({ name: stream, subjects: [subject] });
  let n = 0;
  for await (const batch of lines(records, PRELOAD_BATCH)) {
    await Promise.all(batch.map((line) => publish(subject, line)));
    n += batch.length;
    onProgress(n);
  }
  return subject;
}

/** True once `consumer` of `stream` was delivered every one of `records` messages and has none un-acked. */
export async function consumerDrained(jsm: JetStreamManager, stream: string, consumer: string, records: number): Promise<boolean> {
  const info = await jsm.consumers.info(stream, consumer);
  return info.delivered.stream_seq >= records && info.num_pending === 0 && info.num_ack_pending === 0;
}

/** Adds `records` readings as BullMQ jobs (data: the reading) through `addBulk`. */
export async function preloadBullmq(addBulk: (jobs: { name: string; data: unknown }[]) => Promise<unknown>, records: number): Promise<void> {
  for await (const batch of lines(records, BULLMQ_BATCH)) {
    await addBulk(batch.map((line) => ({ name: "reading", data: JSON.parse(line) as unknown })));
  }
}
