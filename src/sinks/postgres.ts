/**
 * The `postgres` sink: one row per record (or, with `upsert_latest`, one row per key) in a
 * PostgreSQL table, written with COPY, idempotently, one transaction per batch, with typed columns
 * filled from payload fields. Records PostgreSQL rejects are found within their batch and reported
 * alone; the rest of the batch commits.
 */
import { userInfo } from "node:os";
import { createRequire } from "node:module";
import type * as Pg from "pg";
import type { Connection, Pool, PoolClient, QueryResult, Submittable } from "pg";
import { classify, SluiceError, type ErrorCode } from "../core/errors.js";
import type { EventSink } from "../core/events.js";
import { fieldGetter, type JsonValue, type SluiceRecord } from "../core/record.js";
import type { RecordFailure, Sink, WriteResult } from "../components/contracts.js";
import { VERSION_COLUMN, type PostgresColumn, type PostgresColumnType, type PostgresWriteMode } from "./postgres-options.js";

// Required, not imported: a bundle (the benchmarks' CLI) hoists a static import of a module it
// inlines to its top, and would load pg at every start; this runs only when the sink is loaded.
const { DatabaseError, Pool: PgPool, defaults, escapeIdentifier } = createRequire(import.meta.url)("pg") as typeof Pg;


/**
 * How an `insert` batch reaches the table. `copy_direct` (the default): COPY straight into the
 * table; when a duplicate id makes that fail, the batch takes the `staging` path, and so do the
 * next ones until a staged batch is all new. `staging`: always COPY into a per-connection
 * temporary table, then `INSERT .. SELECT .. ON CONFLICT (id) DO NOTHING`. See docs/architecture.md
 * ("Decisions") for the measurement behind the default.
 */
export type PostgresInsertPath = "copy_direct" | "staging";

/** How long `connect` and a write wait for a free or new connection, in ms; then a retryable error. */
const CONNECT_TIMEOUT_MS = 10_000;

/** Idle connections close after this long, in ms (a new one recreates its staging table). */
const IDLE_TIMEOUT_MS = 30_000;

/** The per-connection staging table: temporary, so private to the session, never WAL-logged. */
const STAGE = "pg_temp.sluice_stage";

const SAVEPOINT = "sluice_bisect";

/**
 * Batches the sink accepts at once per connection (its `maxInFlight` is pool_size times this).
 * The ones waiting for a connection are already encoded, and are written together when it frees.
 */
const BATCHES_PER_CONNECTION = 4;

/** Most records written in one group (one COPY, one transaction). */
const MAX_GROUP_RECORDS = 10_000;


/**
 * Makes the OS user the one a URL without a user connects as, as psql (libpq) does. pg looks only
 * at `$USER`, and where that is unset (cron, systemd units, containers) sends no user at all, which
 * the server refuses: "no PostgreSQL user name specified". Set on pg's defaults, so the URL's user
 * and `PGUSER` still come first, and only when pg found none: nothing that connected before changes.
 */
function defaultUserFromOs(): void {
  if (defaults.user) return;
  try {
    defaults.user = userInfo().username;
  } catch {
    // A uid without a passwd entry has no name to take: pg's own error then says what is missing.
  }
}

/** Everything a {@link createPostgresSink} needs; the definition builds it from validated options. */
export interface PostgresSinkSettings {
  /** Connection URL. Never put into messages: it may hold a password. */
  readonly url: string;
  /** Table name, used as one quoted identifier. */
  readonly table: string;
  /** Schema name; undefined: the search_path decides. */
  readonly schema?: string | undefined;
  /** Connections in the pool; `maxInFlight` is 4 batches per connection. */
  readonly poolSize: number;
  readonly createTable: boolean;
  /** Typed columns by name. */
  readonly columns: Readonly<Record<string, PostgresColumn>>;
  readonly mode: PostgresWriteMode;
  /** upsert_latest: payload field with a numeric version; undefined: the event time decides. */
  readonly versionField?: string | undefined;
  /** upsert_latest: `key` (default) or a mapped column name. */
  readonly keyColumn?: string | undefined;
  /** Write path of `insert` mode; default `copy_direct`. */
  readonly insertPath?: PostgresInsertPath;
  /** The sink's name, for its events. */
  readonly name: string;
  /** Receives `records_late` and `component_error` events. */
  readonly emit: EventSink;
}

// ---------------------------------------------------------------------------------------------
// Errors

/** What a failed statement means for the batch. */
type ErrorScope =
  /** Worth retrying the whole batch (connection, lock, conflict with another transaction, resources). */
  | "retry"
  /** The data of one or more records: find them within the batch, commit the rest. */
  | "record"
  /** Not the data's fault and not passing (missing table, privileges, a bug): fail the batch as a whole. */
  | "batch";

const RETRYABLE_SQLSTATES = new Set(["57P01", "57P02", "57P03", "57014", "40001", "40P01", "40003", "55P03", "55006", "25006"]);
const RETRYABLE_CLASSES = new Set(["08", "53", "58"]);
/** Errors raised by one row's values or by constraints and triggers checked per row. */
const RECORD_CLASSES = new Set(["22", "23", "27", "2F", "38", "39", "44", "P0"]);
const RECORD_SQLSTATES = new Set(["21000", "54000"]);
const PERMANENT_CLASSES = new Set(["0A", "28", "3D", "3F", "42"]);

