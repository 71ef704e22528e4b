/**
 * The `sqlite` sink: one row per record in an embedded SQLite database, written idempotently by
 * record id (`ON CONFLICT (id) DO NOTHING`), one transaction per batch, durable when the write resolves.
 */
import { mkdir } from "node:fs/promises";
import { dirname, resolve } from "node:path";
import type Database from "better-sqlite3";
import { z } from "zod";
import type { Clock } from "../core/clock.js";
import { SluiceError } from "../core/errors.js";
import type { SluiceRecord } from "../core/record.js";
import { defineComponent, writeResult, type RecordFailure, type Sink, type WriteResult } from "../components/contracts.js";
import { classifySqliteError, isSqliteError, loadSqlite } from "../components/sqlite.js";

/** How long one statement waits for another connection's lock before failing with SQLITE_BUSY, in ms. */
const BUSY_TIMEOUT_MS = 1000;

const options = z.strictObject({
  path: z.string().min(1).describe("Database file; relative to the working directory"),
  table: z.string().min(1).default("records").describe("Table to write; created when missing"),
  journal_mode: z.literal("wal").default("wal").describe("Fixed: WAL, so readers never block the writer"),
  synchronous: z
    .enum(["normal", "full"])
    .default("full")
    .describe("full: every committed batch survives power loss; normal: faster, the last batches may roll back on power loss"),
});

/** Everything a {@link createSqliteSink} needs; the definition builds it from validated options. */
export interface SqliteSinkSettings {
  /** Absolute (or cwd-relative) path of the database file. Its directory is created on connect. */
  readonly path: string;
  /** Table name, used as one quoted identifier (a dot is part of the name, not a schema separator). */
  readonly table: string;
  readonly synchronous: "normal" | "full";
  /** Stamps `ingested_at`. */
  readonly clock: Clock;
  /** Wait for a lock held by another connection, in ms. It blocks the event loop, so keep it short: SQLITE_BUSY is retried by the engine anyway. */
  readonly busyTimeoutMs?: number;
}

/**
 * Quotes an SQL identifier so any string stays a name: `a"; drop table x; --` is a table with that
 * odd name, not a second statement.
 */
