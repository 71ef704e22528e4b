/**
 * Typed columns filled from payload fields, for any sink that stores rows (postgres, parquet):
 * the `columns` option's schema, the column type names, reading a column's value from a record,
 * and converting it to the column's type for a sink that stores typed values itself.
 *
 * How a value is encoded for one store (COPY text, a Parquet page) stays in that sink. A sink
 * whose server converts text itself (PostgreSQL) reads the raw value ({@link Column.read}) and lets
 * the server decide; a sink that must produce typed values (Parquet) uses {@link Column.value},
 * whose rules follow PostgreSQL's input conversions, so one `columns` block means the same in both.
 */
import { z } from "zod";
import { fieldGetter, type JsonValue, type SluiceRecord } from "../core/record.js";

/** The column types a `columns` mapping may use (PostgreSQL's names). */
export const COLUMN_TYPES = ["text", "integer", "bigint", "double precision", "numeric", "boolean", "timestamptz", "jsonb", "uuid"] as const;

/** One of {@link COLUMN_TYPES}. */
export type ColumnType = (typeof COLUMN_TYPES)[number];

/** A typed column filled from a payload field, as the config gives it. */
export interface ColumnMapping {
  /** Payload field (dotted path allowed: `a.b` reads `payload.a.b`). */
  readonly field: string;
  readonly type: ColumnType;
}

/**
 * The JavaScript value {@link convertColumnValue} gives for each type: `bigint` as a BigInt (its
 * range is past a number's), `numeric` as decimal text (exact), `timestamptz` as ms since the
 * epoch, `jsonb` as JSON text, `uuid` in its canonical lower-case form.
 */
export interface ColumnValues {
  text: string;
  integer: number;
  bigint: bigint;
  "double precision": number;
  numeric: string;
  boolean: boolean;
  timestamptz: number;
  jsonb: string;
  uuid: string;
}

/** The schema of one column mapping: `{ field, type }`. */
export const columnMappingSchema = z.strictObject({
  field: z.string().min(1).describe("Payload field whose value fills the column (dotted path allowed)"),
  type: z.enum(COLUMN_TYPES).describe("Column type; a value that cannot be converted to it dead-letters that record"),
});

/** The `columns` option: column name -> `{ field, type }`, default none. */
export function columnsOption() {
  return z.record(z.string().min(1), columnMappingSchema).default({}).describe("Typed columns filled from payload fields: column name -> { field, type }");
}

/**
 * Adds a config issue for each mapped column whose name the sink fills itself (`id`, `payload`,
 * ...); call from the sink's `superRefine`, with the path of its `columns` option.
 */
export function checkReservedColumns(columns: Readonly<Record<string, ColumnMapping>>, reserved: ReadonlySet<string>, ctx: z.RefinementCtx, path: readonly (string | number)[] = ["columns"]): void {
  for (const name of Object.keys(columns)) {
    if (reserved.has(name)) ctx.addIssue({ code: "custom", path: [...path, name], message: `"${name}" is a column the sink fills itself; map the field to another name` });
  }
}

/** A value that cannot become its column's type: the record cannot be stored (permanent). */
export class ColumnValueError extends Error {
  override readonly name = "ColumnValueError";
}

/** A mapped column, ready to read records. */
export interface Column<T extends ColumnType = ColumnType> {
  readonly name: string;
  readonly type: T;
  /** The payload field it reads. */
  readonly field: string;
  /** The payload field's value as it is (undefined when missing). */
  read(record: SluiceRecord): JsonValue | undefined;
  /** The value converted to the column's type, null when missing or null; throws {@link ColumnValueError}. */
  value(record: SluiceRecord): ColumnValues[T] | null;
}

/** The columns of a `columns` option, in its order, each with its field getter built once. */
export function compileColumns(columns: Readonly<Record<string, ColumnMapping>>): Column[] {
  return Object.entries(columns).map(([name, c]) => {
    const get = fieldGetter(c.field);
    return {
      name,
      type: c.type,
      field: c.field,
      read: (r: SluiceRecord) => get(r.payload),
      value: (r: SluiceRecord) => convertColumnValue(c.type, get(r.payload), name),
    };
  });
}

