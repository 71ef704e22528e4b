/**
 * The MQTT section of `npm run bench` (issue #16): sluice's `mqtt` source (QoS 1, persistent
 * session, each message acknowledged after commit) into `blackhole`, next to a bare mqtt.js client
 * that acknowledges on receipt (bench/contenders/mqtt-bare.ts), on a private Mosquitto started
 * here (never the machine's), with the same messages.
 *
 * Each round: a session for each contender subscribed (QoS 1) to one topic, then
 * BENCH_MQTT_RECORDS (200,000) JSON messages published to it once (QoS 1, a sliding window of
 * PUBLISH_WINDOW unacknowledged, progress every PROGRESS_MS, a clear error when the broker stops
 * acknowledging; Mosquitto queues a copy in each session), then each contender resumes its
 * session and reads them all; the order of the two alternates by round. Timing: whole processes
 * from spawn, start-up and connecting included (~0.3 s of sluice's; rounds are long so that it is
 * a small part); CPU seconds (user + system) of each process too, sluice's read from /proc when it
 * has delivered everything. The bare client exits once it has every message, sluice runs until its
 * /metrics say every record was delivered (polled every POLL_MS), then gets SIGTERM and must exit
 * 0 with a summary that delivered exactly that many. After each run, the session must hold
 * nothing. Figures are medians of the per-round ratios; the report gives the load average.
 *
 * Two in-flight windows, each contender with the same one (MQTT 5 Receive Maximum, which
 * Mosquitto honours for MQTT 5 clients in place of max_inflight_messages): 20, Mosquitto's
 * max_inflight_messages default (what a client gets that sets none), and 10,000 (sluice's
 * default: buffer.max_records). Mosquitto runs with its defaults except `max_queued_messages 0`
 * (see {@link startMosquitto}); it is killed at the end, on a failure, and when this process exits.
 *
 * Env: BENCH_MQTT=0 skips the section; BENCH_MQTT_RECORDS (200,000); BENCH_MQTT_RUNS (3);
 * BENCH_MQTT_WINDOWS (20,10000). Exit code non-zero only when a run failed.
 *
 * Standalone (this section only): `node --import tsx bench/mqtt.ts`.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { createServer } from "node:net";
import { cpus, loadavg, tmpdir, userInfo } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import mqtt from "mqtt";
import type { RunSummary } from "../src/observability/metrics.js";
import { prepareLaunch, REPO_DIR, sluiceCommand } from "./build.js";
import { fmtInt, fmtRatio, intEnv, median, progress } from "./report.js";

const TARGET = 0.8;
const POLL_MS = 10;
/** A run that takes longer failed (a message the preload lost would keep a contender waiting). */
const RUN_TIMEOUT_MS = 3 * 60 * 1000;
/**
 * QoS 1 messages the preloading publisher has unacknowledged at once. Mosquitto leaves Nagle's
 * algorithm on (`set_tcp_nodelay false`, its default): of a window's PUBACKs, the first goes out
 * and the rest wait for the publisher's delayed ACK, ~40 ms. Waiting for whole windows of 10 then
 * ran at ~220 messages/s (100,000 took 7.5 min: the "hang" of earlier runs); a sliding window of
 * 1,000 is not held up by it.
 */
const PUBLISH_WINDOW = 1000;
/** The preload fails when no PUBACK came for this long, ms. */
const PRELOAD_STALL_MS = 30_000;
/** How often progress is printed while preloading and while a contender runs, ms. */
const PROGRESS_MS = 5_000;

const records = intEnv("BENCH_MQTT_RECORDS", 200_000, 1);
const runs = intEnv("BENCH_MQTT_RUNS", 3, 1);
const windows = (process.env.BENCH_MQTT_WINDOWS ?? "20,10000").split(",").map((w) => Number(w));

/** A TCP port on 127.0.0.1 that was free a moment ago. */
function freePort(): Promise<number> {
  return new Promise((done, fail) => {
    const server = createServer();
    server.once("error", fail);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => (typeof address === "object" && address !== null ? done(address.port) : fail(new Error("no port"))));
    });
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The children alive now (the broker, a contender): killed when the bench exits or is ended by a signal. */
const alive = new Set<ChildProcess>();

