/**
 * The `sluice` command line: argument parsing only; the work is in run-command.ts and the library.
 * The commands other than run and validate are imported when given, so `sluice run` loads only
 * what a run needs.
 */
import { readFileSync } from "node:fs";
import { Command, CommanderError, Option } from "commander";
import { duration } from "../components/options.js";
import type { DlqIo, DlqOptions } from "./dlq-command.js";
import { LOG_LEVELS, type LogLevel } from "../observability/logger.js";
import { EXIT, runCommand, validateCommand } from "./run-command.js";
import { DEFAULT_TOP_URL, topCommand } from "./top/command.js";
import type { TapOptions } from "./tap-command.js";

/** The package's version, read from its package.json (two levels up from src/cli and from dist/cli alike). */
function packageVersion(): string {
  return (JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as { version: string }).version;
}

/** `--log-level`, which wins over the config's `observability.log_level`. */
function logLevelOption(): Option {
  return new Option("--log-level <level>", "log level, instead of the config's observability.log_level").choices(LOG_LEVELS);
}

/** Runs the CLI with `argv` (without `node` and the script path) and resolves with the exit code. */
export async function main(argv: readonly string[], io: DlqIo = { stdout: process.stdout, stderr: process.stderr, stdin: process.stdin }): Promise<number> {
  // Read only when asked: a bundle of the CLI (the benchmarks' children) has no package.json two levels up.
  if (argv.length === 1 && (argv[0] === "-V" || argv[0] === "--version")) {
    io.stdout.write(`${packageVersion()}\n`);
    return EXIT.ok;
  }
  let code: number = EXIT.ok;
  const program = new Command()
    .name("sluice")
    .description("Streaming ingestion: sources -> bounded buffer -> transforms -> sinks, at-least-once.")
    .option("-V, --version", "print the version")
    .exitOverride()
    .configureOutput({ writeOut: (s) => io.stdout.write(s), writeErr: (s) => io.stderr.write(s) });

  program
    .command("run")
    .description("run a pipeline; exits when finite sources are delivered, or drains and exits on SIGTERM/SIGINT")
    .argument("<config>", "pipeline YAML file")
    .option("--summary-json <file>", "write the run summary as JSON to this file")
    .option("--progress", "show the live progress line even when stderr is not a terminal")
    .option("--no-progress", "never show the live progress line")
    .addOption(logLevelOption())
    .action(async (config: string, opts: { summaryJson?: string; progress?: boolean; logLevel?: LogLevel }) => {
      code = await runCommand(config, { summaryJson: opts.summaryJson, progress: opts.progress, logLevel: opts.logLevel }, io);
    });

  program
    .command("validate")
    .description("check a pipeline config (exit 2 with every error and its path), then connect to every source and sink (exit 1 when one fails)")
    .argument("<config>", "pipeline YAML file")
    .option("--no-connect", "check the config only; do not connect to the sources and sinks")
    .option("--timeout <duration>", "how long the connection checks may take (ms, or 500ms, 10s, 1m)", "10s")
    .action(async (config: string, opts: { connect: boolean; timeout: string }) => {
      const timeout = duration().safeParse(opts.timeout);
      if (!timeout.success || timeout.data <= 0) {
        io.stderr.write(`--timeout ${opts.timeout}: not a duration (ms, or 500ms, 10s, 1m)\n`);
        code = EXIT.usage;
        return;
      }
      code = await validateCommand(config, { connect: opts.connect, timeoutMs: timeout.data }, io);
    });

  program
    .command("top")
    .description(`show running instances live, read from their /metrics: rates, totals, errors, buffer fill per component (default ${DEFAULT_TOP_URL}); q quits`)
    .argument("[url...]", "each instance's observability listener: host:port, or a URL (/metrics when it has no path)")
    .option("--interval <duration>", "time between two refreshes (ms, or 500ms, 2s)", "1s")
    .option("--count <n>", "stop after n refreshes (default: until q, or a signal)")
    .action(async (urls: string[], opts: { interval: string; count?: string }) => {
      const interval = duration().safeParse(opts.interval);
      const count = opts.count === undefined ? undefined : Number(opts.count);
      if (!interval.success || interval.data <= 0 || (count !== undefined && !(Number.isInteger(count) && count > 0))) {
        io.stderr.write(!interval.success || interval.data <= 0 ? `--interval ${opts.interval}: not a duration (ms, or 500ms, 2s)\n` : `--count ${opts.count}: not a positive whole number\n`);
        code = EXIT.usage;
        return;
      }
      code = await topCommand(urls, { intervalMs: interval.data, count }, io);
    });

  program
    .command("components")
    .description("list the built-in sources, transforms and sinks with their options")
    .argument("[kind-or-type]", "show only one kind (source, transform, sink, dead_letter; or plural) or one type, e.g. sqlite")
    .action(async (filter: string | undefined) => {
      const { componentsCommand } = await import("./components-command.js");
      code = componentsCommand(filter, io);
    });

  program
    .command("tap")
    .description("print live records of a running pipeline as NDJSON, from its observability listener (needs observability.tap: true)")
    .argument("<url>", "the observability listener, e.g. http://127.0.0.1:9464")
    .option("--stage <stage>", "source (as read), transform (leaving the transforms) or sink (committed); default every stage")
    .option("--component <name>", "only this source, transform or sink")
    .option("--limit <n>", "stop after n records")
    .action(async (url: string, opts: TapOptions) => {
      const stop = new AbortController();
      const onSignal = () => stop.abort();
      process.once("SIGINT", onSignal);
      try {
        const { tapCommand } = await import("./tap-command.js");
        code = await tapCommand(url, opts, io, stop.signal);
      } finally {
        process.off("SIGINT", onSignal);
      }
    });

  const dlq = program
    .command("dlq")
    .description("the pipeline's dead letters: list, show, replay through the pipeline, purge");
  const collect = (value: string, previous: string[] = []) => [...previous, value];
  const actions = [
    ["list", "list entries as a table (default: pending ones) with counts; --json: one JSON object per line"],
    ["show", "print whole entries (payload, raw input, error, attempts, times); default: every status"],
    ["replay", "send entries (default: pending ones) back where they failed: a sink's to that sink, a stage's through the transforms to every sink; marks each replayed, or keeps it pending with the new error"],
    ["purge", "delete entries: by default replayed and resolved ones; --all also pending ones (with --yes when not asked on a terminal)"],
  ] as const;
  for (const [action, description] of actions) {
    const command = dlq
      .command(action)
      .description(description)
      .argument("<config>", "pipeline YAML file (its dead_letter store is used)")
      .option("--sink <name>", "only entries of this sink or stage (source:<name>, transform:<type>); repeatable", collect)
      .option("--code <code>", "only entries with this error code; repeatable", collect)
      .option("--id <record-id>", "only entries of this record id; repeatable", collect)
      .option("--since <time>", "only entries that last failed at or after this ISO date, or this long ago (2h, 30m)")
      .option("--until <time>", "only entries that last failed before this ISO date, or this long ago")
      .option("--status <status>", "pending, replayed, resolved or all")
      .option("--limit <n>", "at most n entries, oldest first")
      .option("--json", "NDJSON: one entry (replay, purge: the summary) per line");
    if (action === "replay") {
      command
        .option("--to <sink>", "send every entry to this sink instead")
        .option("--rate <records/s>", "replay at most this many entries per second")
        .addOption(logLevelOption());
    }
    if (action === "purge") {
      command.option("--all", "delete pending entries too (every status, or --status)").option("--yes", "do not ask before --all deletes");
    }
    command.action(async (config: string, opts: DlqOptions) => {
      const { dlqCommand } = await import("./dlq-command.js");
      code = await dlqCommand(action, config, opts, io);
    });
  }

  try {
    await program.parseAsync([...argv], { from: "user" });
  } catch (err) {
    if (err instanceof CommanderError) {
      return err.exitCode === 0 ? EXIT.ok : EXIT.usage;
    }
    throw err;
  }
  return code;
}