function sqlstate(err: unknown): string | undefined {
  return err instanceof DatabaseError && typeof err.code === "string" ? err.code : undefined;
}

function scopeOf(err: unknown): ErrorScope {
  const code = sqlstate(err);
  if (code === undefined) {
    if (err instanceof SluiceError) return err.retryable ? "retry" : "batch";
    return classify(err).code === "ERR_INTERNAL" ? "batch" : "retry";
  }
  const cls = code.slice(0, 2);
  if (RETRYABLE_SQLSTATES.has(code) || RETRYABLE_CLASSES.has(cls)) return "retry";
  if (RECORD_SQLSTATES.has(code) || RECORD_CLASSES.has(cls)) return "record";
  if (PERMANENT_CLASSES.has(cls)) return "batch";
  // An SQLSTATE this table does not know: retried within the engine's limits, then dead-lettered.
  return "retry";
}

/**
 * True when the connection that raised `err` must not be reused: the socket failed, the server
 * ended the session (FATAL), or the server turned read-only (a failover: a new connection may reach
 * the new primary).
 */
function connectionLost(err: unknown): boolean {
  if (err instanceof DatabaseError) {
    return err.severity === "FATAL" || err.severity === "PANIC" || err.code?.startsWith("08") === true || err.code === "25006" || err.code?.startsWith("57P") === true;
  }
  return !(err instanceof SluiceError) && classify(err).code !== "ERR_INTERNAL";
}

/**
 * Wraps anything the `pg` driver throws as a {@link SluiceError}, by SQLSTATE:
 *
 * - retryable `transientCode`: connection loss (class 08, `ECONNRESET`, `ECONNREFUSED`, `EPIPE`,
 *   "Connection terminated"), 57P01 admin_shutdown, 57P02 crash_shutdown, 57P03
 *   cannot_connect_now, 57014 query_canceled, 40001 serialization_failure, 40P01 deadlock, 53xxx
 *   insufficient resources (53300 too_many_connections), 55P03 lock_not_available, 55006
 *   object_in_use, 25006 read_only (a failover in progress), 58xxx system errors;
 * - permanent `permanentCode`, the data's fault: class 22 (bad values), class 23 (NOT NULL, CHECK,
 *   foreign key, unique), 21000, 54000 (a value too large for an index), trigger errors (P0xxx,
 *   2Fxxx, 38xxx, 39xxx), 27000, 44000;
 * - permanent `permanentCode`, the setup's fault: class 42 (missing table or column, 42804
 *   datatype mismatch, privileges), 0A, 28, 3D, 3F.
 *
 * The message is `postgres: <PostgreSQL's message> (SQLSTATE <code>)`. An SQLSTATE not listed is
 * retryable. A SluiceError passes through; a programmer error (TypeError) becomes a permanent
 * `ERR_INTERNAL`; any other error is retryable.
 */
export function classifyPostgresError(
  err: unknown,
  transientCode: ErrorCode = "ERR_SINK_WRITE",
  permanentCode: ErrorCode = "ERR_SINK_REJECTED",
  location?: string,
): SluiceError {
  if (err instanceof SluiceError) return err;
  const code = sqlstate(err);
  if (code !== undefined) {
    const message = `postgres: ${(err as Error).message} (SQLSTATE ${code})`;
    const retryable = scopeOf(err) === "retry";
    return new SluiceError(retryable ? transientCode : permanentCode, message, { cause: err, retryable, location });
  }
  const base = classify(err, transientCode);
  if (base.code === "ERR_INTERNAL") return base;
  // Socket errors (ECONNRESET, ECONNREFUSED, EPIPE), "Connection terminated", pool timeouts.
  const errno = (err as NodeJS.ErrnoException | undefined)?.code;
  const message = `postgres: ${base.message}${typeof errno === "string" && !base.message.includes(errno) ? ` (${errno})` : ""}`;
  return new SluiceError(transientCode, message, { cause: err, retryable: true, location });
}

function abortedError(signal: AbortSignal): SluiceError {
  return new SluiceError("ERR_ABORTED", "postgres sink: aborted", { cause: signal.reason });
}

// ---------------------------------------------------------------------------------------------
// COPY text encoding

const COPY_SPECIAL = /[\\\n\r\t]/;
const COPY_SPECIAL_ALL = /[\\\n\r\t]/g;
const COPY_ESCAPES: Record<string, string> = { "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t" };
/** One JSON escape at a time, so `\\ud800` (an escaped backslash, then text) is never read as `\ud800`. */
const JSON_ESCAPE = /\\(u[dD][89a-fA-F][0-9a-fA-F]{2}|[^])/g;

/** COPY's NULL. */
const NULL_FIELD = "\\N";

/** A string as one COPY text field: backslash, tab, newline and carriage return escaped. */
export function copyText(s: string): string {
  return COPY_SPECIAL.test(s) ? s.replace(COPY_SPECIAL_ALL, (c) => COPY_ESCAPES[c]!) : s;
}

