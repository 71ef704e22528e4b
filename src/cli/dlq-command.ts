/**
 * `sluice dlq list|show|replay|purge <config>`: the dead letters of a pipeline's configured store,
 * selected by filters; replay sends them through the pipeline again (config/replay.ts).
 */
import { dirname, resolve } from "node:path";
import { createInterface } from "node:readline/promises";
import type { DeadLetterFilter, DeadLetterStatus, DeadLetterStore, DeadLetterWorkflow } from "../components/contracts.js";
import { duration } from "../components/options.js";
import { replayDeadLetters, type ReplayResult } from "../config/replay.js";
import type { ReplayCounts } from "../core/dead-letter-replay.js";
import { formatIssues, loadConfig } from "../config/load.js";
import type { PipelineConfig } from "../config/schema.js";
import { systemClock } from "../core/clock.js";
import { SluiceError } from "../core/errors.js";
import { createLogger, type LogLevel } from "../observability/logger.js";
import { RateLimitedLogger } from "../observability/rate-limited-logger.js";
import { entryBlock, entryJson, entryTable } from "./dlq-format.js";
import { EXIT, type Io } from "./run-command.js";

/** The options every `sluice dlq` command takes, as commander parsed them. */
export interface DlqOptions {
  readonly sink?: string[];
  readonly code?: string[];
  readonly id?: string[];
  readonly since?: string;
  readonly until?: string;
  readonly status?: string;
  readonly limit?: string;
  readonly json?: boolean;
  /** replay */
  readonly to?: string;
  readonly rate?: string;
  /** replay: overrides `observability.log_level`. */
  readonly logLevel?: LogLevel;
  /** purge */
  readonly all?: boolean;
  readonly yes?: boolean;
}

/** Where `dlq` reads an answer (purge's confirmation); `isTTY` says whether it may ask. */
export type DlqIo = Io & { readonly stdin?: NodeJS.ReadableStream & { isTTY?: boolean } };

const STATUSES = ["pending", "replayed", "resolved", "all"] as const;

/** A usage error: exit 2 with the message. */
class UsageError extends Error {}

/** `--since`/`--until`: an ISO 8601 date, or a duration back from now (`90s`, `30m`, `2h`). */
function timeOption(name: string, text: string, now: number): number {
  if (/^\d{4}-\d{2}-\d{2}/.test(text)) {
    const ms = Date.parse(text);
    if (!Number.isNaN(ms)) return ms;
  } else {
    const parsed = duration().safeParse(text);
    if (parsed.success) return now - parsed.data;
  }
  throw new UsageError(`--${name} ${text}: not an ISO 8601 date (2026-12-07T06:00:00Z) nor a duration back from now (90s, 30m, 2h)`);
}

function positive(name: string, text: string): number {
  const n = Number(text);
  if (!Number.isFinite(n) || n <= 0) throw new UsageError(`--${name} ${text}: must be a positive number`);
  return n;
}

/** The filter the options select; `defaultStatus` when `--status` is not given (undefined: every status). */
function filterOf(o: DlqOptions, defaultStatus: readonly DeadLetterStatus[] | undefined): DeadLetterFilter {
  const now = systemClock.now();
  let statuses = defaultStatus;
  if (o.status !== undefined) {
    if (!(STATUSES as readonly string[]).includes(o.status)) throw new UsageError(`--status ${o.status}: one of ${STATUSES.join(", ")}`);
    statuses = o.status === "all" ? undefined : [o.status as DeadLetterStatus];
  }
  const limit = o.limit === undefined ? undefined : positive("limit", o.limit);
  if (limit !== undefined && !Number.isInteger(limit)) throw new UsageError(`--limit ${o.limit}: must be a whole number`);
  return {
    sinks: o.sink,
    codes: o.code,
    recordIds: o.id,
    since: o.since === undefined ? undefined : timeOption("since", o.since, now),
    until: o.until === undefined ? undefined : timeOption("until", o.until, now),
    statuses,
    limit,
  };
}

