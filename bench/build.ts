/**
 * Prepares how each contender child is started. Contenders are bundled with esbuild (tsx's own
 * compiler) into plain ESM under `bench/data/build/`, so a child is a bare `node` process: no tsx
 * loader in its memory, no compile work in it at all. Without esbuild the children run under
 * `node --import tsx`, which still keeps compile time out of the timing (children time
 * themselves after loading) but adds the loader's ~30-45 MiB to every peak RSS.
 */
import { execFileSync, spawn } from "node:child_process";
import { mkdirSync, readFileSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { DATA_DIR } from "./data-gen.js";
import { RESULT_PREFIX, type ContenderResult } from "./contenders/protocol.js";

const BENCH_DIR = dirname(fileURLToPath(import.meta.url));
/** The repository root: children run here, so `node_modules` resolves. */
export const REPO_DIR = dirname(BENCH_DIR);
const BUILD_DIR = join(DATA_DIR, "build");
/** The transform worker thread's entry (`workers`), bundled beside each bundle that may start it. */
const WORKER_ENTRY = { in: join(REPO_DIR, "src", "workers", "transform-worker.ts"), out: "transform-worker" };

/**
 * The node flags the `sluice` command starts with: read from bin/sluice.js (the flags its shell
 * line passes when NODE_OPTIONS sets none of its own), so a child started with them measures what
 * users run. Empty when the bin passes none.
 */
export const CLI_NODE_FLAGS: readonly string[] = (() => {
  const bin = readFileSync(join(REPO_DIR, "bin", "sluice.js"), "utf8");
  const m = /\*\) exec node ((?:--\S+ )+)"\$0"/.exec(bin);
  return m === null ? [] : m[1]!.trim().split(" ").filter((f) => f !== "");
})();

/** The contenders, by file name under bench/contenders/. */
export const CONTENDERS = ["plain-loop", "node-stream", "sluice"] as const;
export type ContenderName = (typeof CONTENDERS)[number];

/** How to start contender children: node arguments before the task argument. */
export interface Launcher<N extends string = ContenderName> {
  readonly mode: "bundled" | "tsx";
  args(name: N): string[];
}

/**
 * Bundles the contenders (current src/ included) with linked source maps, so a CPU profile of a
 * child maps back to src/ file:line. Falls back to tsx when esbuild cannot be loaded.
 */
export async function prepareLaunch<N extends string>(names: readonly N[]): Promise<Launcher<N>> {
  let esbuild: typeof import("esbuild");
  try {
    esbuild = await import("esbuild");
  } catch {
    return { mode: "tsx", args: (name) => ["--import", "tsx", join(BENCH_DIR, "contenders", `${name}.ts`)] };
  }
  await esbuild.build({
    // The transform worker's entry too: a bundle starts its workers from `transform-worker.mjs` beside it.
    entryPoints: [...names.map((name) => ({ in: join(BENCH_DIR, "contenders", `${name}.ts`), out: name })), WORKER_ENTRY],
    outdir: BUILD_DIR,
    outExtension: { ".js": ".mjs" },
    bundle: true,
    platform: "node",
    format: "esm",
    target: "node20",
    // Dependencies load from node_modules as they would for a user of the package.
    packages: "external",
    sourcemap: "linked",
    logLevel: "error",
    absWorkingDir: REPO_DIR,
  });
  return { mode: "bundled", args: (name) => [join(BUILD_DIR, `${name}.mjs`)] };
}

/** Runs one contender in a fresh child; resolves with its result, or an error message. */
export function runChild<N extends string>(launcher: Launcher<N>, name: N, task: object, timeoutMs: number): Promise<ContenderResult | { error: string }> {
  return new Promise((resolvePromise) => {
    const child = spawn(process.execPath, [...launcher.args(name), JSON.stringify(task)], {
      cwd: REPO_DIR,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (d: string) => (stdout += d));
    child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
    const timer = setTimeout(() => {
      stderr += `\n(killed after ${timeoutMs / 1000} s)`;
      child.kill("SIGKILL");
    }, timeoutMs);
    child.on("error", (err) => {
      clearTimeout(timer);
      resolvePromise({ error: `could not start: ${err.message}` });
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      const line = stdout.split("\n").find((l) => l.startsWith(RESULT_PREFIX));
      if (code === 0 && line !== undefined) {
        resolvePromise(JSON.parse(line.slice(RESULT_PREFIX.length)) as ContenderResult);
        return;
      }
      const why = signal !== null ? `signal ${signal}` : `exit code ${code}`;
      resolvePromise({ error: `${why}${line === undefined ? ", no result" : ""}\n${stderr.trim()}`.trim() });
    });
  });
}

/** How to start the `sluice` CLI: the esbuild bundle of src/cli/entry.ts, or tsx on the source, with the bin's {@link CLI_NODE_FLAGS}. */
export async function sluiceCommand(): Promise<{ args: string[]; mode: "bundled" | "tsx" }> {
  const entry = join(REPO_DIR, "src", "cli", "entry.ts");
  try {
    const esbuild = await import("esbuild");
    const outfile = join(BUILD_DIR, "sluice-cli.mjs");
    await esbuild.build({
      entryPoints: [{ in: entry, out: "sluice-cli" }, WORKER_ENTRY],
      outdir: BUILD_DIR,
      outExtension: { ".js": ".mjs" },
      bundle: true,
      platform: "node",
      format: "esm",
      target: "node20",
      packages: "external",
      sourcemap: "linked",
      logLevel: "error",
      absWorkingDir: REPO_DIR,
    });
    return { args: [...CLI_NODE_FLAGS, outfile], mode: "bundled" };
  } catch {
    return { args: [...CLI_NODE_FLAGS, "--conditions=sluice-source", "--import", "tsx", entry], mode: "tsx" };
  }
}

/**
 * The `sluice` CLI as it was at git ref `ref`: that ref's src/ extracted under bench/data/ and
 * bundled with esbuild (dependencies from today's node_modules), started with today's bin's
 * {@link CLI_NODE_FLAGS}. For a before/after in one run.
 */
export async function sluiceCommandAt(ref: string): Promise<{ args: string[] }> {
  const esbuild = await import("esbuild");
  const tree = join(BUILD_DIR, "base-src");
  rmSync(tree, { recursive: true, force: true });
  mkdirSync(tree, { recursive: true });
  const archive = execFileSync("git", ["archive", ref, "src"], { cwd: REPO_DIR, maxBuffer: 256 * 1024 * 1024 });
  execFileSync("tar", ["-x", "-C", tree], { input: archive });
  const outfile = join(BUILD_DIR, "sluice-cli-base.mjs");
  await esbuild.build({
    entryPoints: [join(tree, "src", "cli", "entry.ts")],
    outfile,
    bundle: true,
    platform: "node",
    format: "esm",
    target: "node20",
    packages: "external",
    sourcemap: "linked",
    logLevel: "error",
    absWorkingDir: REPO_DIR,
  });
  return { args: [...CLI_NODE_FLAGS, outfile] };
}