export function quoteIdentifier(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

/** An ISO 8601 timestamp of `ms`, or null when absent. Throws RangeError for a non-finite time. */
function isoTime(ms: number | undefined): string | null {
  return ms === undefined ? null : new Date(ms).toISOString();
}

interface Row {
  readonly id: string;
  readonly key: string | null;
  readonly payload: string;
  readonly eventTime: string | null;
  readonly ingestedAt: string;
}

function abortedError(signal: AbortSignal, what: string): SluiceError {
  return new SluiceError("ERR_ABORTED", `${what}: aborted before writing`, { cause: signal.reason });
}

/**
 * Builds a SQLite sink (what the `sqlite` definition's factory returns). Exported so tests and
 * library users can set internals the config does not expose (the busy timeout).
 *
 * Gotchas: better-sqlite3 is synchronous, so a batch's transaction runs on the event loop (about
 * 10–30 ms for 10,000 small records). `ON CONFLICT (id) DO NOTHING` keeps the first copy of an
 * id: a redelivered record whose payload changed in between does not update the row. An existing
 * table must have the columns `id`, `key`, `payload`, `event_time`, `ingested_at`, and a primary
 * key or unique index on `id`; connect fails otherwise.
 */
export function createSqliteSink(settings: SqliteSinkSettings): Sink {
  const table = quoteIdentifier(settings.table);
  const location = `${settings.path} ${table}`;
  let db: Database.Database | undefined;
  let insert: Database.Statement<[string, string | null, string, string | null, string]> | undefined;

  const run = (row: Row) => insert!.run(row.id, row.key, row.payload, row.eventTime, row.ingestedAt);

  /**
   * Second pass after a permanent error: each record in its own savepoint, so the good ones commit
   * and the bad ones are named. Adds the rows skipped as already stored to `present`.
   */
  function isolate(conn: Database.Database, rows: readonly (Row | undefined)[], present: number[]): RecordFailure[] {
    const failures: RecordFailure[] = [];
    // A nested better-sqlite3 transaction is a SAVEPOINT: a trigger's partial work is undone with its record.
    const one = conn.transaction(run);
    conn.transaction(() => {
      rows.forEach((row, index) => {
        if (row === undefined) return;
        try {
          if (one(row).changes === 0) present.push(index);
        } catch (err) {
          const error = classifySqliteError(err, "ERR_SINK_WRITE", "ERR_SINK_REJECTED", location);
          // A lock or I/O error is not this record's fault: give the whole batch back for retry.
          if (error.retryable) throw error;
          failures.push({ index, error });
        }
      });
    }).immediate();
    return failures;
  }

  return {
    maxInFlight: 1,

    async connect() {
      if (db !== undefined) return;
      try {
        await mkdir(dirname(settings.path), { recursive: true });
        const conn = new (loadSqlite())(settings.path, { timeout: settings.busyTimeoutMs ?? BUSY_TIMEOUT_MS });
        try {
          conn.pragma("journal_mode = WAL");
          conn.pragma(`synchronous = ${settings.synchronous === "full" ? "FULL" : "NORMAL"}`);
          conn.exec(
            `CREATE TABLE IF NOT EXISTS ${table} (id TEXT PRIMARY KEY, key TEXT, payload TEXT, event_time TEXT, ingested_at TEXT)`,
          );
          // Not INSERT OR IGNORE: that also skips a row breaking a CHECK or NOT NULL, which would be counted delivered.
          insert = conn.prepare(
            `INSERT INTO ${table} (id, key, payload, event_time, ingested_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING`,
          );
        } catch (err) {
          conn.close();
          throw err;
        }
        db = conn;
      } catch (err) {
        const error = classifySqliteError(err, "ERR_SINK_CONNECT", "ERR_SINK_CONNECT", location);
        // SQLITE_ERROR here is a schema problem (an existing table without our columns): waiting will not fix it.
        const schema = isSqliteError(err) && err.code === "SQLITE_ERROR";
        throw schema ? new SluiceError("ERR_SINK_CONNECT", error.message, { cause: err, retryable: false, location }) : error;
      }
    },

    async write(records: readonly SluiceRecord[], signal: AbortSignal): Promise<WriteResult | void> {
      const conn = db;
      if (conn === undefined) throw new SluiceError("ERR_INTERNAL", "sqlite sink: write before connect", { location });
      if (signal.aborted) throw abortedError(signal, "sqlite sink");
      if (records.length === 0) return {};

      const failures: RecordFailure[] = [];
      const ingestedAt = new Date(settings.clock.now()).toISOString();
      const rows = records.map((record, index): Row | undefined => {
        try {
          return {
            id: record.id,
            key: record.key ?? null,
            payload: JSON.stringify(record.payload),
            eventTime: isoTime(record.eventTime),
            ingestedAt,
          };
        } catch (err) {
          // A payload JSON cannot represent (a cycle, a BigInt) or an invalid event time: only this record is bad.
          failures.push({
            index,
            error: new SluiceError("ERR_SINK_REJECTED", `sqlite sink: record ${record.id} cannot be stored: ${(err as Error).message}`, {
              cause: err,
              location,
            }),
          });
          return undefined;
        }
      });

      // Rows skipped by the conflict on id (no change): the id was already stored.
      let present: number[] = [];
      try {
        // IMMEDIATE takes the write lock up front, so a busy database fails at BEGIN, before any work.
        conn.transaction(() => {
          for (let i = 0; i < rows.length; i++) {
            const row = rows[i];
            if (row !== undefined && run(row).changes === 0) present.push(i);
          }
        }).immediate();
      } catch (err) {
        const error = classifySqliteError(err, "ERR_SINK_WRITE", "ERR_SINK_REJECTED", location);
        if (error.retryable || error.code === "ERR_INTERNAL") throw error;
        present = [];
        try {
          failures.push(...isolate(conn, rows, present));
        } catch (isolateErr) {
          throw classifySqliteError(isolateErr, "ERR_SINK_WRITE", "ERR_SINK_REJECTED", location);
        }
      }
      return writeResult(failures, present);
    },

    async close() {
      const conn = db;
      db = undefined;
      insert = undefined;
      conn?.close();
    },
  };
}

/**
 * The `sqlite` sink: rows `(id text primary key, key, payload JSON text, event_time ISO or null,
 * ingested_at ISO)` in `table`, created when missing. WAL journal, one transaction per batch,
 * `ON CONFLICT (id) DO NOTHING` so redelivery leaves one row (and is reported as already
 * present); with `synchronous: full` (the default) a batch is on disk when the write resolves. A record whose data the table rejects (constraint, type
 * mismatch, a trigger's RAISE) is reported by index and dead-lettered; the rest of its batch
 * commits. One batch at a time (maxInFlight 1): SQLite has one writer.
 */
export const definition = defineComponent<typeof options, Sink>({
  type: "sqlite",
  summary: "Writes records as rows of an embedded SQLite table, idempotent by id",
  options,
  create(opts, ctx) {
    return createSqliteSink({
      path: resolve(ctx.baseDir, opts.path),
      table: opts.table,
      synchronous: opts.synchronous,
      clock: ctx.clock,
    });
  },
});
