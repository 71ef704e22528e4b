/**
 * The broker section of `npm run bench` (issue #13): sluice's `redis_streams` and `nats_jetstream`
 * sources next to what a Node user writes without it, in the same run, on the machine's Redis and
 * NATS, every contender running the same transform (bench/enrich-copy.mjs, the copying one-liner):
 *
 *   Redis: BENCH_BROKERS_RECORDS (1,000,000) entries preloaded (pipelined XADD) into a fresh stream;
 *     (a) the hand-written loop (bench/contenders/redis-loop.ts): XREADGROUP COUNT 1000 + parse +
 *         transform + XACK, serially;
 *     (b) `sluice run`: `redis_streams` source -> module transform -> `blackhole` sink;
 *     (c) BullMQ (bench/contenders/bullmq-worker.ts): BENCH_BROKERS_BULLMQ_JOBS (100,000) jobs
 *         added before the run (untimed), a Worker with BENCH_BROKERS_BULLMQ_CONCURRENCY (200; 100 to 1,000 measured alike here, 1 at half the rate).
 *   JetStream: BENCH_BROKERS_NATS_RECORDS (200,000) messages published into a fresh stream;
 *     (d) the hand-written pull consumer (bench/contenders/nats-loop.ts): fetch 1000 + parse +
 *         transform + `ack()` per message;
 *     (e) `sluice run`: `nats_jetstream` source -> module transform -> `blackhole` sink.
 *
 * Every run reads the whole stream through a consumer group (or durable consumer) of its own,
 * created just before it (sluice's own defaults otherwise), so all read the same entries.
 * Timing: whole processes, from spawn to exit, start-up and connecting included. The baselines exit
 * once they acked every entry; sluice runs until the runner, polling the group every
 * POLL_MS (for every contender alike), sees every entry delivered and none pending, then gets
 * SIGTERM and must exit 0 with a `--summary-json` that received and delivered every record. After
 * every run the group must be drained. CPU time and peak RSS come from `/usr/bin/time`.
 * Rounds alternate the order of the contenders; ratios are the median of the per-round ratios.
 * Then one more sluice Redis run over the last quarter of the stream: if its peak RSS is about the
 * full run's, memory is bounded by the buffer, not by the stream's length.
 *
 * Env: BENCH_BROKERS=0 skips the section; BENCH_BROKERS_RUNS (5); BENCH_BROKERS_REDIS=0,
 * BENCH_BROKERS_NATS=0, BENCH_BROKERS_BULLMQ=0 skip a part; BENCH_BROKERS_RECORDS,
 * BENCH_BROKERS_NATS_RECORDS, BENCH_BROKERS_BULLMQ_JOBS, BENCH_BROKERS_BULLMQ_CONCURRENCY;
 * BENCH_REDIS_URL (redis://127.0.0.1:6379), BENCH_NATS_URL (nats://127.0.0.1:4222);
 * BENCH_BROKERS_CPU_PROF=<dir> runs sluice under `node --cpu-prof` (figures then slower);
 * BENCH_BROKERS_BASE_REF=<git ref> adds sluice built from that ref's src/ as one more contender
 * in every round, for a before/after of a change in the same run (the report adds its ratio).
 * A service that cannot be reached skips its part, reason printed. The streams, groups, consumers
 * and queues are removed afterwards. Exit code non-zero only when a contender run failed.
 *
 * Standalone (this section only): `node --import tsx bench/brokers.ts`.
 */
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { cpus, loadavg, tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type { JetStreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { Redis } from "ioredis";
import type { RunSummary } from "../src/observability/metrics.js";
import { consumerDrained, createGroup, entryId, groupDrained, preloadBullmq, preloadJetStream, preloadRedis } from "./broker-preload.js";
import { prepareLaunch, REPO_DIR, sluiceCommand, sluiceCommandAt, type Launcher } from "./build.js";
import { DONE_PREFIX, type BrokerTask } from "./contenders/broker-protocol.js";
import { fmtInt, fmtRatio, intEnv, median, progress } from "./report.js";

const TARGETS = { vsRedisLoop: 1.2, vsBullmq: 10, vsNatsLoop: 1.2, rssGrowth: 0.1 };
/** How often the runner asks the broker whether a run has read and acked everything, ms. */
const POLL_MS = 10;
/** A run that takes longer is killed and counted as failed, ms. */
const RUN_TIMEOUT_MS = 10 * 60 * 1000;
const BUSY_LOAD_PER_CORE = 0.75;
const STDERR_TAIL = 4000;

const runs = intEnv("BENCH_BROKERS_RUNS", 5, 1);
const redisRecords = intEnv("BENCH_BROKERS_RECORDS", 1_000_000, 4);
const natsRecords = intEnv("BENCH_BROKERS_NATS_RECORDS", 200_000, 1);
const bullmqJobs = intEnv("BENCH_BROKERS_BULLMQ_JOBS", 100_000, 1);
const bullmqConcurrency = intEnv("BENCH_BROKERS_BULLMQ_CONCURRENCY", 200, 1);
const redisUrl = process.env.BENCH_REDIS_URL ?? "redis://127.0.0.1:6379";
const natsUrl = process.env.BENCH_NATS_URL ?? "nats://127.0.0.1:4222";
const profileDir = process.env.BENCH_BROKERS_CPU_PROF ? resolve(process.env.BENCH_BROKERS_CPU_PROF) : undefined;
const TRANSFORM = join(REPO_DIR, "bench", "enrich-copy.mjs");
const TIME = "/usr/bin/time";

const baseRef = process.env.BENCH_BROKERS_BASE_REF || undefined;

type Id = "redis-loop" | "sluice-redis" | "base-redis" | "bullmq" | "nats-loop" | "sluice-nats" | "base-nats";
const LABELS: Record<Id, string> = {
  "redis-loop": "hand-written XREADGROUP/XACK loop",
  "sluice-redis": "sluice redis_streams -> blackhole",
  "base-redis": `sluice at ${baseRef ?? "-"} (redis_streams)`,
  bullmq: `BullMQ worker, concurrency ${bullmqConcurrency}`,
  "nats-loop": "hand-written pull consumer, ack each",
  "sluice-nats": "sluice nats_jetstream -> blackhole",
  "base-nats": `sluice at ${baseRef ?? "-"} (nats_jetstream)`,
};
const REDIS_IDS: readonly Id[] = ["redis-loop", "sluice-redis", "base-redis"];
const NATS_IDS: readonly Id[] = ["nats-loop", "sluice-nats", "base-nats"];
const SLUICE_IDS: readonly Id[] = ["sluice-redis", "base-redis", "sluice-nats", "base-nats"];
const BASELINE_FILES = { "redis-loop": "redis-loop", bullmq: "bullmq-worker", "nats-loop": "nats-loop" } as const;
type BaselineFile = (typeof BASELINE_FILES)[keyof typeof BASELINE_FILES];

/** One run of one contender. */
interface Run {
  readonly records: number;
  /** Spawn to exit. */
  readonly seconds: number;
  /** User + system, from /usr/bin/time; undefined without it. */
  readonly cpuSeconds: number | undefined;
  readonly maxRssMiB: number | undefined;
  readonly load: number;
}

const errorText = (err: unknown): string => (err instanceof Error ? err.message || err.constructor.name : String(err));
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** The pid of the node process `/usr/bin/time` started (the one to signal). */
function childOf(pid: number): number | undefined {
  try {
    const first = readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(" ")[0];
    return first ? Number(first) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Runs `node <args>` as a whole process, timed from spawn to exit, polling `drained` every
 * POLL_MS meanwhile; with `stopWhenDrained`, sends SIGTERM once it says true. Resolves with the
 * run, or throws with the reason and the tail of stderr.
 */
async function timedProcess(args: string[], opts: { cwd: string; stopWhenDrained: boolean; drained: () => Promise<boolean> }): Promise<{ seconds: number; cpuSeconds?: number; maxRssMiB?: number; stdout: string }> {
  const useTime = existsSync(TIME);
  const timeFile = join(tmpdir(), `sluice-bench-time-${process.pid}-${Date.now()}`);
  const command = useTime ? [TIME, "-f", "%M %U %S", "-o", timeFile, process.execPath, ...args] : [process.execPath, ...args];
  const started = performance.now();
  const child = spawn(command[0]!, command.slice(1), { cwd: opts.cwd, stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  child.stdout.setEncoding("utf8").on("data", (d: string) => (stdout += d));
  child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr = (stderr + d).slice(-STDERR_TAIL)));
  let exited = false;
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolveExit) => {
    child.on("error", (err) => {
      stderr += err.message;
      exited = true;
      resolveExit({ code: null, signal: null });
    });
    child.on("close", (code, signal) => {
      exited = true;
      resolveExit({ code, signal });
    });
  });
  const target = (): number | undefined => (useTime ? childOf(child.pid!) : child.pid);
  let stopped = false;
  let pollError: string | undefined;
  const deadline = started + RUN_TIMEOUT_MS;
  while (!exited) {
    await sleep(POLL_MS);
    if (exited) break;
    if (performance.now() > deadline) {
      const pid = target();
      if (pid !== undefined) process.kill(pid, "SIGKILL");
      pollError = `killed after ${RUN_TIMEOUT_MS / 1000} s`;
      break;
    }
    if (!opts.stopWhenDrained || stopped) continue;
    try {
      if (await opts.drained()) {
        const pid = target();
        if (pid !== undefined) process.kill(pid, "SIGTERM");
        stopped = true;
      }
    } catch (err) {
      pollError = `asking the broker failed: ${errorText(err)}`;
    }
  }
  const { code, signal } = await exit;
  const seconds = (performance.now() - started) / 1000;
  let cpuSeconds: number | undefined;
  let maxRssMiB: number | undefined;
  if (useTime) {
    try {
      // The last line: "Command exited with non-zero status" may come first.
      const [rss, user, sys] = readFileSync(timeFile, "utf8").trim().split("\n").at(-1)!.split(" ").map(Number);
      maxRssMiB = rss! / 1024;
      cpuSeconds = user! + sys!;
    } catch {
      // Reported as "-".
    }
    await rm(timeFile, { force: true });
  }
  if (code !== 0 || pollError !== undefined) {
    throw new Error(`${pollError ?? (signal !== null ? `signal ${signal}` : `exit code ${code}`)}\n${stderr.trim()}`.trim());
  }
  return { seconds, cpuSeconds, maxRssMiB, stdout };
}

/** The broker connections of the runner. */
interface Services {
  redis: Redis | undefined;
  nats: { nc: NatsConnection; jsm: JetStreamManager; publish: (subject: string, data: string) => Promise<unknown> } | undefined;
  skipped: string[];
}

async function connectServices(): Promise<Services> {
  const skipped: string[] = [];
  let redis: Redis | undefined;
  if (process.env.BENCH_BROKERS_REDIS !== "0" || process.env.BENCH_BROKERS_BULLMQ !== "0") {
    const r = new Redis(redisUrl, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null, connectTimeout: 3000 });
    r.on("error", () => undefined);
    try {
      await r.connect();
      await r.ping();
      redis = r;
    } catch (err) {
      r.disconnect();
      skipped.push(`Redis part skipped, cannot reach ${redisUrl}: ${errorText(err)}`);
    }
  }
  let nats: Services["nats"];
  if (process.env.BENCH_BROKERS_NATS !== "0") {
    try {
      const [{ connect }, { jetstream, jetstreamManager }] = await Promise.all([import("@nats-io/transport-node"), import("@nats-io/jetstream")]);
      const nc = await connect({ servers: natsUrl, timeout: 3000 });
      const js = jetstream(nc);
      nats = { nc, jsm: await jetstreamManager(nc), publish: (subject, data) => js.publish(subject, data) };
    } catch (err) {
      skipped.push(`JetStream part skipped, cannot reach ${natsUrl}: ${errorText(err)}`);
    }
  }
  return { redis, nats, skipped };
}

/** Writes sluice's config for one run and returns the CLI arguments and where its summary goes. */
function sluiceConfig(dir: string, source: string): { config: string; summary: string } {
  const config = join(dir, "pipeline.yaml");
  const summary = join(dir, "summary.json");
  writeFileSync(
    config,
    [
      `data_dir: ${JSON.stringify(join(dir, "data"))}`,
      "sources:",
      `  in: ${source}`,
      "transforms:",
      `  - { type: module, path: ${JSON.stringify(TRANSFORM)} }`,
      "sinks:",
      "  void: { type: blackhole }",
      "observability: { log_level: warn, progress: never }",
      "",
    ].join("\n"),
  );
  return { config, summary };
}

/** Checks sluice's summary: every record received and delivered, none dead-lettered or dropped. */
function checkSummary(file: string, records: number): void {
  const summary = JSON.parse(readFileSync(file, "utf8")) as RunSummary;
  const r = summary.records;
  if (r.received !== records || r.delivered !== records || r.dead_lettered + r.dropped !== 0) {
    throw new Error(`sluice summary does not show ${fmtInt(records)} records received and delivered: ${JSON.stringify(r)}`);
  }
}

/**
 * Runs the broker section and prints its tables. Resolves with the exit code it asks for: 0, or 1
 * when a contender run failed.
 */
export async function runBrokerBench(): Promise<number> {
  if (process.env.BENCH_BROKERS === "0") {
    console.log("\nsluice bench, brokers: skipped (BENCH_BROKERS=0)");
    return 0;
  }
  if (profileDir !== undefined) mkdirSync(profileDir, { recursive: true });
  const services = await connectServices();
  const { redis, nats } = services;
  const withRedis = redis !== undefined && process.env.BENCH_BROKERS_REDIS !== "0";
  const withBullmq = redis !== undefined && process.env.BENCH_BROKERS_BULLMQ !== "0";
  const withNats = nats !== undefined;
  const tag = `sluice-bench-${process.pid}`;
  const stream = `${tag}-redis`;
  const natsStream = `${tag}-nats`;
  const queues: string[] = [];
  let bullmq: typeof import("bullmq") | undefined;
  try {
    if (withBullmq) bullmq = await import("bullmq");
    progress.live("bundling the broker contenders");
    const launcher: Launcher<BaselineFile> = await prepareLaunch(Object.values(BASELINE_FILES));
    const sluice = await sluiceCommand();
    const base = baseRef === undefined ? undefined : await sluiceCommandAt(baseRef);
    const prof = profileDir === undefined ? [] : ["--cpu-prof", "--cpu-prof-dir", profileDir];

    if (withRedis) {
      await preloadRedis(redis, stream, redisRecords, (n) => progress.live(`XADD ${fmtInt(n)} of ${fmtInt(redisRecords)} entries to ${stream}`));
      progress.line(`preloaded ${fmtInt(redisRecords)} entries into Redis stream ${stream} (pipelined XADD)`);
    }
    let natsSubject: string | undefined;
    if (withNats) {
      natsSubject = await preloadJetStream(nats.jsm, nats.publish, natsStream, natsRecords, (n) => progress.live(`published ${fmtInt(n)} of ${fmtInt(natsRecords)} messages to ${natsStream}`));
      progress.line(`preloaded ${fmtInt(natsRecords)} messages into JetStream stream ${natsStream} (file storage, subject ${natsSubject})`);
    }

    const order: Id[] = [
      ...(withRedis ? (["redis-loop", "sluice-redis"] as const) : []),
      ...(withRedis && base !== undefined ? (["base-redis"] as const) : []),
      ...(withBullmq ? (["bullmq"] as const) : []),
      ...(withNats ? (["nats-loop", "sluice-nats"] as const) : []),
      ...(withNats && base !== undefined ? (["base-nats"] as const) : []),
    ];
    const results = new Map<Id, (Run | undefined)[]>(order.map((id) => [id, []]));
    const failures: string[] = [];
    let runNo = 0;
    const total = runs * order.length + (withRedis ? 1 : 0);

    /** One run of `id` on a fresh group; `after` starts a Redis group past the stream's start (the RSS check). */
    const runOne = async (id: Id, round: number, after = 0): Promise<Run | undefined> => {
      runNo++;
      const label = `[brokers ${runNo}/${total}] ${LABELS[id].padEnd(38)} run ${round}/${runs}`;
      const group = `${tag}-${runNo}`;
      const dir = await mkdtemp(join(tmpdir(), "sluice-bench-brokers-"));
      try {
        let records: number;
        let args: string[];
        let drained: () => Promise<boolean>;
        let check = async (): Promise<void> => {};
        let queue: InstanceType<typeof import("bullmq").Queue> | undefined;
        if (id === "bullmq") {
          queues.push(group);
          queue = new bullmq!.Queue(group, { connection: { host: redis!.options.host, port: redis!.options.port, db: redis!.options.db, password: redis!.options.password } });
          progress.live(`${label} ... adding ${fmtInt(bullmqJobs)} jobs`);
          await preloadBullmq((jobs) => queue!.addBulk(jobs), bullmqJobs);
          records = bullmqJobs;
          drained = async () => false;
          check = async () => {
            const counts = await queue!.getJobCounts("waiting", "active", "delayed", "failed");
            if (Object.values(counts).some((n) => n !== 0)) throw new Error(`jobs left in the queue: ${JSON.stringify(counts)}`);
          };
        } else if (REDIS_IDS.includes(id)) {
          records = redisRecords - after;
          await createGroup(redis!, stream, group, entryId(after));
          drained = () => groupDrained(redis!, stream, group, entryId(redisRecords));
          check = async () => {
            if (!(await drained())) throw new Error(`group ${group} is not drained after the run`);
          };
        } else {
          records = natsRecords;
          if (id === "nats-loop") {
            await nats!.jsm.consumers.add(natsStream, { durable_name: group, ack_policy: "explicit" as never, deliver_policy: "all" as never, max_ack_pending: 11_000 });
          }
          drained = () => consumerDrained(nats!.jsm, natsStream, group, natsRecords).catch(() => false);
          check = async () => {
            if (!(await drained())) throw new Error(`consumer ${group} is not drained after the run`);
          };
        }
        let summary: string | undefined;
        if (SLUICE_IDS.includes(id)) {
          const source = REDIS_IDS.includes(id)
              ? `{ type: redis_streams, url: ${JSON.stringify(redisUrl)}, stream: ${JSON.stringify(stream)}, group: ${JSON.stringify(group)} }`
              : `{ type: nats_jetstream, servers: ${JSON.stringify(natsUrl)}, stream: ${JSON.stringify(natsStream)}, consumer: ${JSON.stringify(group)} }`;
          const c = sluiceConfig(dir, source);
          summary = c.summary;
          args = [...prof, ...(id.startsWith("base-") ? base! : sluice).args, "run", c.config, "--summary-json", c.summary];
        } else {
          const file = BASELINE_FILES[id as keyof typeof BASELINE_FILES];
          const task: BrokerTask = { url: id === "nats-loop" ? natsUrl : redisUrl, stream: id === "bullmq" ? group : id === "nats-loop" ? natsStream : stream, group, records, transform: TRANSFORM, concurrency: bullmqConcurrency };
          args = [...launcher.args(file), JSON.stringify(task)];
        }
        const load = loadavg()[0]!;
        progress.live(`${label} ... running`);
        try {
          const out = await timedProcess(args, { cwd: dir, stopWhenDrained: summary !== undefined, drained });
          if (summary !== undefined) checkSummary(summary, records);
          else {
            const line = out.stdout.split("\n").find((l) => l.startsWith(DONE_PREFIX));
            if (Number(line?.slice(DONE_PREFIX.length)) !== records) throw new Error(`the baseline did not report ${fmtInt(records)} records: ${line ?? "no result line"}`);
          }
          await check();
          const run: Run = { records, seconds: out.seconds, cpuSeconds: out.cpuSeconds, maxRssMiB: out.maxRssMiB, load };
          progress.line(
            `${label}  ${fmtInt(records / out.seconds).padStart(9)} records/s  ${out.seconds.toFixed(2).padStart(6)} s  CPU ${out.cpuSeconds?.toFixed(2) ?? "-"} s` +
              `  peak RSS ${out.maxRssMiB?.toFixed(1) ?? "-"} MiB  load ${load.toFixed(1)}`,
          );
          return run;
        } finally {
          await queue?.obliterate({ force: true }).catch(() => undefined);
          await queue?.close();
        }
      } catch (err) {
        failures.push(`${LABELS[id]}: ${errorText(err)}`);
        progress.line(`${label}  FAILED: ${errorText(err)}`);
        return undefined;
      } finally {
        await rm(dir, { recursive: true, force: true });
        if (REDIS_IDS.includes(id)) await redis!.xgroup("DESTROY", stream, group).catch(() => undefined);
        if (NATS_IDS.includes(id)) await nats!.jsm.consumers.delete(natsStream, group).catch(() => undefined);
      }
    };

    // Rounds alternate the order, so neither side of a pair always runs first on a warm (or loaded) machine.
    for (let round = 1; round <= runs; round++) {
      for (const id of round % 2 === 1 ? order : [...order].reverse()) results.get(id)!.push(await runOne(id, round));
    }
    const quarter = withRedis ? await runOne("sluice-redis", runs, redisRecords - Math.floor(redisRecords / 4)) : undefined;

    console.log(report(results, quarter, services.skipped));
    if (failures.length > 0) {
      console.error(`\n${failures.length} broker contender run(s) failed:\n${failures.map((f) => `  ${f}`).join("\n")}`);
      return 1;
    }
    return 0;
  } finally {
    if (redis !== undefined) {
      await redis.del(stream).catch(() => undefined);
      if (bullmq !== undefined) {
        for (const name of queues) {
          const q = new bullmq.Queue(name, { connection: { host: redis.options.host, port: redis.options.port, db: redis.options.db, password: redis.options.password } });
          await q.obliterate({ force: true }).catch(() => undefined);
          await q.close();
        }
      }
      redis.disconnect();
    }
    if (nats !== undefined) {
      await nats.jsm.streams.delete(natsStream).catch(() => false);
      await nats.nc.close();
    }
  }
}

/** The section's report: per part, each contender next to its baseline, then the targets. */
function report(results: Map<Id, (Run | undefined)[]>, quarter: Run | undefined, skipped: string[]): string {
  const rate = (r: Run): number => r.records / r.seconds;
  const ok = (id: Id): Run[] => (results.get(id) ?? []).filter((r): r is Run => r !== undefined);
  const med = (id: Id, f: (r: Run) => number | undefined): number | undefined => {
    const values = ok(id).map(f);
    return values.length === 0 || values.some((v) => v === undefined) ? undefined : median(values as number[]);
  };
  /** Median over rounds of a's rate / b's rate in the same round (rounds where both ran). */
  const ratio = (a: Id, b: Id, f: (r: Run) => number | undefined = rate): number | undefined => {
    const ra = results.get(a) ?? [];
    const rb = results.get(b) ?? [];
    const per: number[] = [];
    ra.forEach((x, i) => {
      const y = rb[i];
      const fx = x === undefined ? undefined : f(x);
      const fy = y === undefined ? undefined : f(y);
      if (fx !== undefined && fy !== undefined) per.push(fx / fy);
    });
    return per.length === 0 ? undefined : median(per);
  };
  const perCpu = (r: Run): number | undefined => (r.cpuSeconds === undefined ? undefined : r.records / r.cpuSeconds);
  const dash = (v: number | undefined, f: (x: number) => string): string => (v === undefined ? "-" : f(v));
  const loads = [...results.values()].flat().filter((r): r is Run => r !== undefined).map((r) => r.load);

  const out: string[] = [""];
  out.push(`sluice bench, brokers: preloaded streams -> the copying transform (bench/enrich-copy.mjs) -> discard; node ${process.version}, ${cpus().length} x ${cpus()[0]?.model.trim() ?? "cpu"}`);
  out.push(`whole processes timed from spawn to exit (start-up and connecting included); ${runs} round(s), order alternating; records/s: median of runs; vs: median of per-round ratios`);
  out.push("CPU-s and peak RSS: the contender process (/usr/bin/time); the broker's own CPU is not counted for anyone");
  for (const s of skipped) out.push(s);
  if (loads.length > 0) {
    const line = `1-min load average at run starts ${Math.min(...loads).toFixed(1)}-${Math.max(...loads).toFixed(1)} (median ${median(loads).toFixed(1)}), ${cpus().length} cores`;
    out.push(Math.max(...loads) > cpus().length * BUSY_LOAD_PER_CORE ? `warning: the machine was busy: ${line}; wall-clock figures are noisy, ratios less so` : line);
  }
  const table = (title: string, ids: Id[], base: Id): void => {
    const present = ids.filter((id) => results.has(id));
    if (present.length === 0) return;
    const header = ["contender", "records", "records/s", "vs loop", "seconds", "CPU-s", "records/CPU-s", "peak RSS MiB"];
    const rows = present.map((id) => [
      `${LABELS[id]}${ok(id).length < (results.get(id)?.length ?? 0) ? " (FAILED runs)" : ""}`,
      fmtInt(ok(id)[0]?.records ?? 0),
      dash(med(id, rate), fmtInt),
      id === base ? "1.00x" : dash(ratio(id, base), fmtRatio),
      dash(med(id, (r) => r.seconds), (x) => x.toFixed(2)),
      dash(med(id, (r) => r.cpuSeconds), (x) => x.toFixed(2)),
      dash(med(id, perCpu), fmtInt),
      dash(med(id, (r) => r.maxRssMiB), (x) => x.toFixed(1)),
    ]);
    const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
    const render = (cells: string[]): string => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join("  ");
    out.push("", title, render(header), widths.map((w) => "-".repeat(w)).join("  "), ...rows.map(render));
  };
  table(`Redis Streams, ${fmtInt(redisRecords)} entries (BullMQ: ${fmtInt(bullmqJobs)} jobs); vs loop: against the XREADGROUP/XACK loop`, ["redis-loop", "sluice-redis", "base-redis", "bullmq"], "redis-loop");
  table(`NATS JetStream, ${fmtInt(natsRecords)} messages; vs loop: against the pull consumer`, ["nats-loop", "sluice-nats", "base-nats"], "nats-loop");

  const verdict = (v: number | undefined, target: number): string => (v === undefined ? "n/a " : v >= target ? "PASS" : "FAIL");
  const line = (v: number | undefined, target: number, text: string, cpu: number | undefined): string =>
    `  ${verdict(v, target)}  ${text} >= ${target}x: ${v === undefined ? "not measured" : fmtRatio(v)}${cpu === undefined ? "" : ` (by CPU time: ${fmtRatio(cpu)})`}`;
  out.push("", "targets:");
  if (results.has("redis-loop")) out.push(line(ratio("sluice-redis", "redis-loop"), TARGETS.vsRedisLoop, "sluice redis_streams records/s vs the XREADGROUP/XACK loop", ratio("sluice-redis", "redis-loop", perCpu)));
  if (results.has("bullmq") && results.has("sluice-redis")) out.push(line(ratio("sluice-redis", "bullmq"), TARGETS.vsBullmq, "sluice redis_streams records/s vs BullMQ jobs/s", ratio("sluice-redis", "bullmq", perCpu)));
  if (results.has("nats-loop")) out.push(line(ratio("sluice-nats", "nats-loop"), TARGETS.vsNatsLoop, "sluice nats_jetstream records/s vs the pull loop", ratio("sluice-nats", "nats-loop", perCpu)));
  if (results.has("base-redis")) out.push(`  info  sluice redis_streams now vs at ${baseRef}: ${dash(ratio("sluice-redis", "base-redis"), fmtRatio)} (by CPU time: ${dash(ratio("sluice-redis", "base-redis", perCpu), fmtRatio)})`);
  if (results.has("base-nats")) out.push(`  info  sluice nats_jetstream now vs at ${baseRef}: ${dash(ratio("sluice-nats", "base-nats"), fmtRatio)} (by CPU time: ${dash(ratio("sluice-nats", "base-nats", perCpu), fmtRatio)})`);
  const fullPeak = med("sluice-redis", (r) => r.maxRssMiB);
  if (results.has("sluice-redis")) {
    const growth = quarter?.maxRssMiB === undefined || fullPeak === undefined ? undefined : fullPeak / quarter.maxRssMiB - 1;
    out.push(
      `  ${growth === undefined ? "n/a " : growth <= TARGETS.rssGrowth ? "PASS" : "FAIL"}  sluice peak RSS over ${fmtInt(redisRecords)} entries within ${TARGETS.rssGrowth * 100}% of over ${fmtInt(Math.floor(redisRecords / 4))}: ` +
        (growth === undefined ? "not measured" : `${fullPeak!.toFixed(1)} vs ${quarter!.maxRssMiB!.toFixed(1)} MiB (${growth >= 0 ? "+" : ""}${(growth * 100).toFixed(1)}%)`),
    );
  }
  return out.join("\n");
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) {
  process.exitCode = await runBrokerBench();
}
