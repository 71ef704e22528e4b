/**
 * Runs the sink contract suite against every built-in sink.
 */
import { readdir, readFile } from "node:fs/promises";
import { basename, join } from "node:path";
import { Writable } from "node:stream";
import Database from "better-sqlite3";
import pg from "pg";
import { afterAll, describe } from "vitest";
import type { JsonObject, JsonValue, SluiceRecord } from "../../src/core/record.js";
import { definition as blackhole } from "../../src/sinks/blackhole.js";
import { definition as file } from "../../src/sinks/file.js";
import { definition as postgres } from "../../src/sinks/postgres/options.js";
import { definition as sqlite } from "../../src/sinks/sqlite.js";
import { definition as parquet } from "../../src/sinks/parquet/sink.js";
import { createStdoutSink } from "../../src/sinks/stdout.js";
import { duckQuery, lake } from "../helpers/duckdb.js";
import { requireService } from "../helpers/services.js";
import { runSinkContract, type StoredRecord } from "./sink-contract.js";

interface Line {
  id: string;
  key: string | null;
  event_time: string | null;
  payload: JsonObject;
}

function fromLines(text: string): StoredRecord[] {
  return text
    .split("\n")
    .filter((line) => line.length > 0)
    .map((line) => {
      const l = JSON.parse(line) as Line;
      return { id: l.id, key: l.key, eventTime: l.event_time, payload: l.payload };
    });
}

runSinkContract(
  "sqlite",
  ({ ctx }) => sqlite.create(sqlite.options.parse({ path: "out/sink.db" }), ctx),
  async ({ dir }) => {
    const db = new Database(join(dir, "out/sink.db"), { readonly: true });
    try {
      const rows = db.prepare("SELECT id, key, payload, event_time FROM records").all() as {
        id: string;
        key: string | null;
        payload: string;
        event_time: string | null;
      }[];
      return rows.map((r) => ({ id: r.id, key: r.key, eventTime: r.event_time, payload: JSON.parse(r.payload) as JsonObject }));
    } finally {
      db.close();
    }
  },
);

runSinkContract(
  "file",
  // Small segments, so the big batch and the reopen case span several files.
  ({ ctx }) => file.create(file.options.parse({ path: "landing", rotate_bytes: "256KiB" }), ctx),
  async ({ dir }) => {
    // A write is durable once it is in the temp segment: read finished and unfinished segments alike.
    const names = (await readdir(join(dir, "landing"))).filter((n) => /\.ndjson(\.tmp)?$/.test(n)).sort();
    const texts = await Promise.all(names.map((n) => readFile(join(dir, "landing", n), "utf8")));
    return texts.flatMap(fromLines);
  },
  { idempotent: false },
);

runSinkContract(
  "parquet",
  // Partitioned by event date and key, so a batch spans several directories and files.
  ({ ctx }) => parquet.create(parquet.options.parse({ path: "lake", partition_by: [{ date: "event_time" }, { field: "sensor" }] }), ctx),
  async ({ dir }) => {
    // A write is durable once its files are renamed: only finished files count (DuckDB's glob skips the hidden temp names).
    if ((await readdir(join(dir, "lake"), { recursive: true })).every((n) => !n.endsWith(".parquet"))) return [];
    const rows = await duckQuery(`SELECT id, key, epoch_ms(event_time) AS event_ms, payload::VARCHAR AS payload FROM ${lake(join(dir, "lake"))}`);
    return rows.map((r) => ({
      id: r.id as string,
      key: r.key as string | null,
      eventTime: r.event_ms === null ? null : new Date(Number(r.event_ms)).toISOString(),
      payload: JSON.parse(r.payload as string) as JsonObject,
    }));
  },
  { idempotent: false },
);

runSinkContract("blackhole", ({ ctx }) => blackhole.create(blackhole.options.parse({}), ctx), undefined);

/** Per test directory, what the stdout sink printed; survives the sink for the reopen case. */
const captured = new Map<string, string[]>();

