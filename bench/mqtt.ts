/**
 * The MQTT section of `npm run bench` (issue #16): sluice's `mqtt` source (QoS 1, persistent
 * session, each message acknowledged after commit) into `blackhole`, next to a bare mqtt.js client
 * that acknowledges on receipt (bench/contenders/mqtt-bare.ts), on a private Mosquitto started
 * here (never the machine's), with the same messages.
 *
 * Each round: a session for each contender subscribed (QoS 1) to one topic, then
 * BENCH_MQTT_RECORDS (100,000) JSON messages published to it once (QoS 1; Mosquitto queues a copy
 * in each session), then each contender resumes its session and reads them all; the order of the
 * two alternates by round. Timing: whole processes from spawn, start-up and connecting included;
 * the bare client exits once it has every message, sluice runs until its /metrics say every record
 * was delivered (polled every POLL_MS), then gets SIGTERM and must exit 0 with a summary that
 * delivered exactly that many. After each run, the session must hold nothing.
 *
 * Two in-flight windows, each contender with the same one (MQTT 5 Receive Maximum, which
 * Mosquitto honours for MQTT 5 clients in place of max_inflight_messages): 20, Mosquitto's
 * max_inflight_messages default (what a client gets that sets none), and 10,000 (sluice's
 * default: buffer.max_records). Mosquitto runs with its defaults except `max_queued_messages 0`:
 * with the default of 1000, a session drops what it gets beyond 1000 queued messages, and a
 * preloaded backlog would not survive.
 *
 * Env: BENCH_MQTT=0 skips the section; BENCH_MQTT_RECORDS (100,000); BENCH_MQTT_RUNS (3);
 * BENCH_MQTT_WINDOWS (20,10000). Exit code non-zero only when a run failed.
 *
 * Standalone (this section only): `node --import tsx bench/mqtt.ts`.
 */
import { spawn, spawnSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir, userInfo } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import mqtt from "mqtt";
import type { RunSummary } from "../src/observability/metrics.js";
import { prepareLaunch, REPO_DIR, sluiceCommand } from "./build.js";
import { DONE_PREFIX } from "./contenders/broker-protocol.js";
import { fmtInt, fmtRatio, intEnv, median, progress } from "./report.js";

const TARGET = 0.8;
const POLL_MS = 10;
/** A run that takes longer failed (a message the preload lost would keep a contender waiting). */
const RUN_TIMEOUT_MS = 3 * 60 * 1000;
/** QoS 1 messages the preloading publisher has unacknowledged at once: with 20 (Mosquitto's default Receive Maximum) the publisher stalled here, with 10 it never did. */
const PUBLISH_WINDOW = 10;
/** A preload window not acknowledged within this long has stalled, ms. */
const PRELOAD_STALL_MS = 30_000;
/** Messages the preload publishes on one connection. */
const PUBLISH_PER_CONNECTION = 10_000;

const records = intEnv("BENCH_MQTT_RECORDS", 100_000, 1);
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

/**
 * Publishes `n` JSON messages like the main bench's readings, QoS 1, PUBLISH_WINDOW at a time, on
 * a new connection every PUBLISH_PER_CONNECTION. Not `mosquitto_pub -l`: measured here, it got
 * 34,470 of 100,000 QoS 1 lines into a session. One mqtt.js connection publishing 100,000 stalled
 * now and then (no packet either way, neither side waiting to write).
 */
async function preload(url: string, topic: string, n: number): Promise<void> {
  for (let start = 0; start < n; start += PUBLISH_PER_CONNECTION) await publishRange(url, topic, start, Math.min(n, start + PUBLISH_PER_CONNECTION));
}

