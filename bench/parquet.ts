/**
 * The Parquet section of `npm run bench`: NDJSON readings into Parquet files, sluice (`file` source
 * -> `parquet` sink, library API, a file per batch of BENCH_PARQUET_ROWS_PER_FILE records) next to
 * a plain script writing the same rows with the same library (hyparquet-writer) and layout, files
 * of the same size, each synced and renamed (bench/contenders/parquet-*.ts). Every run is a fresh
 * child; rounds alternate which contender goes first. Two figures per contender: records/s as the
 * child times itself (from just before reading to the last file durable) and as the whole process
 * (spawn to exit: start-up, module loading included), and records per CPU second (user + system, the
 * steadier figure on a shared machine). The ratio is the median over rounds of
 * sluice / plain in the same round; the target is >= 0.8x. DuckDB then counts each run's rows and
 * distinct ids: every record must be there once.
 *
 * Env: BENCH_PARQUET=0 skips the section; BENCH_PARQUET_RECORDS (1000000), BENCH_PARQUET_RUNS (3
 * rounds), BENCH_PARQUET_ROWS_PER_FILE (100000).
 *
 * Standalone (this section only): `node --import tsx bench/parquet.ts`.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { cpus, loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { DuckDBInstance } from "@duckdb/node-api";
import { prepareLaunch, runChild } from "./build.js";
import type { ContenderResult } from "./contenders/protocol.js";
import type { ParquetTask } from "./contenders/parquet-protocol.js";
import { ensureDataFile, warmPageCache } from "./data-gen.js";
import { fmtInt, fmtRatio, intEnv, median, progress } from "./report.js";

const TARGET = 0.8;
const CHILD_TIMEOUT_MS = 10 * 60 * 1000;
const NAMES = ["parquet-plain", "parquet-sluice"] as const;
type Name = (typeof NAMES)[number];
const LABELS: Record<Name, string> = { "parquet-plain": "plain script", "parquet-sluice": "sluice" };

interface Run {
  readonly result: ContenderResult;
  /** Spawn to exit, seconds. */
  readonly wholeSeconds: number;
}

/** Rows and distinct ids in a lake, by DuckDB. */
async function countLake(dir: string): Promise<{ rows: number; ids: number }> {
  const db = await DuckDBInstance.create(":memory:");
  const conn = await db.connect();
  try {
    const reader = await conn.runAndReadAll(`SELECT count(*)::INTEGER AS rows, count(DISTINCT id)::INTEGER AS ids FROM read_parquet('${dir}/**/*.parquet')`);
    return reader.getRowObjectsJson()[0] as { rows: number; ids: number };
  } finally {
    conn.closeSync();
    db.closeSync();
  }
}