/** Tracks `child` in {@link alive} until it exits. */
function track<C extends ChildProcess>(child: C): C {
  alive.add(child);
  child.once("exit", () => alive.delete(child));
  return child;
}

/**
 * Until the returned function is called: when this process exits, or a signal ends it, every
 * child still alive is killed and `dir` removed (a contender left running would retry a broker that
 * is gone for ever); a signal then ends the bench as it would have.
 */
function cleanUpOnExit(dir: string): () => void {
  const signals: NodeJS.Signals[] = ["SIGINT", "SIGTERM", "SIGHUP"];
  const killAll = () => {
    for (const child of alive) child.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  };
  const onSignal = (signal: NodeJS.Signals) => {
    killAll();
    process.kill(process.pid, signal);
  };
  process.once("exit", killAll);
  for (const signal of signals) process.once(signal, onSignal);
  return () => {
    process.off("exit", killAll);
    for (const signal of signals) process.off(signal, onSignal);
  };
}

/** Connects, retrying while the broker starts. */
async function connect(url: string, options: mqtt.IClientOptions = {}): Promise<mqtt.MqttClient> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await mqtt.connectAsync(url, { protocolVersion: 5, reconnectPeriod: 0, ...options }, false);
    } catch (err) {
      if (attempt > 50) throw err;
      await sleep(100);
    }
  }
}

/** A persistent session of `clientId` subscribed to `topic`, left for its contender. */
async function createSession(url: string, clientId: string, topic: string): Promise<void> {
  const c = await connect(url, { clientId, clean: false, properties: { sessionExpiryInterval: 3600 } });
  await c.subscribeAsync(topic, { qos: 1 });
  await c.endAsync();
}

/** How many messages the session of `clientId` still holds (drained with acks; 0 after a clean run). */
async function leftInSession(url: string, clientId: string): Promise<number> {
  let n = 0;
  let last = Date.now();
  const c = mqtt.connect(url, { protocolVersion: 5, reconnectPeriod: 0, clientId, clean: false, properties: { sessionExpiryInterval: 0 } });
  c.on("message", () => {
    n++;
    last = Date.now();
  });
  await new Promise<void>((done, fail) => (c.once("connect", () => done()), c.once("error", fail)));
  while (Date.now() - last < 300) await sleep(50);
  await c.endAsync();
  return n;
}

/** The `seq`-th message: a JSON reading like the main bench's (~110 B). */
function reading(seq: number): string {
  return JSON.stringify({ id: `reading-${seq}`, sensor: `sensor-${seq % 100}`, value: (seq % 1000) / 10, unit: "C", ts: new Date(1_700_000_000_000 + seq).toISOString(), seq });
}

/**
 * Publishes `n` readings to `topic` at QoS 1 on one connection, keeping PUBLISH_WINDOW unacknowledged
 * (a new one goes out as each PUBACK comes back). Fails with a clear error when no PUBACK came for
 * PRELOAD_STALL_MS, or the connection dropped, instead of waiting forever; reports progress.
 */
async function preload(url: string, topic: string, n: number, report: (sent: number) => void): Promise<void> {
  const c = await connect(url);
  try {
    await new Promise<void>((done, fail) => {
      let next = 0;
      let acked = 0;
      let lastAck = Date.now();
      let finished = false;
      const finish = (err?: Error) => {
        if (finished) return;
        finished = true;
        clearInterval(watch);
        c.off("close", onClose);
        if (err === undefined) done();
        else fail(err);
      };
      const onClose = () => finish(new Error(`the preload's connection closed after ${fmtInt(acked)} of ${fmtInt(n)} PUBACKs`));
      const watch = setInterval(() => {
        report(acked);
        if (Date.now() - lastAck > PRELOAD_STALL_MS) finish(new Error(`the preload got no PUBACK for ${PRELOAD_STALL_MS / 1000} s after ${fmtInt(acked)} of ${fmtInt(n)} (broker stalled or gone)`));
      }, PROGRESS_MS);
      c.on("close", onClose);
      const send = () => {
        const seq = next++;
        c.publish(topic, reading(seq), { qos: 1 }, (err) => {
          if (err !== undefined && err !== null) return finish(err);
          acked++;
          lastAck = Date.now();
          if (acked === n) finish();
          else if (next < n) send();
        });
      };
      while (next < Math.min(n, PUBLISH_WINDOW)) send();
    });
  } finally {
    await c.endAsync(true);
  }
}

