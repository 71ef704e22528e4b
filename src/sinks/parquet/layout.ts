/**
 * What a Parquet file of the `parquet` sink holds: the envelope columns, the typed columns (from
 * `columns`, or inferred from the first batch), the payload as JSON text; how a record becomes a
 * row of them, and how rows become a file (hyparquet-writer, loaded on first use).
 */
import type { SchemaElement } from "hyparquet-writer";
import { ColumnValueError, compileColumns, type Column, type ColumnMapping, type ColumnType } from "../../components/columns.js";
import type { JsonValue, SluiceRecord } from "../../core/record.js";

type Element = Omit<SchemaElement, "name" | "repetition_type">;

/** The Parquet physical and logical type of each column type, and how its converted value is handed to the writer. */
const PARQUET_TYPES: Readonly<Record<ColumnType, { readonly element: Element; readonly write?: (v: never) => unknown }>> = {
  text: { element: { type: "BYTE_ARRAY", converted_type: "UTF8" } },
  integer: { element: { type: "INT32" } },
  bigint: { element: { type: "INT64" } },
  "double precision": { element: { type: "DOUBLE" } },
  // Exact decimal text: a Parquet DECIMAL needs one precision and scale for the whole column.
  numeric: { element: { type: "BYTE_ARRAY", converted_type: "UTF8" } },
  boolean: { element: { type: "BOOLEAN" } },
  timestamptz: { element: { type: "INT64", logical_type: { type: "TIMESTAMP", isAdjustedToUTC: true, unit: "MILLIS" } }, write: (ms: number) => BigInt(Math.round(ms)) },
  // JSON text in a string column: the writer's JSON type would serialize the text again (and walk a
  // copy of every payload); readers' JSON functions take the text as it is.
  jsonb: { element: { type: "BYTE_ARRAY", converted_type: "UTF8" } },
  uuid: { element: { type: "FIXED_LEN_BYTE_ARRAY", type_length: 16, logical_type: { type: "UUID" } } },
};

const TIMESTAMP: Element = PARQUET_TYPES.timestamptz.element;

/** One column of the files: its schema element and how a record fills it (throws `ColumnValueError` for a value that does not fit). */
interface FileColumn {
  readonly element: SchemaElement;
  value(record: SluiceRecord, ingestedAt: bigint): unknown;
}

/** Most columns inferred from a first batch; the rest of the fields stay in `payload`. */
const MAX_INFERRED = 256;

/** A field name that can be a column unquoted; other fields stay in `payload` only. */
const COLUMN_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,62}$/;

function kindOf(v: JsonValue): ColumnType {
  if (typeof v === "boolean") return "boolean";
  if (typeof v === "number") return "double precision";
  if (typeof v === "string") return "text";
  return "jsonb";
}

/**
 * Column types from a batch's top-level payload fields, in the order they first appear: all
 * booleans `boolean`, all numbers `double precision` (a JSON number is a double: a later 1.5 still
 * fits), all strings `text`, anything else (objects, arrays, mixed kinds) `jsonb`. Fields that are
 * always null, named like a column the sink fills itself (`excluded`), or not plain identifiers
 * are left out; at most {@link MAX_INFERRED}. Names compare without case, as DuckDB, Spark and
 * Hive fold it: a field `Payload` would otherwise be read as the `payload` column (the JSON
 * renamed `payload_1`), and a field `Site` would take the `site` directory's value; such fields,
 * and a second spelling of one name (`value`, `Value`), stay in the payload only.
 */
export function inferColumns(records: readonly SluiceRecord[], excluded: ReadonlySet<string>): Record<string, ColumnMapping> {
  const kinds = new Map<string, ColumnType | undefined>();
  const folded = new Set([...excluded].map((name) => name.toLowerCase()));
  for (const r of records) {
    for (const [name, v] of Object.entries(r.payload)) {
      if (!COLUMN_NAME.test(name)) continue;
      if (!kinds.has(name)) {
        const lower = name.toLowerCase();
        if (kinds.size >= MAX_INFERRED || folded.has(lower)) continue;
        folded.add(lower);
        kinds.set(name, undefined);
      }
      if (v === null || v === undefined) continue;
      const seen = kinds.get(name);
      const kind = kindOf(v);
      kinds.set(name, seen === undefined || seen === kind ? kind : "jsonb");
    }
  }
  const columns: Record<string, ColumnMapping> = {};
  for (const [name, type] of kinds) if (type !== undefined) columns[name] = { field: name, type };
  return columns;
}

