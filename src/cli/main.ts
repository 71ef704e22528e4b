/** The `sluice` command line: argument parsing only; the work is in run-command.ts and the library. */
import { readFileSync } from "node:fs";
import { Command, CommanderError } from "commander";
import { componentsCommand } from "./components-command.js";
import { EXIT, runCommand, validateCommand, type Io } from "./run-command.js";

/** The package's version, read from its package.json (two levels up from src/cli and from dist/cli alike). */
function packageVersion(): string {
  return (JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as { version: string }).version;
}

/** Runs the CLI with `argv` (without `node` and the script path) and resolves with the exit code. */
export async function main(argv: readonly string[], io: Io = { stdout: process.stdout, stderr: process.stderr }): Promise<number> {
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
    .action(async (config: string, opts: { summaryJson?: string; progress?: boolean }) => {
      code = await runCommand(config, { summaryJson: opts.summaryJson, progress: opts.progress }, io);
    });

  program
    .command("validate")
    .description("check a pipeline config; exit 0 when valid, 2 with every error and its path")
    .argument("<config>", "pipeline YAML file")
    .action(async (config: string) => {
      code = await validateCommand(config, io);
    });

  program
    .command("components")
    .description("list the built-in sources, transforms and sinks with their options")
    .argument("[kind-or-type]", "show only one kind (source, transform, sink, dead_letter; or plural) or one type, e.g. sqlite")
    .action((filter: string | undefined) => {
      code = componentsCommand(filter, io);
    });

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
