/**
 * `npm run bench`: sluice (file source -> module transform -> blackhole) against two baselines
 * doing the same work on the same file in the same run: a plain read/split/parse loop and a
 * `node:stream` pipeline. Each run is a fresh child process that times itself from just before
 * reading to the end and reports its own peak RSS; the table shows the median records/s of
 * BENCH_RUNS runs per contender, then sluice once on a bigger file to see whether memory grows
 * with input size. Missed targets print FAIL; the exit code is non-zero only when a contender
 * did not process every record (or crashed).
 *
 * Env: BENCH_MAIN=0 skips this section; BENCH_RECORDS (2000000), BENCH_BIG_RECORDS (8000000; 0 skips), BENCH_RUNS (3).
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
import { CONTENDERS, prepareLaunch, REPO_DIR, runChild, type ContenderName } from "./build.js";
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
const TRANSFORM = join(REPO_DIR, "bench", "enrich.mjs");
// A child that takes longer than this is killed and counted as failed.
const CHILD_TIMEOUT_MS = 10 * 60 * 1000;
// 1-minute load average per core above which the report warns that other work competed for the CPU.
const BUSY_LOAD_PER_CORE = 0.75;

const TARGETS = {
  vsPlainLoop: 0.8,
  vsNodeStream: 1.1,
  peakRssMiB: 250,
  bigRssGrowth: 0.1,
};

const LABELS: Record<ContenderName, string> = { "plain-loop": "plain loop", "node-stream": "node:stream", sluice: "sluice" };

const fmtMiB = (n: number): string => n.toFixed(1);

interface Summary {
  readonly name: ContenderName;
  readonly runs: ContenderResult[];
  readonly failed: string[];
}

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

  const summaries = new Map<ContenderName, Summary>(CONTENDERS.map((name) => [name, { name, runs: [], failed: [] }]));
  const big: Summary = { name: "sluice", runs: [], failed: [] };
  const total = RUNS * CONTENDERS.length + (BIG_RECORDS > 0 ? 1 : 0);
  let step = 0;

  const loads: number[] = [];
  const runOne = async (name: ContenderName, records: number, label: string, into: Summary): Promise<void> => {
    step++;
    // Other processes competing for the cores make wall-clock rates noisy; say so in the report.
    loads.push(loadavg()[0]!);
    const tag = `[${step}/${total}] ${LABELS[name].padEnd(11)} ${label}`;
    progress.live(`${tag} ... running`);
    const result = await runChild(launcher, name, { file: paths.get(records)!, records, transform: TRANSFORM }, CHILD_TIMEOUT_MS);
    if ("error" in result) {
      into.failed.push(result.error);
      progress.line(`${tag}  FAILED: ${result.error}`);
      return;
    }
    into.runs.push(result);
    const rps = result.records / result.seconds;
    progress.line(
      `${tag}  ${fmtInt(rps).padStart(10)} records/s  ${result.seconds.toFixed(2).padStart(6)} s (CPU ${result.cpuSeconds.toFixed(2)} s)  peak RSS ${fmtMiB(result.maxRssMiB)} MiB`,
    );
  };

  // Rounds interleave the contenders, so drift in the machine (heat, neighbours) hits all alike.
  for (let round = 1; round <= RUNS; round++) {
    for (const name of CONTENDERS) await runOne(name, RECORDS, `run ${round}/${RUNS}, ${fmtInt(RECORDS)} records`, summaries.get(name)!);
  }
  if (BIG_RECORDS > 0) await runOne("sluice", BIG_RECORDS, `${fmtInt(BIG_RECORDS)} records (RSS check)`, big);

  const rate = (s: Summary): number | undefined => (s.runs.length === 0 ? undefined : median(s.runs.map((r) => r.records / r.seconds)));
  const cpuRate = (s: Summary): number | undefined => (s.runs.length === 0 ? undefined : median(s.runs.map((r) => r.records / r.cpuSeconds)));
  const peak = (s: Summary): number | undefined => (s.runs.length === 0 ? undefined : Math.max(...s.runs.map((r) => r.maxRssMiB)));
  const plainRate = rate(summaries.get("plain-loop")!);
  const streamRate = rate(summaries.get("node-stream")!);
  const plainCpuRate = cpuRate(summaries.get("plain-loop")!);
  const streamCpuRate = cpuRate(summaries.get("node-stream")!);

  const header = ["contender", "records", "records/s", "vs plain loop", "vs node:stream", "peak RSS MiB", "records/CPU-s"];
  const rows: string[][] = [];
  for (const s of summaries.values()) {
    const r = rate(s);
    const p = peak(s);
    const c = cpuRate(s);
    rows.push([
      `${LABELS[s.name]}${s.failed.length > 0 ? " (FAILED)" : ""}`,
      fmtInt(RECORDS),
      r === undefined ? "-" : fmtInt(r),
      r === undefined || plainRate === undefined ? "-" : fmtRatio(r / plainRate),
      r === undefined || streamRate === undefined ? "-" : fmtRatio(r / streamRate),
      p === undefined ? "-" : fmtMiB(p),
      c === undefined ? "-" : fmtInt(c),
    ]);
  }
  if (BIG_RECORDS > 0) {
    const r = rate(big);
    const p = peak(big);
    const c = cpuRate(big);
    rows.push([
      `sluice${big.failed.length > 0 ? " (FAILED)" : ""}`,
      fmtInt(BIG_RECORDS),
      r === undefined ? "-" : fmtInt(r),
      "",
      "",
      p === undefined ? "-" : fmtMiB(p),
      c === undefined ? "-" : fmtInt(c),
    ]);
  }
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
  const render = (cells: string[]): string => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join("  ");

  const out: string[] = [];
  out.push("");
  out.push(`sluice bench: NDJSON -> module transform (bench/enrich.mjs) -> discard; node ${process.version}, ${cpus().length} x ${cpus()[0]?.model.trim() ?? "cpu"}`);
  out.push(`records/s: median of ${RUNS} run(s), each a fresh process timed from just before reading to the end; peak RSS: highest maxRSS over those runs`);
  out.push(`records/CPU-s: records per second of CPU time (user + system, all threads), the steadier figure when the machine is shared`);
  const maxLoad = Math.max(0, ...loads);
  if (maxLoad > cpus().length * BUSY_LOAD_PER_CORE) {
    out.push(
      `warning: the machine was busy (1-min load average ${Math.min(...loads).toFixed(1)}-${maxLoad.toFixed(1)} at run starts, ${cpus().length} cores); wall-clock figures are noisy`,
    );
  }
  out.push("");
  out.push(render(header));
  out.push(widths.map((w) => "-".repeat(w)).join("  "));
  for (const row of rows) out.push(render(row));
  out.push("");

  const sluice = summaries.get("sluice")!;
  const sluiceRate = rate(sluice);
  const sluiceCpuRate = cpuRate(sluice);
  const byCpu = (base: number | undefined): string =>
    sluiceCpuRate === undefined || base === undefined ? "" : ` (by CPU time: ${fmtRatio(sluiceCpuRate / base)})`;
  const sluicePeak = peak(sluice);
  const bigPeak = peak(big);
  const verdict = (ok: boolean | undefined): string => (ok === undefined ? "n/a " : ok ? "PASS" : "FAIL");
  out.push("targets:");
  const vsPlain = sluiceRate !== undefined && plainRate !== undefined ? sluiceRate / plainRate : undefined;
  out.push(`  ${verdict(vsPlain === undefined ? undefined : vsPlain >= TARGETS.vsPlainLoop)}  sluice >= ${TARGETS.vsPlainLoop}x plain loop records/s: ${vsPlain === undefined ? "not measured" : fmtRatio(vsPlain)}${byCpu(plainCpuRate)}`);
  const vsStream = sluiceRate !== undefined && streamRate !== undefined ? sluiceRate / streamRate : undefined;
  out.push(`  ${verdict(vsStream === undefined ? undefined : vsStream >= TARGETS.vsNodeStream)}  sluice >= ${TARGETS.vsNodeStream}x node:stream records/s: ${vsStream === undefined ? "not measured" : fmtRatio(vsStream)}${byCpu(streamCpuRate)}`);
  const allPeak = Math.max(sluicePeak ?? Number.NaN, bigPeak ?? Number.NEGATIVE_INFINITY);
  const peakKnown = sluicePeak !== undefined && (BIG_RECORDS === 0 || bigPeak !== undefined);
  out.push(`  ${verdict(peakKnown ? allPeak < TARGETS.peakRssMiB : undefined)}  sluice peak RSS < ${TARGETS.peakRssMiB} MiB (all sluice runs): ${peakKnown ? `${fmtMiB(allPeak)} MiB` : "not measured"}`);
  if (BIG_RECORDS > 0) {
    const growth = sluicePeak !== undefined && bigPeak !== undefined ? bigPeak / sluicePeak - 1 : undefined;
    out.push(
      `  ${verdict(growth === undefined ? undefined : growth <= TARGETS.bigRssGrowth)}  sluice ${fmtInt(BIG_RECORDS)}-record peak RSS within ${TARGETS.bigRssGrowth * 100}% of the ${fmtInt(RECORDS)}-record peak: ` +
        (growth === undefined ? "not measured" : `${fmtMiB(bigPeak!)} vs ${fmtMiB(sluicePeak!)} MiB (${growth >= 0 ? "+" : ""}${(growth * 100).toFixed(1)}%)`),
    );
  }
  console.log(out.join("\n"));

  const failures = [...summaries.values(), big].flatMap((s) => s.failed.map((f) => `${LABELS[s.name]}: ${f}`));
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
