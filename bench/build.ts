/**
 * Prepares how each contender child is started. Contenders are bundled with esbuild (tsx's own
 * compiler) into plain ESM under `bench/data/build/`, so a child is a bare `node` process: no tsx
 * loader in its memory, no compile work in it at all. Without esbuild the children run under
 * `node --import tsx`, which still keeps compile time out of the timing (children time
 * themselves after loading) but adds the loader's ~30-45 MiB to every peak RSS.
 */
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { DATA_DIR } from "./data-gen.js";

const BENCH_DIR = dirname(fileURLToPath(import.meta.url));
/** The repository root: children run here, so `node_modules` resolves. */
export const REPO_DIR = dirname(BENCH_DIR);
const BUILD_DIR = join(DATA_DIR, "build");

/** The contenders, by file name under bench/contenders/. */
export const CONTENDERS = ["plain-loop", "node-stream", "sluice"] as const;
export type ContenderName = (typeof CONTENDERS)[number];

/** How to start contender children: node arguments before the task argument. */
export interface Launcher {
  readonly mode: "bundled" | "tsx";
  args(name: ContenderName): string[];
}

/**
 * Bundles the contenders (current src/ included) with linked source maps, so a CPU profile of a
 * child maps back to src/ file:line. Falls back to tsx when esbuild cannot be loaded.
 */
export async function prepareLaunch(): Promise<Launcher> {
  let esbuild: typeof import("esbuild");
  try {
    esbuild = await import("esbuild");
  } catch {
    return { mode: "tsx", args: (name) => ["--import", "tsx", join(BENCH_DIR, "contenders", `${name}.ts`)] };
  }
  await esbuild.build({
    entryPoints: CONTENDERS.map((name) => join(BENCH_DIR, "contenders", `${name}.ts`)),
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
