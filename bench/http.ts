/**
 * The HTTP ingest section of `npm run bench` (issue #4): the same load against two servers, each a
 * child process, in the same run:
 *
 *   (a) a bare `node:http` server (bench/contenders/http-bare.ts) that reads the body, parses every
 *       NDJSON line with `JSON.parse` and answers `202 {"accepted":N}`, keeping nothing: the ceiling;
 *   (b) the real `sluice run` CLI: `http` source -> `buffer.durable` (`fsync: true`, in a fresh temp
 *       directory) -> `blackhole` sink, every other setting at its default; it answers 202 only
 *       once the records are on disk and datasynced.
 *
 * Load: an `undici` Pool in this process, BENCH_HTTP_CONNECTIONS keep-alive connections (no
 * pipelining), one request in flight on each, back to back: `POST /v1/events` with an NDJSON body
 * of BENCH_HTTP_BATCH sensor readings (~190 bytes each, unique ids within a body; 64 bodies built
 * once, before any timing, and sent in turn, so the client spends its CPU on HTTP, not on JSON).
 * Per contender run: BENCH_HTTP_WARMUP_SECONDS of load (JIT, connections, buffer segments), then
 * BENCH_HTTP_SECONDS measured. A request counts when its answer was read inside the measured
 * window; its latency runs from just before it was sent to its whole answer read. records/s is
 * records answered 202 in the window / window length; p50 and p99 over those requests. Server CPU
 * is the child's own (user + system, all threads, from /proc) over the window; records per
 * server-CPU-second is the steadier figure on a shared machine, and the target line shows both.
 *
 * Checks: every answer must be `202 {"accepted":<batch>}` and no request may fail (else the run
 * fails). sluice is started with `--summary-json`, waited for on `/health/ready`, stopped with
 * SIGTERM after the load and must exit 0 having received exactly the records it answered 202 for
 * and delivered all of them (none dead-lettered or dropped). Rounds interleave the contenders;
 * figures are medians over BENCH_HTTP_RUNS. The client and both servers share the machine's
 * cores, so on a small machine the client's CPU (printed) is part of the picture.
 *
 * Env: BENCH_HTTP=0 skips the section; BENCH_HTTP_SECONDS (10); BENCH_HTTP_WARMUP_SECONDS (2);
 * BENCH_HTTP_RUNS (3, about 13 s per contender run); BENCH_HTTP_CONNECTIONS (32); BENCH_HTTP_BATCH
 * (100 records a request); BENCH_HTTP_CPU_PROF=<dir> starts both servers with `node --cpu-prof`
 * writing there (figures are then slower; for finding hot spots, not for the table);
 * BENCH_HTTP_BASE_REF=<git ref> adds sluice built from that ref's src/ as a third contender, in
 * every round, and reports the median of the per-round ratios of records per server-CPU-second
 * (now against that ref): a before/after in one run.
 * Exit code non-zero only when a contender run failed.
 *
 * Standalone (this section only): `node --import tsx bench/http.ts`.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { createServer } from "node:net";
import { cpus, loadavg, tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { Pool, request } from "undici";
import { mulberry32 } from "../src/core/random.js";
import type { RunSummary } from "../src/observability/metrics.js";
import { prepareLaunch, REPO_DIR, sluiceCommand, sluiceCommandAt, type Launcher } from "./build.js";
import { fmtInt, fmtRatio, intEnv, median, progress } from "./report.js";

/** Issue 15: HTTP ingest into the durable buffer at 0.6x the bare server or better. */
const TARGETS = { sluiceVsBare: 0.6 };
// Distinct request bodies built up front and sent in turn.
const BODIES = 64;
// How long a server may take to listen (sluice: load config, open the log, bind), and to exit after SIGTERM.
const START_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 60_000;
// A run stops sending after this many failed requests (a dead server would fail each at once).
const MAX_ERRORS = 100;
// 1-minute load average per core above which the report warns that other work competed for the CPU.
const BUSY_LOAD_PER_CORE = 0.75;
// USER_HZ, the unit of /proc/<pid>/stat times.
const CLOCK_TICKS_PER_SECOND = 100;
// Lines of a child's stderr kept for the failure message.
const STDERR_TAIL_LINES = 20;

