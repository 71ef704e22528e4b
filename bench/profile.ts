/**
 * Profiles one contender (default `sluice`) with `node --cpu-prof` on the bench file and prints
 * the top functions by self time, mapped through the bundle's source map to src/ file:line.
 *
 * `node --import tsx bench/profile.ts [contender] [top]`; env BENCH_RECORDS (2000000).
 * The raw `.cpuprofile` stays in bench/data/prof/ (open it in Chrome DevTools or speedscope).
 */
import { spawnSync } from "node:child_process";
import { mkdirSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { SourceMap, type SourceMapPayload } from "node:module";
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { CONTENDERS, prepareLaunch, REPO_DIR, type ContenderName } from "./build.js";
import { DATA_DIR, ensureDataFile } from "./data-gen.js";
import type { Task } from "./contenders/protocol.js";

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
  columnNumber: number;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}
interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

const name = (process.argv[2] ?? "sluice") as ContenderName;
if (!CONTENDERS.includes(name)) throw new Error(`unknown contender ${name}; one of ${CONTENDERS.join(", ")}`);
const top = Number(process.argv[3] ?? 30);
const records = Number(process.env.BENCH_RECORDS ?? 2_000_000);

const launcher = await prepareLaunch(CONTENDERS);
if (launcher.mode !== "bundled") throw new Error("profiling needs the esbuild bundle (for source-mapped locations)");
const { file } = ensureDataFile(records);
const profDir = join(DATA_DIR, "prof");
rmSync(profDir, { recursive: true, force: true });
mkdirSync(profDir, { recursive: true });
const task: Task = { file, records, transform: join(REPO_DIR, "bench", process.env.BENCH_TRANSFORM ?? "enrich.mjs"), ...(process.env.BENCH_WORKERS !== undefined && { workers: process.env.BENCH_WORKERS === "auto" ? "auto" : Number(process.env.BENCH_WORKERS) }) };
const run = spawnSync(process.execPath, ["--cpu-prof", "--cpu-prof-dir", profDir, ...launcher.args(name), JSON.stringify(task)], {
  cwd: REPO_DIR,
  encoding: "utf8",
});
if (run.status !== 0) throw new Error(`${name} failed: ${run.stderr}`);
process.stdout.write(run.stdout);

const profFile = readdirSync(profDir).find((f) => f.endsWith(".cpuprofile"));
if (profFile === undefined) throw new Error("no profile written");
const profile = JSON.parse(readFileSync(join(profDir, profFile), "utf8")) as CpuProfile;

// Self time per node: each sample's delta is charged to the node it hit.
const selfUs = new Map<number, number>();
profile.samples.forEach((id, i) => selfUs.set(id, (selfUs.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0)));
const totalUs = profile.endTime - profile.startTime;

const maps = new Map<string, SourceMap | undefined>();
function sourceMapFor(url: string): SourceMap | undefined {
  if (!maps.has(url)) {
    let map: SourceMap | undefined;
    if (url.startsWith("file://")) {
      try {
        map = new SourceMap(JSON.parse(readFileSync(`${fileURLToPath(url)}.map`, "utf8")) as SourceMapPayload);
      } catch {
        map = undefined;
      }
    }
    maps.set(url, map);
  }
  return maps.get(url);
}

function locate(frame: CallFrame): string {
  if (frame.url === "") return "(native)";
  const map = sourceMapFor(frame.url);
  if (map !== undefined && frame.lineNumber >= 0) {
    const entry = map.findEntry(frame.lineNumber, frame.columnNumber) as { originalSource?: string; originalLine?: number };
    if (entry.originalSource !== undefined && entry.originalLine !== undefined) {
      const source = entry.originalSource.startsWith("file://") ? fileURLToPath(entry.originalSource) : join(DATA_DIR, "build", entry.originalSource);
      return `${relative(REPO_DIR, source)}:${entry.originalLine + 1}`;
    }
  }
  const path = frame.url.startsWith("file://") ? relative(REPO_DIR, fileURLToPath(frame.url)) : frame.url;
  return `${path}:${frame.lineNumber + 1}`;
}

const byFunction = new Map<string, number>();
for (const node of profile.nodes) {
  const us = selfUs.get(node.id) ?? 0;
  if (us === 0) continue;
  const key = `${node.callFrame.functionName || "(anonymous)"}\t${locate(node.callFrame)}`;
  byFunction.set(key, (byFunction.get(key) ?? 0) + us);
}
const rows = [...byFunction.entries()].sort((a, b) => b[1] - a[1]).slice(0, top);
console.log(`\n${name}: ${(totalUs / 1e6).toFixed(2)} s profiled (whole process), top ${top} by self time; profile in ${relative(REPO_DIR, join(profDir, profFile))}\n`);
console.log(`${"self ms".padStart(9)}  ${"self %".padStart(6)}  function  location`);
for (const [key, us] of rows) {
  const [fn, where] = key.split("\t");
  console.log(`${(us / 1000).toFixed(0).padStart(9)}  ${((us / totalUs) * 100).toFixed(1).padStart(6)}  ${fn}  ${where}`);
}
