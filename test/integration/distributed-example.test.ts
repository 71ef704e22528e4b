/**
 * The shipped examples/distributed/ files, run as they are by the real CLI against the machine's
 * Redis, NATS and PostgreSQL: an ingest node (http -> redis_streams / nats_jetstream) and two
 * workers (-> postgres) on one group / consumer, with only the environment pointing them at this
 * test's own stream and table. Every request is answered 202 only once its records are in the
 * stream; every record reaches the table once; both workers take a share; nothing is left unacked.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { jetstreamManager } from "@nats-io/jetstream";
import { afterEach, describe, expect, it } from "vitest";
import { freePort } from "../helpers/broker-servers.js";
import { deleteJetStream, deleteKeys, NATS_URL, natsConnect, REDIS_URL, redisClient, uniqueName } from "../helpers/brokers.js";
import { killClis, startCli } from "../helpers/cli.js";
import { startFleet } from "../helpers/fleet.js";
import { requireService } from "../helpers/services.js";
import { countRows, query } from "../fault/postgres-harness.js";

const EXAMPLES = resolve(import.meta.dirname, "../../examples/distributed");
const PG_URL = process.env.SLUICE_PG_URL ?? "postgres://postgres@127.0.0.1:5432/test";
const TOKEN = "example-ingest-token-0123456789";
const REQUESTS = 30;
const PER_REQUEST = 100;
const TOTAL = REQUESTS * PER_REQUEST;

const address = (url: string) => new URL(url);
const hasPostgres = await requireService("PostgreSQL", address(PG_URL).hostname, Number(address(PG_URL).port || 5432));
const hasRedis = await requireService("Redis", address(REDIS_URL).hostname, Number(address(REDIS_URL).port || 6379));
const hasNats = await requireService("NATS", address(NATS_URL).hostname, Number(address(NATS_URL).port || 4222));

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(what: string, check: () => Promise<boolean>, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

/** Whether `path` on the observability port answers 200. */
async function answers(port: number, path: string): Promise<boolean> {
  try {
    const res = await fetch(`http://127.0.0.1:${port}${path}`);
    await res.body?.cancel();
    return res.status === 200;
  } catch {
    return false;
  }
}

/** One broker's part: the example files, the environment naming the test's stream, and how to read the stream back. */
interface Variant {
  readonly ingest: string;
  readonly worker: string;
  readonly env: Record<string, string>;
  /** Records stored in the stream so far. */
  stored(): Promise<number>;
  /** Records delivered to the workers and not acked. */
  unacked(): Promise<number>;
  cleanUp(): Promise<void>;
}

/**
 * Starts the ingest node and two workers from the example files, POSTs the records request by
 * request (each must be in the stream when its 202 comes), waits for the table, stops everything
 * with SIGTERM and checks the end state.
 */
