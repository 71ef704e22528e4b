/**
 * The shipped examples/rabbitmq-sqlite/ files, run as they are: the pipeline by the real CLI and the
 * publisher by node, against the machine's RabbitMQ, with only the environment pointing them at
 * this test's own queue, routing key and database. Every reading reaches SQLite once, the queue ends
 * empty, and publishing the same readings again (a producer's retry) adds no row.
 */
import { spawn } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { ChannelModel } from "amqplib";
import Database from "better-sqlite3";
import { afterAll, describe, expect, it } from "vitest";
import { uniqueName } from "../helpers/brokers.js";
import { killClis, startCli } from "../helpers/cli.js";
import { until } from "../helpers/nats-source.js";
import { deleteQueues, hasRabbitmq, rabbitConnect, RABBITMQ_URL, readyCount } from "../helpers/rabbitmq.js";

const EXAMPLE = resolve(import.meta.dirname, "../../examples/rabbitmq-sqlite");
const READINGS = 500;
const available = await hasRabbitmq();

/** Runs the example's publisher to its end; rejects when it fails. */
function publish(count: number, env: Record<string, string>): Promise<string> {
  return new Promise((done, fail) => {
    const child = spawn(process.execPath, [join(EXAMPLE, "publish.mjs"), String(count)], { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr.on("data", (d: Buffer) => (out += d.toString()));
    child.on("exit", (code) => (code === 0 ? done(out) : fail(new Error(`publish.mjs exited ${code}:\n${out}`))));
  });
}

describe.skipIf(!available)("examples/rabbitmq-sqlite", () => {
  let conn: ChannelModel | undefined;
  let dir: string | undefined;
  const queue = uniqueName("sluice-example-");

  afterAll(async () => {
    killClis();
    if (conn !== undefined) {
      await deleteQueues(conn, [queue]);
      await conn.close();
    }
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  it(`runs as shipped: ${READINGS} readings published, each in SQLite once, the queue empty; a republish adds nothing`, async () => {
    conn = await rabbitConnect();
    dir = await mkdtemp(join(tmpdir(), "sluice-rabbitmq-example-"));
    const db = join(dir, "readings.db");
    const env = { RABBITMQ_URL, READINGS_QUEUE: queue, PLANT: uniqueName("plant"), READINGS_DB: db, DATA_DIR: join(dir, "data") };
    const rows = () => {
      try {
        const conn = new Database(db, { readonly: true, fileMustExist: true });
        try {
          return conn.prepare("SELECT count(*) AS n, count(DISTINCT id) AS ids, count(DISTINCT key) AS keys FROM readings").get() as { n: number; ids: number; keys: number };
        } finally {
          conn.close();
        }
      } catch {
        return { n: 0, ids: 0, keys: 0 };
      }
    };

    const run = startCli(join(EXAMPLE, "pipeline.yaml"), join(dir, "summary.json"), dir, env);
    // Published once the queue is there and bound: sluice declares it at connect, and binds it right
    // after (a message published to amq.topic before the binding would be dropped by RabbitMQ).
    await until(() => queueExists(conn!, queue), "the queue declared", 60_000);
    await new Promise((r) => setTimeout(r, 500));
    expect(await publish(READINGS, env)).toContain(`published ${READINGS} readings`);
    await until(() => rows().n === READINGS, `${READINGS} rows`, 60_000);
    expect(await publish(READINGS, env)).toContain(`published ${READINGS} readings`);
    await until(async () => (await readyCount(conn!, queue)) === 0, "the republished readings consumed", 30_000);
    await new Promise((r) => setTimeout(r, 300));
    run.process.kill("SIGTERM");
    expect((await run.exited).code, run.output()).toBe(0);
    expect(rows()).toEqual({ n: READINGS, ids: READINGS, keys: 10 });
    expect(await readyCount(conn, queue)).toBe(0);
    const summary = JSON.parse(await readFile(join(dir, "summary.json"), "utf8")) as { records: { received: number; delivered: number } };
    expect(summary.records).toMatchObject({ received: 2 * READINGS, delivered: 2 * READINGS });
  }, 120_000);
});

/** Whether `queue` exists. */
async function queueExists(conn: ChannelModel, queue: string): Promise<boolean> {
  const ch = await conn.createChannel();
  ch.on("error", () => undefined);
  try {
    await ch.checkQueue(queue);
    return true;
  } catch {
    return false;
  } finally {
    await ch.close().catch(() => undefined);
  }
}
