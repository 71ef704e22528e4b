/**
 * Crash safety with `workers: 2`: the real CLI reads an NDJSON file, decodes and transforms it on
 * two worker threads (a copying module transform), writes SQLite, and is SIGKILLed twice at random
 * moments mid-run, then restarted with the same config and data_dir. Every line must end in SQLite
 * exactly once, transformed, and the checkpoint must never run ahead of what is in the table.
 *
 * The kill moments come from a seed printed with the test (set CRASH_SEED to replay one).
 */
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import Database from "better-sqlite3";
import { afterAll, describe, expect, it } from "vitest";
import { mulberry32 } from "../../src/core/random.js";
import { readDeadLetters } from "../../src/sinks/dead-letter-sqlite.js";
import { killClis, startCli } from "../helpers/cli.js";
import { countRows } from "../helpers/sqlite-rows.js";

const TOTAL = 60_000;
const KILLS = 2;
const SEED = Number(process.env.CRASH_SEED ?? Math.floor(Math.random() * 1e9));
const FATE = resolve(import.meta.dirname, "../fixtures/workers/fate.mjs");

const dirs: string[] = [];
afterAll(async () => {
  killClis();
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe(`workers: 2, SIGKILL mid-run, restart (seed ${SEED})`, () => {
  it("every line reaches SQLite exactly once, transformed", async () => {
    const random = mulberry32(SEED);
    const dir = await mkdtemp(join(tmpdir(), "sluice-workers-crash-"));
    dirs.push(dir);
    const input = join(dir, "readings.ndjson");
    const lines: string[] = [];
    for (let n = 1; n <= TOTAL; n++) lines.push(`{"id":"reading-${n}","sensor":"sensor-${n % 50}","seq":${n},"fate":"ok"}\n`);
    await writeFile(input, lines.join(""));
    const db = join(dir, "out.db");
    const dataDir = join(dir, "data");
    const checkpointFile = join(dataDir, "checkpoints", "readings.json");
    const configFile = join(dir, "pipeline.yaml");
    await writeFile(
      configFile,
      `data_dir: ${dataDir}
workers: 2
buffer: { chunk_size: 500 }
sources:
  readings:
    type: file
    path: ${input}
    key_field: sensor
    checkpoint_interval: 100ms
transforms:
  - { type: module, path: ${FATE} }
sinks:
  db:
    type: sqlite
    path: ${db}
    batch: { max_records: 1000, max_wait: 20ms }
    chaos: { latency: { min: 1ms, max: 10ms } }
`,
    );

    let killedAt = 0;
    let checkpoint = 0;
    for (let k = 0; k < KILLS; k++) {
      const target = killedAt + Math.floor(TOTAL * (0.05 + random() * 0.1));
      const child = startCli(configFile, join(dir, `summary-${k}.json`), dir);
      const deadline = Date.now() + 90_000;
      while (countRows(db) < target) {
        if (child.process.exitCode !== null) throw new Error(`run ${k} exited before the kill:\n${child.output()}`);
        if (Date.now() > deadline) throw new Error(`run ${k} did not reach ${target} rows:\n${child.output()}`);
        await sleep(50);
      }
      await sleep(Math.floor(random() * 100));
      child.process.kill("SIGKILL");
      expect((await child.exited).signal, child.output()).toBe("SIGKILL");
      const rows = countRows(db);
      expect(rows).toBeLessThan(TOTAL);
      killedAt = rows;
      const cp = existsSync(checkpointFile) ? (JSON.parse(await readFile(checkpointFile, "utf8")) as { line: number }).line : 0;
      // The checkpoint moves only after the commit: never past what is in the table.
      expect(cp).toBeLessThanOrEqual(rows);
      expect(cp).toBeGreaterThanOrEqual(checkpoint);
      checkpoint = cp;
    }

    const summaryFile = join(dir, "summary-final.json");
    const last = startCli(configFile, summaryFile, dir);
    const timeout = setTimeout(() => last.process.kill("SIGKILL"), 120_000);
    const { code } = await last.exited;
    clearTimeout(timeout);
    expect(code, last.output()).toBe(0);
    const summary = JSON.parse(await readFile(summaryFile, "utf8")) as { records: { received: number; delivered: number; dead_lettered: number } };
    expect(summary.records).toMatchObject({ received: TOTAL - checkpoint, delivered: TOTAL - checkpoint, dead_lettered: 0 });

    const conn = new Database(db, { readonly: true });
    try {
      const counts = conn
        .prepare("SELECT count(*) AS n, count(DISTINCT id) AS ids, min(json_extract(payload, '$.seq')) AS lo, max(json_extract(payload, '$.seq')) AS hi, sum(json_extract(payload, '$.done')) AS done, sum(json_extract(payload, '$.on_worker')) AS on_worker FROM records")
        .get() as { n: number; ids: number; lo: number; hi: number; done: number; on_worker: number };
      expect(counts).toEqual({ n: TOTAL, ids: TOTAL, lo: 1, hi: TOTAL, done: TOTAL, on_worker: TOTAL });
      const wrong = (conn.prepare("SELECT id, json_extract(payload, '$.seq') AS seq FROM records").all() as { id: string; seq: number }[]).filter((r) => r.id !== `reading-${r.seq}`);
      expect(wrong.slice(0, 5)).toEqual([]);
    } finally {
      conn.close();
    }
    expect(readDeadLetters(join(dataDir, "dlq.db"))).toEqual([]);
  }, 400_000);
});