/** Runs the section; resolves with its exit code (non-zero only when a run failed or lost records). */
export async function runParquetBench(): Promise<number> {
  if (process.env.BENCH_PARQUET === "0") {
    console.log("\nsluice bench, NDJSON -> Parquet: skipped (BENCH_PARQUET=0)");
    return 0;
  }
  const records = intEnv("BENCH_PARQUET_RECORDS", 1_000_000, 1);
  const rounds = intEnv("BENCH_PARQUET_RUNS", 3, 1);
  const rowsPerFile = intEnv("BENCH_PARQUET_ROWS_PER_FILE", 100_000, 1);
  const { file, generated } = ensureDataFile(records, (n) => progress.live(`generating ${fmtInt(records)} records: ${Math.floor((n / records) * 100)}%`));
  if (generated) progress.line(`generated ${file}`);
  warmPageCache(file);
  const launcher = await prepareLaunch([...NAMES]);

  const runs: Record<Name, (Run | undefined)[]> = { "parquet-plain": [], "parquet-sluice": [] };
  const failed: string[] = [];
  const loads: number[] = [];
  for (let round = 1; round <= rounds; round++) {
    const order: Name[] = round % 2 === 1 ? [...NAMES] : [...NAMES].reverse();
    for (const name of order) {
      const lake = await mkdtemp(join(tmpdir(), "sluice-bench-lake-"));
      try {
        loads.push(loadavg()[0]!);
        progress.live(`[parquet ${round}/${rounds}] ${LABELS[name]} ... running`);
        const task: ParquetTask = { file, records, transform: "", lake, rowsPerFile };
        const spawned = performance.now();
        const result = await runChild(launcher, name, task, CHILD_TIMEOUT_MS);
        const wholeSeconds = (performance.now() - spawned) / 1000;
        if ("error" in result) {
          failed.push(`${LABELS[name]}, round ${round}: ${result.error}`);
          continue;
        }
        const stored = await countLake(lake);
        if (stored.rows !== records || stored.ids !== records) {
          failed.push(`${LABELS[name]}, round ${round}: the files hold ${stored.rows} rows, ${stored.ids} distinct ids, of ${records}`);
          continue;
        }
        runs[name][round - 1] = { result, wholeSeconds };
        progress.line(
          `[parquet ${round}/${rounds}] ${LABELS[name].padEnd(12)} ${fmtInt(records / result.seconds).padStart(9)} records/s (${result.seconds.toFixed(2)} s), whole process ${fmtInt(records / wholeSeconds).padStart(9)} records/s (${wholeSeconds.toFixed(2)} s), peak RSS ${result.maxRssMiB.toFixed(0)} MiB`,
        );
      } finally {
        await rm(lake, { recursive: true, force: true });
      }
    }
  }

  const ratios = (of: (r: Run) => number) =>
    Array.from({ length: rounds }, (_, i) => {
      const s = runs["parquet-sluice"][i];
      const p = runs["parquet-plain"][i];
      return s && p ? of(s) / of(p) : undefined;
    }).filter((r): r is number => r !== undefined);
  const rate = (name: Name, of: (r: Run) => number) => median(runs[name].filter((r): r is Run => r !== undefined).map((r) => records / of(r)));
  const timed = ratios((r) => 1 / r.result.seconds);
  const whole = ratios((r) => 1 / r.wholeSeconds);
  const cpu = ratios((r) => 1 / r.result.cpuSeconds);

  console.log(`\nsluice bench, NDJSON ${fmtInt(records)} records -> Parquet (files of ${fmtInt(rowsPerFile)} rows, Snappy, fsync + rename each), ${rounds} rounds, ${cpus().length} cores`);
  console.log(`  ${"".padEnd(14)}${"records/s (self-timed)".padStart(24)}${"records/s (whole process)".padStart(28)}${"records per CPU second".padStart(25)}`);
  for (const name of NAMES) {
    const figures = [rate(name, (r) => r.result.seconds), rate(name, (r) => r.wholeSeconds), rate(name, (r) => r.result.cpuSeconds)];
    console.log(`  ${LABELS[name].padEnd(14)}${fmtInt(figures[0]!).padStart(24)}${fmtInt(figures[1]!).padStart(28)}${fmtInt(figures[2]!).padStart(25)}`);
  }
  if (timed.length > 0) {
    const verdict = median(timed) >= TARGET ? "ok" : "FAIL";
    console.log(`  sluice / plain script, median of per-round ratios: ${fmtRatio(median(timed))} self-timed (rounds: ${timed.map(fmtRatio).join(", ")}), ${fmtRatio(median(whole))} whole process, ${fmtRatio(median(cpu))} by CPU time; target >= ${TARGET}x self-timed: ${verdict}`);
  }
  const load = median(loads) / cpus().length;
  if (load > 0.75) console.log(`  note: load average ${median(loads).toFixed(1)} on ${cpus().length} cores during the runs: other work competed for the CPU`);
  for (const f of failed) console.log(`  FAILED: ${f}`);
  return failed.length > 0 ? 1 : 0;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) process.exitCode = await runParquetBench();
