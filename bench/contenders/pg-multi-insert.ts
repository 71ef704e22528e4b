/**
 * Baseline (b), what a careful developer writes with `pg` by hand: the NDJSON file read in 1 MiB
 * chunks, each line parsed for its `id`, rows sent as one parameterized multi-row
 * `INSERT .. (id, payload) VALUES ($1,$2),.. ON CONFLICT (id) DO NOTHING` per 1,000 lines (a named
 * prepared statement, so the server parses and plans the 2,000-parameter statement once per
 * connection), at most 4 statements in flight over a `pg.Pool` of 4 connections, each statement
 * its own transaction. The payload parameter is the line's text: the jsonb column parses it.
 */
import { createReadStream } from "node:fs";
import pg from "pg";
import { fail, startClock } from "./protocol.js";
import { finishPg, ownCpuSeconds, quoteIdent, readPgTask } from "./pg-protocol.js";

const BATCH_ROWS = 1000;
const CONNECTIONS = 4;
const READ_BYTES = 1024 * 1024;

const task = readPgTask();
const table = quoteIdent(task.table);
const statement = (rows: number): string => {
  const tuples: string[] = new Array(rows);
  for (let i = 0; i < rows; i++) tuples[i] = `($${2 * i + 1}, $${2 * i + 2})`;
  return `INSERT INTO ${table} (id, payload) VALUES ${tuples.join(", ")} ON CONFLICT (id) DO NOTHING`;
};
const fullBatch = statement(BATCH_ROWS);

const started = startClock();
const pool = new pg.Pool({ connectionString: task.url, max: CONNECTIONS });
let failure: unknown;
pool.on("error", (err) => (failure ??= err));
let inserted = 0;
const inFlight = new Set<Promise<void>>();

async function send(values: string[]): Promise<void> {
  while (inFlight.size >= CONNECTIONS) await Promise.race(inFlight);
  if (failure !== undefined) return;
  const rows = values.length / 2;
  const query = rows === BATCH_ROWS ? { name: "insert-batch", text: fullBatch, values } : { text: statement(rows), values };
  const p: Promise<void> = pool.query(query).then(
    (r) => void (inserted += r.rowCount ?? 0),
    (err: unknown) => void (failure ??= err),
  );
  inFlight.add(p);
  void p.finally(() => inFlight.delete(p));
}

let values: string[] = [];
const line = (text: string): Promise<void> | undefined => {
  if (text === "") return undefined;
  const parsed = JSON.parse(text) as { id?: unknown };
  if (typeof parsed.id !== "string") throw new Error(`line without a string id: ${text.slice(0, 80)}`);
  values.push(parsed.id, text);
  if (values.length < 2 * BATCH_ROWS) return undefined;
  const full = values;
  values = [];
  return send(full);
};

let carry = "";
for await (const chunk of createReadStream(task.file, { highWaterMark: READ_BYTES, encoding: "utf8" }) as AsyncIterable<string>) {
  const parts = (carry + chunk).split("\n");
  carry = parts.pop()!;
  for (const text of parts) {
    const waiting = line(text);
    if (waiting !== undefined) await waiting;
  }
  if (failure !== undefined) break;
}
if (failure === undefined) {
  await line(carry);
  if (values.length > 0) await send(values);
}
await Promise.all(inFlight);
await pool.end();
if (failure !== undefined) fail(`multi-row INSERT: ${failure instanceof Error ? failure.message : String(failure)}`);
finishPg(task, "multi-insert", inserted, started, ownCpuSeconds(started));
