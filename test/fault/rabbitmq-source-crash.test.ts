/**
 * Crash safety of the `rabbitmq` source: the real CLI reading 50,000 persistent messages from a
 * quorum queue on the machine's RabbitMQ into SQLite, SIGKILLed three times mid-stream and
 * restarted with the same config. Every message must end in SQLite exactly once (its id is the
 * message's `message_id`, so a redelivery is the same row): what a killed run had not committed was
 * never acked, so the broker gave it to the next run. The last run is stopped once every row is in
 * and the queue has nothing ready; what is back in the queue after it may only be redeliveries of
 * committed messages (a graceful stop requeues what it had prefetched and not handed over).
 */
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { ChannelModel } from "amqplib";
import Database from "better-sqlite3";
import { afterAll, describe, expect, it } from "vitest";
import { DEFAULTS } from "../../src/config/defaults.js";
import { uniqueName } from "../helpers/brokers.js";
import { killClis, startCli } from "../helpers/cli.js";
import { declareQueue, deleteQueues, hasRabbitmq, publishAll, rabbitConnect, RABBITMQ_URL, readyCount } from "../helpers/rabbitmq.js";

const TOTAL = 50_000;
const KILLS = 3;

const available = await hasRabbitmq();
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

describe.skipIf(!available)("rabbitmq source: SIGKILL mid-stream, restart, repeat", () => {
  let conn: ChannelModel | undefined;
  let dir: string | undefined;
  const queue = uniqueName("sluice-crash-");

  afterAll(async () => {
    killClis();
    if (conn !== undefined) {
      await deleteQueues(conn, [queue]);
      await conn.close();
    }
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  it(`every one of ${TOTAL} persistent messages reaches SQLite exactly once, and the queue is drained`, async () => {
    conn = await rabbitConnect();
    await declareQueue(conn, queue);
    const bodies = Array.from({ length: TOTAL }, (_, seq) => ({ sensor: `s-${seq % 50}`, value: seq % 1000, seq }));
    await publishAll(conn, { queue }, bodies, (seq) => ({ messageId: `reading-${seq}` }));
    expect(await readyCount(conn, queue)).toBe(TOTAL);

    dir = await mkdtemp(join(tmpdir(), "sluice-rabbitmq-crash-"));
    const db = join(dir, "out.db");
    const config = join(dir, "pipeline.yaml");
    await writeFile(
      config,
      `data_dir: ${join(dir, "data")}
sources:
  readings: { type: rabbitmq, url: "\${RABBITMQ_URL}", queue: ${queue} }
sinks:
  db:
    type: sqlite
    path: ${db}
    batch: { max_records: 500, max_wait: 20ms }
    chaos: { latency: { min: 1ms, max: 10ms } }
`,
    );
    const env = { RABBITMQ_URL };

    for (let k = 0; k <= KILLS; k++) {
      const child = startCli(config, join(dir, `summary-${k}.json`), dir, env);
      if (k === KILLS) {
        const deadline = Date.now() + 120_000;
        while (countRows(db) < TOTAL || (await readyCount(conn, queue)) > 0) {
          if (child.process.exitCode !== null) throw new Error(`the last run exited:\n${child.output()}`);
          if (Date.now() > deadline) throw new Error(`only ${countRows(db)} of ${TOTAL} rows after the last restart:\n${child.output()}`);
          await sleep(50);
        }
        child.process.kill("SIGTERM");
        expect((await child.exited).code, child.output()).toBe(0);
        break;
      }
      // Killed once a further fifth of the messages is in SQLite.
      const target = Math.floor((TOTAL * (k + 1)) / (KILLS + 2));
      const deadline = Date.now() + 60_000;
      while (countRows(db) < target) {
        if (child.process.exitCode !== null) throw new Error(`run ${k} exited before the kill:\n${child.output()}`);
        if (Date.now() > deadline) throw new Error(`run ${k}: ${countRows(db)} rows:\n${child.output()}`);
        await sleep(10);
      }
      child.process.kill("SIGKILL");
      expect((await child.exited).signal).toBe("SIGKILL");
      expect(countRows(db)).toBeLessThan(TOTAL);
    }

    const out = new Database(db, { readonly: true });
    const rows = out.prepare("SELECT id FROM records").all() as { id: string }[];
    out.close();
    expect(rows).toHaveLength(TOTAL);
    const ids = new Set(rows.map((r) => r.id));
    expect(ids.size).toBe(TOTAL);
    for (let seq = 0; seq < TOTAL; seq++) expect(ids.has(`reading-${seq}`)).toBe(true);
    // sluice has exited (anything unacked is back): what is left are copies of committed messages
    // (every id is in SQLite), at most what one consumer may hold unacked (the buffer's max_records).
    expect(await readyCount(conn, queue)).toBeLessThanOrEqual(DEFAULTS.buffer.max_records);
  }, 180_000);
});
