/**
 * The tracing section of `npm run bench`: the main benchmark's sluice contender (NDJSON file ->
 * module transform -> blackhole, a fresh child per run) with tracing off, next to the same with the
 * CLI's OpenTelemetry SDK installed at sample ratio 1, exporting every span over OTLP/HTTP to a
 * receiver in this process that reads each export and discards it. Rounds alternate the two, and
 * the order within a round flips each round, so drift and neighbours hit both alike. The figure is
 * the median over rounds of (records/s traced) / (records/s untraced) of the same round, and the
 * same ratio by CPU time (the steadier one on a shared machine); the target is >= 0.95 (tracing
 * costs under 5%).
 *
 * Env: BENCH_TRACING=0 skips the section; BENCH_TRACING_RUNS (9 rounds: single rounds swing 0.8x-1.1x on this machine); BENCH_TRACING_RECORDS
 * (BENCH_RECORDS, else 2000000: the main benchmark's file).
 *
 * Standalone (this section only): `node --import tsx bench/tracing.ts`.
 */
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { cpus, loadavg } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { prepareLaunch, REPO_DIR, runChild } from "./build.js";
import type { ContenderResult } from "./contenders/protocol.js";
import { ensureDataFile, warmPageCache } from "./data-gen.js";
import { fmtInt, fmtRatio, intEnv, median, progress } from "./report.js";

const TARGET = 0.95;
const CHILD_TIMEOUT_MS = 10 * 60 * 1000;
const TRANSFORM = join(REPO_DIR, "bench", "enrich.mjs");

type Mode = "off" | "on";

/** An OTLP/HTTP receiver that reads every export whole and answers 200, keeping nothing but counts. */
async function startDiscardingReceiver(): Promise<{ endpoint: string; exports: () => number; bytes: () => number; close: () => Promise<void> }> {
  let exports = 0;
  let bytes = 0;
  const server = createServer((req, res) => {
    req.on("data", (d: Buffer) => (bytes += d.length));
    req.on("end", () => {
      exports++;
      res.writeHead(200, { "content-type": "application/json" }).end("{}");
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    exports: () => exports,
    bytes: () => bytes,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

/** Runs the section; resolves with its exit code (non-zero only when a run failed). */
export async function runTracingBench(): Promise<number> {
  if (process.env.BENCH_TRACING === "0") {
    console.log("\nsluice bench, tracing on vs off: skipped (BENCH_TRACING=0)");
    return 0;
  }
  const records = intEnv("BENCH_TRACING_RECORDS", intEnv("BENCH_RECORDS", 2_000_000, 1), 1);
  const rounds = intEnv("BENCH_TRACING_RUNS", 9, 1);
  const { file, generated } = ensureDataFile(records, (n) => progress.live(`generating ${fmtInt(records)} records: ${Math.floor((n / records) * 100)}%`));
  if (generated) progress.line(`generated ${file}`);
  warmPageCache(file);
  const launcher = await prepareLaunch(["sluice"]);
  const receiver = await startDiscardingReceiver();

  const runs: Record<Mode, (ContenderResult | undefined)[]> = { off: [], on: [] };
  const failed: string[] = [];
  const loads: number[] = [];
  try {
    for (let round = 1; round <= rounds; round++) {
      const order: Mode[] = round % 2 === 1 ? ["off", "on"] : ["on", "off"];
      for (const mode of order) {
        loads.push(loadavg()[0]!);
        const tag = `[tracing ${round}/${rounds}] sluice, tracing ${mode.padEnd(3)}`;
        progress.live(`${tag} ... running`);
        const task = { file, records, transform: TRANSFORM, ...(mode === "on" ? { otlpEndpoint: receiver.endpoint } : {}) };
        const result = await runChild(launcher, "sluice", task, CHILD_TIMEOUT_MS);
        if ("error" in result) {
          failed.push(`tracing ${mode}, round ${round}: ${result.error}`);
          runs[mode][round - 1] = undefined;
          progress.line(`${tag}  FAILED: ${result.error}`);
          continue;
        }
        runs[mode][round - 1] = result;
        progress.line(`${tag}  ${fmtInt(result.records / result.seconds).padStart(10)} records/s  ${result.seconds.toFixed(2).padStart(6)} s (CPU ${result.cpuSeconds.toFixed(2)} s)  peak RSS ${result.maxRssMiB.toFixed(1)} MiB`);
      }
    }
  } finally {
    await receiver.close();
  }

  const wallRatios: number[] = [];
  const cpuRatios: number[] = [];
  for (let i = 0; i < rounds; i++) {
    const off = runs.off[i];
    const on = runs.on[i];
    if (off === undefined || on === undefined) continue;
    wallRatios.push(on.records / on.seconds / (off.records / off.seconds));
    cpuRatios.push(on.records / on.cpuSeconds / (off.records / off.cpuSeconds));
  }
  const rate = (mode: Mode, per: "seconds" | "cpuSeconds"): string => {
    const ok = runs[mode].filter((r): r is ContenderResult => r !== undefined);
    return ok.length === 0 ? "-" : fmtInt(median(ok.map((r) => r.records / r[per])));
  };
  const tracedRuns = runs.on.filter((r) => r !== undefined).length;
  const out: string[] = [""];
  out.push(`sluice bench, tracing on vs off: the main benchmark (${fmtInt(records)} records, NDJSON -> module transform -> discard), sluice alone; node ${process.version}, ${cpus().length} cores`);
  out.push(`tracing on: the CLI's SDK, sample ratio 1, every span exported over OTLP/HTTP to a local receiver that discards it (${fmtInt(receiver.exports())} exports, ${fmtInt(receiver.bytes() / 1024)} KiB, over ${tracedRuns} run(s))`);
  out.push(`${rounds} alternating rounds (order flipped each round); 1-min load average at run starts ${Math.min(...loads).toFixed(1)}-${Math.max(...loads).toFixed(1)}`);
  out.push(`  tracing off: ${rate("off", "seconds")} records/s, ${rate("off", "cpuSeconds")} records/CPU-s (medians)`);
  out.push(`  tracing on:  ${rate("on", "seconds")} records/s, ${rate("on", "cpuSeconds")} records/CPU-s (medians)`);
  out.push(`  per-round on/off ratios: ${wallRatios.map(fmtRatio).join(" ")} (by CPU time: ${cpuRatios.map(fmtRatio).join(" ")})`);
  const wall = wallRatios.length === 0 ? undefined : median(wallRatios);
  const cpu = cpuRatios.length === 0 ? undefined : median(cpuRatios);
  const verdict = wall === undefined ? "n/a " : wall >= TARGET ? "PASS" : "FAIL";
  out.push("targets:");
  out.push(
    `  ${verdict}  tracing on >= ${TARGET}x tracing off records/s (median of per-round ratios): ${wall === undefined ? "not measured" : fmtRatio(wall)}${cpu === undefined ? "" : ` (by CPU time: ${fmtRatio(cpu)})`}`,
  );
  console.log(out.join("\n"));
  if (failed.length > 0) {
    console.error(`\n${failed.length} tracing run(s) failed:\n${failed.join("\n")}`);
    return 1;
  }
  return 0;
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) process.exitCode = await runTracingBench();
