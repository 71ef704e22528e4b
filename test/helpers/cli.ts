/**
 * The real `sluice run` CLI as a child process, on the sources (tsx), for the tests that crash,
 * restart or signal it. Children still running when a test file ends are killed by
 * {@link killClis} (call it in `afterAll`).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createRequire } from "node:module";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";

const ROOT = resolve(import.meta.dirname, "../..");
const ENTRY = join(ROOT, "src/cli/entry.ts");
// tsx by absolute URL: `--import tsx` would resolve it from the child's cwd, a temp dir.
const TSX = pathToFileURL(createRequire(import.meta.url).resolve("tsx")).href;

/** A running CLI child. */
export interface Cli {
  readonly process: ChildProcess;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Its stderr so far. */
  readonly output: () => string;
}

const running = new Set<ChildProcess>();

/** Starts `sluice run <configFile> --summary-json <summaryFile> --no-progress` in `cwd`, with this process's environment plus `env`. */
export function startCli(configFile: string, summaryFile: string, cwd: string, env: Readonly<Record<string, string>> = {}): Cli {
  const child = spawn(process.execPath, ["--conditions=sluice-source", "--import", TSX, ENTRY, "run", configFile, "--summary-json", summaryFile, "--no-progress"], {
    cwd,
    env: { ...process.env, ...env },
    stdio: ["ignore", "ignore", "pipe"],
  });
  running.add(child);
  let stderr = "";
  child.stderr!.on("data", (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((done) =>
    child.on("exit", (code, signal) => {
      running.delete(child);
      done({ code, signal });
    }),
  );
  return { process: child, exited, output: () => stderr };
}

/** Starts `sluice <argv>` in `cwd` (stdout and stderr kept), for a test that signals or kills it mid-way. */
export function startSluice(argv: readonly string[], cwd: string): Cli {
  const child = spawn(process.execPath, ["--conditions=sluice-source", "--import", TSX, ENTRY, ...argv], { cwd, stdio: ["ignore", "pipe", "pipe"] });
  running.add(child);
  let output = "";
  child.stdout!.on("data", (d: Buffer) => (output += d.toString()));
  child.stderr!.on("data", (d: Buffer) => (output += d.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((done) =>
    child.on("exit", (code, signal) => {
      running.delete(child);
      done({ code, signal });
    }),
  );
  return { process: child, exited, output: () => output };
}

/** SIGKILLs every CLI child this file started that is still running. */
export function killClis(): void {
  for (const child of running) child.kill("SIGKILL");
}

/** What a finished CLI child printed, and its exit code. */
export interface CliResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/**
 * Runs `sluice <argv>` as a child process to its end: for what only a real process shows (an
 * uncaught error's stack, the exit code the entry sets).
 */
export async function runCli(argv: readonly string[], options: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): Promise<CliResult> {
  const child = spawn(process.execPath, ["--conditions=sluice-source", "--import", TSX, ENTRY, ...argv], {
    cwd: options.cwd ?? ROOT,
    env: options.env ?? process.env,
    stdio: ["ignore", "pipe", "pipe"],
  });
  running.add(child);
  let stdout = "";
  let stderr = "";
  child.stdout!.on("data", (d: Buffer) => (stdout += d.toString()));
  child.stderr!.on("data", (d: Buffer) => (stderr += d.toString()));
  const code = await new Promise<number | null>((done) =>
    child.on("exit", (c) => {
      running.delete(child);
      done(c);
    }),
  );
  return { code, stdout, stderr };
}
