/**
 * The `postgres` sink's definition: its options (the config schema, with defaults), the column
 * types a mapping may use, and the factory, which loads the sink (and pg) only when a pipeline
 * has one.
 */
import { z } from "zod";
import { defineLazyComponent, type Sink } from "../components/contracts.js";

/** The column types a `columns` mapping may use. */
export const POSTGRES_COLUMN_TYPES = ["text", "integer", "bigint", "double precision", "numeric", "boolean", "timestamptz", "jsonb", "uuid"] as const;

/** One of {@link POSTGRES_COLUMN_TYPES}. */
export type PostgresColumnType = (typeof POSTGRES_COLUMN_TYPES)[number];

/** A typed column filled from a payload field. */
export interface PostgresColumn {
  /** Payload field (dotted path allowed: `a.b` reads `payload.a.b`). */
  readonly field: string;
  readonly type: PostgresColumnType;
}

/** How records become rows: `insert` (one row per record id) or `upsert_latest` (one row per key, newest wins). */
export type PostgresWriteMode = "insert" | "upsert_latest";

/** Columns every table of this sink has; `columns` may not reuse these names. */
export const BASE_COLUMNS = ["id", "key", "payload", "event_time", "ingested_at"] as const;

/** Column holding `version_field`'s value in `upsert_latest` mode. */
export const VERSION_COLUMN = "version";

const column = z.strictObject({
  field: z.string().min(1).describe("Payload field whose value fills the column (dotted path allowed)"),
  type: z
    .enum(POSTGRES_COLUMN_TYPES)
    .describe("Column type; PostgreSQL converts the value, and a value it cannot convert dead-letters that record"),
});

/** The sink's config keys. */
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
        "Connections in the pool: the most COPY transactions at once. The sink takes up to 4 batches per connection; batches waiting for a connection are written together, in one COPY and one commit",
      ),
    create_table: z
      .boolean()
      .default(true)
      .describe(
        "Create the table when missing: id text primary key, key text, payload jsonb, event_time timestamptz, ingested_at timestamptz default now(), plus version numeric (with version_field) and the mapped columns",
      ),
    columns: z
      .record(z.string().min(1), column)
      .default({})
      .describe("Typed columns filled from payload fields: column name -> { field, type }"),
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
    for (const name of Object.keys(o.columns)) {
      if (reserved.has(name)) ctx.addIssue({ code: "custom", path: ["columns", name], message: `"${name}" is a column the sink fills itself; map the field to another name` });
    }
    if (o.mode !== "upsert_latest") {
      if (o.version_field !== undefined) ctx.addIssue({ code: "custom", path: ["version_field"], message: "version_field applies only to mode: upsert_latest" });
      if (o.key_column !== undefined) ctx.addIssue({ code: "custom", path: ["key_column"], message: "key_column applies only to mode: upsert_latest" });
    } else if (o.key_column !== undefined && o.key_column !== "key" && !(o.key_column in o.columns)) {
      ctx.addIssue({ code: "custom", path: ["key_column"], message: `key_column must be "key" or one of columns (${Object.keys(o.columns).join(", ") || "none mapped"})` });
    }
  });

/**
 * The `postgres` sink: rows `(id text primary key, key, payload jsonb, event_time, ingested_at,
 * mapped columns)` in `table`, created when missing, written with COPY, one transaction per batch.
 * `mode: insert` leaves one row per record id however often it is delivered; `mode:
 * upsert_latest` keeps one row per key, replaced only by a newer record (`version_field`, else the
 * event time). Records PostgreSQL rejects (bad values, NOT NULL, CHECK, foreign keys) are reported
 * alone with their SQLSTATE and dead-lettered; the rest of the batch commits. `pool_size`
 * connections; 4 batches in flight per connection, the ones waiting for a connection written
 * together in one COPY and one commit.
 */
export const definition = defineLazyComponent<typeof options, Sink>({
  type: "postgres",
  summary: "Writes records into a PostgreSQL table with COPY, idempotent by id, or newest-per-key with upsert_latest",
  options,
  async create(opts, ctx) {
    const { createPostgresSink } = await import("./postgres.js");
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
