/**
 * The real CLI following a log file through rotations into SQLite: rename-and-recreate (with
 * lines still appended to the renamed file, as a writer does until it reopens) and copytruncate
 * (the file emptied in place, then regrown past where the source was), with records that carry
 * an id and records that get the fallback id. Every line written before its rotation must be in
 * SQLite exactly once, and the run must stop cleanly on SIGTERM.
 */
import { appendFile, copyFile, mkdtemp, readFile, rename, rm, truncate, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import { afterAll, describe, expect, it } from "vitest";
import { killClis, startCli, type Cli } from "../helpers/cli.js";

const dirs: string[] = [];
afterAll(async () => {
  killClis();
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

/** Rows in the table, and distinct `seq` values among them; zeros while it does not exist. */
function rows(db: string): { n: number; seqs: number } {
  let conn: Database.Database | undefined;
  try {
    conn = new Database(db, { fileMustExist: true, readonly: true });
    return conn.prepare("SELECT count(*) AS n, count(DISTINCT json_extract(payload, '$.seq')) AS seqs FROM records").get() as { n: number; seqs: number };
  } catch {
    return { n: 0, seqs: 0 };
  } finally {
    conn?.close();
  }
}

async function waitForRows(db: string, n: number, cli: Cli): Promise<void> {
  const deadline = Date.now() + 20_000;
  while (rows(db).n < n) {
    if (cli.process.exitCode !== null) throw new Error(`the CLI exited while waiting for ${n} rows:\n${cli.output()}`);
    if (Date.now() > deadline) throw new Error(`waited for ${n} rows, have ${rows(db).n}:\n${cli.output()}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

const VARIANTS = {
  "records with ids": (seq: number) => `{"id":"line-${seq}","seq":${seq},"msg":"request handled"}\n`,
  "records without ids": (seq: number) => `{"seq":${seq},"msg":"request handled"}\n`,
};

describe("following a file through rotations, into SQLite", () => {
  it.concurrent.for(Object.keys(VARIANTS) as (keyof typeof VARIANTS)[])("every line once: %s", async (variant) => {
    const line = VARIANTS[variant];
    const dir = await mkdtemp(join(tmpdir(), "sluice-rotation-"));
    dirs.push(dir);
    const log = join(dir, "app.log");
    const db = join(dir, "out.db");
    const config = join(dir, "pipeline.yaml");
    await writeFile(
      config,
      `data_dir: ${join(dir, "data")}
shutdown_timeout: 5s
observability: { log_level: info }
sources:
  app: { type: file, path: ${log}, follow: true, poll_interval: 50ms, checkpoint_interval: 100ms }
sinks:
  db: { type: sqlite, path: ${db}, batch: { max_wait: 10ms } }
`,
    );
    let seq = 0;
    const lines = (n: number) => Array.from({ length: n }, () => line(++seq)).join("");

    await writeFile(log, lines(300));
    const cli = startCli(config, join(dir, "summary.json"), dir);
    await waitForRows(db, 300, cli);

    // Rename and recreate; the writer appends to the renamed file once more before it reopens.
    // The new file's lines sit at the offsets the old file's lines had.
    await appendFile(log, lines(100));
    await rename(log, `${log}.1`);
    await writeFile(log, lines(200));
    await appendFile(`${log}.1`, lines(20));
    await waitForRows(db, 620, cli);

    // copytruncate, once everything was read; the emptied file regrows past the old position.
    await copyFile(log, `${log}.2`);
    await truncate(log, 0);
    await appendFile(log, lines(400));
    await waitForRows(db, 1020, cli);

    // A second rename, onto an older rotated name, and more lines.
    await rename(log, `${log}.1`);
    await writeFile(log, lines(80));
    await waitForRows(db, 1100, cli);

    cli.process.kill("SIGTERM");
    const { code } = await cli.exited;
    expect(code, cli.output()).toBe(0);
    expect(rows(db)).toEqual({ n: seq, seqs: seq });
    const summary = JSON.parse(await readFile(join(dir, "summary.json"), "utf8")) as { records: { received: number; delivered: number; dead_lettered: number } };
    expect(summary.records).toMatchObject({ received: seq, delivered: seq, dead_lettered: 0 });
  });
});
