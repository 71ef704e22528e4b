/**
 * `sluice run` and `sluice validate`: load the config, build and run the pipeline, show progress
 * on a terminal, stop gracefully on SIGTERM/SIGINT, print the summary, map the outcome to an exit code.
 */
import { writeFileSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import { dirname, resolve } from "node:path";
import { buildPipeline } from "../config/build.js";
import type { ConnectReport } from "../config/connect-check.js";
import { formatSeconds } from "../core/clock.js";
import { SluiceError } from "../core/errors.js";
import { formatIssues, loadConfig } from "../config/load.js";
import type { PipelineConfig } from "../config/schema.js";
import type { CheckFinding } from "../components/contracts.js";
import { createLogger, type LogLevel } from "../observability/logger.js";
import type { CountsSnapshot, Metrics, RunSummary } from "../observability/metrics.js";
import { formatCount } from "./format.js";
import { crashLine, logCrashesTo, reportEarlyExit } from "./crash.js";

/** Exit codes, as DESIGN.md fixes them. */
export const EXIT = { ok: 0, runtime: 1, usage: 2 } as const;

/** Where the command writes; injectable for tests. */
export interface Io {
  readonly stdout: NodeJS.WritableStream;
  readonly stderr: NodeJS.WritableStream & { isTTY?: boolean };
}

async function loadOrReport(file: string, io: Io): Promise<PipelineConfig | undefined> {
  const loaded = await loadConfig(file);
  if (loaded.ok) return loaded.config;
  io.stderr.write(`${formatIssues(file, loaded.issues)}\n${loaded.issues.length} error${loaded.issues.length === 1 ? "" : "s"} in ${file}\n`);
  return undefined;
}

/** What the schema cannot check, one `path: message` per finding. */
interface DeepCheck {
  readonly problems: string[];
  /** Worth saying, not worth refusing: a followed file that does not exist yet. */
  readonly warnings: string[];
}

/**
 * Checks what the schema cannot, by each component's own `check` (a file source's file, a module
 * that must load, a schema that must compile). Sources' data paths resolve against `cwd`,
 * transforms' against the config's directory, as when the pipeline is built.
 */
async function deepCheck(config: PipelineConfig, configDir: string, cwd: string): Promise<DeepCheck> {
  const problems: string[] = [];
  const warnings: string[] = [];
  const components: { path: string; check: (() => Promise<readonly CheckFinding[]>) | undefined }[] = [
    ...config.sources.map((s) => ({ path: `sources.${s.name}`, check: s.definition.check && (() => s.definition.check!(s.options as never, cwd)) })),
    ...config.transforms.map((t, i) => ({ path: `transforms[${i}]`, check: t.definition.check && (() => t.definition.check!(t.options as never, configDir)) })),
    ...config.sinks.map((s) => ({ path: `sinks.${s.name}`, check: s.definition.check && (() => s.definition.check!(s.options as never, cwd)) })),
  ];
  for (const c of components) {
    for (const f of (await c.check?.()) ?? []) (f.level === "error" ? problems : warnings).push(`${c.path}${f.key === undefined ? "" : `.${f.key}`}: ${f.message}`);
  }
  return { problems, warnings };
}

/** Writes the warnings, then the problems and their count; true when there were problems. */
function report(file: string, check: DeepCheck, io: Io): boolean {
  for (const w of check.warnings) io.stderr.write(`${file} warning: ${w}\n`);
  const { problems } = check;
  if (problems.length === 0) return false;
  io.stderr.write(`${problems.map((p) => `${file} ${p}`).join("\n")}\n${problems.length} error${problems.length === 1 ? "" : "s"} in ${file}\n`);
  return true;
}

/** Options of `sluice validate`. */
export interface ValidateOptions {
  /** false: check the config only (`--no-connect`). */
  readonly connect: boolean;
  /** How long the connection checks may take, ms (`--timeout`). */
  readonly timeoutMs: number;
}

/**
 * `sluice validate <config>`: exit 2 with every error and its path; then (unless `connect` is
 * false) connects every source and sink: exit 1 when one fails or does not answer within the
 * timeout, else 0.
 */
export async function validateCommand(file: string, opts: ValidateOptions, io: Io): Promise<number> {
  const config = await loadOrReport(file, io);
  if (!config) return EXIT.usage;
  if (report(file, await deepCheck(config, dirname(resolve(file)), process.cwd()), io)) return EXIT.usage;
  io.stdout.write(`${file}: valid (${config.sources.length} source(s), ${config.transforms.length} transform(s), ${config.sinks.length} sink(s))\n`);
  if (!opts.connect) return EXIT.ok;
  let reports: ConnectReport[];
  try {
    const { checkConnections } = await import("../config/connect-check.js");
    reports = await checkConnections(config, { cwd: process.cwd(), timeoutMs: opts.timeoutMs, logger: createLogger("warn", io.stderr.isTTY === true) });
  } catch (err) {
    const why = err instanceof SluiceError ? `${err.code}: ${err.message}` : String(err);
    io.stderr.write(`${file}: connections not checked: ${why}; --no-connect checks the config only\n`);
    return EXIT.runtime;
  }
  io.stdout.write(connectTable(reports, opts.timeoutMs));
  const failed = reports.filter((r) => r.outcome.tag === "failing" || r.outcome.tag === "timed_out").length;
  if (failed === 0) return EXIT.ok;
  io.stderr.write(`${file}: ${failed} of ${reports.length} connection check(s) failed\n`);
  return EXIT.runtime;
}

const fmt = formatCount;

/** One line per source and sink: `  sink   db (postgres)  failing: ERR_SINK_CONNECT: ... (retryable: a run keeps trying)`. */
export function connectTable(reports: readonly ConnectReport[], timeoutMs: number): string {
  const labels = reports.map((r) => `${r.kind.padEnd(6)} ${r.name} (${r.type})`);
  const w = Math.max(...labels.map((l) => l.length)) + 2;
  const lines = reports.map((r, i) => {
    const o = r.outcome;
    const what =
      o.tag === "ok"
        ? `ok (connected in ${o.ms} ms)`
        : o.tag === "nothing_to_connect"
          ? "ok (no connection to check)"
          : o.tag === "timed_out"
            ? `failing: no answer within ${formatSeconds(timeoutMs)}`
            : `failing: ${o.code}: ${o.message} (${o.retryable ? "retryable: a run would keep trying to connect" : "permanent: a run would stop at once"})`;
    return `  ${labels[i]!.padEnd(w)}${what}`;
  });
  return `connections:\n${lines.join("\n")}\n`;
}

/** The live progress line; each source or sink that is down is named at its end (`| sink db: connecting, down 45 s: ...`). */
function progressLine(s: CountsSnapshot, rate: number, maxRecords: number, down: readonly string[]): string {
  const fill = maxRecords > 0 ? Math.round((s.buffer_records / maxRecords) * 100) : 0;
  const present = s.already_present > 0 ? ` (${fmt(s.already_present)} already present)` : "";
  const line = `${fmt(rate)} rec/s | received ${fmt(s.received)} delivered ${fmt(s.delivered)}${present} dead-lettered ${fmt(s.dead_lettered)} dropped ${fmt(s.dropped)} retried ${fmt(s.retried)} | buffer ${fmt(s.buffer_records)}/${fmt(maxRecords)} (${fill}%)`;
  return down.length > 0 ? `${line} | ${down.join(" | ")}` : line;
}

/**
 * The summary table printed at the end of every run. `delivered` is split into records stored new
 * in at least one sink and records every sink already held (a rerun's redeliveries); each sink's
 * row has its own split.
 */
export function summaryTable(summary: RunSummary, status: string, deadLetterHint: string, replayed = 0, corruptEntries = 0): string {
  const r = summary.records;
  const rows: [string, number][] = [
    ["received", r.received],
    ["delivered", r.delivered],
    ["dead-lettered", r.dead_lettered],
    ["dropped", r.dropped],
    ["retried", r.retried],
  ];
  // Counted in `received` too: records an earlier run left in the durable buffer.
  if (replayed > 0) rows.push(["replayed", replayed]);
  // Received, never delivered: their durable buffer entry failed its checksum when read back.
  if (r.quarantined !== undefined) rows.push(["quarantined", r.quarantined]);
  const lines = [`sluice run ${status} in ${summary.elapsed_seconds.toFixed(1)} s (${fmt(summary.elapsed_seconds > 0 ? r.delivered / summary.elapsed_seconds : 0)} delivered/s)`];
  for (const [k, v] of rows) {
    const split = k === "delivered" ? `  (${fmt(r.new)} new, ${fmt(r.already_present)} already present)` : "";
    lines.push(`  ${k.padEnd(15)}${fmt(v).padStart(14)}${split}`);
  }
  const inFlight = r.received - r.delivered - r.dead_lettered - r.dropped - (r.quarantined ?? 0);
  if (inFlight !== 0) lines.push(`  ${"un-acked".padEnd(15)}${fmt(inFlight).padStart(14)}  (left for redelivery)`);
  if (corruptEntries > 0) lines.push(`  durable buffer: ${fmt(corruptEntries)} corrupt or missing entr${corruptEntries === 1 ? "y" : "ies"}, quarantined or lost (see the warnings)`);
  const names = Object.keys(summary.sinks);
  const w = Math.max(6, ...names.map((n) => n.length)) + 2;
  lines.push(`  ${"sink".padEnd(w)}${"delivered".padStart(14)}${"new".padStart(14)}${"already present".padStart(17)}${"dead-lettered".padStart(15)}`);
  for (const n of names) {
    const s = summary.sinks[n]!;
    lines.push(`  ${n.padEnd(w)}${fmt(s.delivered).padStart(14)}${fmt(s.new).padStart(14)}${fmt(s.already_present).padStart(17)}${fmt(s.dead_lettered).padStart(15)}`);
  }
  if (r.dead_lettered > 0) lines.push(`  dead letters: ${deadLetterHint}`);
  return `${lines.join("\n")}\n`;
}

/** Options of `sluice run`. */
export interface RunOptions {
  readonly summaryJson?: string;
  readonly progress?: boolean;
  /** Overrides `observability.log_level`. */
  readonly logLevel?: LogLevel;
}

/** `sluice run <config>`: runs to completion (finite sources) or to a graceful stop. */
export async function runCommand(file: string, opts: RunOptions, io: Io): Promise<number> {
  const config = await loadOrReport(file, io);
  if (!config) return EXIT.usage;
  const configDir = dirname(resolve(file));
  if (report(file, await deepCheck(config, configDir, process.cwd()), io)) return EXIT.usage;
  const logger = createLogger(opts.logLevel ?? config.observability.log_level, io.stderr.isTTY === true);
  logCrashesTo(logger);
  // Before the pipeline is built: it takes the tracer installed then. The SDK loads only when configured.
  const tracingConfig = config.observability.tracing;
  const tracing = tracingConfig === undefined ? undefined : await (await import("../observability/tracing-sdk.js")).startTracing(tracingConfig, logger);
  const started = performance.now();
  let built: Awaited<ReturnType<typeof buildPipeline>>;
  try {
    built = await buildPipeline(config, { configDir, cwd: process.cwd(), logger });
  } catch (err) {
    io.stderr.write(`cannot start: ${(err as Error).message}\n`);
    await tracing?.shutdown();
    return EXIT.runtime;
  }
  const { pipeline, metrics } = built;
  const server = config.observability.listen
    ? await (await import("../server/observability-server.js")).startObservabilityServer(config.observability.listen, built.service)
    : undefined;

  const onSignal = (sig: NodeJS.Signals) => {
    if (pipeline.status().tag === "draining") {
      io.stderr.write(`\n${sig} again: still draining (shutdown_timeout ${config.shutdownTimeoutMs} ms)\n`);
      return;
    }
    io.stderr.write(`\n${sig}: stopping, draining in-flight records\n`);
    pipeline.stop();
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  logger.info({ pid: process.pid }, "running; SIGTERM or SIGINT stops it gracefully");

  const showProgress = opts.progress ?? (config.observability.progress === "always" || (config.observability.progress === "auto" && io.stderr.isTTY === true));
  const stopProgress = showProgress ? startProgress(metrics, config.buffer.max_records, config.observability.unready_after, io) : () => {};

  const dlqPath = config.deadLetter.options.path ? String(config.deadLetter.options.path) : resolve(built.dataDir, "dlq.db");
  const dlq = `${dlqPath} (sluice dlq list ${file})`;
  // Never end without the summary: an exit while run() is pending says what was left un-acked.
  const stopExitReport = reportEarlyExit((reason) => {
    const summary = metrics.summary((performance.now() - started) / 1000);
    const counts = metrics.snapshot();
    stopProgress();
    io.stderr.write(`sluice exited before the run ended: ${reason}; ${fmt(counts.in_flight)} record(s) left un-acked, redelivered on the next run\n`);
    io.stderr.write(summaryTable(summary, "interrupted", dlq, counts.replayed, counts.corrupt_entries));
    if (opts.summaryJson) writeFileSync(opts.summaryJson, `${JSON.stringify(summary, null, 2)}\n`);
    process.exitCode = EXIT.runtime;
  });

  let exitCode: number = EXIT.ok;
  let statusText: string;
  try {
    const status = await pipeline.run();
    statusText = status.tag;
    if (status.tag === "failed") {
      io.stderr.write(`\nrun failed: ${status.error.code}: ${status.error.message}\n`);
      exitCode = EXIT.runtime;
    } else if (status.tag === "timed_out") {
      io.stderr.write(`\nshutdown_timeout reached with ${status.unacked} record(s) un-acked; they are redelivered on the next run\n`);
      exitCode = EXIT.runtime;
    }
  } catch (err) {
    statusText = "crashed";
    io.stderr.write(`\n${crashLine(err)}\n`);
    logger.debug({ err: err instanceof Error ? (err.stack ?? err.message) : String(err) }, "run() rejected");
    exitCode = EXIT.runtime;
  } finally {
    stopExitReport();
    stopProgress();
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    void server?.close();
  }
  const summary = metrics.summary((performance.now() - started) / 1000);
  const counts = metrics.snapshot();
  io.stderr.write(summaryTable(summary, statusText, dlq, counts.replayed, counts.corrupt_entries));
  if (opts.summaryJson) await writeFile(opts.summaryJson, `${JSON.stringify(summary, null, 2)}\n`);
  // After the summary: the last export (at most a few seconds to a collector that is down) is not the run's time.
  await tracing?.shutdown();
  return exitCode;
}

function startProgress(metrics: Metrics, maxRecords: number, unreadyAfterMs: number, io: Io): () => void {
  let last = metrics.snapshot();
  let lastAt = performance.now();
  const timer = setInterval(() => {
    const now = performance.now();
    const s = metrics.snapshot();
    const rate = ((s.delivered + s.dead_lettered - last.delivered - last.dead_lettered) * 1000) / (now - lastAt);
    last = s;
    lastAt = now;
    io.stderr.write(`\x1b[2K\r${progressLine(s, rate, maxRecords, [...metrics.sourcesDown(), ...metrics.sinksDown(unreadyAfterMs)])}`);
  }, 1000);
  timer.unref();
  return () => {
    clearInterval(timer);
    io.stderr.write(`\x1b[2K\r`);
  };
}
