/**
 * `npm run bench`: sluice (file source -> module transform -> blackhole) against two baselines
 * doing the same work on the same file in the same run: a plain read/split/parse loop and a
 * `node:stream` pipeline; sluice twice, with `workers: 1` (decode and transform on the main
 * thread) and `workers: auto` (on one worker thread per core). Each of the two transforms is
 * measured: bench/enrich.mjs, which changes the reading in place, and bench/enrich-copy.mjs, the
 * copying one-liner users write. Each run is a fresh child process that times itself from just
 * before reading to the end and reports its CPU seconds and peak RSS. A round runs every contender
 * once, in alternating order (odd rounds forward, even rounds backward), and ratios are the median
 * of the per-round ratios, so a machine that other work loads unevenly skews them less. Then sluice
 * once on a bigger file to see whether memory grows with input size. Missed targets print FAIL;
 * the exit code is non-zero only when a contender did not process every record (or crashed).
 *
 * Env: BENCH_MAIN=0 skips this section; BENCH_RECORDS (2000000), BENCH_BIG_RECORDS (8000000; 0 skips), BENCH_RUNS (3 rounds).
 *
 * Then the tracing section (bench/tracing.ts: the sluice run above with tracing off and on, sample
 * ratio 1, in alternating rounds; BENCH_TRACING=0 skips it, BENCH_TRACING_RUNS, BENCH_TRACING_RECORDS).
 *
 * Then the PostgreSQL section (bench/postgres.ts: psql \copy, multi-row INSERT and sluice into
 * real tables; BENCH_PG=0 skips it, BENCH_PG_RECORDS, BENCH_PG_RUNS, BENCH_PG_URL).
 *
 * Then the HTTP ingest section (bench/http.ts: NDJSON batches over 32 keep-alive connections into
 * `sluice run` with a durable buffer, next to a bare `node:http` server; BENCH_HTTP=0 skips it,
 * BENCH_HTTP_SECONDS, BENCH_HTTP_WARMUP_SECONDS, BENCH_HTTP_RUNS, BENCH_HTTP_CONNECTIONS, BENCH_HTTP_BATCH).
 *
 * Then the broker section (bench/brokers.ts: preloaded Redis stream and JetStream stream read by
 * sluice's sources, next to hand-written consumer loops and BullMQ; BENCH_BROKERS=0 skips it,
 * BENCH_BROKERS_RUNS, BENCH_BROKERS_RECORDS, BENCH_BROKERS_NATS_RECORDS, BENCH_BROKERS_BULLMQ_JOBS,
 * BENCH_BROKERS_REDIS=0 / _NATS=0 / _BULLMQ=0, BENCH_REDIS_URL, BENCH_NATS_URL).
 *
 * Then the MQTT section (bench/mqtt.ts: QoS 1 messages preloaded into a private Mosquitto, read by
 * sluice's `mqtt` source into blackhole, next to a bare mqtt.js client that acks on receipt, with
 * an in-flight window of 20 and of 10,000; BENCH_MQTT=0 skips it, BENCH_MQTT_RECORDS,
 * BENCH_MQTT_RUNS, BENCH_MQTT_WINDOWS).
 *
 * Then the Parquet section (bench/parquet.ts: NDJSON into Parquet files by sluice's `parquet` sink,
 * next to a plain script writing the same rows with the same library; BENCH_PARQUET=0 skips it,
 * BENCH_PARQUET_RECORDS, BENCH_PARQUET_RUNS, BENCH_PARQUET_ROWS_PER_FILE).
 */
import { cpus, loadavg } from "node:os";
import { join } from "node:path";
import { CONTENDERS, prepareLaunch, REPO_DIR, runChild } from "./build.js";
import { ensureDataFile, warmPageCache } from "./data-gen.js";
import type { ContenderResult } from "./contenders/protocol.js";
import { runBrokerBench } from "./brokers.js";
import { runMqttBench } from "./mqtt.js";
import { runParquetBench } from "./parquet.js";
import { runHttpBench } from "./http.js";
import { runPostgresBench } from "./postgres.js";
import { runTracingBench } from "./tracing.js";
import { fmtInt, fmtRatio, intEnv, median, progress } from "./report.js";

