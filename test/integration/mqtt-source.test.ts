/**
 * The `mqtt` source against Mosquitto, beyond the contract suite: wildcard subscriptions, ids,
 * keys and `topic_field`; what the broker still holds after a run (nothing it committed, everything
 * it did not), for QoS 1 and QoS 2; what it has in flight bounded by the buffer (Receive Maximum);
 * malformed messages dead-lettered and acknowledged; bad credentials a permanent error (exit 1) on a
 * private Mosquitto with a password file. Each test its own topic and client id, session removed.
 */
import { spawnSync } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import type { z } from "zod";
import { MemoryBuffer } from "../../src/core/buffer.js";
import { systemClock } from "../../src/core/clock.js";
import { silentLogger, type InternalEvent } from "../../src/core/events.js";
import { Pipeline, type PipelineStatus } from "../../src/core/pipeline.js";
import { definition } from "../../src/sources/mqtt/source.js";
import { canStartBroker, startMosquitto, type BrokerServer } from "../helpers/broker-servers.js";
import { uniqueName } from "../helpers/brokers.js";
import { killClis, runCli } from "../helpers/cli.js";
import { MemoryDeadLetterStore } from "../helpers/memory.js";
import { createSession, drainSession, MQTT_URL, publishAll, removeSession } from "../helpers/mqtt.js";
import { GatedSink, until } from "../helpers/nats-source.js";
import { requireService } from "../helpers/services.js";

const address = new URL(MQTT_URL);
const hasMosquitto = await requireService("Mosquitto", address.hostname, Number(address.port || 1883));

interface Run {
  readonly pipeline: Pipeline;
  readonly done: Promise<PipelineStatus>;
  readonly events: InternalEvent[];
  readonly deadLetters: MemoryDeadLetterStore;
}

/** Starts a pipeline: the `mqtt` source (named `mq`) -> `sink` (named `out`). */
function runSource(source: z.input<typeof definition.options>, sink: GatedSink, o: { maxRecords?: number; shutdownTimeoutMs?: number } = {}): Run {
  const events: InternalEvent[] = [];
  const deadLetters = new MemoryDeadLetterStore();
  const maxRecords = o.maxRecords ?? 10_000;
  const emit = (e: InternalEvent) => void events.push(e);
  const pipeline = new Pipeline({
    sources: [{ name: "mq", source: definition.create(definition.options.parse(source), { name: "mq", dataDir: "", baseDir: "", clock: systemClock, logger: silentLogger, emit, bufferRecords: maxRecords }), connectBackoff: { initialMs: 20, maxMs: 200, multiplier: 2 } }],
    transforms: [],
    sinks: [{ name: "out", sink, batch: { maxRecords: 100, maxBytes: 4 * 1024 * 1024, maxWaitMs: 5 }, retry: { maxAttempts: 1000, maxElapsedMs: 600_000, backoff: { initialMs: 10, maxMs: 100, multiplier: 2 } }, concurrency: 2 }],
    deadLetter: deadLetters,
    buffer: new MemoryBuffer({ maxRecords, maxBytes: 64 * 1024 * 1024 }),
    whenFull: "block",
    chunkSize: 100,
    shutdownTimeoutMs: o.shutdownTimeoutMs ?? 5_000,
    emit,
  });
  return { pipeline, done: pipeline.run(), events, deadLetters };
}

