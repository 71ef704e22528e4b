/**
 * The `postgres` sink's options (the config schema, with its cross-field checks), the settings
 * `createPostgresSink` takes, and the definition, which loads the sink (and pg) only when a
 * pipeline has one.
 */
import { z } from "zod";
import type { EventSink } from "../../core/events.js";
import { checkReservedColumns, columnsOption, type ColumnMapping } from "../../components/columns.js";
import { defineLazyComponent, type Sink } from "../../components/contracts.js";

/** How records become rows: `insert` (one row per record id) or `upsert_latest` (one row per key, newest wins). */
export type PostgresWriteMode = "insert" | "upsert_latest";

/**
 * How an `insert` batch reaches the table. `copy_direct` (the default): COPY straight into the
 * table; when a duplicate id makes that fail, the batch takes the `staging` path, and so do the
 * next ones until a staged batch is all new. `staging`: always COPY into a per-connection
 * temporary table, then `INSERT .. SELECT .. ON CONFLICT (id) DO NOTHING`. See docs/architecture.md
 * ("Decisions") for the measurement behind the default.
 */
export type PostgresInsertPath = "copy_direct" | "staging";

/** Columns every table of this sink has; `columns` may not reuse these names. */
export const BASE_COLUMNS = ["id", "key", "payload", "event_time", "ingested_at"] as const;

/** Column holding `version_field`'s value in `upsert_latest` mode. */
export const VERSION_COLUMN = "version";

/** The config schema of the `postgres` sink. */
export const options = z
  .strictObject({
    url: z
      .string()
      .min(1)
      .describe("Connection URL, postgres://user:password@host:5432/db (libpq URL parameters such as sslmode work); write ${DATABASE_URL} to keep secrets out of the file"),
    table: z.string().min(1).describe("Table to write; one quoted identifier, so any name is safe (a dot is part of the name)"),
    schema: z.string().min(1).optional().describe("Schema of the table, which must exist; default: the first schema of the connection's search_path"),
    pool_size: z
      .number()
      .int()
      .positive()
      .max(100)
      .default(2)
      .describe(
        "Connections in the pool: the most COPY transactions at once, and so the most writes in flight (caps concurrency). Batches that wait while every connection is busy are written together, up to 10,000 records in one COPY and one commit",
      ),
    create_table: z
      .boolean()
      .default(true)
      .describe(
        "Create the table when missing: id text primary key, key text, payload jsonb, event_time timestamptz, ingested_at timestamptz default now(), plus version numeric (with version_field) and the mapped columns",
      ),
    columns: columnsOption(),
    mode: z
      .enum(["insert", "upsert_latest"])
      .default("insert")
      .describe("insert: one row per record id, a redelivered record leaves one row; upsert_latest: one row per key, replaced only by a newer record"),
    version_field: z
      .string()
      .min(1)
      .optional()
      .describe("upsert_latest: payload field holding the record's version (a number, stored in column version); greater is newer. Without it the event time decides"),
    key_column: z
      .string()
      .min(1)
      .optional()
      .describe("upsert_latest: the column that holds one row per value: key (the record's key, the default) or one of columns"),
  })
  .superRefine((o, ctx) => {
    const reserved = new Set<string>(BASE_COLUMNS);
    if (o.version_field !== undefined) reserved.add(VERSION_COLUMN);
    checkReservedColumns(o.columns, reserved, ctx);
    if (o.mode !== "upsert_latest") {
      if (o.version_field !== undefined) ctx.addIssue({ code: "custom", path: ["version_field"], message: "version_field applies only to mode: upsert_latest" });
      if (o.key_column !== undefined) ctx.addIssue({ code: "custom", path: ["key_column"], message: "key_column applies only to mode: upsert_latest" });
    } else if (o.key_column !== undefined && o.key_column !== "key" && !(o.key_column in o.columns)) {
      ctx.addIssue({ code: "custom", path: ["key_column"], message: `key_column must be "key" or one of columns (${Object.keys(o.columns).join(", ") || "none mapped"})` });
    }
  });

/** Everything a {@link createPostgresSink} needs; the definition builds it from validated options. */
export interface PostgresSinkSettings {
  /** Connection URL. Never put into messages: it may hold a password. */
  readonly url: string;
  /** Table name, used as one quoted identifier. */
  readonly table: string;
  /** Schema name; undefined: the search_path decides. */
  readonly schema?: string | undefined;
  /** Connections in the pool, and the sink's `maxInFlight`. */
  readonly poolSize: number;
  readonly createTable: boolean;
  /** Typed columns by name. */
  readonly columns: Readonly<Record<string, ColumnMapping>>;
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

/**
 * The `postgres` sink: rows `(id text primary key, key, payload jsonb, event_time, ingested_at,
 * mapped columns)` in `table`, created when missing, written with COPY, one transaction per batch.
 * `mode: insert` leaves one row per record id however often it is delivered; `mode:
 * upsert_latest` keeps one row per key, replaced only by a newer record (`version_field`, else the
 * event time). Records PostgreSQL rejects (bad values, NOT NULL, CHECK, foreign keys) are reported
 * alone with their SQLSTATE and dead-lettered; the rest of the batch commits. `pool_size`
 * connections, one write in flight on each; batches that wait meanwhile are joined by the engine
 * into one write (one COPY, one commit).
 */
export const definition = defineLazyComponent<typeof options, Sink>({
  type: "postgres",
  summary: "Writes records into a PostgreSQL table with COPY, idempotent by id, or newest-per-key with upsert_latest",
  options,
  async create(opts, ctx) {
    const { createPostgresSink } = await import("./sink.js");
    return createPostgresSink({
      url: opts.url,
      table: opts.table,
      schema: opts.schema,
      poolSize: opts.pool_size,
      createTable: opts.create_table,
      columns: opts.columns,
      mode: opts.mode,
      versionField: opts.version_field,
      keyColumn: opts.key_column,
      name: ctx.name,
      emit: ctx.emit,
    });
  },
});
