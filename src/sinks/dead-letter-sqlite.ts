/**
 * The `sqlite` dead-letter store: every record that could not be delivered, with why and when, in
 * a table `dead_letters` of an embedded SQLite database (by default `<data_dir>/dlq.db`), one row
 * per record id and sink (or stage).
 */
import { existsSync, statSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import type Database from "better-sqlite3";
import { z } from "zod";
import { SluiceError } from "../core/errors.js";
import {
  defineComponent,
  type DeadLetter,
  type DeadLetterFilter,
  type DeadLetterStatus,
  type DeadLetterStore,
  type DeadLetterWorkflow,
  type StoredDeadLetter,
} from "../components/contracts.js";
import { isStage } from "../core/dead-letters.js";
import type { SluiceRecord } from "../core/record.js";
import { classifySqliteError, loadSqlite } from "../components/sqlite.js";

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
  raw TEXT,
  status TEXT NOT NULL DEFAULT 'pending',
  replayed_at TEXT,
  resolved_at TEXT
)`;

/**
 * Columns added after the first two schemas, each with the ALTER that adds it to an older table.
 * Rows already there become `pending`: nothing has delivered them since.
 */
const ADDED_COLUMNS: readonly [string, string][] = [
  ["status", "ALTER TABLE dead_letters ADD COLUMN status TEXT NOT NULL DEFAULT 'pending'"],
  ["replayed_at", "ALTER TABLE dead_letters ADD COLUMN replayed_at TEXT"],
  ["resolved_at", "ALTER TABLE dead_letters ADD COLUMN resolved_at TEXT"],
];

/** For `sluice dlq list --status pending` and the pending ids loaded for resolved marking. */
const STATUS_INDEX = "CREATE INDEX IF NOT EXISTS dead_letters_status ON dead_letters (status, sink)";

/** The key of a dead letter. Its absence marks a database of the first schema, which allowed a second row per record and sink. */
const KEY_INDEX = "dead_letters_record_sink";

/**
 * Migrates a database of the first schema: the rows of one record and sink become one (the newest
 * row, with the attempts of all and the earliest first failure), then the key is added. Runs in
 * one transaction, so a crash leaves the old schema and the next open migrates again.
 */
const MIGRATE = `CREATE TEMP TABLE merged AS
  SELECT max(seq) AS seq, sum(attempts) AS attempts, min(first_failure_at) AS first_failure_at
  FROM dead_letters GROUP BY record_id, sink HAVING count(*) > 1;