const INT32_MIN = -(2 ** 31);
const INT32_MAX = 2 ** 31 - 1;
const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;
const INTEGER_TEXT = /^\s*[+-]?\d+\s*$/;
const DECIMAL_TEXT = /^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$/;
const UUID_TEXT = /^\{?([0-9a-f]{8})-?([0-9a-f]{4})-?([0-9a-f]{4})-?([0-9a-f]{4})-?([0-9a-f]{12})\}?$/i;
/** PostgreSQL's boolean input words (a unique prefix of true/false/yes/no also counts there; not here). */
const BOOLEAN_WORDS: Readonly<Record<string, boolean>> = { t: true, true: true, y: true, yes: true, on: true, "1": true, f: false, false: false, n: false, no: false, off: false, "0": false };

function describe(v: JsonValue): string {
  const text = typeof v === "string" ? JSON.stringify(v) : typeof v === "object" ? (Array.isArray(v) ? "an array" : "an object") : String(v);
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}

function refuse(column: string | undefined, type: ColumnType, v: JsonValue, why = ""): never {
  throw new ColumnValueError(`${column === undefined ? "" : `column ${column}: `}${describe(v)} is not a valid ${type}${why}`);
}

/**
 * `v` (a payload field's value) as a value of `type`, by PostgreSQL's input rules: null or missing
 * gives null; numbers and numeric text convert to numeric types (integers must be whole and in
 * range); `boolean` takes booleans, 0/1 and PostgreSQL's words (`t`, `yes`, `off`, ...);
 * `timestamptz` takes ms since the epoch or a date text `Date.parse` reads; `text` takes any
 * scalar as its text and objects as JSON; `jsonb` takes anything (as JSON text). Throws
 * {@link ColumnValueError} naming `column` when the value does not fit.
 */
export function convertColumnValue<T extends ColumnType>(type: T, v: JsonValue | undefined, column?: string): ColumnValues[T] | null;
export function convertColumnValue(type: ColumnType, v: JsonValue | undefined, column?: string): ColumnValues[ColumnType] | null {
  if (v === undefined || v === null) return null;
  switch (type) {
    case "text":
      return typeof v === "string" ? v : typeof v === "object" ? JSON.stringify(v) : String(v);
    case "jsonb":
      return JSON.stringify(v);
    case "integer": {
      const n = typeof v === "number" ? v : typeof v === "string" && INTEGER_TEXT.test(v) ? Number(v) : Number.NaN;
      if (!Number.isInteger(n)) refuse(column, type, v);
      if (n < INT32_MIN || n > INT32_MAX) refuse(column, type, v, " (out of range)");
      return n;
    }
    case "bigint": {
      let n: bigint;
      if (typeof v === "number" && Number.isInteger(v)) n = BigInt(v);
      else if (typeof v === "string" && INTEGER_TEXT.test(v)) n = BigInt(v.trim());
      else refuse(column, type, v);
      if (n < INT64_MIN || n > INT64_MAX) refuse(column, type, v, " (out of range)");
      return n;
    }
    case "double precision": {
      const n = typeof v === "number" ? v : typeof v === "string" && DECIMAL_TEXT.test(v) ? Number(v) : Number.NaN;
      if (Number.isNaN(n)) refuse(column, type, v);
      return n;
    }
    case "numeric":
      if (typeof v === "number") return String(v);
      if (typeof v === "string" && DECIMAL_TEXT.test(v)) return v.trim();
      return refuse(column, type, v);
    case "boolean": {
      if (typeof v === "boolean") return v;
      const word = typeof v === "number" ? String(v) : typeof v === "string" ? v.trim().toLowerCase() : undefined;
      const b = word === undefined ? undefined : BOOLEAN_WORDS[word];
      return b ?? refuse(column, type, v);
    }
    case "timestamptz": {
      const ms = typeof v === "number" ? v : typeof v === "string" ? Date.parse(v) : Number.NaN;
      // Date's range, as PostgreSQL's own is wider but a JavaScript store cannot hold more.
      if (!Number.isFinite(ms) || Math.abs(ms) > 8.64e15) refuse(column, type, v);
      return ms;
    }
    case "uuid": {
      const m = typeof v === "string" ? UUID_TEXT.exec(v) : null;
      if (m === null) return refuse(column, type, v);
      return `${m[1]}-${m[2]}-${m[3]}-${m[4]}-${m[5]}`.toLowerCase();
    }
  }
}
