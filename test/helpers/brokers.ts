/**
 * Reading back and cleaning up what the broker sinks wrote, for the tests against the machine's
 * Redis and NATS: each test writes to its own stream (a random suffix) and deletes only that.
 */
import { randomBytes } from "node:crypto";
import { jetstream, jetstreamManager, JetStreamApiCodes, JetStreamApiError } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { Redis } from "ioredis";
import type { JsonObject } from "../../src/core/record.js";
import { EVENT_TIME_HEADER, KEY_HEADER } from "../../src/brokers/nats.js";
import type { StoredRecord } from "../contract/sink-contract.js";

export const REDIS_URL = process.env.SLUICE_REDIS_URL ?? "redis://127.0.0.1:6379";
export const NATS_URL = process.env.SLUICE_NATS_URL ?? "nats://127.0.0.1:4222";

/** A name unique to this test run: `<prefix><12 hex digits>`. */
export function uniqueName(prefix: string): string {
  return `${prefix}${randomBytes(6).toString("hex")}`;
}

/** A stored Redis stream entry: its id and its fields. */
export interface StreamEntry {
  readonly entryId: string;
  readonly fields: Record<string, string>;
}

/** Every entry of `stream`, oldest first. */
export async function readStream(redis: Redis, stream: string): Promise<StreamEntry[]> {
  const entries = await redis.xrange(stream, "-", "+");
  return entries.map(([entryId, flat]) => {
    const fields: Record<string, string> = {};
    for (let i = 0; i < flat.length; i += 2) fields[flat[i]!] = flat[i + 1]!;
    return { entryId, fields };
  });
}

/** An entry written by the redis_streams sink as the contract suite compares it. */
export function storedFromEntry(entry: StreamEntry, bodyKey = "body"): StoredRecord {
  const f = entry.fields;
  return { id: f.id!, key: f.key ?? null, eventTime: f.event_time ?? null, payload: JSON.parse(f[bodyKey]!) as JsonObject };
}

/** Deletes every key starting with `prefix` (a test's streams and dedupe keys). */
export async function deleteKeys(redis: Redis, prefix: string): Promise<void> {
  const pattern = `${prefix.replace(/[*?[\]\\]/g, "\\$&")}*`;
  let cursor = "0";
  do {
    const [next, keys] = await redis.scan(cursor, "MATCH", pattern, "COUNT", 1000);
    cursor = next;
    if (keys.length > 0) await redis.unlink(...keys);
  } while (cursor !== "0");
}

/** Opens a NATS connection to `servers` (the machine's server by default). */
export function natsConnect(servers: string = NATS_URL): Promise<NatsConnection> {
  return connect({ servers, name: "sluice-test" });
}

/** Every message of JetStream `stream` as the contract suite compares it, oldest first. */
export async function readJetStream(nc: NatsConnection, stream: string): Promise<StoredRecord[]> {
  const jsm = await jetstreamManager(nc);
  let total: number;
  try {
    total = (await jsm.streams.info(stream)).state.messages;
  } catch (err) {
    // Before the first connect there is no stream yet: nothing stored.
    if (err instanceof JetStreamApiError && err.code === JetStreamApiCodes.StreamNotFound) return [];
    throw err;
  }
  if (total === 0) return [];
  const consumer = await jetstream(nc).consumers.get(stream);
  const out: StoredRecord[] = [];
  while (out.length < total) {
    const messages = await consumer.fetch({ max_messages: Math.min(total - out.length, 5000), expires: 5000 });
    for await (const m of messages) {
      const key = m.headers?.get(KEY_HEADER);
      const eventTime = m.headers?.get(EVENT_TIME_HEADER);
      out.push({
        id: decodeURIComponent(m.headers!.get("Nats-Msg-Id")),
        key: m.headers?.has(KEY_HEADER) ? decodeURIComponent(key!) : null,
        eventTime: eventTime ? eventTime : null,
        payload: m.json<JsonObject>(),
      });
    }
  }
  return out;
}

/** Deletes JetStream stream `name` if it exists. */
export async function deleteJetStream(nc: NatsConnection, name: string): Promise<void> {
  const jsm = await jetstreamManager(nc);
  await jsm.streams.delete(name).catch(() => undefined);
}

/** Redis client for checks, connected to `url` (the machine's server by default). */
export function redisClient(url: string = REDIS_URL): Redis {
  return new Redis(url, { maxRetriesPerRequest: 1 });
}
