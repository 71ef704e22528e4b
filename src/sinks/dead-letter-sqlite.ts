/**
 * The `sqlite` dead-letter store: every record that could not be delivered, with why and when, in
 * a table `dead_letters` of an embedded SQLite database (by default `<data_dir>/dlq.db`).
 */
import { existsSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import Database from "better-sqlite3";
import { z } from "zod";
import { SluiceError } from "../core/errors.js";
import { defineComponent, type DeadLetter, type DeadLetterStore } from "../components/contracts.js";
import { classifySqliteError } from "./sqlite.js";

const options = z.strictObject({
  path: z
    .string()
    .min(1)
    .optional()
    .describe("Database file; relative to the working directory; default <data_dir>/dlq.db"),
});

/** Wait for another connection's lock, in ms (blocks the event loop; the engine retries the write anyway). */
const BUSY_TIMEOUT_MS = 1000;

const CREATE_TABLE = `CREATE TABLE IF NOT EXISTS dead_letters (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  record_id TEXT,
  source TEXT,
  sink TEXT,
  code TEXT,
  message TEXT,
  attempts INTEGER,
  first_failure_at TEXT,
  last_failure_at TEXT,
  payload TEXT,
  raw TEXT
)`;

/** One row of the `dead_letters` table, as {@link readDeadLetters} returns it. Times are ISO 8601. */
export interface DeadLetterRow {
  /** Insertion order, from 1. */
  readonly seq: number;
  readonly record_id: string;
  /** The source the record came from. */
  readonly source: string;
  /** The sink that gave up on the record, or the stage (`source`, `transform:<type>`) that rejected it. */
  readonly sink: string;
  /** A stable error code (`ERR_SINK_REJECTED`, ...). */
  readonly code: string;
  readonly message: string;
  readonly attempts: number;
  readonly first_failure_at: string | null;
  readonly last_failure_at: string | null;
  /** The payload as JSON text. */
  readonly payload: string | null;
  /** The unparsable input, for records that never became JSON. */
  readonly raw: string | null;
}

function isoOrNull(ms: number): string | null {
  // A dead letter is never refused for a bad timestamp: keep the row, lose only the time.
  return Number.isFinite(ms) ? new Date(ms).toISOString() : null;
}

function payloadText(payload: unknown): string {
  try {
    return JSON.stringify(payload) ?? "null";
  } catch (err) {
    // A payload JSON cannot represent (a cycle, a BigInt) is often why the record is here: keep the row.
    return JSON.stringify({ unserializable_payload: (err as Error).message });
  }
}

/**
 * Builds a SQLite dead-letter store at `path` (what the definition's factory returns).
 *
 * Each write is one transaction with `synchronous = FULL` in WAL mode, so entries are on disk
 * when it resolves. Errors become `ERR_DEAD_LETTER_WRITE`, always retryable: the engine retries a
 * dead-letter write until it succeeds rather than drop a record. Only a bug (`ERR_INTERNAL`) is
 * not retryable.
 */
export function createSqliteDeadLetterStore(path: string): DeadLetterStore {
  let db: Database.Database | undefined;
  let writeAll: ((entries: readonly DeadLetter[]) => void) | undefined;

  function wrap(err: unknown): SluiceError {
    const error = classifySqliteError(err, "ERR_DEAD_LETTER_WRITE", "ERR_DEAD_LETTER_WRITE", path);
    if (error.code === "ERR_INTERNAL" || (error.code === "ERR_DEAD_LETTER_WRITE" && error.retryable)) return error;
    return new SluiceError("ERR_DEAD_LETTER_WRITE", `dead-letter store ${path}: ${error.message}`, {
      cause: err,
      retryable: true,
      location: path,
    });
  }

  return {
    async open() {
      if (db !== undefined) return;
      try {
        await mkdir(dirname(path), { recursive: true });
        const conn = new Database(path, { timeout: BUSY_TIMEOUT_MS });
        try {
          conn.pragma("journal_mode = WAL");
          conn.pragma("synchronous = FULL");
          conn.exec(CREATE_TABLE);
          const insert = conn.prepare<[string, string, string, string, string, number, string | null, string | null, string, string | null]>(
            `INSERT INTO dead_letters (record_id, source, sink, code, message, attempts, first_failure_at, last_failure_at, payload, raw)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
          );
          writeAll = conn.transaction((entries: readonly DeadLetter[]) => {
            for (const e of entries) {
              insert.run(
                e.record.id,
                e.record.source,
                e.sink,
                e.code,
                e.message,
                e.attempts,
                isoOrNull(e.firstFailureAt),
                isoOrNull(e.lastFailureAt),
                payloadText(e.record.payload),
                e.raw ?? null,
              );
            }
          }).immediate;
        } catch (err) {
          conn.close();
          throw err;
        }
        db = conn;
      } catch (err) {
        writeAll = undefined;
        throw wrap(err);
      }
    },

    async write(entries: readonly DeadLetter[]) {
      if (writeAll === undefined) throw new SluiceError("ERR_INTERNAL", `dead-letter store ${path}: write before open`);
      if (entries.length === 0) return;
      try {
        writeAll(entries);
      } catch (err) {
        throw wrap(err);
      }
    },

    async close() {
      const conn = db;
      db = undefined;
      writeAll = undefined;
      conn?.close();
    },
  };
}

/**
 * Reads every row of a dead-letter database, oldest first. For tests and the CLI's summary.
 *
 * Gotchas: returns `[]` when the file does not exist (nothing was ever dead-lettered there);
 * reads all rows into memory, so it is not meant for a huge store. Safe to call while a pipeline
 * writes to it (WAL readers do not block the writer).
 */
export function readDeadLetters(path: string): DeadLetterRow[] {
  if (!existsSync(path)) return [];
  const db = new Database(path, { readonly: true, fileMustExist: true });
  try {
    return db.prepare("SELECT * FROM dead_letters ORDER BY seq").all() as DeadLetterRow[];
  } finally {
    db.close();
  }
}

/**
 * The `sqlite` dead-letter store: table `dead_letters` (seq, record_id, source, sink, code,
 * message, attempts, first/last failure time, payload, raw) in `path`, default
 * `<data_dir>/dlq.db`. Durable when a write resolves; read it back with {@link readDeadLetters}.
 */
export const definition = defineComponent<typeof options, DeadLetterStore>({
  type: "sqlite",
  summary: "Keeps dead-lettered records, with error code, message and attempts, in a SQLite table",
  options,
  create(opts, ctx) {
    return createSqliteDeadLetterStore(opts.path === undefined ? join(ctx.dataDir, "dlq.db") : resolve(ctx.baseDir, opts.path));
  },
});
