/**
 * An ordered fleet under random SIGKILLs: 3 real CLI workers run `redis_streams (ordered: true,
 * partitions: 6) -> postgres` on a private redis-server (AOF, `appendfsync always`) and one table
 * of the machine's PostgreSQL (db `test`, a table of this run). The test preloads 50 keys x 800
 * versions; a random worker is SIGKILLed every few seconds and started again, and about every
 * 10 s one is paused (SIGSTOP) for three times its lease_ttl and let go on (SIGCONT): its leases
 * are taken over while it still holds chunks in flight, which it writes late. Halfway through,
 * redis-server itself is SIGKILLed and started again on its AOF. At the end: every
 * record exactly once in the table, nothing dead-lettered, no entry pending, and per key the
 * versions arrived in increasing order.
 *
 * How order is seen: an AFTER INSERT trigger on the table keeps the newest version per key and logs
 * every row whose version is below the newest already committed for its key. The per-key row of
 * `newest` is updated with ON CONFLICT, which locks it, so two transactions writing one key are
 * serialized in commit order: a late commit of an older version is caught even when its insert
 * started first. Only rows the table stored fire it (a redelivered row that ON CONFLICT DO NOTHING
 * skips does not), so what is checked is the order in which records reached the table. The second
 * test shows the check can fail: the same fleet without `ordered` (three workers sharing every
 * stream) breaks the order.
 */
import { mkdtemp, readFile, readlink, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Redis } from "ioredis";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { partitionStream } from "../../src/brokers/redis.js";
import { readDeadLetters } from "../../src/sinks/dead-letter-sqlite.js";
import { canStartBroker, startRedisServer, type BrokerServer } from "../helpers/broker-servers.js";
import { redisClient, uniqueName } from "../helpers/brokers.js";
import { killClis } from "../helpers/cli.js";
import { startFleet, type Fleet } from "../helpers/fleet.js";
import { requireService } from "../helpers/services.js";

const PG_URL = process.env.SLUICE_PG_URL ?? "postgres://postgres@127.0.0.1:5432/test";
const PARTITIONS = 6;
const KEYS = 50;
const WORKERS = 3;
const RUN_TIMEOUT_MS = 240_000;

const pgAddress = new URL(PG_URL);
const canRun = canStartBroker("redis-server", "ordered fleet fault test") && (await requireService("PostgreSQL", pgAddress.hostname, Number(pgAddress.port || 5432)));

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Creates `table` as the postgres sink would, plus the order check: the newest version per key and the rows that came after a newer one. */
async function createCheckedTable(db: pg.Pool, table: string): Promise<void> {
  await db.query(`
    CREATE TABLE "${table}" (id text PRIMARY KEY, key text, payload jsonb, event_time timestamptz, ingested_at timestamptz DEFAULT now());
    CREATE TABLE "${table}_newest" (key text PRIMARY KEY, v integer NOT NULL);
    CREATE TABLE "${table}_late" (key text, v integer, seen_at timestamptz DEFAULT clock_timestamp());
    CREATE FUNCTION "${table}_order"() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
      applied integer;
    BEGIN
      INSERT INTO "${table}_newest" AS n (key, v) VALUES (NEW.key, (NEW.payload->>'v')::integer)
        ON CONFLICT (key) DO UPDATE SET v = excluded.v WHERE n.v < excluded.v
        RETURNING 1 INTO applied;
      IF applied IS NULL THEN
        INSERT INTO "${table}_late" (key, v) VALUES (NEW.key, (NEW.payload->>'v')::integer);
      END IF;
      RETURN NULL;
    END $$;
    CREATE TRIGGER "${table}_order" AFTER INSERT ON "${table}" FOR EACH ROW EXECUTE FUNCTION "${table}_order"();
  `);
}

async function dropCheckedTable(db: pg.Pool, table: string): Promise<void> {
  await db.query(`DROP TABLE IF EXISTS "${table}", "${table}_newest", "${table}_late"; DROP FUNCTION IF EXISTS "${table}_order"();`);
}

/** Adds `versions` versions of each key, version after version, each to its key's partition as the redis_streams sink writes it. */
async function preload(redis: Redis, stream: string, versions: number): Promise<void> {
  for (let v = 0; v < versions; v += 50) {
    const pipeline = redis.pipeline();
    for (let w = v; w < Math.min(versions, v + 50); w++) {
      for (let k = 0; k < KEYS; k++) {
        const key = `key-${k}`;
        const id = `${key}:v${w}`;
        pipeline.xadd(partitionStream(stream, PARTITIONS, { id, key }), "*", "id", id, "key", key, "body", JSON.stringify({ v: w, k }));
      }
    }
    await pipeline.exec();
  }
}

