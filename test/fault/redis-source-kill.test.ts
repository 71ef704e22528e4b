/**
 * A `redis_streams` worker SIGKILLed mid-run, with reads ahead in flight: the real CLI reads a
 * preloaded stream into SQLite and is killed once a part is committed; a second run under the same
 * consumer name takes over what the first had read and not acked (its pending entries, after
 * `claim_idle`) and reads the rest. Every entry must reach the table, the group must end with
 * nothing pending, and the second run must stop cleanly.
 *
 * Uses the machine's Redis (its own stream, deleted afterwards): only sluice is killed, never the
 * server. Skipped with a printed reason when Redis is down, unless SLUICE_REQUIRE_SERVICES=1.
 */
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import type { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { deleteKeys, REDIS_URL, redisClient, uniqueName } from "../helpers/brokers.js";
import { killClis, startCli } from "../helpers/cli.js";
import { requireService } from "../helpers/services.js";

const TOTAL = 20_000;
// Killed once this many rows are committed: well inside the run.
const KILL_AT = 3_000;
const RUN_TIMEOUT_MS = 120_000;

const address = new URL(REDIS_URL);
const hasRedis = await requireService("Redis", address.hostname, Number(address.port || 6379));

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(cond: () => boolean | Promise<boolean>, what: string, ms = RUN_TIMEOUT_MS): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

describe.skipIf(!hasRedis)("redis_streams worker SIGKILLed mid-run", () => {
  let redis: Redis;
  let dir: string;
  const stream = uniqueName("sluice-kill-src-");

  beforeAll(async () => {
    redis = redisClient();
    dir = await mkdtemp(join(tmpdir(), "sluice-redis-kill-"));
  });
  afterAll(async () => {
    killClis();
    await deleteKeys(redis, stream);
    await redis.quit();
    await rm(dir, { recursive: true, force: true });
  });

  it(`delivers all ${TOTAL.toLocaleString("en-US")} entries after a SIGKILL, the group drained`, async () => {
    for (let n = 0; n < TOTAL; n += 1000) {
      const pipeline = redis.pipeline();
      for (let i = n; i < n + 1000; i++) pipeline.xadd(stream, "*", "body", JSON.stringify({ id: `r-${i}`, n: i }));
      await pipeline.exec();
    }
    const db = join(dir, "out.db");
    const config = join(dir, "worker.yaml");
    await writeFile(
      config,
      `data_dir: ${join(dir, "data")}
sources:
  queue: { type: redis_streams, url: ${REDIS_URL}, stream: ${stream}, group: workers, consumer: w1, claim_idle: 300ms, block: 200ms }
sinks:
  db: { type: sqlite, path: ${db}, batch: { max_wait: 10ms } }
`,
    );
    const count = (sql: string): number => {
      try {
        const conn = new Database(db, { readonly: true });
        try {
          return (conn.prepare(sql).get() as { n: number }).n;
        } finally {
          conn.close();
        }
      } catch {
        return 0;
      }
    };
    const rows = () => count("select count(*) as n from records");
    const pending = async () => Number(((await redis.xpending(stream, "workers")) as [number])[0]);

    const first = startCli(config, join(dir, "first.json"), dir);
    await until(() => rows() >= KILL_AT, `${KILL_AT} rows`);
    first.process.kill("SIGKILL");
    expect((await first.exited).signal).toBe("SIGKILL");
    expect(rows()).toBeLessThan(TOTAL);
    // What it had read (and read ahead) without acking: left pending under w1.
    expect(await pending()).toBeGreaterThan(0);

    const second = startCli(config, join(dir, "second.json"), dir);
    await until(async () => rows() === TOTAL && (await pending()) === 0, `all ${TOTAL} rows and nothing pending`);
    second.process.kill("SIGTERM");
    expect((await second.exited).code, second.output()).toBe(0);
    expect(count("select count(distinct id) as n from records")).toBe(TOTAL);
    expect(count(`select count(*) as n from records where json_extract(payload, '$.n') between 0 and ${TOTAL - 1} and id = 'r-' || json_extract(payload, '$.n')`)).toBe(TOTAL);
    expect(await pending()).toBe(0);
  }, RUN_TIMEOUT_MS * 2);
});