// Read at load, so a bad value stops `npm run bench` before the first section runs, not after it.
const seconds = intEnv("BENCH_HTTP_SECONDS", 10, 1);
const warmupSeconds = intEnv("BENCH_HTTP_WARMUP_SECONDS", 2, 0);
const runs = intEnv("BENCH_HTTP_RUNS", 3, 1);
const connections = intEnv("BENCH_HTTP_CONNECTIONS", 32, 1);
const batch = intEnv("BENCH_HTTP_BATCH", 100, 1);
const profileDir = process.env.BENCH_HTTP_CPU_PROF ? resolve(process.env.BENCH_HTTP_CPU_PROF) : undefined;
const baseRef = process.env.BENCH_HTTP_BASE_REF || undefined;

const fmtMs = (n: number): string => n.toFixed(n < 10 ? 2 : 1);

/** Nearest-rank percentile of ascending `sorted`. */
function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

const errorText = (err: unknown): string => (err instanceof Error ? err.message || err.constructor.name : String(err));

/** NDJSON request bodies of `batch` sensor readings each, deterministic, ids unique across bodies. */
function buildBodies(): { bodies: Buffer[]; recordBytes: number } {
  const random = mulberry32(4);
  const base = Date.UTC(2024, 0, 1);
  const bodies: Buffer[] = [];
  let seq = 0;
  for (let b = 0; b < BODIES; b++) {
    const lines: string[] = [];
    for (let i = 0; i < batch; i++) {
      seq++;
      const sensor = Math.floor(random() * 100);
      lines.push(
        JSON.stringify({
          id: `http-${String(seq).padStart(8, "0")}`,
          sensor: `sensor-${String(sensor).padStart(3, "0")}`,
          site: `plant-${sensor % 7}`,
          kind: "temperature",
          value: Math.round((15 + random() * 15) * 100) / 100,
          unit: "C",
          battery: Math.round(random() * 100) / 100,
          rssi: -40 - Math.floor(random() * 50),
          firmware: "2.4.1",
          ts: new Date(base + seq * 100).toISOString(),
          seq,
        }),
      );
    }
    bodies.push(Buffer.from(`${lines.join("\n")}\n`));
  }
  const bytes = bodies.reduce((sum, body) => sum + body.length, 0);
  return { bodies, recordBytes: bytes / (BODIES * batch) };
}

/** A loopback port nothing listens on right now. */
function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => (typeof address === "object" && address !== null ? resolvePort(address.port) : reject(new Error("no port"))));
    });
  });
}

/** CPU seconds (user + system, all threads) a live process has used; undefined when /proc cannot say. */
function processCpuSeconds(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the pid and comm.
    return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS_PER_SECOND;
  } catch {
    return undefined;
  }
}

/** A server child: its port, and how it ended. */
interface ServerChild {
  readonly port: number;
  readonly pid: number;
  /** Sends SIGTERM and waits; resolves with why the stop was not clean, or undefined. */
  stop(): Promise<string | undefined>;
}