async function runExample(variant: Variant): Promise<void> {
  const table = uniqueName("dist_example_");
  const dir = await mkdtemp(join(tmpdir(), "sluice-dist-example-"));
  const [ingestPort, metricsPort] = [await freePort(), await freePort()];
  const env = { ...variant.env, DATABASE_URL: PG_URL, EVENTS_TABLE: table, INGEST_TOKEN: TOKEN };
  const ingest = startCli(join(EXAMPLES, variant.ingest), join(dir, "ingest.json"), dir, {
    ...env,
    INGEST_LISTEN: `127.0.0.1:${ingestPort}`,
    METRICS_LISTEN: `127.0.0.1:${metricsPort}`,
  });
  let fleet: Awaited<ReturnType<typeof startFleet>> | undefined;
  try {
    // Ready: its sink is connected (the JetStream node has created the stream the workers need).
    await until("the ingest node ready", () => answers(metricsPort, "/health/ready"));
    fleet = await startFleet({ configFile: join(EXAMPLES, variant.worker), size: 2, dir, env: (_, port) => ({ ...env, METRICS_LISTEN: `127.0.0.1:${port}` }) });
    await fleet.live();

    for (let r = 0; r < REQUESTS; r++) {
      const body = Array.from({ length: PER_REQUEST }, (_, i) => JSON.stringify({ id: `e-${r}-${i}`, user: `u-${i % 7}`, action: "click" })).join("\n");
      const res = await fetch(`http://127.0.0.1:${ingestPort}/v1/events`, {
        method: "POST",
        headers: { "content-type": "application/x-ndjson", authorization: `Bearer ${TOKEN}` },
        body,
      });
      expect(res.status, await res.clone().text()).toBe(202);
      expect(await res.json()).toEqual({ accepted: PER_REQUEST });
      // 202 once the records are in the stream, not merely taken.
      expect(await variant.stored()).toBe((r + 1) * PER_REQUEST);
    }
    await until(`${TOTAL} rows`, async () => (await countRows(PG_URL, table)) >= TOTAL);

    const workers = await fleet.stop();
    ingest.process.kill("SIGTERM");
    expect(await ingest.exited, ingest.output()).toEqual({ code: 0, signal: null });
    for (const w of workers) expect({ code: w.code, signal: w.signal }, w.output).toEqual({ code: 0, signal: null });
    const delivered = workers.map((w) => w.summary?.records.delivered ?? 0);
    expect(delivered.reduce((a, b) => a + b, 0)).toBe(TOTAL);
    expect(delivered.every((n) => n > 0), `each worker takes a share: ${delivered.join(" + ")}`).toBe(true);
    const [counts] = await query<{ n: number; distinct: number }>(PG_URL, `SELECT count(*)::int AS n, count(DISTINCT id)::int AS distinct FROM "${table}"`);
    expect(counts).toEqual({ n: TOTAL, distinct: TOTAL });
    expect(await variant.unacked()).toBe(0);
  } finally {
    fleet?.abort();
    killClis();
    await query(PG_URL, `DROP TABLE IF EXISTS "${table}"`).catch(() => undefined);
    await variant.cleanUp();
    await rm(dir, { recursive: true, force: true });
  }
}

afterEach(() => killClis());

describe.skipIf(!hasPostgres || !hasRedis)("examples/distributed with Redis Streams", () => {
  it(`moves ${TOTAL} POSTed records through the stream to PostgreSQL with two workers`, async () => {
    const stream = uniqueName("dist_example_");
    const redis = redisClient();
    try {
      await runExample({
        ingest: "ingest-redis.yaml",
        worker: "worker-redis.yaml",
        env: { REDIS_URL, EVENTS_STREAM: stream },
        stored: () => redis.xlen(stream),
        async unacked() {
          const [count] = (await redis.xpending(stream, "workers")) as [number, ...unknown[]];
          return Number(count);
        },
        cleanUp: () => deleteKeys(redis, stream),
      });
    } finally {
      redis.disconnect();
    }
  }, 120_000);
});

describe.skipIf(!hasPostgres || !hasNats)("examples/distributed with NATS JetStream", () => {
  it(`moves ${TOTAL} POSTed records through the stream to PostgreSQL with two workers`, async () => {
    const name = uniqueName("DIST_EXAMPLE_");
    const nc = await natsConnect();
    try {
      const jsm = await jetstreamManager(nc);
      await runExample({
        ingest: "ingest-nats.yaml",
        worker: "worker-nats.yaml",
        env: { NATS_URL, EVENTS_JETSTREAM: name, EVENTS_SUBJECT: `${name}.ingest` },
        stored: async () => (await jsm.streams.info(name)).state.messages,
        async unacked() {
          const info = await jsm.consumers.info(name, "workers");
          return info.num_ack_pending + info.num_pending;
        },
        cleanUp: () => deleteJetStream(nc, name),
      });
    } finally {
      await nc.close();
    }
  }, 120_000);
});