/** The config's store, open, with its workflow; the caller closes it. */
async function openStore(config: PipelineConfig, cwd: string): Promise<{ store: DeadLetterStore; workflow: DeadLetterWorkflow }> {
  const logger = createLogger("warn");
  const dataDir = resolve(cwd, config.dataDir);
  const store = await config.deadLetter.definition.create(config.deadLetter.options as never, {
    name: "dead_letter",
    dataDir,
    baseDir: cwd,
    clock: systemClock,
    logger,
    emit: () => {},
  });
  const workflow = store.workflow;
  if (workflow === undefined) throw new SluiceError("ERR_CONFIG_INVALID", `the ${config.deadLetter.definition.type} dead-letter store cannot be listed or replayed`);
  await store.open();
  return { store, workflow };
}

type Action = "list" | "show" | "replay" | "purge";

/** Runs `sluice dlq <action> <file>`; resolves with the exit code. */
export async function dlqCommand(action: Action, file: string, o: DlqOptions, io: DlqIo): Promise<number> {
  const loaded = await loadConfig(file);
  if (!loaded.ok) {
    io.stderr.write(`${formatIssues(file, loaded.issues)}\n${loaded.issues.length} error${loaded.issues.length === 1 ? "" : "s"} in ${file}\n`);
    return EXIT.usage;
  }
  const config = loaded.config;
  const cwd = process.cwd();
  let filter: DeadLetterFilter;
  try {
    filter = filterOf(o, action === "list" || action === "replay" ? ["pending"] : action === "purge" ? purgeStatuses(o) : undefined);
    if (action === "replay" && o.to !== undefined && !config.sinks.some((s) => s.name === o.to)) {
      throw new UsageError(`--to ${o.to}: no such sink in ${file} (sinks: ${config.sinks.map((s) => s.name).join(", ")})`);
    }
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    io.stderr.write(`sluice dlq ${action}: ${err.message}\n`);
    return EXIT.usage;
  }
  let opened: Awaited<ReturnType<typeof openStore>>;
  try {
    opened = await openStore(config, cwd);
  } catch (err) {
    io.stderr.write(`sluice dlq ${action}: cannot open the dead-letter store: ${(err as Error).message}\n`);
    return EXIT.runtime;
  }
  try {
    switch (action) {
      case "list":
      case "show":
        return await print(action, opened.workflow, filter, o, io);
      case "purge":
        return await purge(opened.workflow, filter, o, io);
      case "replay":
        return await replay(config, file, cwd, opened, filter, o, io);
    }
  } finally {
    await opened.store.close();
  }
}

async function print(action: "list" | "show", workflow: DeadLetterWorkflow, filter: DeadLetterFilter, o: DlqOptions, io: Io): Promise<number> {
  const entries = await workflow.select(filter);
  if (o.json === true) {
    for (const e of entries) io.stdout.write(`${entryJson(e)}\n`);
  } else if (action === "list") {
    io.stdout.write(entryTable(entries));
  } else {
    io.stdout.write(entries.length === 0 ? "no entries match\n" : entries.map(entryBlock).join("\n"));
  }
  return EXIT.ok;
}

/** What purge deletes by default: entries that are done (replayed, resolved); `--all`: whatever `--status` says, every status by default. */
function purgeStatuses(o: DlqOptions): readonly DeadLetterStatus[] | undefined {
  if (o.all === true) return undefined;
  if (o.status === "pending" || o.status === "all") throw new UsageError(`--status ${o.status} deletes entries not yet delivered: add --all`);
  return ["replayed", "resolved"];
}

async function purge(workflow: DeadLetterWorkflow, filter: DeadLetterFilter, o: DlqOptions, io: DlqIo): Promise<number> {
  if (o.all === true && o.yes !== true) {
    const selected = await workflow.select(filter);
    const pending = selected.filter((e) => e.status === "pending").length;
    if (selected.length === 0) {
      io.stdout.write("purged 0 entries\n");
      return EXIT.ok;
    }
    const question = `delete ${selected.length} entr${selected.length === 1 ? "y" : "ies"}, ${pending} of them pending (never delivered)?`;
    if (io.stdin?.isTTY !== true) {
      io.stderr.write(`sluice dlq purge --all would ${question.slice(0, -1)}; add --yes to confirm (no terminal to ask on)\n`);
      return EXIT.usage;
    }
    const rl = createInterface({ input: io.stdin, output: io.stderr });
    const answer = await rl.question(`${question} [y/N] `);
    rl.close();
    if (!/^y(es)?$/i.test(answer.trim())) {
      io.stderr.write("nothing deleted\n");
      return EXIT.ok;
    }
  }
  const n = await workflow.purge(filter);
  io.stdout.write(o.json === true ? `${JSON.stringify({ purged: n })}\n` : `purged ${n} entr${n === 1 ? "y" : "ies"}\n`);
  return EXIT.ok;
}