/** The pid of worker `w`'s current run (from its data_dir lock), if it is a worker of this config: never signal a pid another process reused. */
async function workerPid(fleet: Fleet, w: number, configFile: string): Promise<number | undefined> {
  const lock = join(fleet.cwd(w), "data", "pipeline.lock");
  const text = await readlink(lock).catch(() => readFile(lock, "utf8")).catch(() => undefined);
  const pid = Number(text?.trim().split(" ")[0]);
  if (!Number.isSafeInteger(pid) || pid <= 0) return undefined;
  const cmdline = await readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => "");
  return cmdline.includes(configFile) ? pid : undefined;
}

/** Pauses a random worker for `pauseMs` about every `everyMs` until the returned function is called; that resolves to the number of pauses. */
function startPausing(fleet: Fleet, configFile: string, everyMs: number, pauseMs: number): () => Promise<number> {
  let done = false;
  let pauses = 0;
  const loop = (async () => {
    while (!done) {
      await sleep(everyMs * (0.5 + Math.random()));
      if (done) break;
      const pid = await workerPid(fleet, Math.floor(Math.random() * WORKERS), configFile);
      if (pid === undefined) continue;
      try {
        process.kill(pid, "SIGSTOP");
      } catch {
        continue;
      }
      pauses++;
      await sleep(pauseMs);
      try {
        process.kill(pid, "SIGCONT");
      } catch {
        // Killed by the other loop meanwhile.
      }
    }
    return pauses;
  })();
  return () => {
    done = true;
    return loop;
  };
}

interface FleetRun {
  readonly kills: number;
  readonly late: number;
  readonly rows: number;
  readonly seconds: number;
  /** Leases taken, over every run of every worker (from their logs). */
  readonly takeovers: number;
  /** Leases found lost by their holder (from the logs). */
  readonly lostLeases: number;
  readonly pauses: number;
}