/**
 * A JSON value as one COPY text field for a jsonb column. JSON text has no raw tabs or line breaks,
 * so only backslashes need escaping. A lone surrogate (which JSON.stringify writes as `\udxxx`)
 * becomes U+FFFD, as it does in every UTF-8 text; a `\u0000` stays and PostgreSQL rejects the
 * record (22P05): jsonb cannot hold NUL.
 */
export function copyJson(value: JsonValue): string {
  let json = JSON.stringify(value);
  if (!json.includes("\\")) return json;
  if (json.includes("\\u")) json = json.replace(JSON_ESCAPE, (m, esc: string) => (esc.length === 5 ? "\\ufffd" : m));
  return json.replaceAll("\\", "\\\\");
}

/**
 * The payload column: the JSON text the source read, when it has it (no transform touched the
 * payload), escaped for COPY, which saves serializing the payload again; the payload serialized
 * when it has none, when the text has `\u` escapes (a lone surrogate must be rewritten, see
 * {@link copyJson}), or when it has an exponent of 3 or more digits (the number may be past what
 * PostgreSQL's numeric holds; JSON.parse made it Infinity, which the payload serializes as null).
 */
function payloadField(r: SluiceRecord): string {
  const text = r.text;
  return text === undefined || text.includes("\\u") || HUGE_EXPONENT.test(text) ? copyJson(r.payload) : copyText(text);
}

const HUGE_EXPONENT = /[eE][+-]?\d{3}/;

/**
 * A payload value as a COPY field of a column of `type`. Null or missing: NULL. A number into
 * timestamptz: ms since the epoch; a boolean into boolean: t/f; into jsonb: the value as JSON.
 * Otherwise its text (strings as they are, numbers and booleans as JSON writes them, objects and
 * arrays as JSON), which PostgreSQL converts to the column's type or rejects.
 */
function columnField(type: PostgresColumnType, v: JsonValue | undefined): string {
  if (v === undefined || v === null) return NULL_FIELD;
  if (type === "jsonb") return copyJson(v);
  if (typeof v === "string") return copyText(v);
  if (typeof v === "object") return copyJson(v);
  if (type === "timestamptz" && typeof v === "number") return isoTime(v);
  if (type === "boolean" && typeof v === "boolean") return v ? "t" : "f";
  return String(v);
}

/** Date's range, in ms either side of the epoch. */
const MAX_DATE_MS = 8.64e15;
/** The second {@link isoTime} formatted last, and its text up to the milliseconds. */
let isoSecond = Number.NaN;
let isoPrefix = "";

/**
 * An ISO 8601 UTC time of `ms` since the epoch, as `Date#toISOString` writes it. Records of a batch
 * mostly fall in the same few seconds, so the second's text is kept and only the milliseconds are
 * appended: toISOString was a third of the encoding time. Throws RangeError for a time out of range.
 */
function isoTime(ms: number): string {
  // Fractions and times out of Date's range take the slow path, which truncates or throws as Date does.
  if (!Number.isInteger(ms) || Math.abs(ms) > MAX_DATE_MS) return new Date(ms).toISOString();
  const second = Math.floor(ms / 1000);
  if (second !== isoSecond) {
    isoPrefix = new Date(second * 1000).toISOString().slice(0, -4);
    isoSecond = second;
  }
  const milli = ms - second * 1000;
  return `${isoPrefix}${milli < 10 ? "00" : milli < 100 ? "0" : ""}${milli}Z`;
}

/** One `write` call's batch, encoded, waiting for a connection or being written as part of a group. */
interface Job {
  /** COPY lines of the records that could be encoded. */
  readonly lines: readonly string[];
  /** Index in the batch of each line's record. */
  readonly live: readonly number[];
  /** Id of each line's record. */
  readonly ids: readonly string[];
  /** Records of this batch that cannot be stored; the group adds the ones PostgreSQL rejects. */
  readonly failures: RecordFailure[];
  /** Records of this batch the table already held (by index in the batch); filled by the group. */
  readonly present: number[];
  readonly signal: AbortSignal;
  readonly resolve: () => void;
  readonly reject: (err: unknown) => void;
  /** Takes the batch out of the queue when its write is aborted before it was sent. */
  onAbort: (() => void) | undefined;
}

/** Bytes before a CopyData message's content: the type byte and the length. */
const COPY_DATA_HEADER = 5;
/** The CopyDone message: `c` and its length, 4. */
const COPY_DONE = Buffer.from([0x63, 0, 0, 0, 4]);

/**
 * A `COPY .. FROM STDIN` of data already framed as CopyData + CopyDone, for `pg`'s
 * `client.query(submittable)`. It sends the statement and the data in one write instead of waiting
 * for the server's CopyInResponse (what pg-copy-streams does): that saves a round trip per batch,
 * which on a busy event loop cost more than the COPY of a 1,000-row batch itself. Safe by the
 * protocol: when the statement fails before copy-in starts (no table), or the COPY fails midway (a
 * duplicate id, a bad value), the server reports the error once and drops the CopyData and CopyDone
 * that follow; nothing else is sent on the connection until `pg` saw ReadyForQuery. Gotcha: the
 * data is on its way with the statement, so an abort (which ends the connection) cannot stop a COPY
 * waiting on a lock from committing the whole batch once the lock is released; the rejected write
 * is then redelivered, and the ids keep one row each.
 */