const RECORDS = intEnv("BENCH_RECORDS", 2_000_000, 1);
const BIG_RECORDS = intEnv("BENCH_BIG_RECORDS", 8_000_000, 0);
const RUNS = intEnv("BENCH_RUNS", 3, 1);
// A child that takes longer than this is killed and counted as failed.
const CHILD_TIMEOUT_MS = 10 * 60 * 1000;
// 1-minute load average per core above which the report warns that other work competed for the CPU.
const BUSY_LOAD_PER_CORE = 0.75;

/** The two transforms: in place (the file section's historical one) and copying (what users write). */
const TRANSFORMS = [
  { name: "in-place", file: join(REPO_DIR, "bench", "enrich.mjs") },
  { name: "copying", file: join(REPO_DIR, "bench", "enrich-copy.mjs") },
] as const;
type TransformName = (typeof TRANSFORMS)[number]["name"];

/** What runs: a contender child, and for sluice its `workers`. */
const RUNNERS = [
  { label: "plain loop", contender: "plain-loop" },
  { label: "node:stream", contender: "node-stream" },
  { label: "sluice workers: 1", contender: "sluice", workers: 1 },
  { label: "sluice workers: auto", contender: "sluice", workers: "auto" },
] as const satisfies readonly { label: string; contender: (typeof CONTENDERS)[number]; workers?: number | "auto" }[];
type RunnerLabel = (typeof RUNNERS)[number]["label"];

const TARGETS = {
  /** workers: 1 against the plain loop, per transform. */
  workers1VsPlainLoop: { "in-place": 0.8, copying: 0.9 } as Record<TransformName, number>,
  /** workers: auto against the plain loop, copying transform. */
  autoVsPlainLoop: 1.5,
  vsNodeStream: 1.1,
  peakRssMiB: 250,
  bigRssGrowth: 0.1,
};

const fmtMiB = (n: number): string => n.toFixed(1);

type Runs = Map<RunnerLabel, (ContenderResult | undefined)[]>;