describe.skipIf(!hasMosquitto)("mqtt source on the machine's Mosquitto", () => {
  const sessions: string[] = [];
  const runs: Run[] = [];

  afterEach(async () => {
    for (const r of runs.splice(0)) {
      r.pipeline.stop();
      await r.done;
    }
    for (const s of sessions.splice(0)) await removeSession(MQTT_URL, s);
  });

  /** A fresh client id and topic prefix, with the session subscribed to `<prefix>/#` at `qos`. */
  /** A persistent session subscribed to `<prefix>/<filter>` (the filter the source will subscribe), so nothing published before the source connects is missed. */
  async function session(qos: 1 | 2 = 1, filter = "#"): Promise<{ clientId: string; prefix: string }> {
    const clientId = uniqueName("sluice-mqtt-it-");
    sessions.push(clientId);
    const prefix = `sluice/it/${clientId}`;
    await createSession(MQTT_URL, clientId, `${prefix}/${filter}`, qos);
    return { clientId, prefix };
  }

  function start(...a: Parameters<typeof runSource>): Run {
    const r = runSource(...a);
    runs.push(r);
    return r;
  }

  it("reads a wildcard subscription: ids from the payload or topic + hash, the topic as key and in topic_field", async () => {
    // The session subscribed to what the source subscribes: with `#` it would also hold the
    // message on <prefix>/s2/other when that is published before the source connects.
    const { clientId, prefix } = await session(1, "+/reading");
    const sink = new GatedSink();
    start({ url: MQTT_URL, topics: `${prefix}/+/reading`, client_id: clientId, topic_field: "topic" }, sink);
    await publishAll(MQTT_URL, `${prefix}/s1/reading`, [{ id: "r-1", v: 1 }, { v: 2 }]);
    await publishAll(MQTT_URL, `${prefix}/s2/reading`, [{ v: 2 }]);
    await publishAll(MQTT_URL, `${prefix}/s2/other`, [{ v: 3 }]);
    await until(() => sink.committed.size === 3, "3 records committed");
    const byId = new Map([...sink.committed].map(([id, r]) => [id, r]));
    expect(byId.get("r-1")).toMatchObject({ key: `${prefix}/s1/reading`, payload: { id: "r-1", v: 1, topic: `${prefix}/s1/reading` } });
    const hashed = [...byId.keys()].filter((id) => id !== "r-1").sort();
    expect(hashed).toHaveLength(2);
    for (const id of hashed) expect(id).toMatch(new RegExp(`^mq:${prefix}/s[12]/reading:[\\w-]{22}$`));
    // The same bytes on two topics are two records.
    expect(new Set(hashed.map((id) => id.split(":")[1])).size).toBe(2);
  });

  it.each([1, 2] as const)("QoS %i: leaves at the broker exactly what it did not commit", async (qos) => {
    const { clientId, prefix } = await session(qos);
    const topic = `${prefix}/t`;
    const sink = new GatedSink();
    const first = start({ url: MQTT_URL, topics: `${prefix}/#`, client_id: clientId, qos }, sink, { shutdownTimeoutMs: 100 });
    await publishAll(MQTT_URL, topic, Array.from({ length: 50 }, (_, n) => ({ id: `a-${n}` })), qos);
    await until(() => sink.committed.size === 50, "50 records committed");
    // Later messages are held by the sink: received, never committed.
    sink.hold();
    await publishAll(MQTT_URL, topic, Array.from({ length: 30 }, (_, n) => ({ id: `b-${n}` })), qos);
    await until(() => sink.attempted.filter((id) => id.startsWith("b-")).length > 0, "a write of the held records");
    runs.splice(runs.indexOf(first), 1);
    first.pipeline.stop();
    expect((await first.done).tag).toBe("timed_out");
    const left = await drainSession(MQTT_URL, clientId);
    expect(left.map((m) => m.payload.id).sort()).toEqual(Array.from({ length: 30 }, (_, n) => `b-${n}`).sort());
    // Each was sent to the first run (which held it uncommitted), so the broker resends it as a duplicate.
    expect(left.every((m) => m.dup)).toBe(true);
  }, 30_000);

  it("has at most the buffer's max_records of messages unacknowledged (Receive Maximum), and delivers the rest later", async () => {
    const { clientId, prefix } = await session();
    const sink = new GatedSink(true);
    const first = start({ url: MQTT_URL, topics: `${prefix}/#`, client_id: clientId }, sink, { maxRecords: 20, shutdownTimeoutMs: 100 });
    await publishAll(MQTT_URL, `${prefix}/t`, Array.from({ length: 200 }, (_, n) => ({ id: `r-${n}` })));
    await until(() => sink.attempted.length > 0, "a write");
    await new Promise((r) => setTimeout(r, 300));
    runs.splice(runs.indexOf(first), 1);
    first.pipeline.stop();
    await first.done;
    // The broker marks as duplicates the messages it had sent: at most the Receive Maximum.
    const left = await drainSession(MQTT_URL, clientId);
    expect(left).toHaveLength(200);
    const sent = left.filter((m) => m.dup).length;
    expect(sent).toBeGreaterThan(0);
    expect(sent).toBeLessThanOrEqual(20);
  }, 30_000);

  it("dead-letters a message that is not a JSON object, and acknowledges it once the dead letter is committed", async () => {
    const { clientId, prefix } = await session();
    const sink = new GatedSink();
    const run = start({ url: MQTT_URL, topics: `${prefix}/#`, client_id: clientId }, sink);
    await publishAll(MQTT_URL, `${prefix}/t`, [{ id: "ok" }]);
    const { default: mqtt } = await import("mqtt");
    const raw = await mqtt.connectAsync(MQTT_URL, { protocolVersion: 5 });
    await raw.publishAsync(`${prefix}/t`, "not json", { qos: 1 });
    await raw.endAsync();
    await until(() => sink.committed.size === 1 && run.deadLetters.entries.length === 1, "a record and a dead letter");
    expect(run.deadLetters.entries[0]).toMatchObject({ code: "ERR_RECORD_MALFORMED", raw: "not json" });
    await until(() => run.events.some((e) => e.type === "records_dead_lettered"), "the dead letter counted");
    runs.splice(runs.indexOf(run), 1);
    run.pipeline.stop();
    await run.done;
    expect(await drainSession(MQTT_URL, clientId)).toEqual([]);
  });
});