class CopyIn implements Submittable {
  private rows = 0;

  constructor(
    /** The statement (named as `pg`'s own queries name it). */
    readonly text: string,
    private readonly data: Buffer,
    private readonly resolve: (rows: number) => void,
    private readonly reject: (err: unknown) => void,
  ) {}

  submit(connection: Connection): void {
    const socket = connection.stream;
    // One write (writev) for the statement and its data.
    socket.cork();
    connection.query(this.text);
    if (socket.writable) socket.write(this.data);
    socket.uncork();
  }

  /** `pg` replaces this with its timeout hook when query_timeout is set; called on every outcome. */
  callback(): void {}

  handleCopyInResponse(): void {}

  handleCommandComplete(msg: { text?: string }): void {
    const m = /^COPY (\d+)/.exec(msg.text ?? "");
    if (m !== null) this.rows = Number(m[1]);
  }

  /** After CommandComplete: the COPY, and with it its transaction when none was open, is done. */
  handleReadyForQuery(): void {
    this.callback();
    this.resolve(this.rows);
  }

  /** An ErrorResponse (then `pg` expects no ReadyForQuery call here), or the connection failed. */
  handleError(err: unknown): void {
    this.callback();
    this.reject(err);
  }
}

/** A record that cannot become a row for a reason found before PostgreSQL sees it. */
class Unstorable extends Error {}

/** One column the sink writes: its name, type, and how a record fills it (a COPY field). */
interface ColumnSpec {
  readonly name: string;
  readonly type: string;
  readonly field: (r: SluiceRecord) => string;
}

// ---------------------------------------------------------------------------------------------
// The sink

/** What writing a group's lines did besides storing them. */
interface Applied {
  /** Records late (upsert_latest): not applied because a record of their key at least as new was there first. */
  readonly late: number;
  /** Lines (index in the group) whose record the table already held, or held one at least as new (upsert_latest). */
  readonly present: number[];
}

/** A checked-out connection, with what happened to it while it was out. */
interface Lease {
  readonly client: PoolClient;
  /** Set when the connection must not go back to the pool. */
  broken: unknown;
  done(): void;
}

/**
 * Builds a PostgreSQL sink (what the `postgres` definition's factory returns). Exported for
 * library users and tests that set what the config does not expose (the insert write path).
 *
 * Write path: the batch is COPY-encoded once (text format) when `write` is called. A connection
 * that frees takes every batch waiting (group commit, at most MAX_GROUP_RECORDS records) and writes
 * them as one batch below; each `write` resolves after that commit. `insert` mode COPYs it straight into
 * the table; a duplicate id (a redelivery) makes that COPY fail as a whole, and that batch then
 * goes through a per-connection temporary staging table: COPY into it, then
 * `INSERT INTO table SELECT .. FROM stage ON CONFLICT (id) DO NOTHING` in the same transaction.
 * Redeliveries come in runs, so later batches stage too until one inserts every row.
 * `upsert_latest` always stages, then keeps the newest record per key within the batch
 * (`DISTINCT ON`) and upserts it `ON CONFLICT (key) DO UPDATE .. WHERE excluded.version >
 * table.version`, so an older record never overwrites a newer row; records not applied because a
 * record at least as new was there first are counted as `records_late`.
 *
 * Each write reports its records already present: none after a direct COPY (which fails whole on
 * one duplicate); in `insert` mode the staged records the INSERT did not return (`RETURNING id`);
 * in `upsert_latest` those not applied because their key's row held them or a record at least as new.
 *
 * A data error (class 22, 23, trigger errors) makes the sink bisect the batch inside one
 * transaction with savepoints: about 2·log2(n) statements per bad record; the bad records are
 * reported with their SQLSTATE, the rest commits. Any other error fails the whole batch
 * (retryable or not, by {@link classifyPostgresError}); a connection that failed is discarded.
 *
 * Gotchas: `insert` keeps the first copy of an id (a redelivered record whose payload changed does
 * not update the row). jsonb and text cannot hold U+0000: a record with one is dead-lettered
 * (22P05 or 22021). Needs a session per connection (pgbouncer in transaction mode breaks the
 * temporary staging table).
 */