function capture(dir: string): Writable {
  const chunks = captured.get(dir) ?? [];
  captured.set(dir, chunks);
  return new Writable({
    highWaterMark: 1024,
    write(chunk: Buffer, _encoding, callback) {
      chunks.push(chunk.toString("utf8"));
      // Asynchronous like a pipe, so the sink's callback and drain handling are exercised.
      setImmediate(callback);
    },
  });
}

runSinkContract(
  "stdout",
  ({ dir }) => createStdoutSink(capture(dir), "ndjson"),
  async ({ dir }) => fromLines((captured.get(dir) ?? []).join("")),
  { idempotent: false, durable: false },
);

const PG_URL = process.env.SLUICE_PG_URL ?? "postgres://postgres@127.0.0.1:5432/test";
const pgAddress = new URL(PG_URL);
const hasPostgres = await requireService("PostgreSQL", pgAddress.hostname, Number(pgAddress.port || 5432));

/** Every string in a JSON value, object keys included. */
function strings(v: JsonValue | undefined): string[] {
  if (typeof v === "string") return [v];
  if (v === null || typeof v !== "object") return [];
  if (Array.isArray(v)) return v.flatMap(strings);
  return Object.entries(v).flatMap(([k, x]) => [k, ...strings(x)]);
}

const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;

/** A JSON value with every lone surrogate (in values and keys) replaced by U+FFFD, as UTF-8 stores it. */
function wellFormed(v: JsonValue): JsonValue {
  if (typeof v === "string") return v.replace(LONE_SURROGATE, "\ufffd");
  if (v === null || typeof v !== "object") return v;
  if (Array.isArray(v)) return v.map(wellFormed);
  return Object.fromEntries(Object.entries(v).map(([k, x]) => [k.replace(LONE_SURROGATE, "\ufffd"), wellFormed(x)]));
}

/** PostgreSQL's text and jsonb cannot hold U+0000: such a record is rejected (22021, 22P05). */
function holdsNul(r: SluiceRecord): boolean {
  return [r.id, ...(r.key === undefined ? [] : [r.key]), ...strings(r.payload)].some((x) => x.includes("\u0000"));
}

describe.skipIf(!hasPostgres)("postgres", () => {
  /** Every table a test wrote, dropped at the end. */
  const tables = new Set<string>();
  /** One table per test: its temp directory's name is unique. */
  const tableOf = (dir: string) => {
    const table = `contract_${basename(dir).replace(/[^a-z0-9]/gi, "_").toLowerCase()}`;
    tables.add(table);
    return table;
  };

  afterAll(async () => {
    const client = new pg.Client({ connectionString: PG_URL });
    await client.connect();
    try {
      for (const table of tables) await client.query(`DROP TABLE IF EXISTS ${pg.escapeIdentifier(table)}`);
    } finally {
      await client.end();
    }
  });

  runSinkContract(
    "postgres",
    ({ dir, ctx }) => postgres.create(postgres.options.parse({ url: PG_URL, table: tableOf(dir) }), ctx),
    async ({ dir }) => {
      const client = new pg.Client({ connectionString: PG_URL });
      await client.connect();
      try {
        const { rows } = await client.query<{ id: string; key: string | null; payload: JsonObject; event_time: Date | null }>(
          `SELECT id, key, payload, event_time FROM ${pg.escapeIdentifier(tableOf(dir))}`,
        );
        return rows.map((r) => ({ id: r.id, key: r.key, eventTime: r.event_time === null ? null : r.event_time.toISOString(), payload: r.payload }));
      } catch (err) {
        // Before the first connect there is no table yet: nothing stored.
        if ((err as { code?: string }).code === "42P01") return [];
        throw err;
      } finally {
        await client.end();
      }
    },
    { unrepresentable: { rejects: holdsNul, stored: (r) => ({ ...r, payload: wellFormed(r.payload) as JsonObject }) } },
  );
});
