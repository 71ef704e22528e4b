/**
 * COPY text format: how a record's values become the fields of one COPY line (escaping, NULL,
 * jsonb text, times). No I/O; the rows' framing on the wire is in protocol.ts.
 */
import { compileColumns, type ColumnMapping, type ColumnType } from "../../components/columns.js";
import { fieldGetter, type JsonValue, type SluiceRecord } from "../../core/record.js";
import { VERSION_COLUMN, type PostgresWriteMode } from "./options.js";

const COPY_SPECIAL = /[\\\n\r\t]/;
const COPY_SPECIAL_ALL = /[\\\n\r\t]/g;
const COPY_ESCAPES: Record<string, string> = { "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t" };
/** One JSON escape at a time, so `\\ud800` (an escaped backslash, then text) is never read as `\ud800`. */
const JSON_ESCAPE = /\\(u[dD][89a-fA-F][0-9a-fA-F]{2}|[^])/g;

/** COPY's NULL. */
export const NULL_FIELD = "\\N";

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
  return escapeJson(JSON.stringify(value));
}

/** JSON text as JSON.stringify writes it, escaped for COPY as {@link copyJson} says. */
function escapeJson(json: string): string {
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
export function payloadField(r: SluiceRecord): string {
  const text = r.text;
  return textUsable(text) ? copyText(text) : copyJson(r.payload);
}

function textUsable(text: string | undefined): text is string {
  return text !== undefined && !text.includes("\\u") && !HUGE_EXPONENT.test(text);
}

const HUGE_EXPONENT = /[eE][+-]?\d{3}/;

/** Where JSON.stringify of an array of objects puts one object after another. */
const BETWEEN_OBJECTS = "},{";

/**
 * The payload column of every record, as {@link payloadField} makes it (an Error for a payload
 * that cannot be serialized: a BigInt, a cycle), into `out`. The payloads to serialize are
 * serialized together, one `JSON.stringify` of them as an array, and the text is cut between the
 * objects: a third cheaper than one call per payload (whose result is a string of several parts,
 * copied again to be written). The cut is safe only when every payload is a plain object without
 * `toJSON` (its JSON is then `{...}`, so every boundary reads `},{`) and the text holds exactly one
 * `},{` per boundary (none inside a payload, such as in a string or an array of objects); otherwise
 * the payloads are serialized one by one.
 */
export function payloadFields(records: readonly SluiceRecord[], out: (string | Error)[]): void {
  const serialize: number[] = [];
  for (let i = 0; i < records.length; i++) {
    const text = records[i]!.text;
    if (textUsable(text)) out[i] = copyText(text);
    else serialize.push(i);
  }
  if (serialize.length === 0) return;
  // Filled by push, not preallocated: JSON.stringify serializes an array with holes element by element on a slow path.
  const payloads: JsonValue[] = [];
  // A toJSON every object inherits (set on Object.prototype) would make no payload `{...}`.
  let plain = !("toJSON" in Object.prototype);
  for (const i of serialize) {
    const p = records[i]!.payload;
    payloads.push(p);
    plain &&= isPlainObject(p);
  }
  if (plain && serializeTogether(payloads, serialize, out)) return;
  for (const i of serialize) {
    try {
      out[i] = copyJson(records[i]!.payload);
    } catch (err) {
      out[i] = err instanceof Error ? err : new Error(String(err));
    }
  }
}

/**
 * Whether `v`'s JSON is `{...}`: its prototype is Object.prototype or null, and it has no `toJSON`
 * of its own ({@link payloadFields} checks Object.prototype's once). An own-property test, not a
 * read of `v.toJSON`: on Node 20 a copying transform's `{ ...p, x }` gives every object a hidden
 * class of its own, on which a read that finds nothing misses V8's caches each time (about 0.4 µs
 * a payload, against 0.05 for the test).
 */
function isPlainObject(v: unknown): boolean {
  if (typeof v !== "object" || v === null) return false;
  const proto = Object.getPrototypeOf(v) as unknown;
  return (proto === Object.prototype || proto === null) && !Object.hasOwn(v, "toJSON");
}

/** {@link payloadFields}' one serialization of plain objects; false when the text cannot be cut safely (or a payload cannot be serialized). */
function serializeTogether(payloads: readonly JsonValue[], at: readonly number[], out: (string | Error)[]): boolean {
  let json: string;
  try {
    json = JSON.stringify(payloads);
  } catch {
    return false;
  }
  const n = payloads.length;
  // Each object's end (exclusive); checked whole before anything is written to `out`.
  const ends: number[] = new Array<number>(n);
  let from = 1;
  for (let k = 0; k < n - 1; k++) {
    const cut = json.indexOf(BETWEEN_OBJECTS, from);
    if (cut < 0) return false;
    ends[k] = cut + 1;
    from = cut + 2;
  }
  if (json.indexOf(BETWEEN_OBJECTS, from) >= 0) return false;
  ends[n - 1] = json.length - 1;
  const escape = json.includes("\\");
  let start = 1;
  for (let k = 0; k < n; k++) {
    const object = json.slice(start, ends[k]);
    out[at[k]!] = escape ? escapeJson(object) : object;
    start = ends[k]! + 1;
  }
  return true;
}

/**
 * A payload value as a COPY field of a column of `type`. Null or missing: NULL. A number into
 * timestamptz: ms since the epoch; a boolean into boolean: t/f; into jsonb: the value as JSON.
 * Otherwise its text (strings as they are, numbers and booleans as JSON writes them, objects and
 * arrays as JSON), which PostgreSQL converts to the column's type or rejects.
 */
export function columnField(type: ColumnType, v: JsonValue | undefined): string {
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
export function isoTime(ms: number): string {
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

/** A record that cannot become a row for a reason found before PostgreSQL sees it. */
export class Unstorable extends Error {}

/** One column the sink writes: its name, its SQL type, and how a record fills it (a COPY field). */
export interface ColumnSpec {
  readonly name: string;
  readonly type: string;
  readonly field: (r: SluiceRecord) => string;
}

/** Where rows go, one `add` per row: its fields in column order, each already a COPY text field. */
export interface RowWriter {
  add(fields: readonly string[]): void;
}

/** The columns a sink's rows have, in COPY order, and how records become rows. */
export interface RowLayout {
  /** `id`, `key`, `payload`, `event_time`, then `version` (upsert_latest with version_field), then the mapped columns. */
  readonly columns: readonly ColumnSpec[];
  /** upsert_latest: the index in `columns` of the column holding one row per value; -1 in insert mode. */
  readonly keyIndex: number;
  /** upsert_latest: the index of the column that decides which record is newer (`version` or `event_time`); -1 in insert mode. */
  readonly versionIndex: number;
  /**
   * Adds a row per record to `rows`, in order. A record that cannot be a row ({@link Unstorable},
   * or a payload or value that cannot be written) adds none and goes to `unstorable` with the
   * reason. Returns the index in `records` of each row added.
   */
  encode(records: readonly SluiceRecord[], rows: RowWriter, unstorable: (index: number, err: Error) => void): number[];
}

/** What {@link rowLayout} needs of the sink's settings. */
export interface RowSettings {
  readonly mode: PostgresWriteMode;
  readonly columns: Readonly<Record<string, ColumnMapping>>;
  readonly versionField?: string | undefined;
  readonly keyColumn?: string | undefined;
}

/** The payload's place among the columns: its fields are made for all records at once ({@link payloadFields}). */
const PAYLOAD_COLUMN = 2;

/** The row layout of a sink with these settings. */
export function rowLayout(settings: RowSettings): RowLayout {
  const upsert = settings.mode === "upsert_latest";
  const keyColumn = upsert ? (settings.keyColumn ?? "key") : undefined;
  const versionField = upsert ? settings.versionField : undefined;
  const columns: ColumnSpec[] = [
    { name: "id", type: "text", field: (r) => copyText(r.id) },
    { name: "key", type: "text", field: (r) => (r.key === undefined ? NULL_FIELD : copyText(r.key)) },
    { name: "payload", type: "jsonb", field: payloadField },
    { name: "event_time", type: "timestamptz", field: (r) => (r.eventTime === undefined ? NULL_FIELD : isoTime(r.eventTime)) },
  ];
  if (versionField !== undefined) {
    const get = fieldGetter(versionField);
    columns.push({ name: VERSION_COLUMN, type: "numeric", field: (r) => columnField("numeric", get(r.payload)) });
  }
  for (const c of compileColumns(settings.columns)) columns.push({ name: c.name, type: c.type, field: (r) => columnField(c.type, c.read(r)) });
  const indexOf = (name: string | undefined) => columns.findIndex((c) => c.name === name);
  const keyIndex = upsert ? indexOf(keyColumn) : -1;
  const versionIndex = upsert ? indexOf(versionField !== undefined ? VERSION_COLUMN : "event_time") : -1;

  /** One record's fields into `fields`; throws when it cannot be a row. */
  function fill(r: SluiceRecord, payload: string | Error, fields: string[]): void {
    if (upsert) {
      if (keyColumn === "key" && r.key === undefined) throw new Unstorable("it has no key; upsert_latest keeps one row per key: set key_field on the source");
      if (versionField === undefined && r.eventTime === undefined)
        throw new Unstorable("it has no event time; upsert_latest compares event times: set time_field on the source, or version_field on the sink");
    }
    for (let i = 0; i < columns.length; i++) {
      let f: string;
      if (i === PAYLOAD_COLUMN) {
        if (payload instanceof Error) throw payload;
        f = payload;
      } else {
        f = columns[i]!.field(r);
      }
      if (f === NULL_FIELD && (i === keyIndex || i === versionIndex)) {
        throw new Unstorable(`its ${columns[i]!.name} column (upsert_latest ${i === keyIndex ? "key_column" : "version"}) would be null: payload field missing`);
      }
      fields[i] = f;
    }
  }

  function encode(records: readonly SluiceRecord[], rows: RowWriter, unstorable: (index: number, err: Error) => void): number[] {
    const payloads: (string | Error)[] = new Array<string | Error>(records.length);
    payloadFields(records, payloads);
    const fields: string[] = new Array<string>(columns.length);
    const added: number[] = [];
    for (let i = 0; i < records.length; i++) {
      try {
        fill(records[i]!, payloads[i]!, fields);
      } catch (err) {
        unstorable(i, err instanceof Error ? err : new Error(String(err)));
        continue;
      }
      rows.add(fields);
      added.push(i);
    }
    return added;
  }
  return { columns, keyIndex, versionIndex, encode };
}