export function createPostgresSink(settings: PostgresSinkSettings): Sink {
  const target = settings.schema === undefined ? escapeIdentifier(settings.table) : `${escapeIdentifier(settings.schema)}.${escapeIdentifier(settings.table)}`;
  const location = `postgres ${target}`;
  const upsert = settings.mode === "upsert_latest";
  const direct = !upsert && (settings.insertPath ?? "copy_direct") === "copy_direct";
  const keyColumn = upsert ? (settings.keyColumn ?? "key") : undefined;
  const versionField = upsert ? settings.versionField : undefined;

  const specs: ColumnSpec[] = [
    { name: "id", type: "text", field: (r) => copyText(r.id) },
    { name: "key", type: "text", field: (r) => (r.key === undefined ? NULL_FIELD : copyText(r.key)) },
    { name: "payload", type: "jsonb", field: payloadField },
    { name: "event_time", type: "timestamptz", field: (r) => (r.eventTime === undefined ? NULL_FIELD : isoTime(r.eventTime)) },
  ];
  if (versionField !== undefined) {
    const get = fieldGetter(versionField);
    specs.push({ name: VERSION_COLUMN, type: "numeric", field: (r) => columnField("numeric", get(r.payload)) });
  }
  for (const [name, c] of Object.entries(settings.columns)) {
    const get = fieldGetter(c.field);
    specs.push({ name, type: c.type, field: (r) => columnField(c.type, get(r.payload)) });
  }

  const quoted = specs.map((s) => escapeIdentifier(s.name));
  const columnList = quoted.join(", ");
  /** Staging columns are positional (`s0`, `s1`, ...), so no user column name can clash with `seq`. */
  const stageNames = specs.map((_, i) => `s${i}`);
  const stageList = stageNames.join(", ");
  const stageIndex = (name: string) => specs.findIndex((s) => s.name === name);
  const keyIdx = keyColumn === undefined ? -1 : stageIndex(keyColumn);
  const versionName = versionField !== undefined ? VERSION_COLUMN : "event_time";
  const versionIdx = stageIndex(versionName);

  const createTableSql =
    `CREATE TABLE IF NOT EXISTS ${target} (id text PRIMARY KEY, key text, payload jsonb, event_time timestamptz, ingested_at timestamptz DEFAULT now()` +
    specs
      .slice(4)
      .map((s) => `, ${escapeIdentifier(s.name)} ${s.type}`)
      .join("") +
    (keyColumn !== undefined ? `, UNIQUE (${escapeIdentifier(keyColumn)})` : "") +
    ")";
  /**
   * Creates the table, under a transaction-scoped advisory lock on its name: CREATE TABLE IF NOT
   * EXISTS is not safe against itself, and a fleet of workers started at once on a new table
   * would otherwise fail all but one with a unique violation on pg_type (SQLSTATE 23505). The
   * second one waits for the first to commit and then finds the table.
   */
  async function createTable(client: PoolClient): Promise<void> {
    await client.query("BEGIN");
    try {
      await client.query("SELECT pg_advisory_xact_lock(hashtext($1))", [`sluice create ${target}`]);
      await client.query(createTableSql);
      await client.query("COMMIT");
    } catch (err) {
      await client.query("ROLLBACK").catch(() => undefined);
      throw err;
    }
  }
  const createStageSql = `CREATE TEMP TABLE IF NOT EXISTS sluice_stage (seq integer, ${specs.map((s, i) => `${stageNames[i]} ${s.type}`).join(", ")}) ON COMMIT DELETE ROWS`;
  const directCopySql = `COPY ${target} (${columnList}) FROM STDIN`;
  const stageCopySql = `COPY ${STAGE} FROM STDIN`;

  /** The statement that moves staged rows [lo, hi) into the table and tells which were already present (and, for upsert_latest, late). */
  function applySql(lo?: number, hi?: number): string {
    const where = lo === undefined ? "" : ` WHERE seq >= ${lo} AND seq < ${hi}`;
    // RETURNING the ids inserted: none on a rerun's redelivered range, which is when staging runs.
    if (!upsert) return `INSERT INTO ${target} (${columnList}) SELECT ${stageList} FROM ${STAGE}${where} ON CONFLICT (id) DO NOTHING RETURNING id`;
    const k = stageNames[keyIdx]!;
    const v = stageNames[versionIdx]!;
    const kq = escapeIdentifier(keyColumn!);
    const vq = escapeIdentifier(versionName);
    const updates = [...quoted.map((q) => `${q} = excluded.${q}`), "ingested_at = now()"].join(", ");
    // The main query and the CTE read one snapshot: `cur` is the row as it was before this statement.
    // Late: a record at least as new was there first, stored (and not this record) or earlier in the batch.
    // Present: not applied because the row held this record or one at least as new (late, or a redelivery).
    return (
      `WITH newest AS (SELECT DISTINCT ON (${k}) * FROM ${STAGE}${where} ORDER BY ${k}, ${v} DESC, seq), ` +
      `up AS (INSERT INTO ${target} AS t (${columnList}) SELECT ${stageList} FROM newest ` +
      `ON CONFLICT (${kq}) DO UPDATE SET ${updates} WHERE t.${vq} IS NULL OR excluded.${vq} > t.${vq}) ` +
      `SELECT count(*) FILTER (WHERE (cur.${vq} >= w.v AND cur.id IS DISTINCT FROM w.id) OR w.prev >= w.v)::int AS late, ` +
      `coalesce(array_agg(w.seq) FILTER (WHERE cur.${vq} >= w.v OR w.prev >= w.v), '{}') AS present FROM ` +
      `(SELECT seq, s0 AS id, ${k} AS k, ${v} AS v, max(${v}) OVER (PARTITION BY ${k} ORDER BY seq ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev FROM ${STAGE}${where}) w ` +
      `LEFT JOIN ${target} cur ON cur.${kq} = w.k`
    );
  }

  /** One COPY line per record, without the staging `seq` or the newline; throws Unstorable for a record that cannot be a row. */
  function encode(r: SluiceRecord): string {
    if (upsert) {
      if (keyColumn === "key" && r.key === undefined) throw new Unstorable("it has no key; upsert_latest keeps one row per key: set key_field on the source");
      if (versionField === undefined && r.eventTime === undefined)
        throw new Unstorable("it has no event time; upsert_latest compares event times: set time_field on the source, or version_field on the sink");
    }
    let line = specs[0]!.field(r);
    for (let i = 1; i < specs.length; i++) {
      const f = specs[i]!.field(r);
      if (f === NULL_FIELD && (i === keyIdx || i === versionIdx) && upsert) {
        throw new Unstorable(`its ${specs[i]!.name} column (upsert_latest ${i === keyIdx ? "key_column" : "version"}) would be null: payload field missing`);
      }
      line += `\t${f}`;
    }
    return line;
  }

  /**
   * COPY data of lines [lo, hi), `seq` prefixed for the staging table, framed as the wire messages
   * that follow the COPY statement: one CopyData holding every row, then CopyDone. Each line is
   * written straight into one buffer: concatenating the batch into a string first cost about as
   * much as encoding it. A fresh buffer per call: the socket may still hold the previous one.
   */
  function body(lines: readonly string[], lo: number, hi: number, seq: boolean): Buffer {
    let chars = 0;
    for (let i = lo; i < hi; i++) chars += lines[i]!.length;
    // A UTF-16 code unit takes at most 3 bytes in UTF-8; a seq at most 11 characters and a tab.
    const buf = Buffer.allocUnsafe(COPY_DATA_HEADER + chars * 3 + (hi - lo) * (seq ? 13 : 1) + COPY_DONE.length);
    let at = COPY_DATA_HEADER;
    for (let i = lo; i < hi; i++) {
      if (seq) {
        at += buf.write(String(i), at, "latin1");
        buf[at++] = 0x09;
      }
      at += buf.write(lines[i]!, at, "utf8");
      buf[at++] = 0x0a;
    }
    buf[0] = 0x64; // 'd': CopyData; its length counts itself, not the type byte
    buf.writeUInt32BE(at - 1, 1);
    at += COPY_DONE.copy(buf, at);
    return buf.subarray(0, at);
  }

  let pool: Pool | undefined;
  /** insert mode: a batch hit an id already stored and no staged batch since was all new; staging skips the doomed direct COPY. */
  let duplicatesSeen = false;
  /** Connections whose session has the staging table (a new connection is a new session). */
  const staged = new WeakSet<PoolClient>();

  /** A connection from the pool, ended when any of `signals` aborts (one per batch of a group). */
  async function lease(p: Pool, ...signals: AbortSignal[]): Promise<Lease> {
    // Distinct signals only; not AbortSignal.any, which on Node 20 leaks the combined signal into each long-lived source.
    const watched = [...new Set(signals)];
    const client = await p.connect();
    const l: Lease = {
      client,
      broken: undefined,
      done() {
        client.removeListener("error", onError);
        for (const signal of watched) signal.removeEventListener("abort", onAbort);
        client.release(l.broken === undefined ? undefined : l.broken instanceof Error ? l.broken : true);
      },
    };
    // A checked-out client has no pool listener: without this, a socket error between two queries would crash the process.
    const onError = (err: Error) => {
      l.broken ??= err;
    };
    // Ending the connection fails the statement in flight; the server rolls the transaction back.
    const onAbort = (event: Event) => {
      l.broken ??= abortedError(event.target as AbortSignal);
      client.end().catch(() => undefined);
    };
    client.on("error", onError);
    for (const signal of watched) signal.addEventListener("abort", onAbort, { once: true });
    return l;
  }

  /** Runs `sql` (a COPY .. FROM STDIN) with `data` from {@link body}; resolves to the rows copied. */
  async function copyIn(client: PoolClient, sql: string, data: Buffer): Promise<number> {
    return new Promise((resolve, reject) => {
      client.query(new CopyIn(sql, data, resolve, reject));
    });
  }

  async function ensureStage(client: PoolClient): Promise<void> {
    if (staged.has(client)) return;
    await client.query(createStageSql);
    staged.add(client);
  }

  /**
   * Runs the apply statement on staged lines [lo, hi) (all when absent), whose record ids are
   * `ids`; resolves to the records late (upsert_latest) and the lines already present.
   */
  async function apply(client: PoolClient, ids: readonly string[], lo?: number, hi?: number, then = ""): Promise<Applied> {
    const res = (await client.query(applySql(lo, hi) + then)) as QueryResult | QueryResult[];
    const first = Array.isArray(res) ? res[0]! : res;
    if (upsert) {
      const row = first.rows[0] as { late: number; present: number[] } | undefined;
      return { late: row?.late ?? 0, present: row?.present ?? [] };
    }
    const inserted = new Set((first.rows as { id: string }[]).map((r) => r.id));
    const present: number[] = [];
    // Deleted when seen, so of two lines with one id (both in this statement) the second is already present.
    for (let i = lo ?? 0; i < (hi ?? ids.length); i++) if (!inserted.delete(ids[i]!)) present.push(i);
    return { late: 0, present };
  }

  async function rollback(l: Lease, sql = "ROLLBACK"): Promise<void> {
    if (l.broken !== undefined) return;
    try {
      await l.client.query(sql);
    } catch (err) {
      l.broken = err;
    }
  }

  /** The whole batch through the staging table in one transaction. */
  async function staging(l: Lease, lines: readonly string[], ids: readonly string[]): Promise<Applied> {
    await ensureStage(l.client);
    try {
      await l.client.query("BEGIN");
      await copyIn(l.client, stageCopySql, body(lines, 0, lines.length, true));
      const applied = await apply(l.client, ids);
      await l.client.query("COMMIT");
      // Every row new: the redelivered range is over, direct COPY is the fast path again.
      if (!upsert && applied.present.length === 0) duplicatesSeen = false;
      return applied;
    } catch (err) {
      await rollback(l);
      throw err;
    }
  }

  /**
   * Finds the records PostgreSQL rejects, in one transaction: each range is tried under a
   * savepoint, a failing range is halved, a failing single record is reported (its index into
   * `lines`). Depth-first and left before right, so ranges commit in batch order and upsert_latest
   * ends where the whole batch would have.
   */
  async function bisect(l: Lease, lines: readonly string[], ids: readonly string[], failures: RecordFailure[]): Promise<Applied> {
    const { client } = l;
    await ensureStage(client);
    let late = 0;
    const present: number[] = [];
    try {
      // Deferred constraints checked per statement, so a bad record fails its own range, not the COMMIT.
      await client.query(`BEGIN; SET CONSTRAINTS ALL IMMEDIATE; SAVEPOINT ${SAVEPOINT}`);
      const mid = lines.length >> 1;
      const stack: [number, number][] = mid === 0 ? [[0, lines.length]] : [[mid, lines.length], [0, mid]];
      for (let range = stack.pop(); range !== undefined; range = stack.pop()) {
        const [lo, hi] = range;
        try {
          await copyIn(client, stageCopySql, body(lines, lo, hi, true));
          const applied = await apply(client, ids, lo, hi, `; RELEASE SAVEPOINT ${SAVEPOINT}; SAVEPOINT ${SAVEPOINT}`);
          late += applied.late;
          present.push(...applied.present);
        } catch (err) {
          if (scopeOf(err) !== "record" || connectionLost(err)) throw err;
          await client.query(`ROLLBACK TO SAVEPOINT ${SAVEPOINT}`);
          if (hi - lo === 1) {
            failures.push({ index: lo, error: classifyPostgresError(err, "ERR_SINK_WRITE", "ERR_SINK_REJECTED", location) });
          } else {
            const half = (lo + hi) >> 1;
            stack.push([half, hi], [lo, half]);
          }
        }
      }
      await client.query("COMMIT");
      return { late, present };
    } catch (err) {
      await rollback(l);
      throw err;
    }
  }

  async function writeLines(l: Lease, lines: readonly string[], ids: readonly string[], failures: RecordFailure[]): Promise<Applied> {
    if (direct && !duplicatesSeen) {
      try {
        await copyIn(l.client, directCopySql, body(lines, 0, lines.length, false));
        return { late: 0, present: [] };
      } catch (err) {
        if (connectionLost(err)) throw err;
        // A duplicate id (a redelivery) goes through the staging path, which skips it; a bad record is searched for at once.
        if (sqlstate(err) !== "23505") {
          if (scopeOf(err) !== "record") throw err;
          return bisect(l, lines, ids, failures);
        }
        // Redeliveries come in runs (the range after a restart): stage the next batches too, not fail a COPY for each.
        duplicatesSeen = true;
      }
    }
    try {
      return await staging(l, lines, ids);
    } catch (err) {
      if (scopeOf(err) !== "record" || connectionLost(err)) throw err;
      return bisect(l, lines, ids, failures);
    }
  }

  /**
   * Maps line indexes of a group (ascending) to the batch each came from: calls `to` with that
   * batch, the record's index in it, and the position in `lines`.
   */
  function byBatch(group: readonly Job[], lines: readonly number[], to: (job: Job, index: number, n: number) => void): void {
    let job = 0;
    let start = 0;
    lines.forEach((line, n) => {
      while (line >= start + group[job]!.lines.length) start += group[job++]!.lines.length;
      to(group[job]!, group[job]!.live[line - start]!, n);
    });
  }

  /** Batches encoded and waiting for a connection, oldest first; at most maxInFlight (the engine's bound). */
  const waiting: Job[] = [];
  /** Connections writing a group now. */
  let writing = 0;

  /** Starts a group on every idle connection while batches wait. */
  function dispatch(p: Pool): void {
    while (writing < settings.poolSize && waiting.length > 0) {
      const group = [waiting.shift()!];
      let rows = group[0]!.lines.length;
      while (waiting.length > 0 && rows + waiting[0]!.lines.length <= MAX_GROUP_RECORDS) {
        rows += waiting[0]!.lines.length;
        group.push(waiting.shift()!);
      }
      writing++;
      void writeGroup(p, group).finally(() => {
        writing--;
        dispatch(p);
      });
    }
  }

  /**
   * Writes the batches of `group` as one: one COPY, one transaction, one commit. Settles every
   * batch's `write` with the group's outcome: rejected records go back to their own batch by
   * index, a failure of the whole group fails each batch (each is retried on its own).
   */
  async function writeGroup(p: Pool, group: readonly Job[]): Promise<void> {
    for (const job of group) job.signal.removeEventListener("abort", job.onAbort!);
    // Any batch's abort ends the connection, failing the group; the others get a retryable error and are written again.
    const fail = (err: unknown): void => {
      for (const job of group) job.reject(job.signal.aborted ? abortedError(job.signal) : classifyPostgresError(err, "ERR_SINK_WRITE", "ERR_SINK_REJECTED", location));
    };
    let l: Lease;
    try {
      l = await lease(p, ...group.map((j) => j.signal));
    } catch (err) {
      fail(err);
      return;
    }
    const lines = group.length === 1 ? group[0]!.lines : group.flatMap((j) => j.lines);
    const ids = group.length === 1 ? group[0]!.ids : group.flatMap((j) => j.ids);
    const bad: RecordFailure[] = [];
    let present: number[];
    try {
      const applied = await writeLines(l, lines, ids, bad);
      if (applied.late > 0) settings.emit({ type: "records_late", sink: settings.name, count: applied.late });
      present = applied.present;
    } catch (err) {
      if (connectionLost(err)) l.broken ??= err;
      fail(err);
      return;
    } finally {
      l.done();
    }
    bad.sort((a, b) => a.index - b.index);
    byBatch(group, bad.map((f) => f.index), (j, index, n) => j.failures.push({ index, error: bad[n]!.error }));
    byBatch(group, present.sort((a, b) => a - b), (j, index) => j.present.push(index));
    for (const j of group) j.resolve();
  }

  return {
    maxInFlight: settings.poolSize * BATCHES_PER_CONNECTION,

    async connect(signal: AbortSignal) {
      if (pool !== undefined) return;
      defaultUserFromOs();
      const p = new PgPool({
        connectionString: settings.url,
        max: settings.poolSize,
        keepAlive: true,
        connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
        idleTimeoutMillis: IDLE_TIMEOUT_MS,
        application_name: "sluice",
      });
      // An idle connection's failure (a server restart) surfaces here; the pool drops it and the next write opens a new one.
      // Logged only, not the sink being down: with no traffic nothing would ever clear it (readiness stuck false).
      p.on("error", (err) =>
        settings.emit({ type: "component_error", component: settings.name, code: "ERR_SINK_WRITE", message: classifyPostgresError(err, "ERR_SINK_WRITE", "ERR_SINK_WRITE", location).message }),
      );
      try {
        const l = await lease(p, signal);
        try {
          if (settings.createTable) {
            const exists = await l.client.query<{ found: boolean }>("SELECT to_regclass($1) IS NOT NULL AS found", [target]);
            // Checked first: CREATE .. IF NOT EXISTS needs the CREATE privilege even when the table exists.
            if (exists.rows[0]?.found !== true) await createTable(l.client);
          }
          await ensureStage(l.client);
          // The write statement once on an empty staging table: a missing column, a type that does not
          // fit or a missing unique index on the conflict column fails here, not on every batch.
          await l.client.query("BEGIN");
          try {
            await apply(l.client, []);
          } finally {
            await rollback(l);
          }
        } catch (err) {
          if (connectionLost(err)) l.broken ??= err;
          throw err;
        } finally {
          l.done();
        }
        pool = p;
      } catch (err) {
        await p.end().catch(() => undefined);
        if (signal.aborted) throw abortedError(signal);
        throw classifyPostgresError(err, "ERR_SINK_CONNECT", "ERR_SINK_CONNECT", location);
      }
    },

    async write(records: readonly SluiceRecord[], signal: AbortSignal): Promise<WriteResult | void> {
      const p = pool;
      if (p === undefined) throw new SluiceError("ERR_INTERNAL", "postgres sink: write before connect", { location });
      if (signal.aborted) throw abortedError(signal);
      if (records.length === 0) return {};

      const failures: RecordFailure[] = [];
      const present: number[] = [];
      const lines: string[] = [];
      const live: number[] = [];
      const ids: string[] = [];
      for (let i = 0; i < records.length; i++) {
        const record = records[i]!;
        try {
          lines.push(encode(record));
          live.push(i);
          ids.push(record.id);
        } catch (err) {
          // Only this record is bad: a payload JSON cannot represent (a cycle, a BigInt), a time out of range, no key.
          failures.push({
            index: i,
            error: new SluiceError("ERR_SINK_REJECTED", `postgres sink: record ${record.id} cannot be stored: ${(err as Error).message}`, { cause: err, location }),
          });
        }
      }

      if (lines.length > 0) {
        await new Promise<void>((resolve, reject) => {
          const job: Job = { lines, live, ids, failures, present, signal, resolve, reject, onAbort: undefined };
          // Aborted while waiting for a connection: it never reaches the server, so it fails alone.
          job.onAbort = () => {
            const at = waiting.indexOf(job);
            if (at < 0) return;
            waiting.splice(at, 1);
            reject(abortedError(signal));
          };
          signal.addEventListener("abort", job.onAbort, { once: true });
          waiting.push(job);
          dispatch(p);
        });
      }
      failures.sort((a, b) => a.index - b.index);
      return failures.length > 0 || present.length > 0 ? { failures, alreadyPresent: present } : {};
    },

    async close() {
      const p = pool;
      pool = undefined;
      await p?.end();
    },
  };
}
