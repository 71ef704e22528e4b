/**
 * A file source whose path is a named pipe, through the real CLI: with no writer, SIGTERM ends the
 * run within `shutdown_timeout` (a blocking open used to hang it for good); with a writer, what it
 * writes reaches SQLite and the run ends when it closes its end.
 */
import { execFileSync } from "node:child_process";
import { mkdtemp, open, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import { afterAll, expect, it } from "vitest";
import { killClis, startCli, type Cli } from "../helpers/cli.js";

const dirs: string[] = [];
afterAll(async () => {
  killClis();
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

async function setUp(follow: boolean): Promise<{ dir: string; fifo: string; db: string; config: string }> {
  const dir = await mkdtemp(join(tmpdir(), "sluice-fifo-"));
  dirs.push(dir);
  const fifo = join(dir, "events.pipe");
  execFileSync("mkfifo", [fifo]);
  const db = join(dir, "out.db");
  const config = join(dir, "pipeline.yaml");
  await writeFile(
    config,
    `data_dir: ${join(dir, "data")}
shutdown_timeout: 2s
observability: { log_level: info }
sources:
  events: { type: file, path: ${fifo}, follow: ${follow} }
sinks:
  db: { type: sqlite, path: ${db}, batch: { max_wait: 10ms } }
`,
  );
  return { dir, fifo, db, config };
}

async function waitForOutput(cli: Cli, text: string): Promise<void> {
  const deadline = Date.now() + 20_000;
  while (!cli.output().includes(text)) {
    if (cli.process.exitCode !== null) throw new Error(`the CLI exited before printing "${text}":\n${cli.output()}`);
    if (Date.now() > deadline) throw new Error(`the CLI did not print "${text}":\n${cli.output()}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

it("a FIFO with no writer: SIGTERM with shutdown_timeout 2s ends the run within it, exit 0", async () => {
  const { dir, config } = await setUp(true);
  const cli = startCli(config, join(dir, "summary.json"), dir);
  await waitForOutput(cli, "reading NDJSON from a named pipe");
  const t0 = Date.now();
  cli.process.kill("SIGTERM");
  // Killed after twice the timeout, so that a hang fails here instead of at the test's timeout.
  const guard = setTimeout(() => cli.process.kill("SIGKILL"), 4000);
  const { code, signal } = await cli.exited;
  clearTimeout(guard);
  expect({ code, signal }, cli.output()).toEqual({ code: 0, signal: null });
  expect(Date.now() - t0).toBeLessThan(2000);
  expect(JSON.parse(await readFile(join(dir, "summary.json"), "utf8"))).toMatchObject({ records: { received: 0 } });
});

it("a FIFO with a writer: its lines reach SQLite and the run ends when it closes the pipe", async () => {
  const { dir, fifo, db, config } = await setUp(false);
  const cli = startCli(config, join(dir, "summary.json"), dir);
  await waitForOutput(cli, "reading NDJSON from a named pipe");
  const writer = await open(fifo, "w");
  for (let i = 0; i < 10; i++) await writer.write(Array.from({ length: 100 }, (_, j) => `{"n":${i * 100 + j}}\n`).join(""));
  await writer.close();
  const { code } = await cli.exited;
  expect(code, cli.output()).toBe(0);
  const conn = new Database(db, { readonly: true });
  try {
    expect(conn.prepare("SELECT count(DISTINCT json_extract(payload, '$.n')) AS n FROM records").get()).toEqual({ n: 1000 });
  } finally {
    conn.close();
  }
});