/** How the sink's files are laid out: their schema and how a record becomes a row. */
export interface Layout {
  /** The Parquet schema, root first. */
  readonly schema: SchemaElement[];
  /** Column names, in schema order. */
  readonly names: readonly string[];
  /**
   * Fills `row` (one slot per column) from `record`; returns the row's size estimate in bytes
   * (its data before encoding). Throws `ColumnValueError` when a typed column's value does not fit.
   */
  fill(record: SluiceRecord, ingestedAt: bigint, row: unknown[]): number;
}

function sizeOf(v: unknown): number {
  return typeof v === "string" ? v.length : 8;
}

/** Largest time a `Date` holds, ms from the epoch either way (as `timestamptz` columns accept). */
const MAX_TIME_MS = 8.64e15;

/**
 * The `event_time` cell: a time from a payload field can be any number, and one past the INT64
 * column's range would fail the whole file (the writer throws); past a Date's range only its own
 * record is refused (a `date` partition refuses it the same way).
 */
function eventTimeValue(ms: number): bigint {
  if (!(Math.abs(ms) <= MAX_TIME_MS)) throw new ColumnValueError(`event time ${ms} is outside a timestamp's range`);
  return BigInt(Math.round(ms));
}

/** The layout of files with the envelope columns, `columns` (typed), and the payload as JSON text when `payload` is `json`. */
export function buildLayout(columns: Readonly<Record<string, ColumnMapping>>, payload: "json" | "none"): Layout {
  const fileColumns: FileColumn[] = [
    { element: { name: "id", type: "BYTE_ARRAY", converted_type: "UTF8", repetition_type: "REQUIRED" }, value: (r) => r.id },
    { element: { name: "key", type: "BYTE_ARRAY", converted_type: "UTF8", repetition_type: "OPTIONAL" }, value: (r) => r.key ?? null },
    {
      element: { name: "event_time", ...TIMESTAMP, repetition_type: "OPTIONAL" },
      value: (r) => (r.eventTime === undefined ? null : eventTimeValue(r.eventTime)),
    },
    { element: { name: "ingested_at", ...TIMESTAMP, repetition_type: "REQUIRED" }, value: (_r, ingestedAt) => ingestedAt },
  ];
  for (const column of compileColumns(columns)) fileColumns.push(typedColumn(column));
  if (payload === "json") {
    fileColumns.push({
      element: { name: "payload", ...PARQUET_TYPES.jsonb.element, repetition_type: "REQUIRED" },
      // The source's own text while no transform touched the payload: no second serialization.
      value: (r) => r.text ?? JSON.stringify(r.payload),
    });
  }
  return {
    schema: [{ name: "root", num_children: fileColumns.length }, ...fileColumns.map((c) => c.element)],
    names: fileColumns.map((c) => c.element.name),
    fill(record, ingestedAt, row) {
      let bytes = 0;
      for (let i = 0; i < fileColumns.length; i++) {
        const v = fileColumns[i]!.value(record, ingestedAt);
        row[i] = v;
        bytes += sizeOf(v);
      }
      return bytes;
    },
  };
}

function typedColumn(column: Column): FileColumn {
  const { element, write } = PARQUET_TYPES[column.type];
  return {
    element: { name: column.name, ...element, repetition_type: "OPTIONAL" },
    value: write === undefined ? (r) => column.value(r) : (r) => {
      const v = column.value(r);
      return v === null ? null : write(v as never);
    },
  };
}

/** The writer's module, loaded on the first file: a pipeline without a parquet sink never loads it. */
type Writer = typeof import("hyparquet-writer");

let writerModule: Promise<Writer> | undefined;

/** Loads hyparquet-writer (once). */
export function loadWriter(): Promise<Writer> {
  writerModule ??= import("hyparquet-writer");
  return writerModule;
}

/** How {@link encodeFile} lays out one file. */
export interface FileSettings {
  readonly compression: "snappy" | "none";
  /** Rows of each row group, in order (their sum is the file's rows). */
  readonly rowGroups: readonly number[];
}

/** Encodes `columns` (one array per schema column, equal lengths) as one complete Parquet file. */
export function encodeFile(writer: Writer, layout: Layout, columns: readonly unknown[][], settings: FileSettings): Uint8Array {
  const out = new writer.ByteWriter();
  const file = new writer.ParquetWriter({
    writer: out,
    schema: layout.schema,
    codec: settings.compression === "snappy" ? "SNAPPY" : "UNCOMPRESSED",
    createdBy: "sluice",
  });
  void file.write({
    columnData: layout.names.map((name, i) => ({ name, data: columns[i] as never })),
    rowGroupSize: [...settings.rowGroups],
  });
  void file.finish();
  return out.getBytes();
}