/** A spawned child with its stderr tail kept and its exit awaited. */
function spawnServer(args: string[], cwd: string): { child: ChildProcess; exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>; stderrTail: () => string; stdout: () => string } {
  const prof = profileDir === undefined ? [] : ["--cpu-prof", "--cpu-prof-dir", profileDir];
  const child = spawn(process.execPath, [...prof, ...args], { cwd, stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  child.stdout!.setEncoding("utf8").on("data", (d: string) => (stdout += d));
  child.stderr!.setEncoding("utf8").on("data", (d: string) => {
    stderr += d;
    if (stderr.length > 64 * 1024) stderr = stderr.slice(-32 * 1024);
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolveExit) => {
    child.on("error", () => resolveExit({ code: null, signal: null }));
    child.on("close", (code, signal) => resolveExit({ code, signal }));
  });
  const stderrTail = (): string => stderr.trim().split("\n").slice(-STDERR_TAIL_LINES).join("\n");
  return { child, exited, stderrTail, stdout: () => stdout };
}

/** SIGTERM, then waits up to STOP_TIMEOUT_MS (then SIGKILL); resolves with the exit, or undefined when it had to be killed. */
async function terminate(child: ChildProcess, exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>): Promise<{ code: number | null; signal: NodeJS.Signals | null } | undefined> {
  child.kill("SIGTERM");
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<undefined>((resolveTimeout) => (timer = setTimeout(() => resolveTimeout(undefined), STOP_TIMEOUT_MS)));
  const outcome = await Promise.race([exited, timedOut]);
  clearTimeout(timer);
  if (outcome === undefined) {
    child.kill("SIGKILL");
    await exited;
  }
  return outcome;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Starts the bare server and waits for its `LISTENING <port>` line. */
async function startBare(launcher: Launcher<"http-bare">): Promise<ServerChild> {
  const s = spawnServer([...launcher.args("http-bare"), JSON.stringify({ port: 0 })], REPO_DIR);
  const deadline = performance.now() + START_TIMEOUT_MS;
  let port: number | undefined;
  let exited = false;
  void s.exited.then(() => (exited = true));
  while (port === undefined) {
    const m = /^LISTENING (\d+)$/m.exec(s.stdout());
    if (m) port = Number(m[1]);
    else if (exited) throw new Error(`bare server exited before listening\n${s.stderrTail()}`);
    else if (performance.now() > deadline) {
      s.child.kill("SIGKILL");
      await s.exited;
      throw new Error(`bare server did not listen within ${START_TIMEOUT_MS / 1000} s\n${s.stderrTail()}`);
    } else await sleep(20);
  }
  return {
    port,
    pid: s.child.pid!,
    async stop() {
      const outcome = await terminate(s.child, s.exited);
      if (outcome === undefined) return `did not exit within ${STOP_TIMEOUT_MS / 1000} s of SIGTERM`;
      if (outcome.code !== 0) return `exit ${outcome.signal ?? `code ${outcome.code}`} after SIGTERM\n${s.stderrTail()}`;
      return undefined;
    },
  };
}

/** What a sluice run must have done, read from its summary once it exited. */
interface SluiceCheck {
  /** Records the client got a 202 for, warm-up and window alike. */
  accepted: number;
}

/** Starts `sluice run` on a fresh config and data directory and waits for `/health/ready`. */
async function startSluice(command: string[], check: SluiceCheck): Promise<ServerChild> {
  const dir = await mkdtemp(join(tmpdir(), "sluice-bench-http-"));
  const port = await freePort();
  const config = join(dir, "pipeline.yaml");
  const summaryFile = join(dir, "summary.json");
  writeFileSync(
    config,
    [
      `data_dir: ${JSON.stringify(join(dir, "data"))}`,
      "buffer:",
      `  durable: { path: ${JSON.stringify(join(dir, "buffer"))}, fsync: true }`,
      "sources:",
      `  ingest: { type: http, listen: "127.0.0.1:${port}" }`,
      "sinks:",
      "  void: { type: blackhole }",
      "observability: { log_level: warn, progress: never }",
      "",
    ].join("\n"),
  );
  const s = spawnServer([...command, "run", config, "--summary-json", summaryFile], dir);
  let exited = false;
  void s.exited.then(() => (exited = true));
  const deadline = performance.now() + START_TIMEOUT_MS;
  try {
    for (;;) {
      if (exited) throw new Error(`sluice exited before it was ready\n${s.stderrTail()}`);
      if (performance.now() > deadline) {
        s.child.kill("SIGKILL");
        await s.exited;
        throw new Error(`sluice was not ready within ${START_TIMEOUT_MS / 1000} s\n${s.stderrTail()}`);
      }
      try {
        const res = await request(`http://127.0.0.1:${port}/health/ready`, { headersTimeout: 1000, bodyTimeout: 1000 });
        await res.body.dump();
        if (res.statusCode === 200) break;
      } catch {
        // Not listening yet.
      }
      await sleep(50);
    }
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
  return {
    port,
    pid: s.child.pid!,
    async stop() {
      try {
        const outcome = await terminate(s.child, s.exited);
        if (outcome === undefined) return `did not exit within ${STOP_TIMEOUT_MS / 1000} s of SIGTERM\n${s.stderrTail()}`;
        if (outcome.code !== 0) return `exit ${outcome.signal ?? `code ${outcome.code}`} after SIGTERM\n${s.stderrTail()}`;
        let summary: RunSummary;
        try {
          summary = JSON.parse(await readFile(summaryFile, "utf8")) as RunSummary;
        } catch (err) {
          return `no readable --summary-json: ${errorText(err)}`;
        }
        const r = summary.records;
        if (r.received !== check.accepted || r.delivered !== r.received || r.dead_lettered + r.dropped !== 0) {
          return `summary does not match the ${fmtInt(check.accepted)} records answered 202: ${JSON.stringify(r)}`;
        }
        return undefined;
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    },
  };
}

/** What one load run measured. */
interface LoadResult {
  /** Records answered 202 in the measured window. */
  readonly records: number;
  /** Requests answered (any status) in the measured window. */
  readonly requests: number;
  /** Every answer not 202, warm-up included. */
  readonly non202: number;
  /** Requests that failed (connection error, or a 202 with another body), warm-up included. */
  readonly errors: number;
  /** Records answered 202 over the whole run, warm-up included. */
  readonly acceptedTotal: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly maxMs: number;
  /** Server CPU over the window, in cores (CPU-s per s); undefined when /proc cannot say. */
  readonly serverCores: number | undefined;
  /** This process's CPU over the window (the client), in cores. */
  readonly clientCores: number;
  /** The first few problems, for the report. */
  readonly problems: string[];
}

/** Drives the load against one server: warm-up, then the measured window. */
async function drive(port: number, serverPid: number, bodies: Buffer[], onTick: (text: string) => void): Promise<LoadResult> {
  const pool = new Pool(`http://127.0.0.1:${port}`, { connections, pipelining: 1, keepAliveTimeout: 60_000, keepAliveMaxTimeout: 60_000 });
  const expected = JSON.stringify({ accepted: batch });
  const started = performance.now();
  const windowStart = started + warmupSeconds * 1000;
  const windowEnd = windowStart + seconds * 1000;
  let latencies = new Float64Array(16_384);
  let count = 0;
  let records = 0;
  let requests = 0;
  let non202 = 0;
  let errors = 0;
  let acceptedTotal = 0;
  let next = 0;
  let stop = false;
  const problems: string[] = [];
  const note = (text: string): void => {
    if (problems.length < 5 && !problems.includes(text)) problems.push(text);
  };

  let cpuAtStart: { server: number | undefined; client: NodeJS.CpuUsage } | undefined;
  let cpuAtEnd: { server: number | undefined; client: NodeJS.CpuUsage } | undefined;
  const startTimer = setTimeout(() => (cpuAtStart = { server: processCpuSeconds(serverPid), client: process.cpuUsage() }), windowStart - started);
  const endTimer = setTimeout(() => (cpuAtEnd = { server: processCpuSeconds(serverPid), client: process.cpuUsage() }), windowEnd - started);
  let lastRecords = 0;
  let lastTick = started;
  let tickRecords = 0;
  const ticker = setInterval(() => {
    const now = performance.now();
    const rate = ((tickRecords - lastRecords) * 1000) / (now - lastTick);
    lastRecords = tickRecords;
    lastTick = now;
    const phase = now < windowStart ? `warm-up ${((now - started) / 1000).toFixed(0)}/${warmupSeconds} s` : `measuring ${Math.min(seconds, (now - windowStart) / 1000).toFixed(0)}/${seconds} s`;
    onTick(`${phase}, ${fmtInt(rate)} records/s${non202 + errors > 0 ? `, ${non202} non-202, ${errors} errors` : ""}`);
  }, 500);

  const worker = async (): Promise<void> => {
    while (!stop && performance.now() < windowEnd) {
      const body = bodies[next++ % bodies.length]!;
      const sent = performance.now();
      try {
        const res = await pool.request({ path: "/v1/events", method: "POST", headers: { "content-type": "application/x-ndjson" }, body });
        const text = await res.body.text();
        const done = performance.now();
        const inWindow = done >= windowStart && done <= windowEnd;
        if (inWindow) requests++;
        if (res.statusCode !== 202) {
          non202++;
          note(`${res.statusCode} ${text.slice(0, 200)}`);
        } else if (text !== expected) {
          errors++;
          note(`202 with ${text.slice(0, 200)}`);
        } else {
          acceptedTotal += batch;
          tickRecords += batch;
          if (inWindow) {
            records += batch;
            if (count === latencies.length) {
              const grown = new Float64Array(count * 2);
              grown.set(latencies);
              latencies = grown;
            }
            latencies[count++] = done - sent;
          }
        }
      } catch (err) {
        errors++;
        note(errorText(err));
      }
      if (errors + non202 >= MAX_ERRORS) stop = true;
    }
  };
  try {
    await Promise.all(Array.from({ length: connections }, worker));
  } finally {
    clearInterval(ticker);
    clearTimeout(startTimer);
    clearTimeout(endTimer);
    await pool.close().catch(() => undefined);
  }
  const sorted = latencies.subarray(0, count).sort();
  const [a, b] = [cpuAtStart, cpuAtEnd];
  const clientSeconds = a !== undefined && b !== undefined ? (b.client.user - a.client.user + b.client.system - a.client.system) / 1e6 : Number.NaN;
  const serverSeconds = a?.server !== undefined && b?.server !== undefined ? b.server - a.server : undefined;
  if (stop) note(`stopped after ${MAX_ERRORS} failed requests`);
  return {
    records,
    requests,
    non202,
    errors,
    acceptedTotal,
    p50Ms: percentile(sorted, 50),
    p99Ms: percentile(sorted, 99),
    maxMs: count === 0 ? Number.NaN : sorted[count - 1]!,
    serverCores: serverSeconds === undefined ? undefined : serverSeconds / seconds,
    clientCores: clientSeconds / seconds,
    problems,
  };
}

type ContenderId = "bare" | "sluice" | "base";
const LABELS: Record<ContenderId, string> = {
  bare: "bare node:http (parse, 202, no durability)",
  sluice: "sluice http -> durable (fsync) -> blackhole",
  base: `sluice at ${baseRef ?? "-"}, same pipeline`,
};

interface Outcome {
  readonly runs: LoadResult[];
  /** The same runs by round number. */
  readonly rounds: Map<number, LoadResult>;
  readonly failed: string[];
  /** Over every run, failed ones included. */
  non202: number;
  errors: number;
}

/**
 * Runs the HTTP section and prints its table. Resolves with the exit code it asks for: 0, or 1
 * when a contender run failed.
 */
export async function runHttpBench(): Promise<number> {
  if (process.env.BENCH_HTTP === "0") {
    console.log("\nsluice bench, HTTP ingest: skipped (BENCH_HTTP=0)");
    return 0;
  }
  if (profileDir !== undefined) mkdirSync(profileDir, { recursive: true });
  const { bodies, recordBytes } = buildBodies();

  progress.live("bundling the HTTP contenders");
  const launcher = await prepareLaunch(["http-bare"] as const);
  const sluice = await sluiceCommand();
  const base = baseRef === undefined ? undefined : await sluiceCommandAt(baseRef);
  progress.line(
    launcher.mode === "bundled" && sluice.mode === "bundled"
      ? "HTTP contenders bundled with esbuild (bare server, sluice CLI); servers run as plain `node`"
      : "esbuild unavailable: HTTP servers run under `node --import tsx`",
  );

  const outcomes = new Map<ContenderId, Outcome>([
    ["bare", { runs: [], rounds: new Map(), failed: [], non202: 0, errors: 0 }],
    ["sluice", { runs: [], rounds: new Map(), failed: [], non202: 0, errors: 0 }],
    ["base", { runs: [], rounds: new Map(), failed: [], non202: 0, errors: 0 }],
  ]);
  const order: ContenderId[] = base === undefined ? ["bare", "sluice"] : ["bare", "base", "sluice"];
  const total = runs * order.length;
  const loads: number[] = [];
  let n = 0;

  const runOne = async (id: ContenderId, round: number): Promise<void> => {
    n++;
    const tag = `[http ${`${n}/${total}]`.padEnd(String(total).length * 2 + 2)} ${LABELS[id].padEnd(43)} run ${round}/${runs}`;
    const outcome = outcomes.get(id)!;
    loads.push(loadavg()[0]!);
    progress.live(`${tag} ... starting the server`);
    const check: SluiceCheck = { accepted: 0 };
    let server: ServerChild;
    try {
      server = id === "bare" ? await startBare(launcher) : await startSluice(id === "base" ? base!.args : sluice.args, check);
    } catch (err) {
      outcome.failed.push(errorText(err));
      progress.line(`${tag}  FAILED: ${errorText(err)}`);
      return;
    }
    let result: LoadResult | undefined;
    let problem: string | undefined;
    try {
      result = await drive(server.port, server.pid, bodies, (text) => progress.live(`${tag}  ${text}`));
      check.accepted = result.acceptedTotal;
    } catch (err) {
      problem = `load failed: ${errorText(err)}`;
    }
    if (result !== undefined) {
      outcome.non202 += result.non202;
      outcome.errors += result.errors;
    }
    progress.live(`${tag} ... stopping the server`);
    const stopProblem = await server.stop();
    if (result !== undefined && (result.non202 > 0 || result.errors > 0)) {
      problem = `${result.non202} non-202 answer(s), ${result.errors} failed request(s): ${result.problems.join("; ")}`;
    }
    if (result !== undefined && result.records === 0) problem ??= "no request answered 202 inside the measured window";
    if (stopProblem !== undefined) problem = problem === undefined ? stopProblem : `${problem}; ${stopProblem}`;
    if (problem !== undefined || result === undefined) {
      outcome.failed.push(problem ?? "no result");
      progress.line(`${tag}  FAILED: ${problem ?? "no result"}`);
      return;
    }
    outcome.runs.push(result);
    outcome.rounds.set(round, result);
    progress.line(
      `${tag}  ${fmtInt(result.records / seconds).padStart(9)} records/s  p50 ${fmtMs(result.p50Ms)} ms  p99 ${fmtMs(result.p99Ms)} ms  server CPU ${result.serverCores?.toFixed(2) ?? "-"}  client CPU ${result.clientCores.toFixed(2)}`,
    );
  };

  // Rounds interleave the contenders, so drift in the machine (heat, neighbours) hits both alike.
  for (let round = 1; round <= runs; round++) {
    for (const id of order) await runOne(id, round);
  }

  const stat = (id: ContenderId, f: (r: LoadResult) => number | undefined): number | undefined => {
    const values = outcomes.get(id)!.runs.map(f);
    return values.length === 0 || values.some((v) => v === undefined || Number.isNaN(v)) ? undefined : median(values as number[]);
  };
  const bareRate = stat("bare", (r) => r.records / seconds);
  const perCpu = (r: LoadResult): number | undefined => (r.serverCores === undefined || r.serverCores === 0 ? undefined : r.records / seconds / r.serverCores);
  const header = ["contender", "records/s", "vs bare", "requests/s", "p50 ms", "p99 ms", "non-202", "errors", "server CPU", "client CPU", "records/server-CPU-s"];
  const rows = order.map((id) => {
    const o = outcomes.get(id)!;
    const rate = stat(id, (r) => r.records / seconds);
    const cell = (v: number | undefined, f: (x: number) => string): string => (v === undefined ? "-" : f(v));
    return [
      `${LABELS[id]}${o.failed.length > 0 ? " (FAILED)" : ""}`,
      cell(rate, fmtInt),
      rate === undefined || bareRate === undefined ? "-" : fmtRatio(rate / bareRate),
      cell(stat(id, (r) => r.requests / seconds), fmtInt),
      cell(stat(id, (r) => r.p50Ms), fmtMs),
      cell(stat(id, (r) => r.p99Ms), fmtMs),
      fmtInt(o.non202),
      fmtInt(o.errors),
      cell(stat(id, (r) => r.serverCores), (x) => x.toFixed(2)),
      cell(stat(id, (r) => r.clientCores), (x) => x.toFixed(2)),
      cell(stat(id, perCpu), fmtInt),
    ];
  });
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
  const render = (cells: string[]): string => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join("  ");

  const out: string[] = [];
  out.push("");
  out.push(
    `sluice bench, HTTP ingest: POST NDJSON, ${batch} records (~${Math.round(recordBytes)} bytes each, ${fmtInt((recordBytes * batch) / 1024)} KiB) a request, ` +
      `${connections} keep-alive connections (undici Pool); node ${process.version}, ${cpus().length} x ${cpus()[0]?.model.trim() ?? "cpu"}`,
  );
  out.push(`each run: a fresh server process, ${warmupSeconds} s warm-up, then ${seconds} s measured; figures are medians of ${runs} run(s)`);
  out.push("latency: per request, from just before sending to its whole answer read; CPU: cores used over the window (CPU-s per s), the server child's and the load client's");
  out.push("records/server-CPU-s: records per second of the server's CPU time (user + system, all threads), the steadier figure when the machine is shared");
  out.push("non-202, errors: totals over every run, warm-ups included; any makes the run fail");
  if (profileDir !== undefined) out.push(`warning: servers ran under --cpu-prof (profiles in ${profileDir}); figures are slower than without`);
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
  const sluiceRate = stat("sluice", (r) => r.records / seconds);
  const ratio = sluiceRate !== undefined && bareRate !== undefined ? sluiceRate / bareRate : undefined;
  const verdict = ratio === undefined ? "n/a " : ratio >= TARGETS.sluiceVsBare ? "PASS" : "FAIL";
  out.push("targets:");
  const sluiceCpu = stat("sluice", perCpu);
  const bareCpu = stat("bare", perCpu);
  const byCpu = sluiceCpu === undefined || bareCpu === undefined ? "" : ` (by server CPU time: ${fmtRatio(sluiceCpu / bareCpu)})`;
  out.push(`  ${verdict}  sluice >= ${TARGETS.sluiceVsBare}x bare node:http records/s: ${ratio === undefined ? "not measured" : fmtRatio(ratio)}${byCpu}`);
  if (base !== undefined) {
    // Per round, so a busier round weighs on both sides of its ratio alike.
    const then = outcomes.get("base")!.rounds;
    const ratios: number[] = [];
    for (const [round, result] of outcomes.get("sluice")!.rounds) {
      const a = perCpu(result);
      const b = then.has(round) ? perCpu(then.get(round)!) : undefined;
      if (a !== undefined && b !== undefined) ratios.push(a / b);
    }
    const shown = ratios.map((r) => r.toFixed(2)).join(", ");
    out.push(`  info  sluice now vs at ${baseRef}, records per server-CPU-second: ${ratios.length === 0 ? "not measured" : `${fmtRatio(median(ratios))} (median of per-round ratios ${shown})`}`);
  }
  console.log(out.join("\n"));

  const failures = order.flatMap((id) => outcomes.get(id)!.failed.map((f) => `${LABELS[id]}: ${f}`));
  if (failures.length > 0) {
    console.error(`\n${failures.length} HTTP contender run(s) failed:\n${failures.map((f) => `  ${f}`).join("\n")}`);
    return 1;
  }
  return 0;
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) {
  process.exitCode = await runHttpBench();
}
