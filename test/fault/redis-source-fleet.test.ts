/**
 * A fleet of `redis_streams` workers killed at random: three `sluice run` children read one group
 * (redis_streams -> postgres) with a buffer bounded by bytes far below its record bound, and every
 * second or so one that is reading is SIGKILLed and started again (a new pid: a new default
 * consumer name), up to six times while most of the work is still to do. Every entry must end in PostgreSQL exactly once, nothing pending in the group, and the
 * consumers must not pile up: a worker stopped with SIGTERM deletes its own, and the killed ones,
 * once nothing is pending with them and they were idle for 10 x claim_idle, are deleted by the
 * others' reclaim passes.
 *
 * Uses the machine's Redis and PostgreSQL (its own stream and table, removed after); kills only
 * the workers it started.
 */
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";
import type { Redis } from "ioredis";
import pg from "pg";
import { afterAll, describe, expect, it } from "vitest";
import { deleteKeys, REDIS_URL, redisClient, uniqueName } from "../helpers/brokers.js";
import { killClis, startCli, type Cli } from "../helpers/cli.js";
import { requireService } from "../helpers/services.js";

const PG_URL = process.env.SLUICE_PG_URL ?? "postgres://postgres@127.0.0.1:5432/test";
const redisAddress = new URL(REDIS_URL);
const pgAddress = new URL(PG_URL);
const hasServices =
  (await requireService("Redis", redisAddress.hostname, Number(redisAddress.port || 6379))) &&
  (await requireService("PostgreSQL", pgAddress.hostname, Number(pgAddress.port || 5432)));

// Joined writes made the fleet fast enough to finish 100,000 between two kills: enough entries that six kills land mid-way.
const TOTAL = 200_000;
const WORKERS = 3;
const KILLS = 6;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe.skipIf(!hasServices)("a redis_streams fleet whose workers are SIGKILLed", () => {
  const stream = uniqueName("sluice-fleet-");
  const table = stream.replace(/\W/g, "_");
  let redis: Redis | undefined;
  let db: pg.Client | undefined;
  let dir: string | undefined;

  afterAll(async () => {
    killClis();
    if (redis !== undefined) {
      await deleteKeys(redis, stream);
      await redis.quit();
    }
    if (db !== undefined) {
      await db.query(`drop table if exists "${table}"`);
      await db.end();
    }
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  it(`delivers ${TOTAL.toLocaleString("en-US")} entries exactly once, leaves nothing pending, and leaves no consumers behind but the newest killed`, async () => {
    redis = redisClient();
    db = new pg.Client({ connectionString: PG_URL });
    await db.connect();
    dir = await mkdtemp(join(tmpdir(), "sluice-fleet-"));
    // About 300 bytes an entry: the 96 KiB byte bound holds about 300, the record bound 10,000.
    const pad = "x".repeat(250);
    for (let from = 0; from < TOTAL; from += 1000) {
      const pipeline = redis.pipeline();
      for (let n = from; n < from + 1000; n++) pipeline.xadd(stream, "*", "body", JSON.stringify({ id: `r-${n}`, n, pad }));
      await pipeline.exec();
    }
    const config = join(dir, "worker.yaml");
    await writeFile(
      config,
      `buffer: { max_records: 10000, max_bytes: 96KiB }
shutdown_timeout: 10s
sources:
  queue: { type: redis_streams, url: ${REDIS_URL}, stream: ${stream}, group: fleet, claim_idle: 300ms, block: 100ms }
sinks:
  db: { type: postgres, url: ${PG_URL}, table: ${table}, batch: { max_records: 100, max_wait: 20ms } }
`,
    );
    let started = 0;
    // Each worker in its own directory: its own data_dir, as on its own machine.
    const start = async (): Promise<Cli> => {
      const cwd = join(dir!, `w${started++}`);
      await mkdir(cwd);
      return startCli(config, join(cwd, "summary.json"), cwd);
    };
    const workers: Cli[] = [];
    for (let i = 0; i < WORKERS; i++) workers.push(await start());
    const killed: number[] = [];
    const rows = async () => Number((await db!.query(`select count(*) as n from "${table}"`).catch(() => ({ rows: [{ n: 0 }] }))).rows[0].n);

    const host = hostname();
    const consumerNames = async () => ((await redis!.xinfo("CONSUMERS", stream, "fleet").catch(() => [])) as string[][]).map((c) => c[c.indexOf("name") + 1]!);
    // Kill, every second or so, a worker that is reading (it has a consumer in the group), while most of the work is still to do.
    while (killed.length < KILLS && (await rows()) < TOTAL * 0.9) {
      const names = await consumerNames();
      const reading = workers.map((w, i) => [w, i] as const).filter(([w]) => names.includes(`${host}-${w.process.pid}`));
      if (reading.length === 0) {
        await sleep(100);
        continue;
      }
      const [victim, i] = reading[Math.floor(Math.random() * reading.length)]!;
      await sleep(Math.random() * 500);
      killed.push(victim.process.pid!);
      victim.process.kill("SIGKILL");
      await victim.exited;
      workers[i] = await start();
      await sleep(300 + Math.random() * 700);
    }
    // The kills hit a fleet at work.
    expect(killed.length).toBeGreaterThanOrEqual(3);
    const deadline = Date.now() + 120_000;
    while ((await rows()) < TOTAL && Date.now() < deadline) await sleep(200);
    const pending = async () => Number(((await redis!.xpending(stream, "fleet")) as [number])[0]);
    while ((await pending()) > 0 && Date.now() < deadline) await sleep(200);
    const live = workers.map((w) => w.process.pid!);
    for (const w of workers) w.process.kill("SIGTERM");
    for (const w of workers) expect((await w.exited).code, w.output()).toBe(0);

    const { rows: counts } = await db.query(`select count(*) as n, count(distinct id) as ids, min((payload->>'n')::int) as lo, max((payload->>'n')::int) as hi from "${table}"`);
    expect(counts[0]).toEqual({ n: String(TOTAL), ids: String(TOTAL), lo: 0, hi: TOTAL - 1 });
    expect(await pending()).toBe(0);

    const consumers = await consumerNames();
    // Workers stopped cleanly deleted their own consumers.
    for (const pid of live) expect(consumers).not.toContain(`${host}-${pid}`);
    // Killed workers' consumers idle for 3 s with nothing pending were deleted by the reclaim passes of the others.
    expect(consumers.every((c) => killed.some((pid) => c === `${host}-${pid}`))).toBe(true);
    expect(consumers.length).toBeLessThan(killed.length);
    console.log(`fleet: ${killed.length} kills, ${consumers.length} killed workers' consumers left in the group`);
  }, 240_000);
});
