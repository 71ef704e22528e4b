/**
 * Crash safety of a followed log file across rotations: the real CLI follows a file of records
 * without ids (their ids come from the file generation and the byte offset) into SQLite, is
 * SIGKILLed while the sink lags behind, and while it is down the file is rotated by rename and a
 * new one written, at the offsets the old one had. Each restart must read the rest of the rotated
 * file (found by its inode) and then the new one: every line exactly once in SQLite, none taken
 * for a redelivery of another.
 *
 * The kill moments come from a seed printed with the test (set CRASH_SEED to replay one).
 */
import { existsSync } from "node:fs";
import { appendFile, mkdtemp, rename, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import { afterAll, describe, expect, it } from "vitest";
import { mulberry32 } from "../../src/core/random.js";
import { readDeadLetters } from "../../src/sinks/dead-letter-sqlite.js";
import { killClis, startCli, type Cli } from "../helpers/cli.js";

const SEED = Number(process.env.CRASH_SEED ?? Math.floor(Math.random() * 1e9));
const CYCLES = 3;
const LINES_PER_FILE = 20_000;

const dirs: string[] = [];
afterAll(async () => {
  killClis();
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

function countRows(db: string): number {
  let conn: Database.Database | undefined;
  try {
    conn = new Database(db, { fileMustExist: true, readonly: true });
    return (conn.prepare("SELECT coalesce(max(rowid), 0) AS n FROM records").get() as { n: number }).n;
  } catch {
    return 0;
  } finally {
    conn?.close();
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function waitUntil(what: string, check: () => boolean | Promise<boolean>, cli: Cli): Promise<void> {
  const deadline = Date.now() + 30_000;
  while (!(await check())) {
    if (cli.process.exitCode !== null) throw new Error(`the CLI exited while waiting for ${what}:\n${cli.output()}`);
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}:\n${cli.output()}`);
    await sleep(25);
  }
}

describe(`SIGKILL, rotate while down, restart (seed ${SEED})`, () => {
  it("every line of every generation reaches SQLite exactly once", async () => {
    const random = mulberry32(SEED);
    const dir = await mkdtemp(join(tmpdir(), "sluice-rotation-crash-"));
    dirs.push(dir);
    const log = join(dir, "app.log");
    const db = join(dir, "out.db");
    const config = join(dir, "pipeline.yaml");
    // Latency per batch so the sink lags the reader: each kill leaves read but un-acked lines.
    await writeFile(
      config,
      `data_dir: ${join(dir, "data")}
observability: { log_level: info }
sources:
  app: { type: file, path: ${log}, follow: true, poll_interval: 50ms, checkpoint_interval: 100ms }
sinks:
  db:
    type: sqlite
    path: ${db}
    batch: { max_records: 500, max_wait: 20ms }
    chaos: { latency: { min: 5ms, max: 20ms } }
`,
    );
    let seq = 0;
    const lines = (n: number) => Array.from({ length: n }, () => `{"seq":${++seq},"msg":"request handled"}\n`).join("");
    await writeFile(log, lines(LINES_PER_FILE));

    for (let k = 0; k < CYCLES; k++) {
      const cli = startCli(config, join(dir, `summary-${k}.json`), dir);
      // Killed at a random moment: the checkpoint may still be in a file rotated away before
      // (the restart then finds it, and the files after it, from the checkpoint's trail).
      const target = seq - LINES_PER_FILE - 500 + Math.floor(LINES_PER_FILE * random());
      await waitUntil(`${target} rows`, () => countRows(db) >= target, cli);
      // A checkpoint first: a run killed before its first one leaves sluice no trace of the file
      // about to be rotated away, and the next run rightly starts at the new file (seed 562651559).
      await waitUntil("a checkpoint", () => existsSync(join(dir, "data", "checkpoints", "app.json")), cli);
      await sleep(Math.floor(random() * 50));
      cli.process.kill("SIGKILL");
      expect((await cli.exited).signal, cli.output()).toBe("SIGKILL");

      // While it is down: more lines into the file, rename it away, and a new file at the path.
      await appendFile(log, lines(500));
      await rename(log, `${log}.${k + 1}`);
      await writeFile(log, lines(LINES_PER_FILE));
    }

    const last = startCli(config, join(dir, "summary-final.json"), dir);
    await waitUntil(`all ${seq} rows`, () => countRows(db) >= seq, last);
    // Nothing more may arrive: a duplicate would come in with the last lines' redelivery.
    await sleep(300);
    last.process.kill("SIGTERM");
    expect((await last.exited).code, last.output()).toBe(0);
    expect(last.output()).toContain("reading files rotated since the checkpoint, oldest first");

    const conn = new Database(db, { readonly: true });
    try {
      const counts = conn
        .prepare("SELECT count(*) AS n, count(DISTINCT id) AS ids, count(DISTINCT json_extract(payload, '$.seq')) AS seqs, min(json_extract(payload, '$.seq')) AS lo, max(json_extract(payload, '$.seq')) AS hi FROM records")
        .get();
      expect(counts).toEqual({ n: seq, ids: seq, seqs: seq, lo: 1, hi: seq });
    } finally {
      conn.close();
    }
    expect(readDeadLetters(join(dir, "data", "dlq.db"))).toEqual([]);
  }, 180_000);
});