async function publishRange(url: string, topic: string, from: number, to: number): Promise<void> {
  const c = await connect(url);
  for (let i = from; i < to; i += PUBLISH_WINDOW) {
    const batch: Promise<unknown>[] = [];
    for (let j = i; j < Math.min(to, i + PUBLISH_WINDOW); j++) {
      const reading = { id: `reading-${j}`, sensor: `sensor-${j % 100}`, value: (j % 1000) / 10, unit: "C", ts: new Date(1_700_000_000_000 + j).toISOString(), seq: j };
      batch.push(c.publishAsync(topic, JSON.stringify(reading), { qos: 1 }));
    }
    let timer: NodeJS.Timeout | undefined;
    const stalled = new Promise<never>((_, fail) => (timer = setTimeout(() => fail(new Error(`the preload stalled at message ${i} (mqtt.js publisher; see docs/architecture.md)`)), PRELOAD_STALL_MS)));
    try {
      await Promise.race([Promise.all(batch), stalled]);
    } finally {
      clearTimeout(timer);
    }
  }
  await c.endAsync();
}

/** Runs a child to its exit; resolves with its stdout, rejects on a non-zero exit or the timeout. */
function runToExit(args: string[]): Promise<{ seconds: number; stdout: string }> {
  const started = performance.now();
  const child = spawn(process.execPath, args, { cwd: REPO_DIR, stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  const timer = setTimeout(() => child.kill("SIGKILL"), RUN_TIMEOUT_MS);
  return new Promise((done, fail) =>
    child.on("exit", (code, signal) => {
      clearTimeout(timer);
      if (code === 0) done({ seconds: (performance.now() - started) / 1000, stdout });
      else fail(new Error(`${signal ?? `exit code ${code}`}: ${stderr.slice(-2000)}`));
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

/** One sluice run: until its metrics say `n` delivered, then SIGTERM; seconds to the last delivery. */
async function runSluice(cli: string[], dir: string, url: string, clientId: string, topic: string, window: number, n: number): Promise<number> {
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
  const child = spawn(process.execPath, [...cli, "run", config, "--summary-json", summary, "--no-progress"], { cwd: REPO_DIR, stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((done) => child.on("exit", (code) => done(code)));
  let seconds: number | undefined;
  while (seconds === undefined) {
    if (child.exitCode !== null) throw new Error(`sluice exited early: ${stderr.slice(-2000)}`);
    if (performance.now() - started > RUN_TIMEOUT_MS) {
      child.kill("SIGKILL");
      throw new Error("sluice run timed out");
    }
    if ((await delivered(port)) >= n) seconds = (performance.now() - started) / 1000;
    else await sleep(POLL_MS);
  }
  child.kill("SIGTERM");
  const code = await exited;
  if (code !== 0) throw new Error(`sluice exited ${code} after SIGTERM: ${stderr.slice(-2000)}`);
  const s = JSON.parse(readFileSync(summary, "utf8")) as RunSummary;
  if (s.records.delivered !== n) throw new Error(`sluice delivered ${s.records.delivered}, expected ${n}`);
  return seconds;
}

/** A private mosquitto on a free port with its defaults except `max_queued_messages 0`. */
async function startMosquitto(dir: string): Promise<{ url: string; stop(): Promise<void> }> {
  const port = await freePort();
  const conf = join(dir, "mosquitto.conf");
  writeFileSync(conf, [`listener ${port} 127.0.0.1`, `user ${userInfo().username}`, "allow_anonymous true", "max_queued_messages 0", ""].join("\n"));
  const child = spawn("mosquitto", ["-c", conf], { stdio: "ignore" });
  const url = `mqtt://127.0.0.1:${port}`;
  await (await connect(url)).endAsync();
  return {
    url,
    stop: () =>
      new Promise<void>((done) => {
        if (child.exitCode !== null) return done();
        child.once("exit", () => done());
        child.kill("SIGKILL");
      }),
  };
}

/** Runs the MQTT section; resolves with the exit code it asks for (1 when a run failed). */
export async function runMqttBench(): Promise<number> {
  if (process.env.BENCH_MQTT === "0") return 0;
  if (spawnSync("sh", ["-c", "command -v mosquitto"]).status !== 0) {
    console.log("\n## MQTT\n\nskipped: no mosquitto on PATH");
    return 0;
  }
  const dir = await mkdtemp(join(tmpdir(), "sluice-bench-mqtt-"));
  const failures: string[] = [];
  const out = ["", "## MQTT: QoS 1 ingest into blackhole vs a bare mqtt.js client that acks on receipt", ""];
  out.push(`${fmtInt(records)} messages (~150 B JSON) preloaded per round into a private Mosquitto 2 (defaults, max_queued_messages 0); ${runs} rounds per window; seconds from spawn to the last message.`);
  out.push("", `| in-flight window | bare client s (msg/s) | sluice s (msg/s) | sluice / bare throughput (target ${TARGET}x) |`, "| --- | --- | --- | --- |");
  try {
    const launcher = await prepareLaunch(["mqtt-bare"]);
    const sluice = await sluiceCommand();
    const broker = await startMosquitto(dir);
    try {
      for (const window of windows) {
        const bare: number[] = [];
        const ours: number[] = [];
        const ratios: number[] = [];
        for (let round = 1; round <= runs; round++) {
          const topic = `bench/${window}/${round}`;
          const ids = { bare: `bare-${window}-${round}`, sluice: `sluice-${window}-${round}` };
          await createSession(broker.url, ids.bare, topic);
          await createSession(broker.url, ids.sluice, topic);
          progress.live(`[mqtt] window ${window} round ${round}/${runs}: preloading ${fmtInt(records)} messages`);
          try {
            await preload(broker.url, topic, records);
          } catch (err) {
            failures.push(`window ${window} round ${round}: ${(err as Error).message}`);
            progress.line(`[mqtt] window ${window} round ${round}/${runs}: failed: ${(err as Error).message}`);
            continue;
          }
          const runBare = async () => {
            progress.live(`[mqtt] window ${window} round ${round}/${runs}: bare client`);
            const task = { url: broker.url, clientId: ids.bare, records, receiveMaximum: window };
            const r = await runToExit([...launcher.args("mqtt-bare"), JSON.stringify(task)]);
            if (!r.stdout.includes(`${DONE_PREFIX}${records}`)) throw new Error(`bare client did not finish: ${r.stdout}`);
            return r.seconds;
          };
          const runOurs = () => {
            progress.live(`[mqtt] window ${window} round ${round}/${runs}: sluice`);
            return runSluice(sluice.args, dir, broker.url, ids.sluice, topic, window, records);
          };
          try {
            let b: number, s: number;
            if (round % 2 === 1) {
              b = await runBare();
              s = await runOurs();
            } else {
              s = await runOurs();
              b = await runBare();
            }
            for (const id of [ids.bare, ids.sluice]) {
              const left = await leftInSession(broker.url, id);
              if (left !== 0) throw new Error(`session ${id} still holds ${left} messages after its run`);
            }
            bare.push(b);
            ours.push(s);
            ratios.push(b / s);
            progress.line(`[mqtt] window ${window} round ${round}/${runs}: bare ${b.toFixed(2)} s, sluice ${s.toFixed(2)} s, ratio ${fmtRatio(b / s)}`);
          } catch (err) {
            failures.push(`window ${window} round ${round}: ${(err as Error).message}`);
            progress.line(`[mqtt] window ${window} round ${round}/${runs}: failed: ${(err as Error).message}`);
          }
        }
        if (ratios.length === 0) {
          out.push(`| ${fmtInt(window)} | failed | failed | - |`);
          continue;
        }
        const mb = median(bare);
        const ms = median(ours);
        out.push(`| ${fmtInt(window)} | ${mb.toFixed(2)} (${fmtInt(records / mb)}) | ${ms.toFixed(2)} (${fmtInt(records / ms)}) | ${fmtRatio(median(ratios))} ${median(ratios) >= TARGET ? "meets" : "misses"} |`);
      }
    } finally {
      await broker.stop();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  console.log(out.join("\n"));
  if (failures.length > 0) {
    console.error(`\n${failures.length} MQTT run(s) failed:\n${failures.map((f) => `  ${f}`).join("\n")}`);
    return 1;
  }
  return 0;
}

if (resolve(process.argv[1] ?? "") === fileURLToPath(import.meta.url)) process.exitCode = await runMqttBench();
