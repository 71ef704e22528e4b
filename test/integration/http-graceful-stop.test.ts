/**
 * Graceful stop of the real CLI with an http source: on SIGTERM while a slow sink still holds
 * accepted records, /health/ready turns 503, new requests get 503 with Retry-After, the requests
 * already accepted finish with 202 and their records are in SQLite, and the process exits 0 with
 * its summary.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { readFile, writeFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import Database from "better-sqlite3";
import { afterEach, beforeEach, expect, it } from "vitest";
import { freePort, keyedId, send, waitUntil, type Answer } from "../helpers/http-pipeline.js";
import { makeTempDir } from "../helpers/source-harness.js";

const ROOT = resolve(import.meta.dirname, "../..");
const ENTRY = join(ROOT, "src/cli/entry.ts");
// tsx by absolute URL: `--import tsx` would resolve it from the child's cwd, a temp dir.
const TSX = pathToFileURL(createRequire(import.meta.url).resolve("tsx")).href;

let dir: { path: string; remove: () => Promise<void> };
const children: ChildProcess[] = [];

beforeEach(async () => {
  dir = await makeTempDir("sluice-http-stop-");
});

afterEach(async () => {
  for (const child of children.splice(0)) if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  await dir.remove();
});

/** Record ids in the sink, or none while the database or table does not exist yet. */
function ids(db: string): string[] {
  let conn: Database.Database | undefined;
  try {
    conn = new Database(db, { readonly: true, fileMustExist: true });
    return (conn.prepare("SELECT id FROM records ORDER BY id").all() as { id: string }[]).map((r) => r.id);
  } catch {
    return [];
  } finally {
    conn?.close();
  }
}

const REQUESTS = 6;
const RECORDS_PER_REQUEST = 5;

it("SIGTERM with a slow sink: ready 503, new requests 503 + Retry-After, accepted requests 202 and in SQLite, exit 0 with the summary", async () => {
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const db = join(dir.path, "out.db");
  const summaryFile = join(dir.path, "summary.json");
  const configFile = join(dir.path, "pipeline.yaml");
  // 30 records in batches of at most 5 at 600 ms a batch: the drain after SIGTERM has seconds of
  // work, long enough to probe the server while it lasts.
  await writeFile(
    configFile,
    `data_dir: ${join(dir.path, "data")}
shutdown_timeout: 30s
buffer: { max_records: 1000, chunk_size: 100 }
observability: { log_level: warn }
sources:
  web: { type: http, listen: "127.0.0.1:${port}", retry_after: 2s }
sinks:
  db:
    type: sqlite
    path: ${db}
    batch: { max_records: 5, max_wait: 10ms }
    concurrency: 1
    chaos: { latency: 600ms }
`,
  );

  const child = spawn(process.execPath, ["--conditions=sluice-source", "--import", TSX, ENTRY, "run", configFile, "--summary-json", summaryFile, "--no-progress"], {
    cwd: dir.path,
    stdio: ["ignore", "pipe", "pipe"],
  });
  children.push(child);
  let output = "";
  child.stdout!.on("data", (d: Buffer) => (output += d.toString()));
  child.stderr!.on("data", (d: Buffer) => (output += d.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((done) => child.on("exit", (code, signal) => done({ code, signal })));
  const alive = () => {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`the CLI exited (${child.exitCode ?? child.signalCode}):\n${output}`);
  };

  await waitUntil(
    "the http source to be ready",
    () => {
      alive();
      return send(`${base}/health/ready`).then(
        (a) => a.status === 200,
        () => false,
      );
    },
    30_000,
  );

  const bodyOf = (key: string, n: number) => JSON.stringify(Array.from({ length: n }, (_, i) => ({ key, i })));
  const post = (key: string, n: number): Promise<Answer> =>
    send(`${base}/v1/events`, {
      method: "POST",
      headers: { "content-type": "application/json", "idempotency-key": key },
      body: bodyOf(key, n),
    });
  const keys = Array.from({ length: REQUESTS }, (_, r) => `before-${r}`);
  const accepted = keys.map((k) => post(k, RECORDS_PER_REQUEST));
  const total = REQUESTS * RECORDS_PER_REQUEST;
  await waitUntil(
    "every request to be in the buffer",
    async () => {
      alive();
      const m = await send(`${base}/metrics`);
      return m.text.includes(`sluice_records_received_total{source="web"} ${total}`);
    },
    20_000,
  );
  // The slow sink still holds accepted records when the signal comes.
  expect(ids(db).length).toBeLessThan(total);

  child.kill("SIGTERM");
  await waitUntil("the drain to start", () => (alive(), output.includes("SIGTERM: stopping")), 10_000);

  const ready = await send(`${base}/health/ready`);
  expect(ready.status, ready.text).toBe(503);
  expect(ready.body).toEqual({ status: "not_ready", problems: expect.arrayContaining([expect.stringMatching(/^source \S+: stopping$/)]) });
  const late = await post("after-sigterm", 2);
  expect(late.status, late.text).toBe(503);
  expect(late.body).toEqual({ error: "sluice is stopping; retry against another instance or later" });
  expect(late.headers["retry-after"]).toBe("2");
  // Still draining when probed, so the probes above saw the stop, not a finished process.
  expect(ids(db).length).toBeLessThan(total);

  const answers = await Promise.all(accepted);
  for (const a of answers) {
    expect(a.status, a.text).toBe(202);
    expect(a.body).toEqual({ accepted: RECORDS_PER_REQUEST });
  }

  const { code, signal } = await exited;
  expect(signal, output).toBeNull();
  expect(code, output).toBe(0);
  expect(output).toMatch(/sluice run stopped in/);
  expect(output).not.toContain("un-acked");

  const expected = keys.flatMap((k) => Array.from({ length: RECORDS_PER_REQUEST }, (_, i) => keyedId(k, bodyOf(k, RECORDS_PER_REQUEST), i))).sort();
  expect(ids(db)).toEqual(expected);
  const s = JSON.parse(await readFile(summaryFile, "utf8")) as { records: { received: number; delivered: number; dead_lettered: number; dropped: number } };
  expect(s.records).toMatchObject({ received: total, delivered: total, dead_lettered: 0, dropped: 0 });
});