describe.skipIf(!canStartBroker("mosquitto", "mqtt private-broker tests"))("mqtt source on a private Mosquitto", () => {
  let broker: BrokerServer | undefined;
  let dir: string | undefined;
  const runs: Run[] = [];

  afterAll(async () => {
    killClis();
    for (const r of runs) {
      r.pipeline.stop();
      await r.done;
    }
    await broker?.stop();
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  it("reconnects with backoff when the broker restarts, subscribes again, and delivers what is published after", async () => {
    const restarting = await startMosquitto();
    try {
      const sink = new GatedSink();
      const run = runSource({ url: restarting.url, topics: "s/#", client_id: "sluice-restart" }, sink);
      runs.push(run);
      const connected = () => run.events.filter((e) => e.type === "source_connected").length;
      await until(() => connected() === 1, "connected");
      await publishAll(restarting.url, "s/1", Array.from({ length: 10 }, (_, n) => ({ id: `a-${n}` })));
      await until(() => sink.committed.size === 10, "10 records committed");
      // SIGKILL: the broker loses its session (nothing saved yet); the source makes it again at connect.
      await restarting.restart();
      await until(() => connected() === 2, "connected again", 30_000);
      expect(run.events.some((e) => e.type === "source_connect_failed")).toBe(true);
      await publishAll(restarting.url, "s/1", Array.from({ length: 10 }, (_, n) => ({ id: `b-${n}` })));
      await until(() => sink.committed.size === 20, "20 records committed");
      runs.splice(runs.indexOf(run), 1);
      run.pipeline.stop();
      expect((await run.done).tag).toBe("stopped");
    } finally {
      await restarting.stop();
    }
  }, 60_000);

  it("fails with exit 1 and says why when the broker refuses the credentials", async () => {
    dir = await mkdtemp(join(tmpdir(), "sluice-mqtt-auth-"));
    const passwords = join(dir, "passwords");
    expect(spawnSync("mosquitto_passwd", ["-b", "-c", passwords, "sensor", "right"]).status).toBe(0);
    broker = await startMosquitto({ passwordFile: passwords });
    const config = join(dir, "pipeline.yaml");
    await writeFile(
      config,
      [
        `data_dir: ${join(dir, "data")}`,
        "sources:",
        `  in: { type: mqtt, url: "${broker.url}", topics: "s/#", client_id: c1, username: sensor, password: wrong }`,
        "sinks:",
        "  out: { type: blackhole }",
      ].join("\n"),
    );
    const r = await runCli(["run", config]);
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr).toMatch(/source in cannot connect: .*mqtt: Connection refused: (Bad User Name or Password|Not authorized)/);
  }, 30_000);
});