/** CPU seconds (user + system) the live process `pid` has used so far, from /proc; undefined where there is none. */
function cpuSeconds(pid: number | undefined): number | undefined {
  if (pid === undefined) return undefined;
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
    // utime and stime, fields 14 and 15 of stat(5), in clock ticks of 1/100 s.
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return undefined;
  }
}

/** A contender's run: seconds from spawn to its last message, and the CPU seconds it used (start-up included). */
interface Run {
  readonly seconds: number;
  readonly cpu: number | undefined;
}

/** Prints `what` every PROGRESS_MS until stopped. */
function ticker(what: () => string): () => void {
  const timer = setInterval(() => progress.line(what()), PROGRESS_MS);
  return () => clearInterval(timer);
}

/** The bare client: runs it to its exit; rejects on a non-zero exit, a missing done line or the timeout. */
function runBare(args: string[], label: string): Promise<Run> {
  const started = performance.now();
  const child = track(spawn(process.execPath, args, { cwd: REPO_DIR, stdio: ["ignore", "pipe", "pipe"] }));
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  const timer = setTimeout(() => child.kill("SIGKILL"), RUN_TIMEOUT_MS);
  const stop = ticker(() => `${label}: bare client running, ${((performance.now() - started) / 1000).toFixed(0)} s`);
  return new Promise((done, fail) =>
    child.on("exit", (code, signal) => {
      clearTimeout(timer);
      stop();
      const seconds = (performance.now() - started) / 1000;
      const finished = /^BENCH_DONE (\d+) cpu (\S+)$/m.exec(stdout);
      if (code !== 0) fail(new Error(`bare client: ${signal ?? `exit code ${code}`}: ${stderr.slice(-2000)}`));
      else if (finished === null || Number(finished[1]) !== records) fail(new Error(`bare client did not finish: ${stdout.slice(-500)}`));
      else done({ seconds, cpu: Number(finished[2]) });
    }),
  );
}

/** Delivered records per `sluice_records_delivered_total` on `port`, or 0 while it does not answer. */
async function delivered(port: number): Promise<number> {
  try {
    const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    const m = /^sluice_records_delivered_total\{sink="out"\} (\d+)/m.exec(text);
    return m === null ? 0 : Number(m[1]);
  } catch {
    return 0;
  }
}

/** One sluice run: until its metrics say `n` delivered (its CPU read then), then SIGTERM, which it must exit 0 on with a summary of `n` delivered. */
async function runSluice(cli: string[], dir: string, url: string, clientId: string, topic: string, window: number, n: number, label: string): Promise<Run> {
  const port = await freePort();
  const config = join(dir, `${clientId}.yaml`);
  const summary = join(dir, `${clientId}.summary.json`);
  writeFileSync(
    config,
    [
      `data_dir: ${join(dir, `${clientId}-data`)}`,
      `observability: { listen: "127.0.0.1:${port}", log_level: warn }`,
      "sources:",
      `  in: { type: mqtt, url: "${url}", topics: "${topic}", client_id: ${clientId}, receive_maximum: ${window} }`,
      "sinks:",
      "  out: { type: blackhole }",
    ].join("\n"),
  );
  const started = performance.now();
  const child = track(spawn(process.execPath, [...cli, "run", config, "--summary-json", summary, "--no-progress"], { cwd: REPO_DIR, stdio: ["ignore", "ignore", "pipe"] }));
  let stderr = "";
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((done) => child.on("exit", (code) => done(code)));
  let seen = 0;
  const stop = ticker(() => `${label}: sluice running, ${((performance.now() - started) / 1000).toFixed(0)} s, ${fmtInt(seen)} delivered`);
  let run: Run | undefined;
  try {
    while (run === undefined) {
      if (child.exitCode !== null) throw new Error(`sluice exited early: ${stderr.slice(-2000)}`);
      if (performance.now() - started > RUN_TIMEOUT_MS) throw new Error(`sluice run timed out with ${fmtInt(seen)} of ${fmtInt(n)} delivered`);
      seen = await delivered(port);
      if (seen >= n) run = { seconds: (performance.now() - started) / 1000, cpu: cpuSeconds(child.pid) };
      else await sleep(POLL_MS);
    }
  } catch (err) {
    child.kill("SIGKILL");
    throw err;
  } finally {
    stop();
  }
  child.kill("SIGTERM");
  const code = await exited;
  if (code !== 0) throw new Error(`sluice exited ${code} after SIGTERM: ${stderr.slice(-2000)}`);
  const s = JSON.parse(readFileSync(summary, "utf8")) as RunSummary;
  if (s.records.delivered !== n) throw new Error(`sluice delivered ${s.records.delivered}, expected ${n}`);
  return run;
}

