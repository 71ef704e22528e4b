/**
 * Graceful stop of the real CLI process: SIGTERM mid-run drains what is in flight into SQLite,
 * counts every record, exits 0; a second signal during the drain does not cut it short.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { createRequire } from "node:module";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import Database from "better-sqlite3";
import { afterEach, beforeEach, expect, it } from "vitest";

const ROOT = resolve(import.meta.dirname, "../..");
const ENTRY = join(ROOT, "src/cli/entry.ts");
// tsx by absolute URL: `--import tsx` would resolve it from the child's cwd, a temp dir.
const TSX = pathToFileURL(createRequire(import.meta.url).resolve("tsx")).href;

let dir: string;
const children: ChildProcess[] = [];

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "sluice-stop-"));
});

afterEach(async () => {
  for (const child of children.splice(0)) if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  await rm(dir, { recursive: true, force: true });
});

/** Rows in `table`, or 0 while the database or table does not exist yet. */
function countRows(db: string): number {
  let conn: Database.Database | undefined;
  try {
    conn = new Database(db, { fileMustExist: true });
    return (conn.prepare("SELECT count(*) AS n FROM records").get() as { n: number }).n;
  } catch {
    return 0;
  } finally {
    conn?.close();
  }
}

async function waitFor(what: string, check: () => boolean, timeoutMs: number, child: ChildProcess, output: () => string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`the CLI exited (${child.exitCode ?? child.signalCode}) while waiting for ${what}:\n${output()}`);
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}:\n${output()}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

it("drains in-flight records on SIGTERM, ignores a second SIGINT while draining, and exits 0 with every record counted", async () => {
  const db = join(dir, "out.db");
  const summaryFile = join(dir, "summary.json");
  const configFile = join(dir, "pipeline.yaml");
  // The generator (4000/s) outruns the sink (~100 records per 100 ms), so the buffer is full when
  // SIGTERM arrives and the drain has ~1000 records, about a second of work, to deliver.
  await writeFile(
    configFile,
    `data_dir: ${join(dir, "data")}
shutdown_timeout: 20s
buffer: { max_records: 1000, chunk_size: 100 }
observability: { log_level: warn }
sources:
  gen: { type: generator, rate: 4000, seed: 3 }
sinks:
  db:
    type: sqlite
    path: ${db}
    batch: { max_records: 100, max_wait: 10ms }
    chaos: { latency: 100ms }
`,
  );

  const child = spawn(process.execPath, ["--conditions=sluice-source", "--import", TSX, ENTRY, "run", configFile, "--summary-json", summaryFile, "--no-progress"], {
    cwd: dir,
    stdio: ["ignore", "pipe", "pipe"],
  });
  children.push(child);
  let stderr = "";
  child.stderr!.on("data", (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((done) => child.on("exit", (code, signal) => done({ code, signal })));

  await waitFor("the first rows", () => countRows(db) > 0, 20_000, child, () => stderr);
  await new Promise((r) => setTimeout(r, 1000));
  expect(child.exitCode, stderr).toBeNull();

  const rowsAtStop = countRows(db);
  child.kill("SIGTERM");
  await waitFor("the drain to start", () => stderr.includes("SIGTERM: stopping"), 5000, child, () => stderr);
  await new Promise((r) => setTimeout(r, 200));
  child.kill("SIGINT");

  const { code, signal } = await exited;
  expect(signal, stderr).toBeNull();
  expect(code, stderr).toBe(0);
  expect(stderr).toContain("SIGINT again: still draining");
  expect(stderr).toMatch(/sluice run stopped in/);

  const s = JSON.parse(await readFile(summaryFile, "utf8")) as {
    records: { received: number; delivered: number; dead_lettered: number; dropped: number };
    sinks: Record<string, { delivered: number }>;
  };
  const { received, delivered, dead_lettered, dropped } = s.records;
  const rows = countRows(db);
  expect(rows).toBe(delivered);
  expect(s.sinks.db!.delivered).toBe(delivered);
  // Nothing left in flight: every received record was delivered, dead-lettered or dropped.
  expect(received).toBe(delivered + dead_lettered + dropped);
  expect(dead_lettered + dropped).toBe(0);
  // The drain did real work: records that were in the buffer at SIGTERM were delivered after it.
  expect(delivered).toBeGreaterThan(rowsAtStop + 100);
  expect(stderr).not.toContain("un-acked");
});