/** The live replay line on a terminal, at most ten times a second (and always the last count). */
function progressLine(io: Io): (c: Readonly<ReplayCounts>) => void {
  let shownAt = 0;
  return (c) => {
    const done = c.replayed + c.failedAgain;
    const now = performance.now();
    if (now - shownAt < 100 && done < c.total) return;
    shownAt = now;
    io.stderr.write(`\x1b[2K\rreplaying: ${done}/${c.total} done, ${c.replayed} replayed, ${c.failedAgain} failed again`);
  };
}

async function replay(
  config: PipelineConfig,
  file: string,
  cwd: string,
  { store, workflow }: { store: DeadLetterStore; workflow: DeadLetterWorkflow },
  filter: DeadLetterFilter,
  o: DlqOptions,
  io: Io,
): Promise<number> {
  let rate: number | undefined;
  try {
    rate = o.rate === undefined ? undefined : positive("rate", o.rate);
  } catch (err) {
    io.stderr.write(`sluice dlq replay: ${(err as Error).message}\n`);
    return EXIT.usage;
  }
  const entries = await workflow.select(filter);
  const tty = io.stderr.isTTY === true;
  const stop = new AbortController();
  const onSignal = (sig: NodeJS.Signals) => {
    io.stderr.write(`\n${sig}: stopping the replay; entries not yet delivered stay pending\n`);
    stop.abort();
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  let result: ReplayResult;
  // Replay retries are logged as a run's are: rate-limited per sink and code.
  const logger = new RateLimitedLogger(createLogger(o.logLevel ?? config.observability.log_level, tty), systemClock);
  try {
    result = await replayDeadLetters(config, {
      configDir: dirname(resolve(file)),
      cwd,
      logger,
      store,
      workflow,
      entries,
      to: o.to,
      rate,
      signal: stop.signal,
      onProgress: tty ? progressLine(io) : undefined,
    });
  } catch (err) {
    if (err instanceof SluiceError && err.code === "ERR_LOCKED") {
      io.stderr.write(`sluice dlq replay: refused: ${err.message}\nA replay writes to the pipeline's sinks and dead-letter store; it runs only while no \`sluice run\` of this pipeline (nor another replay) does.\n`);
      return EXIT.runtime;
    }
    throw err;
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    logger.flush();
    if (tty) io.stderr.write("\x1b[2K\r");
  }
  const { counts, skipped } = result;
  for (const s of skipped) io.stderr.write(`skipped entry ${s.entry.seq} (${s.entry.recordId}): ${s.reason}\n`);
  if (result.error !== undefined) io.stderr.write(`replay failed: ${result.error.code}: ${result.error.message}\n`);
  if (o.json === true) {
    io.stdout.write(
      `${JSON.stringify({ selected: entries.length, replayed: counts.replayed, failed_again: counts.failedAgain, skipped: skipped.length, already_present: result.alreadyPresent, outcome: result.outcome })}\n`,
    );
  } else {
    const left = counts.total - counts.replayed - counts.failedAgain;
    const notDone = left > 0 ? `, ${left} not attempted (still pending)` : "";
    io.stdout.write(
      `replay ${result.outcome}: ${entries.length} selected, ${counts.replayed} replayed (${result.alreadyPresent} already present in the sink), ${counts.failedAgain} failed again, ${skipped.length} skipped${notDone}\n`,
    );
  }
  return result.outcome === "completed" && counts.failedAgain === 0 ? EXIT.ok : EXIT.runtime;
}