/**
 * A private mosquitto on a free port with its defaults except `max_queued_messages 0` (the default
 * of 1,000 drops what a session gets beyond 1,000 queued: a preloaded backlog would not survive).
 * Killed when `stop` is called, when it fails to start, and (as every child, see {@link track})
 * when the bench exits or is ended by a signal.
 */
async function startMosquitto(dir: string): Promise<{ url: string; stop(): Promise<void> }> {
  const port = await freePort();
  const conf = join(dir, "mosquitto.conf");
  writeFileSync(conf, [`listener ${port} 127.0.0.1`, `user ${userInfo().username}`, "allow_anonymous true", "max_queued_messages 0", ""].join("\n"));
  const child = track(spawn("mosquitto", ["-c", conf], { stdio: "ignore" }));
  const stop = () =>
    new Promise<void>((done) => {
      if (child.exitCode !== null || child.signalCode !== null) return done();
      child.once("exit", () => done());
      child.kill("SIGKILL");
    });
  const url = `mqtt://127.0.0.1:${port}`;
  try {
    await (await connect(url)).endAsync();
  } catch (err) {
    await stop();
    throw new Error(`the private mosquitto did not start on port ${port}: ${(err as Error).message}`, { cause: err });
  }
  return { url, stop };
}

/** Per-round figures of one in-flight window. */
interface WindowRounds {
  readonly bare: Run[];
  readonly ours: Run[];
}

const rate = (n: number, seconds: number): string => fmtInt(n / seconds);
const medianCpu = (runs: readonly Run[]): number | undefined => (runs.every((r) => r.cpu !== undefined) ? median(runs.map((r) => r.cpu!)) : undefined);

/** The table row of one window: medians of seconds and CPU, and the medians of the per-round ratios. */
function row(window: number, r: WindowRounds): string {
  const wall = median(r.bare.map((b, i) => b.seconds / r.ours[i]!.seconds));
  const cpuRatios = r.bare.flatMap((b, i) => (b.cpu !== undefined && r.ours[i]!.cpu !== undefined ? [b.cpu / r.ours[i]!.cpu!] : []));
  const cpu = cpuRatios.length === r.bare.length ? fmtRatio(median(cpuRatios)) : "-";
  const mb = median(r.bare.map((x) => x.seconds));
  const ms = median(r.ours.map((x) => x.seconds));
  const cb = medianCpu(r.bare);
  const cs = medianCpu(r.ours);
  const cpuCell = (c: number | undefined) => (c === undefined ? "-" : c.toFixed(2));
  return `| ${fmtInt(window)} | ${mb.toFixed(2)} (${rate(records, mb)}) | ${ms.toFixed(2)} (${rate(records, ms)}) | ${fmtRatio(wall)} ${wall >= TARGET ? "meets" : "misses"} | ${cpuCell(cb)} | ${cpuCell(cs)} | ${cpu} |`;
}