describe.skipIf(!canRun)("ordered fleet under SIGKILL (redis_streams -> postgres)", () => {
  let server: BrokerServer;
  let redis: Redis;
  let db: pg.Pool;
  const tables: string[] = [];
  const dirs: string[] = [];

  beforeAll(async () => {
    server = await startRedisServer();
    redis = redisClient(server.url);
    db = new pg.Pool({ connectionString: PG_URL, max: 2 });
  }, 30_000);

  afterAll(async () => {
    killClis();
    for (const t of tables) await dropCheckedTable(db, t).catch(() => undefined);
    await db?.end();
    await redis?.quit().catch(() => undefined);
    await server?.stop();
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });

  /** Runs the fleet over `versions` versions of each key until the table holds them all; kills a random worker about every `killEveryMs` (none when 0). */
  async function runFleet(o: { ordered: boolean; versions: number; killEveryMs: number; pauseEveryMs: number; preloadFirst: boolean; restartRedis?: boolean }): Promise<FleetRun> {
    const stream = uniqueName("ordered-");
    const table = uniqueName("sluice_ordered_");
    tables.push(table);
    const dir = await mkdtemp(join(tmpdir(), "sluice-ordered-fleet-"));
    dirs.push(dir);
    await createCheckedTable(db, table);
    const total = KEYS * o.versions;
    const configFile = join(dir, "pipeline.yaml");
    // Latency injected into every write so the run lasts long enough for kills to land mid-way.
    await writeFile(
      configFile,
      `data_dir: ./data
shutdown_timeout: 10s
buffer: { max_records: 1000, chunk_size: 100 }
sources:
  queue:
    type: redis_streams
    url: ${server.url}
    stream: ${stream}
    partitions: ${PARTITIONS}
    ordered: ${o.ordered}${o.ordered ? "\n    lease_ttl: 2s" : ""}
    claim_idle: 2s
    block: 200ms
sinks:
  db:
    type: postgres
    url: ${PG_URL}
    table: ${table}
    concurrency: 2
    batch: { max_records: 25, max_wait: 10ms }
    retry: { max_attempts: 1000, max_elapsed: 60s, initial_backoff: 20ms, max_backoff: 500ms }
    chaos: { latency: { min: 40ms, max: 120ms } }
observability: { listen: "127.0.0.1:\${SLUICE_WORKER_PORT}" }
`,
    );
    if (o.preloadFirst) await preload(redis, stream, o.versions);
    const fleet = await startFleet({ configFile, size: WORKERS, dir });
    try {
      await fleet.live();
      const started = Date.now();
      if (!o.preloadFirst) await preload(redis, stream, o.versions);
      const stopKilling = o.killEveryMs > 0 ? fleet.startKilling(o.killEveryMs) : async () => 0;
      // Three times lease_ttl (2 s): long enough for its leases to be taken over while it is stopped.
      const stopPausing = o.pauseEveryMs > 0 ? startPausing(fleet, configFile, o.pauseEveryMs, 3_000) : async () => 0;
      const count = async () => Number((await db.query(`SELECT count(*) AS n FROM "${table}"`)).rows[0].n);
      let restarted = !o.restartRedis;
      for (let rows = await count(); rows < total; rows = await count()) {
        if (!restarted && rows >= total / 2) {
          // SIGKILL and start again on its AOF: every worker loses its connections, leases may expire meanwhile.
          await server.restart();
          restarted = true;
        }
        if (Date.now() - started > RUN_TIMEOUT_MS) throw new Error(`only ${await count()} of ${total} rows after ${RUN_TIMEOUT_MS} ms`);
        const down = fleet.exits.find((e) => !e.killed && e.signal === null);
        if (down !== undefined) throw new Error(`worker ${down.worker} exited with ${down.code} on its own:\n${down.output}`);
        await sleep(250);
      }
      const seconds = (Date.now() - started) / 1000;
      const pauses = await stopPausing();
      const kills = await stopKilling();
      const results = await fleet.stop();
      for (const r of results) expect(r.code, `worker ${r.worker}:\n${r.output}`).toBe(0);
      for (let w = 0; w < WORKERS; w++) expect(readDeadLetters(join(fleet.cwd(w), "data", "dlq.db"))).toEqual([]);
      const rows = await count();
      const late = Number((await db.query(`SELECT count(*) AS n FROM "${table}_late"`)).rows[0].n);
      for (let p = 0; p < PARTITIONS; p++) {
        const summary = (await redis.xpending(`${stream}:${p}`, "sluice")) as [number, ...unknown[]];
        expect(Number(summary[0]), `pending entries of ${stream}:${p}`).toBe(0);
      }
      const newest = await db.query(`SELECT count(*) AS n FROM "${table}_newest" WHERE v = $1`, [o.versions - 1]);
      expect(Number(newest.rows[0].n)).toBe(KEYS);
      const outputs = [...fleet.exits.map((e) => e.output), ...results.map((r) => r.output)].join("\n");
      const takeovers = outputs.split("partition lease taken").length - 1;
      const lostLeases = outputs.split("partition lease lost").length - 1;
      return { kills, late, rows, seconds, takeovers, lostLeases, pauses };
    } finally {
      fleet.abort();
    }
  }

  it(
    "3 workers, a random one SIGKILLed every few seconds or paused past its lease_ttl, Redis restarted halfway: every record once, and per key the versions reach the table in order",
    async () => {
      // Enough versions that the run outlasts its kills and pauses (joined writes made 800 a version per key finish in 8 s).
      const versions = 3000;
      const run = await runFleet({ ordered: true, versions, killEveryMs: 2_000, pauseEveryMs: 2_500, preloadFirst: true, restartRedis: true });
      console.log(
        `ordered fleet: ${run.rows} rows in ${run.seconds.toFixed(1)} s, ${run.kills} kills, ${run.pauses} pauses, ${run.takeovers} leases taken, ${run.lostLeases} found lost by their holder, ${run.late} rows behind a newer version of their key`,
      );
      expect(run.rows).toBe(KEYS * versions);
      expect(run.kills).toBeGreaterThanOrEqual(3);
      expect(run.pauses).toBeGreaterThanOrEqual(2);
      expect(run.late).toBe(0);
    },
    RUN_TIMEOUT_MS + 60_000,
  );

  it(
    "the order check can fail: the same fleet without ordered (every worker reads every partition) writes versions of a key out of order",
    async () => {
      const run = await runFleet({ ordered: false, versions: 100, killEveryMs: 0, pauseEveryMs: 0, preloadFirst: false });
      console.log(`unordered fleet: ${run.rows} rows in ${run.seconds.toFixed(1)} s, ${run.late} rows behind a newer version of their key`);
      expect(run.rows).toBe(KEYS * 100);
      expect(run.late).toBeGreaterThan(0);
    },
    RUN_TIMEOUT_MS + 60_000,
  );
});
