/**
 * Crash safety of the `mqtt` source: the real CLI reading QoS 1 messages from a persistent
 * session on a private Mosquitto into SQLite, SIGKILLed three times while the messages are being
 * published and read, and restarted with the same config. Every published message must end in
 * SQLite exactly once, and the session must hold nothing at the end: what a killed run had not
 * committed was never acknowledged, so the broker resent it to the next run.
 */
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import { afterAll, describe, expect, it } from "vitest";
import { canStartBroker, startMosquitto, type BrokerServer } from "../helpers/broker-servers.js";
import { killClis, startCli } from "../helpers/cli.js";
import { createSession, drainSession, mqttClient } from "../helpers/mqtt.js";

const TOTAL = 20_000;
const KILLS = 3;
/** Messages published unacknowledged at once; the publisher keeps going while sluice is killed and restarted. */
const PUBLISH_WINDOW = 10;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Rows in the table (the largest rowid: rows are only inserted); 0 before it exists. */
function countRows(db: string): number {
  let conn: Database.Database | undefined;
  try {
    conn = new Database(db, { fileMustExist: true });
    return (conn.prepare("SELECT coalesce(max(rowid), 0) AS n FROM records").get() as { n: number }).n;
  } catch {
    return 0;
  } finally {
    conn?.close();
  }
}

describe.skipIf(!canStartBroker("mosquitto", "mqtt SIGKILL test"))("mqtt source: SIGKILL mid-stream, restart, repeat", () => {
  let broker: BrokerServer | undefined;
  let dir: string | undefined;

  afterAll(async () => {
    killClis();
    await broker?.stop();
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  it(`every one of ${TOTAL} QoS 1 messages reaches SQLite exactly once`, async () => {
    // No limit on the queue: Mosquitto's default (1000 beyond those in flight) drops what a session
    // gets past it while sluice is down. That limit is the broker's, and the README says so.
    broker = await startMosquitto({ settings: ["max_queued_messages 0"] });
    dir = await mkdtemp(join(tmpdir(), "sluice-mqtt-crash-"));
    const clientId = "sluice-crash";
    const topic = "plant/sensors/readings";
    await createSession(broker.url, clientId, topic);
    const db = join(dir, "out.db");
    const config = join(dir, "pipeline.yaml");
    await writeFile(
      config,
      `data_dir: ${join(dir, "data")}
sources:
  sensors: { type: mqtt, url: "${broker.url}", topics: "${topic}", client_id: ${clientId} }
sinks:
  db:
    type: sqlite
    path: ${db}
    batch: { max_records: 500, max_wait: 20ms }
    chaos: { latency: { min: 1ms, max: 10ms } }
`,
    );

    // The publisher runs through the kills, as sensors would.
    const publisher = await mqttClient(broker.url);
    let published = 0;
    const publishing = (async () => {
      while (published < TOTAL) {
        const n = Math.min(PUBLISH_WINDOW, TOTAL - published);
        await Promise.all(
          Array.from({ length: n }, (_, i) => {
            const seq = published + i;
            return publisher.publishAsync(topic, JSON.stringify({ id: `reading-${seq}`, sensor: `s-${seq % 50}`, value: seq % 1000, seq }), { qos: 1 });
          }),
        );
        published += n;
      }
    })();

    for (let k = 0; k <= KILLS; k++) {
      const child = startCli(config, join(dir, `summary-${k}.json`), dir);
      if (k === KILLS) {
        const deadline = Date.now() + 120_000;
        while (countRows(db) < TOTAL) {
          if (child.process.exitCode !== null) throw new Error(`the last run exited:\n${child.output()}`);
          if (Date.now() > deadline) throw new Error(`only ${countRows(db)} of ${TOTAL} rows after the last restart:\n${child.output()}`);
          await sleep(50);
        }
        child.process.kill("SIGTERM");
        expect((await child.exited).code, child.output()).toBe(0);
        break;
      }
      // Killed once a quarter more of the messages have been published and some of them are in SQLite.
      const target = Math.floor((TOTAL * (k + 1)) / (KILLS + 1.5));
      const deadline = Date.now() + 60_000;
      const before = countRows(db);
      while (published < target || countRows(db) <= before) {
        if (child.process.exitCode !== null) throw new Error(`run ${k} exited before the kill:\n${child.output()}`);
        if (Date.now() > deadline) throw new Error(`run ${k}: ${published} published, ${countRows(db)} rows:\n${child.output()}`);
        await sleep(20);
      }
      child.process.kill("SIGKILL");
      expect((await child.exited).signal).toBe("SIGKILL");
      expect(countRows(db)).toBeLessThan(TOTAL);
    }
    await publishing;
    await publisher.endAsync();

    const conn = new Database(db, { readonly: true });
    const rows = conn.prepare("SELECT id FROM records").all() as { id: string }[];
    conn.close();
    expect(rows).toHaveLength(TOTAL);
    const ids = new Set(rows.map((r) => r.id));
    expect(ids.size).toBe(TOTAL);
    for (let seq = 0; seq < TOTAL; seq++) expect(ids.has(`reading-${seq}`)).toBe(true);
    // Everything committed was acknowledged: the session holds nothing more.
    expect(await drainSession(broker.url, clientId)).toEqual([]);
  }, 300_000);
});