async function main(): Promise<number> {
  if (process.env.BENCH_MAIN === "0") {
    console.log("\nsluice bench, file -> transform -> discard: skipped (BENCH_MAIN=0)");
    return 0;
  }
  const files = [RECORDS, ...(BIG_RECORDS > 0 ? [BIG_RECORDS] : [])];
  const paths = new Map<number, string>();
  for (const records of files) {
    const { file, generated } = ensureDataFile(records, (n) => progress.live(`generating ${fmtInt(records)} records: ${Math.floor((n / records) * 100)}%`));
    paths.set(records, file);
    if (generated) progress.line(`generated ${file}`);
    progress.live(`reading ${file} once (page cache)`);
    warmPageCache(file);
  }

  progress.live("bundling contenders");
  const launcher = await prepareLaunch(CONTENDERS);
  progress.line(
    launcher.mode === "bundled"
      ? "contenders bundled with esbuild; children run as plain `node` (no tsx in their memory)"
      : "esbuild unavailable: children run under `node --import tsx` (its loader adds to every peak RSS)",
  );

  const failures: string[] = [];
  const total = RUNS * TRANSFORMS.length * RUNNERS.length + (BIG_RECORDS > 0 ? 1 : 0);
  let step = 0;
  const loads: number[] = [];
  const runOne = async (runner: (typeof RUNNERS)[number], records: number, transform: (typeof TRANSFORMS)[number], label: string): Promise<ContenderResult | undefined> => {
    step++;
    // Other processes competing for the cores make wall-clock rates noisy; say so in the report.
    loads.push(loadavg()[0]!);
    const tag = `[${step}/${total}] ${runner.label.padEnd(20)} ${transform.name.padEnd(8)} ${label}`;
    progress.live(`${tag} ... running`);
    const task = { file: paths.get(records)!, records, transform: transform.file, ...("workers" in runner && { workers: runner.workers }) };
    const result = await runChild(launcher, runner.contender, task, CHILD_TIMEOUT_MS);
    if ("error" in result) {
      failures.push(`${runner.label} (${transform.name}): ${result.error}`);
      progress.line(`${tag}  FAILED: ${result.error}`);
      return undefined;
    }
    progress.line(
      `${tag}  ${fmtInt(result.records / result.seconds).padStart(10)} records/s  ${result.seconds.toFixed(2).padStart(6)} s (CPU ${result.cpuSeconds.toFixed(2)} s)  peak RSS ${fmtMiB(result.maxRssMiB)} MiB`,
    );
    return result;
  };

  // Per transform, per runner: one result per round (undefined when the run failed).
  const runs = new Map<TransformName, Runs>(TRANSFORMS.map((t) => [t.name, new Map(RUNNERS.map((r) => [r.label, []]))]));
  for (let round = 1; round <= RUNS; round++) {
    // Alternating order, so drift in the machine (heat, neighbours) hits every contender alike.
    const order = round % 2 === 1 ? RUNNERS : [...RUNNERS].reverse();
    for (const transform of TRANSFORMS) {
      for (const runner of order) runs.get(transform.name)!.get(runner.label)!.push(await runOne(runner, RECORDS, transform, `round ${round}/${RUNS}`));
    }
  }
  let big: ContenderResult | undefined;
  if (BIG_RECORDS > 0) big = await runOne(RUNNERS[2], BIG_RECORDS, TRANSFORMS[0], `${fmtInt(BIG_RECORDS)} records (RSS check)`);

  const ok = (rs: readonly (ContenderResult | undefined)[]): ContenderResult[] => rs.filter((r): r is ContenderResult => r !== undefined);
  const med = (rs: readonly (ContenderResult | undefined)[], f: (r: ContenderResult) => number): number | undefined => (ok(rs).length === 0 ? undefined : median(ok(rs).map(f)));
  /** Median over rounds of a's rate over b's, by wall clock or by CPU time; rounds where either failed are left out. */
  const ratio = (a: readonly (ContenderResult | undefined)[], b: readonly (ContenderResult | undefined)[], cpu = false): number | undefined => {
    const per: number[] = [];
    a.forEach((x, i) => {
      const y = b[i];
      if (x !== undefined && y !== undefined) per.push(cpu ? y.cpuSeconds / x.cpuSeconds : y.seconds / x.seconds);
    });
    return per.length === 0 ? undefined : median(per);
  };

  const out: string[] = [];
  out.push("");
  out.push(`sluice bench: NDJSON (${fmtInt(RECORDS)} records) -> module transform -> discard; node ${process.version}, ${cpus().length} x ${cpus()[0]?.model.trim() ?? "cpu"}`);
  out.push(`records/s, CPU s: medians of ${RUNS} round(s), each run a fresh process timed from just before reading to the end (CPU: user + system, all threads)`);
  out.push("vs plain loop: median of the per-round ratios of records/s (in brackets: of records per CPU second)");
  const maxLoad = Math.max(0, ...loads);
  if (maxLoad > cpus().length * BUSY_LOAD_PER_CORE) {
    out.push(`warning: the machine was busy (1-min load average ${Math.min(...loads).toFixed(1)}-${maxLoad.toFixed(1)} at run starts, ${cpus().length} cores); wall-clock figures are noisy`);
  }
  const header = ["transform", "contender", "records/s", "CPU s", "vs plain loop", "vs node:stream", "peak RSS MiB"];
  const rows: string[][] = [];
  const fmt = (n: number | undefined, f: (n: number) => string): string => (n === undefined ? "-" : f(n));
  for (const transform of TRANSFORMS) {
    const byRunner = runs.get(transform.name)!;
    const loop = byRunner.get("plain loop")!;
    const stream = byRunner.get("node:stream")!;
    for (const runner of RUNNERS) {
      const rs = byRunner.get(runner.label)!;
      const vsLoop = ratio(rs, loop);
      rows.push([
        transform.name,
        `${runner.label}${ok(rs).length < rs.length ? " (FAILED)" : ""}`,
        fmt(med(rs, (r) => r.records / r.seconds), fmtInt),
        fmt(med(rs, (r) => r.cpuSeconds), (n) => n.toFixed(2)),
        runner.label === "plain loop" ? "" : `${fmt(vsLoop, fmtRatio)} (${fmt(ratio(rs, loop, true), fmtRatio)})`,
        runner.label === "node:stream" ? "" : fmt(ratio(rs, stream), fmtRatio),
        fmt(ok(rs).length === 0 ? undefined : Math.max(...ok(rs).map((r) => r.maxRssMiB)), fmtMiB),
      ]);
    }
  }
  if (big !== undefined) rows.push(["in-place", `sluice workers: 1, ${fmtInt(BIG_RECORDS)} records`, fmtInt(big.records / big.seconds), big.cpuSeconds.toFixed(2), "", "", fmtMiB(big.maxRssMiB)]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
  const render = (cells: string[]): string => cells.map((c, i) => (i < 2 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join("  ");
  out.push("");
  out.push(render(header));
  out.push(widths.map((w) => "-".repeat(w)).join("  "));
  for (const row of rows) out.push(render(row));
  out.push("");

  const verdict = (v: number | undefined, target: number, above = true): string => (v === undefined ? "n/a " : (above ? v >= target : v < target) ? "PASS" : "FAIL");
  out.push("targets:");
  for (const transform of TRANSFORMS) {
    const byRunner = runs.get(transform.name)!;
    const loop = byRunner.get("plain loop")!;
    const w1 = byRunner.get("sluice workers: 1")!;
    const auto = byRunner.get("sluice workers: auto")!;
    const t1 = TARGETS.workers1VsPlainLoop[transform.name];
    const r1 = ratio(w1, loop);
    out.push(`  ${verdict(r1, t1)}  ${transform.name}: sluice workers: 1 >= ${t1}x plain loop: ${fmt(r1, fmtRatio)} (by CPU time: ${fmt(ratio(w1, loop, true), fmtRatio)})`);
    if (transform.name === "copying") {
      const ra = ratio(auto, loop);
      out.push(`  ${verdict(ra, TARGETS.autoVsPlainLoop)}  ${transform.name}: sluice workers: auto >= ${TARGETS.autoVsPlainLoop}x plain loop: ${fmt(ra, fmtRatio)} (by CPU time: ${fmt(ratio(auto, loop, true), fmtRatio)})`);
    } else {
      const rs = ratio(w1, byRunner.get("node:stream")!);
      out.push(`  ${verdict(rs, TARGETS.vsNodeStream)}  ${transform.name}: sluice workers: 1 >= ${TARGETS.vsNodeStream}x node:stream: ${fmt(rs, fmtRatio)}`);
    }
  }
  const sluiceRuns = TRANSFORMS.flatMap((t) => ok(runs.get(t.name)!.get("sluice workers: 1")!));
  const sluicePeak = sluiceRuns.length === 0 ? undefined : Math.max(...sluiceRuns.map((r) => r.maxRssMiB));
  const allPeak = Math.max(sluicePeak ?? Number.NaN, big?.maxRssMiB ?? Number.NEGATIVE_INFINITY);
  const peakKnown = sluicePeak !== undefined && (BIG_RECORDS === 0 || big !== undefined);
  out.push(`  ${verdict(peakKnown ? allPeak : undefined, TARGETS.peakRssMiB, false)}  sluice workers: 1 peak RSS < ${TARGETS.peakRssMiB} MiB (all its runs): ${peakKnown ? `${fmtMiB(allPeak)} MiB` : "not measured"}`);
  if (BIG_RECORDS > 0) {
    const inPlace = ok(runs.get("in-place")!.get("sluice workers: 1")!);
    const smallPeak = inPlace.length === 0 ? undefined : Math.max(...inPlace.map((r) => r.maxRssMiB));
    const growth = smallPeak !== undefined && big !== undefined ? big.maxRssMiB / smallPeak - 1 : undefined;
    out.push(
      `  ${verdict(growth, TARGETS.bigRssGrowth, false)}  sluice ${fmtInt(BIG_RECORDS)}-record peak RSS within ${TARGETS.bigRssGrowth * 100}% of the ${fmtInt(RECORDS)}-record peak: ` +
        (growth === undefined ? "not measured" : `${fmtMiB(big!.maxRssMiB)} vs ${fmtMiB(smallPeak!)} MiB (${growth >= 0 ? "+" : ""}${(growth * 100).toFixed(1)}%)`),
    );
  }
  console.log(out.join("\n"));

  if (failures.length > 0) {
    console.error(`\n${failures.length} contender run(s) failed; see above.`);
    return 1;
  }
  return 0;
}

const mainCode = await main();
const tracingCode = await runTracingBench();
const postgresCode = await runPostgresBench();
const httpCode = await runHttpBench();
const brokersCode = await runBrokerBench();
const mqttCode = await runMqttBench();
const parquetCode = await runParquetBench();
process.exitCode = Math.max(mainCode, tracingCode, postgresCode, httpCode, brokersCode, mqttCode, parquetCode);