/** Runs the MQTT section; resolves with the exit code it asks for (1 when a run failed). */
export async function runMqttBench(): Promise<number> {
  if (process.env.BENCH_MQTT === "0") return 0;
  if (spawnSync("sh", ["-c", "command -v mosquitto"]).status !== 0) {
    console.log("\n## MQTT\n\nskipped: no mosquitto on PATH");
    return 0;
  }
  const dir = await mkdtemp(join(tmpdir(), "sluice-bench-mqtt-"));
  const cleanedUp = cleanUpOnExit(dir);
  const failures: string[] = [];
  const loads: number[] = [];
  const out = ["", "## MQTT: QoS 1 ingest into blackhole vs a bare mqtt.js client that acks on receipt", ""];
  const rows: string[] = [];
  try {
    const launcher = await prepareLaunch(["mqtt-bare"]);
    const sluice = await sluiceCommand();
    const broker = await startMosquitto(dir);
    try {
      for (const window of windows) {
        const rounds: WindowRounds = { bare: [], ours: [] };
        for (let round = 1; round <= runs; round++) {
          const label = `[mqtt] window ${window} round ${round}/${runs}`;
          const topic = `bench/${window}/${round}`;
          const ids = { bare: `bare-${window}-${round}`, sluice: `sluice-${window}-${round}` };
          try {
            await createSession(broker.url, ids.bare, topic);
            await createSession(broker.url, ids.sluice, topic);
            progress.line(`${label}: preloading ${fmtInt(records)} messages`);
            const preloadStart = performance.now();
            await preload(broker.url, topic, records, (acked) => progress.line(`${label}: preloaded ${fmtInt(acked)} of ${fmtInt(records)}`));
            progress.line(`${label}: preloaded in ${((performance.now() - preloadStart) / 1000).toFixed(1)} s`);
            const bare = () => runBare([...launcher.args("mqtt-bare"), JSON.stringify({ url: broker.url, clientId: ids.bare, records, receiveMaximum: window })], label);
            const ours = () => runSluice(sluice.args, dir, broker.url, ids.sluice, topic, window, records, label);
            loads.push(loadavg()[0]!);
            let b: Run, s: Run;
            if (round % 2 === 1) {
              b = await bare();
              s = await ours();
            } else {
              s = await ours();
              b = await bare();
            }
            loads.push(loadavg()[0]!);
            for (const id of [ids.bare, ids.sluice]) {
              const left = await leftInSession(broker.url, id);
              if (left !== 0) throw new Error(`session ${id} still holds ${left} messages after its run`);
            }
            rounds.bare.push(b);
            rounds.ours.push(s);
            const cpu = b.cpu !== undefined && s.cpu !== undefined ? `; CPU bare ${b.cpu.toFixed(2)} s, sluice ${s.cpu.toFixed(2)} s, ratio ${fmtRatio(b.cpu / s.cpu)}` : "";
            progress.line(`${label}: bare ${b.seconds.toFixed(2)} s, sluice ${s.seconds.toFixed(2)} s, ratio ${fmtRatio(b.seconds / s.seconds)}${cpu}`);
          } catch (err) {
            failures.push(`window ${window} round ${round}: ${(err as Error).message}`);
            progress.line(`${label}: failed: ${(err as Error).message}`);
          }
        }
        rows.push(rounds.bare.length === 0 ? `| ${fmtInt(window)} | failed | failed | - | - | - | - |` : row(window, rounds));
      }
    } finally {
      await broker.stop();
    }
  } finally {
    cleanedUp();
    await rm(dir, { recursive: true, force: true });
  }
  out.push(
    `${fmtInt(records)} messages (~110 B JSON) preloaded per round into a private Mosquitto 2 (defaults, max_queued_messages 0); ${runs} rounds per window, alternating which contender goes first; seconds from spawn to the last message, start-up included; ratios are medians of per-round ratios (bare / sluice). 1-minute load average during the runs: ${loads.length === 0 ? "-" : `${Math.min(...loads).toFixed(1)}-${Math.max(...loads).toFixed(1)}`} (${cpus().length} cores).`,
    "",
    `| in-flight window | bare client s (msg/s) | sluice s (msg/s) | throughput sluice / bare (target ${TARGET}x) | bare CPU s | sluice CPU s | CPU bare / sluice |`,
    "| --- | --- | --- | --- | --- | --- | --- |",
    ...rows,
  );
  console.log(out.join("\n"));
  if (failures.length > 0) {
    console.error(`\n${failures.length} MQTT run(s) failed:\n${failures.map((f) => `  ${f}`).join("\n")}`);
    return 1;
  }
  return 0;
}

if (resolve(process.argv[1] ?? "") === fileURLToPath(import.meta.url)) process.exitCode = await runMqttBench();
