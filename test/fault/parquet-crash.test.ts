/**
 * Crash safety of the parquet sink in the real CLI: an NDJSON file -> file source -> parquet
 * lake (partitioned by day and sensor, many small files), SIGKILLed three times while it writes
 * and restarted with the same config and data_dir. After every kill DuckDB reads every finished
 * file without error (a reader never sees a partial file); at the end no temp file is left, and
 * every record is in the lake (a redelivered one possibly twice, which the dedupe query removes).
 *
 * The kill moments come from a seed printed with the test (set CRASH_SEED to replay one).
 */
import { existsSync } from "node:fs";
import { mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { mulberry32 } from "../../src/core/random.js";
import { readDeadLetters } from "../../src/sinks/dead-letter-sqlite.js";
import { killClis, startCli } from "../helpers/cli.js";
import { duckQuery, lake } from "../helpers/duckdb.js";

const TOTAL = 40_000;
const KILLS = 3;
const SEED = Number(process.env.CRASH_SEED ?? Math.floor(Math.random() * 1e9));

const dirs: string[] = [];
afterAll(async () => {
  killClis();
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Finished files and temp files under the lake. */
async function listing(root: string): Promise<{ files: number; temps: number }> {
  if (!existsSync(root)) return { files: 0, temps: 0 };
  const names = (await readdir(root, { recursive: true })).map((n) => n.split("/").at(-1)!);
  return { files: names.filter((n) => n.endsWith(".parquet")).length, temps: names.filter((n) => n.endsWith(".parquet.tmp")).length };
}

describe(`parquet sink: SIGKILL while writing, restart, repeat (seed ${SEED})`, () => {
  it("leaves only whole files, removes the leftovers, and ends with every record", async () => {
    const random = mulberry32(SEED);
    const dir = await mkdtemp(join(tmpdir(), "sluice-parquet-crash-"));
    dirs.push(dir);
    const day = Date.UTC(2024, 5, 1);
    const lines: string[] = [];
    // Four days, eight sensors: a batch of 500 spans several partition directories.
    for (let n = 1; n <= TOTAL; n++) {
      const ts = new Date(day + Math.floor(((n - 1) / TOTAL) * 4 * 86_400_000)).toISOString();
      lines.push(`${JSON.stringify({ id: `reading-${n}`, sensor: `sensor-${n % 8}`, value: (n % 1000) / 10, ts, seq: n })}\n`);
    }
    await writeFile(join(dir, "readings.ndjson"), lines.join(""));
    const root = join(dir, "lake");
    const dataDir = join(dir, "data");
    const configFile = join(dir, "pipeline.yaml");
    await writeFile(
      configFile,
      `data_dir: ${dataDir}
sources:
  readings: { type: file, path: ${join(dir, "readings.ndjson")}, time_field: ts, checkpoint_interval: 100ms }
sinks:
  lake:
    type: parquet
    path: ${root}
    partition_by: [{ date: event_time }, { field: sensor }]
    columns: { value: { field: value, type: double precision }, seq: { field: seq, type: bigint } }
    batch: { max_records: 500, max_wait: 20ms }
    chaos: { latency: { min: 1ms, max: 5ms } }
`,
    );

    let leftovers = 0;
    for (let k = 0; k < KILLS; k++) {
      const before = (await listing(root)).files;
      const target = before + 5 + Math.floor(random() * 15);
      const child = startCli(configFile, join(dir, `summary-${k}.json`), dir);
      const deadline = Date.now() + 60_000;
      while ((await listing(root)).files < target) {
        if (child.process.exitCode !== null) throw new Error(`run ${k} exited before the kill:\n${child.output()}`);
        if (Date.now() > deadline) throw new Error(`run ${k} did not reach ${target} files:\n${child.output()}`);
        await sleep(10);
      }
      // Kill while a file is being written when one shows up soon (its temp name exists), else at a random moment.
      const until = Date.now() + Math.floor(random() * 300);
      while (Date.now() < until && (await listing(root)).temps === 0) await sleep(1);
      child.process.kill("SIGKILL");
      expect((await child.exited).signal, child.output()).toBe("SIGKILL");
      expect(existsSync(join(dir, `summary-${k}.json`))).toBe(false);

      // What a reader sees right after the crash: whole files only, each one readable.
      const { files, temps } = await listing(root);
      leftovers += temps;
      const [{ n }] = (await duckQuery(`SELECT count(*)::INTEGER AS n FROM ${lake(root)}`)) as [{ n: number }];
      expect(n).toBeGreaterThan(0);
      expect(n).toBeLessThan(TOTAL + files * 500);
    }

    const last = startCli(configFile, join(dir, "summary-final.json"), dir);
    const timeout = setTimeout(() => last.process.kill("SIGKILL"), 60_000);
    const { code } = await last.exited;
    clearTimeout(timeout);
    expect(code, last.output()).toBe(0);

    // Connect removed whatever temp files the kills left; the run itself leaves none.
    expect((await listing(root)).temps).toBe(0);
    const [totals] = await duckQuery(
      `SELECT count(*)::INTEGER AS rows, count(DISTINCT id)::INTEGER AS ids, min(seq)::INTEGER AS lo, max(seq)::INTEGER AS hi,
              count(DISTINCT sensor)::INTEGER AS sensors, count(DISTINCT date)::INTEGER AS days FROM ${lake(root)}`,
    );
    expect(totals).toMatchObject({ ids: TOTAL, lo: 1, hi: TOTAL, sensors: 8, days: 4 });
    expect(totals!.rows as number).toBeGreaterThanOrEqual(TOTAL);
    // Each id holds its own line (the README's dedupe keeps one row per id).
    const [wrong] = await duckQuery(
      `SELECT count(*)::INTEGER AS n FROM (SELECT * FROM ${lake(root)} QUALIFY row_number() OVER (PARTITION BY id ORDER BY ingested_at) = 1)
       WHERE id <> 'reading-' || seq OR sensor <> 'sensor-' || (seq % 8)`,
    );
    expect(wrong).toEqual({ n: 0 });
    expect(readDeadLetters(join(dataDir, "dlq.db"))).toEqual([]);
    console.log(`parquet crash: ${totals!.rows} rows for ${TOTAL} records, ${leftovers} temp files left by the kills`);
    // Four CLI runs: on a busy 2-core machine their start-ups alone take most of the default 60 s.
  }, 180_000);
});
