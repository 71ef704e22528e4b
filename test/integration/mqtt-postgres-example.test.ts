/**
 * The shipped examples/mqtt-postgres/ files, run as they are: the pipeline by the real CLI and the
 * publisher by node, against the machine's Mosquitto and PostgreSQL, with only the environment
 * pointing them at this test's own topics, session and table. Each sensor ends with one row, its
 * newest reading; the late reading the publisher sends last is counted and does not overwrite.
 */
import { spawn } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { uniqueName } from "../helpers/brokers.js";
import { killClis, startCli } from "../helpers/cli.js";
import { createSession, MQTT_URL, removeSession } from "../helpers/mqtt.js";
import { until } from "../helpers/nats-source.js";
import { requireService } from "../helpers/services.js";
import { query } from "../fault/postgres-harness.js";

const EXAMPLE = resolve(import.meta.dirname, "../../examples/mqtt-postgres");
const PG_URL = process.env.SLUICE_PG_URL ?? "postgres://postgres@127.0.0.1:5432/test";
const ROUNDS = 5;
const address = (url: string) => new URL(url);
const hasPostgres = await requireService("PostgreSQL", address(PG_URL).hostname, Number(address(PG_URL).port || 5432));
const hasMosquitto = await requireService("Mosquitto", address(MQTT_URL).hostname, Number(address(MQTT_URL).port || 1883));

/** Runs the example's publisher to its end; rejects when it fails. */
function publish(rounds: number, env: Record<string, string>): Promise<string> {
  return new Promise((done, fail) => {
    const child = spawn(process.execPath, [join(EXAMPLE, "publish.mjs"), String(rounds)], { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr.on("data", (d: Buffer) => (out += d.toString()));
    child.on("exit", (code) => (code === 0 ? done(out) : fail(new Error(`publish.mjs exited ${code}:\n${out}`))));
  });
}

describe.skipIf(!hasPostgres || !hasMosquitto)("examples/mqtt-postgres", () => {
  let dir: string | undefined;
  const table = uniqueName("sensor_latest_");
  const clientId = uniqueName("sluice-example-");
  const plant = uniqueName("plant");

  afterAll(async () => {
    killClis();
    await query(PG_URL, `DROP TABLE IF EXISTS ${table}`);
    await removeSession(MQTT_URL, clientId);
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  it("runs as shipped: one row per sensor with its newest reading; the late reading is not applied", async () => {
    dir = await mkdtemp(join(tmpdir(), "sluice-mqtt-pg-example-"));
    const env = { MQTT_URL, DATABASE_URL: PG_URL, PLANT: plant, MQTT_CLIENT_ID: clientId, LATEST_TABLE: table, DATA_DIR: join(dir, "data") };
    // The persistent session exists before anything is published, as after sluice's first start.
    await createSession(MQTT_URL, clientId, `${plant}/+/readings`);
    expect(await publish(ROUNDS, env)).toContain(`published ${ROUNDS * 10 + 1} readings`);

    const run = startCli(join(EXAMPLE, "pipeline.yaml"), join(dir, "summary.json"), dir, env);
    const latest = async () => {
      try {
        return await query<{ sensor: string; value: number; reading_at: Date }>(PG_URL, `SELECT sensor, value, reading_at FROM ${table} ORDER BY sensor`);
      } catch {
        return [];
      }
    };
    await until(async () => (await latest()).filter((r) => r.reading_at.getTime() === Date.parse("2026-05-01T12:00:00Z") + ROUNDS * 1000).length === 10, "every sensor at its last round", 60_000);
    // The late reading is the last published: once every sensor is at its last round it has come too.
    await new Promise((r) => setTimeout(r, 500));
    run.process.kill("SIGTERM");
    expect((await run.exited).code, run.output()).toBe(0);

    const rows = await latest();
    expect(rows.map((r) => r.sensor)).toEqual(Array.from({ length: 10 }, (_, s) => `s-${s}`));
    for (const [s, row] of rows.entries()) expect(row.value).toBeCloseTo(20 + s + ROUNDS / 10);
    const summary = JSON.parse(await readFile(join(dir, "summary.json"), "utf8")) as { records: { received: number; delivered: number; dead_lettered: number } };
    expect(summary.records).toMatchObject({ received: ROUNDS * 10 + 1, delivered: ROUNDS * 10 + 1, dead_lettered: 0 });
  }, 120_000);
});