UPDATE dead_letters SET attempts = m.attempts, first_failure_at = m.first_failure_at FROM merged m WHERE m.seq = dead_letters.seq;
DELETE FROM dead_letters WHERE seq NOT IN (SELECT max(seq) FROM dead_letters GROUP BY record_id, sink);
DROP TABLE merged;
CREATE UNIQUE INDEX ${KEY_INDEX} ON dead_letters (record_id, sink);`;

/**
 * A record dead-lettered again by the same sink (a rerun) updates its row: attempts add up, the
 * error and last failure time are the newest, the first failure time and `seq` stay, and it is
 * `pending` again (whatever replay or run delivered it before, it failed since).
 */
const UPSERT = `INSERT INTO dead_letters (record_id, source, sink, code, message, attempts, first_failure_at, last_failure_at, payload, raw)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (record_id, sink) DO UPDATE SET
  source = excluded.source, code = excluded.code, message = excluded.message,
  attempts = dead_letters.attempts + excluded.attempts,
  first_failure_at = coalesce(dead_letters.first_failure_at, excluded.first_failure_at),
  last_failure_at = excluded.last_failure_at, payload = excluded.payload, raw = excluded.raw,
  status = 'pending', replayed_at = NULL, resolved_at = NULL`;

const RESOLVE = "UPDATE dead_letters SET status = 'resolved', resolved_at = ? WHERE record_id = ? AND sink = ? AND status = 'pending'";
const MARK_REPLAYED = "UPDATE dead_letters SET status = 'replayed', replayed_at = ?, resolved_at = NULL WHERE seq = ?";
const FAILED_AGAIN = `UPDATE dead_letters SET attempts = attempts + ?, code = ?, message = ?, last_failure_at = ?,
  status = 'pending', replayed_at = NULL, resolved_at = NULL WHERE seq = ?`;


/** One row of the `dead_letters` table, as {@link readDeadLetters} returns it. Times are ISO 8601. */
export interface DeadLetterRow {
  /** Order of the record's first dead-lettering (by this sink), from 1. */
  readonly seq: number;
  readonly record_id: string;
  /** The source the record came from. */
  readonly source: string;
  /** The sink that gave up on the record, or the stage (`source`, `transform:<type>`) that rejected it. With `record_id`, the row's key. */
  readonly sink: string;
  /** A stable error code (`ERR_SINK_REJECTED`, ...), of the latest failure. */
  readonly code: string;
  readonly message: string;
  /** Write attempts over every run that dead-lettered the record (0 for a source or transform stage). */
  readonly attempts: number;
  readonly first_failure_at: string | null;
  readonly last_failure_at: string | null;
  /** The payload as JSON text. */
  readonly payload: string | null;
  /** The unparsable input, for records that never became JSON. */
  readonly raw: string | null;
  /** `pending`, `replayed` or `resolved` (see {@link DeadLetterStatus}). */
  readonly status: DeadLetterStatus;
  readonly replayed_at: string | null;
  readonly resolved_at: string | null;
}

function msOrUndefined(iso: string | null): number | undefined {
  if (iso === null) return undefined;
  const ms = Date.parse(iso);
  return Number.isNaN(ms) ? undefined : ms;
}

function stored(row: DeadLetterRow): StoredDeadLetter {
  return {
    seq: row.seq,
    recordId: row.record_id,
    source: row.source,
    sink: row.sink,
    code: row.code,
    message: row.message,
    attempts: row.attempts,
    firstFailureAt: msOrUndefined(row.first_failure_at),
    lastFailureAt: msOrUndefined(row.last_failure_at),
    payload: row.payload ?? undefined,
    raw: row.raw ?? undefined,
    status: row.status,
    replayedAt: msOrUndefined(row.replayed_at),
    resolvedAt: msOrUndefined(row.resolved_at),
  };
}

/** The WHERE clause (or "") and its parameters for `filter`, without its limit. */
function where(filter: DeadLetterFilter): { sql: string; params: (string | number)[] } {
  const clauses: string[] = [];
  const params: (string | number)[] = [];
  const anyOf = (column: string, values: readonly string[] | undefined) => {
    if (values === undefined) return;
    clauses.push(values.length === 0 ? "0" : `${column} IN (${values.map(() => "?").join(", ")})`);
    params.push(...values);
  };
  anyOf("sink", filter.sinks);
  anyOf("code", filter.codes);
  anyOf("record_id", filter.recordIds);
  anyOf("status", filter.statuses);
  // ISO 8601 UTC strings of one width compare as their times do.
  if (filter.since !== undefined) {
    clauses.push("last_failure_at >= ?");
    params.push(new Date(filter.since).toISOString());
  }
  if (filter.until !== undefined) {
    clauses.push("last_failure_at < ?");
    params.push(new Date(filter.until).toISOString());
  }
  return { sql: clauses.length === 0 ? "" : `WHERE ${clauses.join(" AND ")}`, params };
}

/** `SELECT seq` of the entries `filter` selects, oldest first, limited. */
function selectSeqs(filter: DeadLetterFilter): { sql: string; params: (string | number)[] } {
  const w = where(filter);
  const limit = filter.limit === undefined ? "" : " LIMIT ?";
  return { sql: `SELECT seq FROM dead_letters ${w.sql} ORDER BY seq${limit}`, params: filter.limit === undefined ? w.params : [...w.params, filter.limit] };
}

/** A file of the open database (the db, its -wal, its -shm) as it was when opened. */
interface OpenedFile {
  readonly path: string;
  readonly dev: number;
  readonly ino: number;
}

function openedFile(path: string): OpenedFile {
  const { dev, ino } = statSync(path);
  return { path, dev, ino };
}

/**
 * What became of the files since they were opened: undefined while each path still names the
 * same file. SQLite keeps writing through its open descriptors whatever happens to the paths, so
 * only this tells that a commit went into a file nobody will read again.
 */
function whatChanged(files: readonly OpenedFile[]): string | undefined {
  for (const f of files) {
    let now: { dev: number; ino: number };
    try {
      now = statSync(f.path);
    } catch (err) {
      return `${f.path} was ${(err as NodeJS.ErrnoException).code === "ENOENT" ? "deleted" : `made unreadable (${(err as Error).message})`}`;
    }
    if (now.dev !== f.dev || now.ino !== f.ino) return `${f.path} was replaced by another file`;
  }
  return undefined;
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
 * dead-letter write (up to its bound) rather than drop a record. Only a bug (`ERR_INTERNAL`) is
 * not retryable.
 *
 * A write resolves only while the database, its -wal and its -shm are still the files it opened
 * (device and inode), checked before and after the commit: once one was deleted or replaced,
 * every write rejects (`ERR_DEAD_LETTER_WRITE`, retryable, naming the file), so its records stay
 * un-acked. The store does not create the file again: the dead letters already written went with
 * the old one, and the next run (which opens the path afresh) is where that is noticed and fixed.
 * Putting the very files back (a rename undone) makes writes succeed again.
 *
 * `open` opens an existing database at once; when there is none it only notes that, and the first
 * write (or use of `workflow`) creates it: a run that dead-letters nothing creates no file and
 * never loads better-sqlite3.
 *
 * `committed` (resolved marking) loads the record ids of the pending entries into memory at its
 * first call (one small string per pending entry) and then costs a set lookup per committed
 * record, or nothing for a sink without pending entries; only a hit writes (one transaction).
 * `now` stamps `resolved_at`. `workflow` serves `sluice dlq`.
 */
export function createSqliteDeadLetterStore(path: string, now: () => number = Date.now): DeadLetterStore {
  let db: Database.Database | undefined;
  let writeAll: ((entries: readonly DeadLetter[]) => void) | undefined;
  let files: OpenedFile[] = [];
  /**
   * The record ids of pending entries, per sink or stage: loaded at the first `committed`, kept up
   * to date by this store's own writes. Another process's changes meanwhile (a purge) only make a
   * lookup find an id whose UPDATE then changes nothing.
   */
  let pending: Map<string, Set<string>> | undefined;
  /** The stages (`source:…`, `transform:…`) among `pending`'s keys. */
  const stages = new Set<string>();

  function gone(what: string): SluiceError {
    return new SluiceError("ERR_DEAD_LETTER_WRITE", `dead-letter store ${path}: ${what} while sluice had it open; dead letters are not written to it (restart sluice to create it again)`, {
      retryable: true,
      location: path,
    });
  }

  function wrap(err: unknown): SluiceError {
    const error = classifySqliteError(err, "ERR_DEAD_LETTER_WRITE", "ERR_DEAD_LETTER_WRITE", path);
    if (error.code === "ERR_INTERNAL" || (error.code === "ERR_DEAD_LETTER_WRITE" && error.retryable)) return error;
    return new SluiceError("ERR_DEAD_LETTER_WRITE", `dead-letter store ${path}: ${error.message}`, {
      cause: err,
      retryable: true,
      location: path,
    });
  }

  /**
   * `open` found no database at `path`: opening (creating it, and loading better-sqlite3) waits for
   * the first write, or the first use of the workflow. A run with nothing to dead-letter then
   * loads no SQLite at all; a store that does exist is opened at once, as its pending entries
   * decide what `committed` resolves.
   */
  let deferred = false;

  function opened(): Database.Database {
    if (db === undefined) throw new SluiceError("ERR_INTERNAL", `dead-letter store ${path}: used before open`);
    return db;
  }

  /** The open database, opened now when `open` deferred it. */
  async function ready(): Promise<Database.Database> {
    if (db === undefined && deferred) await openNow();
    return opened();
  }

  function addPending(sink: string, recordId: string): void {
    if (pending === undefined) return;
    let ids = pending.get(sink);
    if (ids === undefined) {
      ids = new Set();
      pending.set(sink, ids);
      if (isStage(sink)) stages.add(sink);
    }
    ids.add(recordId);
  }

  function dropPending(sink: string, recordId: string): void {
    const ids = pending?.get(sink);
    if (ids === undefined) return;
    ids.delete(recordId);
    if (ids.size > 0) return;
    pending!.delete(sink);
    stages.delete(sink);
  }

  function loadPending(conn: Database.Database): void {
    pending = new Map();
    const rows = conn.prepare("SELECT record_id, sink FROM dead_letters WHERE status = 'pending'").raw().iterate() as Iterable<[string, string]>;
    for (const [recordId, sink] of rows) addPending(sink, recordId);
  }

  const workflow: DeadLetterWorkflow = {
    async select(filter) {
      const q = selectSeqs(filter);
      const rows = (await ready())
        .prepare(`SELECT * FROM dead_letters WHERE seq IN (${q.sql}) ORDER BY seq`)
        .all(...q.params) as DeadLetterRow[];
      return rows.map(stored);
    },

    async markReplayed(seqs, at) {
      const conn = await ready();
      const mark = conn.prepare<[string, number]>(MARK_REPLAYED);
      const when = new Date(at).toISOString();
      const keyOf = conn.prepare<[number], { record_id: string; sink: string }>("SELECT record_id, sink FROM dead_letters WHERE seq = ?");
      conn.transaction(() => {
        for (const seq of seqs) {
          mark.run(when, seq);
          const key = keyOf.get(seq);
          if (key !== undefined) dropPending(key.sink, key.record_id);
        }
      }).immediate();
    },

    async failedAgain(seq, f) {
      const conn = await ready();
      conn.prepare<[number, string, string, string | null, number]>(FAILED_AGAIN).run(f.attempts, f.code, f.message, isoOrNull(f.at), seq);
      const key = conn.prepare<[number], { record_id: string; sink: string }>("SELECT record_id, sink FROM dead_letters WHERE seq = ?").get(seq);
      if (key !== undefined) addPending(key.sink, key.record_id);
    },

    async purge(filter) {
      const q = selectSeqs(filter);
      return (await ready())
        .prepare(`DELETE FROM dead_letters WHERE seq IN (${q.sql})`)
        .run(...q.params).changes;
    },
  };

  async function openNow(): Promise<void> {
    if (db !== undefined) return;
    try {
      await mkdir(dirname(path), { recursive: true });
      const conn = new (loadSqlite())(path, { timeout: BUSY_TIMEOUT_MS });
      try {
        conn.pragma("journal_mode = WAL");
        conn.pragma("synchronous = FULL");
        conn.exec(CREATE_TABLE);
        conn.transaction(() => {
          if (conn.prepare("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?").get(KEY_INDEX) === undefined) conn.exec(MIGRATE);
          const columns = new Set((conn.pragma("table_info(dead_letters)") as { name: string }[]).map((c) => c.name));
          for (const [column, alter] of ADDED_COLUMNS) if (!columns.has(column)) conn.exec(alter);
          conn.exec(STATUS_INDEX);
        }).immediate();
        const insert = conn.prepare<[string, string, string, string, string, number, string | null, string | null, string, string | null]>(UPSERT);
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
        // WAL mode keeps -wal and -shm while a connection is open: all three hold committed entries or their index.
        files = [openedFile(path), openedFile(`${path}-wal`), openedFile(`${path}-shm`)];
      } catch (err) {
        conn.close();
        throw err;
      }
      db = conn;
      deferred = false;
    } catch (err) {
      writeAll = undefined;
      throw wrap(err);
    }
  }

  return {
    async open() {
      if (db !== undefined || deferred) return;
      if (!existsSync(path)) {
        deferred = true;
        return;
      }
      await openNow();
    },

    async write(entries: readonly DeadLetter[]) {
      if (writeAll === undefined && deferred) {
        if (entries.length === 0) return;
        await openNow();
      }
      if (writeAll === undefined) throw new SluiceError("ERR_INTERNAL", `dead-letter store ${path}: write before open`);
      if (entries.length === 0) return;
      const before = whatChanged(files);
      if (before !== undefined) throw gone(before);
      try {
        writeAll(entries);
      } catch (err) {
        throw wrap(err);
      }
      // A deletion during the commit: the entries are in a file that is gone.
      const after = whatChanged(files);
      if (after !== undefined) throw gone(after);
      for (const e of entries) addPending(e.sink, e.record.id);
    },

    committed(sink: string, records: readonly SluiceRecord[]) {
      const conn = db;
      if (conn === undefined) return;
      if (pending === undefined) loadPending(conn);
      const ids = pending!.get(sink);
      if (ids === undefined && stages.size === 0) return;
      let hits: [string, string][] | undefined;
      for (const r of records) {
        if (ids?.has(r.id) === true) (hits ??= []).push([r.id, sink]);
        for (const stage of stages) if (pending!.get(stage)?.has(r.id) === true) (hits ??= []).push([r.id, stage]);
      }
      if (hits === undefined) return;
      const resolve = conn.prepare<[string, string, string]>(RESOLVE);
      const when = new Date(now()).toISOString();
      conn.transaction(() => {
        for (const [id, s] of hits) resolve.run(when, id, s);
      }).immediate();
      for (const [id, s] of hits) dropPending(s, id);
    },

    workflow,

    async close() {
      const conn = db;
      db = undefined;
      deferred = false;
      writeAll = undefined;
      pending = undefined;
      stages.clear();
      conn?.close();
    },
  };
}

/**
 * Reads every row of a dead-letter database, oldest first. For tests and the CLI's summary.
 * A database of an earlier schema (not yet opened by this version) has no status columns.
 *
 * Gotchas: returns `[]` when the file does not exist (nothing was ever dead-lettered there) or
 * has no table yet (a store being created at its first dead letter); reads all rows into memory, so it is not meant for a huge store. Safe to call while a pipeline
 * writes to it (WAL readers do not block the writer).
 */
export function readDeadLetters(path: string): DeadLetterRow[] {
  if (!existsSync(path)) return [];
  const db = new (loadSqlite())(path, { readonly: true, fileMustExist: true });
  try {
    const created = db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'dead_letters'").get();
    if (created === undefined) return [];
    return db.prepare("SELECT * FROM dead_letters ORDER BY seq").all() as DeadLetterRow[];
  } finally {
    db.close();
  }
}

/**
 * The `sqlite` dead-letter store: table `dead_letters` (seq, record_id, source, sink, code,
 * message, attempts, first/last failure time, payload, raw) in `path`, default
 * `<data_dir>/dlq.db`, one row per (record_id, sink): a rerun that dead-letters a record again
 * updates its row. Each row has a status (`pending`, `replayed` with `replayed_at`, `resolved`
 * with `resolved_at`). A database of an earlier schema (a row per dead-lettering; no status
 * columns) is migrated on open, its rows `pending`.
 * Durable when a write resolves, which it does only while the path still names the database it
 * opened (with its -wal and -shm); read it back with {@link readDeadLetters}.
 */
export const definition = defineComponent<typeof options, DeadLetterStore>({
  type: "sqlite",
  summary: "Keeps dead-lettered records, with error code, message and attempts, in a SQLite table",
  options,
  create(opts, ctx) {
    return createSqliteDeadLetterStore(opts.path === undefined ? join(ctx.dataDir, "dlq.db") : resolve(ctx.baseDir, opts.path), () => ctx.clock.now());
  },
});
