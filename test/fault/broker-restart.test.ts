/**
 * A broker restarted under a running pipeline: the real CLI moves generator records into a Redis
 * stream (redis_streams sink) or a JetStream stream (nats_jetstream sink), and a quarter of the
 * way in the server is killed (SIGKILL) and started again on the same data. The run must finish on
 * its own with exit 0, nothing dead-lettered, and every record in the stream exactly once: the
 * writes cut by the crash are retried, and the dedupe (Redis: the script's keys, kept by AOF with
 * `appendfsync always`; JetStream: the stream's duplicate window, rebuilt from its file store)
 * absorbs those that had been stored before the answer was lost.
 *
 * The servers are the test's own (test/helpers/broker-servers.ts: a temp directory, a free port),
 * never the machine's shared ones. Skipped with a printed reason when a server binary is missing,
 * unless SLUICE_REQUIRE_SERVICES=1, which turns that into a failure.
 */
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { jetstreamManager } from "@nats-io/jetstream";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { readDeadLetters } from "../../src/sinks/dead-letter-sqlite.js";
import { canStartBroker, startNatsServer, startRedisServer, type BrokerServer } from "../helpers/broker-servers.js";
import { natsConnect, readJetStream, readStream, redisClient } from "../helpers/brokers.js";
import { killClis, startCli, type Cli } from "../helpers/cli.js";

const TOTAL = 50_000;
// Restart once this share of the records is in the stream: well inside the run, not at its edges.
const RESTART_AT = 0.25;
const RUN_TIMEOUT_MS = 90_000;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Summary {
  records: { received: number; delivered: number; already_present: number; dead_lettered: number; dropped: number; retried: number };
  sinks: Record<string, { delivered: number; dead_lettered: number }>;
}

/**
 * Runs generator -> `sinkYaml` in the CLI, restarts `server` once `stored()` passes the restart
 * share, waits for exit 0 and checks the summary. Returns the summary.
 */
async function runThroughRestart(name: string, server: BrokerServer, sinkYaml: string, stored: () => Promise<number>): Promise<Summary> {
  const dir = await mkdtemp(join(tmpdir(), `sluice-${name}-restart-`));
  let cli: Cli | undefined;
  try {
    const dataDir = join(dir, "data");
    const configFile = join(dir, "pipeline.yaml");
    const summaryFile = join(dir, "summary.json");
    // A rate so the run lasts seconds; retries a user would allow for a server gone for seconds.
    await writeFile(
      configFile,
      `data_dir: ${dataDir}
sources:
  readings: { type: generator, count: ${TOTAL}, rate: 15000, keys: 50 }
sinks:
  out:
${sinkYaml}
    batch: { max_records: 200, max_wait: 20ms }
    retry: { max_attempts: 1000, max_elapsed: 60s, initial_backoff: 50ms, max_backoff: 1s }
`,
    );
    cli = startCli(configFile, summaryFile, dir);
    const child = cli;
    const deadline = Date.now() + RUN_TIMEOUT_MS;
    let atRestart: number;
    for (;;) {
      atRestart = await stored().catch(() => 0);
      if (atRestart >= TOTAL * RESTART_AT) break;
      if (child.process.exitCode !== null || child.process.signalCode !== null) throw new Error(`the run ended before the restart:\n${child.output()}`);
      if (Date.now() > deadline) throw new Error(`the run did not reach ${TOTAL * RESTART_AT} records:\n${child.output()}`);
      await sleep(25);
    }
    expect(atRestart).toBeLessThan(TOTAL * 0.9);
    expect(child.process.exitCode, child.output()).toBeNull();
    await server.restart();

    const timer = setTimeout(() => child.process.kill("SIGKILL"), Math.max(1000, deadline - Date.now()));
    const { code, signal } = await child.exited;
    clearTimeout(timer);
    expect({ code, signal }, child.output()).toEqual({ code: 0, signal: null });

    const summary = JSON.parse(await readFile(summaryFile, "utf8")) as Summary;
    console.log(`${name}-restart: restart at ${atRestart} of ${TOTAL}; ${summary.records.retried} record attempts retried, ${summary.records.already_present} already present`);
    // The restart failed writes in flight or due: the retry path ran.
    expect(summary.records.retried, "no write failed during the restart").toBeGreaterThan(0);
    expect(summary.records).toMatchObject({ received: TOTAL, delivered: TOTAL, dead_lettered: 0, dropped: 0 });
    expect(summary.sinks.out).toMatchObject({ delivered: TOTAL, dead_lettered: 0 });
    expect(readDeadLetters(join(dataDir, "dlq.db"))).toEqual([]);
    return summary;
  } finally {
    if (cli !== undefined && cli.process.exitCode === null && cli.process.signalCode === null) cli.process.kill("SIGKILL");
    await rm(dir, { recursive: true, force: true });
  }
}

/** Ids that occur more than once, and how many distinct ids there are. */
function tally(ids: readonly string[]): { distinct: number; repeated: string[] } {
  const seen = new Set<string>();
  const repeated: string[] = [];
  for (const id of ids) {
    if (seen.has(id)) repeated.push(id);
    seen.add(id);
  }
  return { distinct: seen.size, repeated };
}

describe.skipIf(!canStartBroker("redis-server", "Redis restart fault test"))("Redis killed and restarted mid-run (a private redis-server with AOF)", () => {
  let server: BrokerServer | undefined;
  afterEach(() => killClis());
  afterAll(async () => {
    await server?.stop();
  });

  it(`puts all ${TOTAL.toLocaleString("en-US")} records in the stream exactly once, exit 0, nothing dead-lettered`, async () => {
    server = await startRedisServer();
    const redis = redisClient(server.url);
    redis.on("error", () => undefined);
    try {
      await runThroughRestart("redis", server, `    type: redis_streams\n    url: ${server.url}\n    stream: readings`, () => redis.xlen("readings"));
      const ids = (await readStream(redis, "readings")).map((e) => e.fields.id!);
      expect(ids.length).toBe(TOTAL);
      expect(tally(ids)).toEqual({ distinct: TOTAL, repeated: [] });
    } finally {
      redis.disconnect();
    }
  }, 120_000);
});

describe.skipIf(!canStartBroker("nats-server", "NATS restart fault test"))("NATS killed and restarted mid-run (a private nats-server -js)", () => {
  let server: BrokerServer | undefined;
  afterEach(() => killClis());
  afterAll(async () => {
    await server?.stop();
  });

  it(`puts all ${TOTAL.toLocaleString("en-US")} records in the stream exactly once, exit 0, nothing dead-lettered`, async () => {
    server = await startNatsServer();
    const sinkYaml = `    type: nats_jetstream\n    servers: ${server.url}\n    subject: readings\n    ack_timeout: 5s\n    create_stream: { name: READINGS, storage: file }`;
    /** Messages stored so far, on a fresh connection (the server restarts under the test). */
    const stored = async () => {
      const nc = await natsConnect(server!.url);
      try {
        return (await (await jetstreamManager(nc)).streams.info("READINGS")).state.messages;
      } finally {
        await nc.close();
      }
    };
    await runThroughRestart("nats", server, sinkYaml, stored);
    const nc = await natsConnect(server.url);
    try {
      const ids = (await readJetStream(nc, "READINGS")).map((r) => r.id);
      expect(ids.length).toBe(TOTAL);
      expect(tally(ids)).toEqual({ distinct: TOTAL, repeated: [] });
    } finally {
      await nc.close();
    }
  }, 120_000);
});
