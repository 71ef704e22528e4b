/**
 * The engine's coalesced writes (issue #15) under failures and SIGKILL, counted record by record:
 * the real CLI moves an NDJSON file into PostgreSQL through a sink slower than the source (the
 * `chaos` block's latency), so batches pile up in the lanes and go out joined into larger writes;
 * a seeded 30% of the writes fail (retryable) before reaching the table; the process is SIGKILLed
 * three times mid-run and restarted on the same `data_dir`. Every record must end in the table
 * exactly once with its own content, the checkpoint must never pass a record that was not
 * committed, the last run must resume and count what it read as delivered with nothing
 * dead-lettered, and the writes must really have been joined: a statement-level trigger logs the
 * rows of every COPY that committed, and some hold more than `batch.max_records`.
 *
 * Uses the shared PostgreSQL (only sluice is killed), with its own tables, dropped at the end.
 */
import { existsSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { mulberry32 } from "../../src/core/random.js";
import { readDeadLetters } from "../../src/sinks/dead-letter-sqlite.js";
import { killClis, startCli } from "../helpers/cli.js";
import { requireService } from "../helpers/services.js";
import { countRows, query, sleep } from "./postgres-harness.js";

const PG_URL = process.env.SLUICE_PG_URL ?? "postgres://postgres@127.0.0.1:5432/test";
const address = new URL(PG_URL);
const hasPostgres = await requireService("PostgreSQL", address.hostname, Number(address.port || 5432));

const TOTAL = 30_000;
const BATCH = 500;
const KILLS = 3;
const SEED = Number(process.env.CRASH_SEED ?? Math.floor(Math.random() * 1e9));
const RUN_TIMEOUT_MS = 40_000;

const suffix = randomBytes(6).toString("hex");
const table = `sluice_fault_coalesce_${suffix}`;
const writes = `${table}_writes`;
let dir: string | undefined;

afterAll(async () => {
  killClis();
  if (hasPostgres) {
    await query(PG_URL, `DROP TABLE IF EXISTS "${table}"`).catch(() => undefined);
    await query(PG_URL, `DROP TABLE IF EXISTS "${writes}"`).catch(() => undefined);
    await query(PG_URL, `DROP FUNCTION IF EXISTS "${table}_log"()`).catch(() => undefined);
  }
  if (dir !== undefined) await rm(dir, { recursive: true, force: true });
});

async function readCheckpoint(file: string): Promise<{ offset: number; line: number } | undefined> {
  if (!existsSync(file)) return undefined;
  return JSON.parse(await readFile(file, "utf8")) as { offset: number; line: number };
}

describe.skipIf(!hasPostgres)(`coalesced writes: failing writes and SIGKILL, restart, repeat (seed ${SEED})`, () => {
  it(`every one of ${TOTAL.toLocaleString("en-US")} records is in the table exactly once, and writes were joined`, async () => {
    const random = mulberry32(SEED);
    dir = await mkdtemp(join(tmpdir(), "sluice-coalesce-"));
    const input = join(dir, "readings.ndjson");
    const lines: string[] = new Array(TOTAL);
    for (let n = 1; n <= TOTAL; n++) lines[n - 1] = `{"id":"r-${n}","seq":${n},"sensor":"sensor-${n % 20}","value":${(n % 1000) / 10}}\n`;
    await writeFile(input, lines.join(""));

    // The sink's documented table, plus a log of the rows of every statement that committed into it.
    await query(PG_URL, `CREATE TABLE "${table}" (id text PRIMARY KEY, key text, payload jsonb, event_time timestamptz, ingested_at timestamptz DEFAULT now())`);
    await query(PG_URL, `CREATE TABLE "${writes}" (rows int)`);
    await query(PG_URL, `CREATE FUNCTION "${table}_log"() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN INSERT INTO "${writes}" SELECT count(*) FROM new_rows; RETURN NULL; END $$`);
    await query(PG_URL, `CREATE TRIGGER log_writes AFTER INSERT ON "${table}" REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION "${table}_log"()`);

    const dataDir = join(dir, "data");
    const checkpointFile = join(dataDir, "checkpoints", "readings.json");
    const configFile = join(dir, "pipeline.yaml");
    // A small buffer keeps a run seconds long; the latency makes the sink slower than the file source, so
    // batches wait in the lanes; a failed write is retried whole, its records acked only after the retry commits.
    await writeFile(
      configFile,
      `data_dir: ${dataDir}
observability: { log_level: info }
buffer: { max_records: 4000 }
sources:
  readings: { type: file, path: ${input}, checkpoint_interval: 50ms }
sinks:
  pg:
    type: postgres
    url: "${PG_URL}"
    table: ${table}
    create_table: false
    batch: { max_records: ${BATCH}, max_wait: 20ms }
    retry: { max_attempts: 100, max_elapsed: 60s, initial_backoff: 10ms, max_backoff: 100ms }
    chaos: { failure_rate: 0.3, latency: { min: 60ms, max: 120ms }, seed: ${SEED % 100_000} }
`,
    );

    const killedAt: number[] = [];
    const checkpoints: { offset: number; line: number }[] = [];
    for (let k = 0; k < KILLS; k++) {
      const target = (killedAt.at(-1) ?? 0) + Math.floor(TOTAL * (0.1 + random() * 0.1));
      const child = startCli(configFile, join(dir, `summary-${k}.json`), dir);
      const deadline = Date.now() + RUN_TIMEOUT_MS;
      while ((await countRows(PG_URL, table)) < target) {
        if (child.process.exitCode !== null) throw new Error(`run ${k} exited before the kill:\n${child.output()}`);
        if (Date.now() > deadline) throw new Error(`run ${k} did not reach ${target} rows:\n${child.output()}`);
        await sleep(20);
      }
      await sleep(Math.floor(random() * 100));
      child.process.kill("SIGKILL");
      const { signal } = await child.exited;
      expect(signal, child.output()).toBe("SIGKILL");
      const rows = await countRows(PG_URL, table);
      expect(rows).toBeLessThan(TOTAL);
      killedAt.push(rows);
      // The checkpoint never passes a record that is not in the table (acks move after the commit).
      const cp = (await readCheckpoint(checkpointFile)) ?? { offset: 0, line: 0 };
      expect(cp.line).toBeLessThanOrEqual(rows);
      if (k > 0) expect(cp.line).toBeGreaterThanOrEqual(checkpoints[k - 1]!.line);
      checkpoints.push(cp);
    }

    const summaryFile = join(dir, "summary-final.json");
    const last = startCli(configFile, summaryFile, dir);
    const timeout = setTimeout(() => last.process.kill("SIGKILL"), RUN_TIMEOUT_MS);
    const { code } = await last.exited;
    clearTimeout(timeout);
    expect(code, last.output()).toBe(0);
    expect(last.output()).toContain("resuming from checkpoint");

    const summary = JSON.parse(await readFile(summaryFile, "utf8")) as {
      records: { received: number; delivered: number; new: number; already_present: number; dead_lettered: number; dropped: number; retried: number };
    };
    expect(summary.records.received).toBe(TOTAL - checkpoints.at(-1)!.line);
    expect(summary.records).toMatchObject({ delivered: summary.records.received, dead_lettered: 0, dropped: 0 });
    // Counted record by record: what the last kill left uncommitted is new, the rest of what the
    // checkpoint made it read again the staged path found already stored.
    expect(summary.records.new).toBe(TOTAL - killedAt.at(-1)!);
    expect(summary.records.already_present).toBe(killedAt.at(-1)! - checkpoints.at(-1)!.line);
    // The chaos failures happened and were retried, not lost.
    expect(summary.records.retried).toBeGreaterThan(0);

    const [counts] = await query<{ n: number; ids: number; lo: number; hi: number; sum: string; wrong: number }>(
      PG_URL,
      `SELECT count(*)::int AS n, count(DISTINCT id)::int AS ids, min((payload->>'seq')::int) AS lo, max((payload->>'seq')::int) AS hi,
              sum((payload->>'seq')::bigint)::text AS sum, count(*) FILTER (WHERE id <> 'r-' || (payload->>'seq'))::int AS wrong FROM "${table}"`,
    );
    expect(counts).toEqual({ n: TOTAL, ids: TOTAL, lo: 1, hi: TOTAL, sum: String((TOTAL * (TOTAL + 1)) / 2), wrong: 0 });

    // Joined writes committed: direct COPYs larger than a batch (staged writes after a restart insert
    // only their new rows, so they may log fewer).
    const [joined] = await query<{ max: number; over: number }>(PG_URL, `SELECT max(rows)::int AS max, count(*) FILTER (WHERE rows > ${BATCH})::int AS over FROM "${writes}"`);
    expect(joined!.max).toBeGreaterThan(BATCH);
    expect(joined!.over).toBeGreaterThan(0);
    expect(readDeadLetters(join(dataDir, "dlq.db"))).toEqual([]);
  });
});
