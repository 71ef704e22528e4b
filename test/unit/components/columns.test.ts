import { describe, expect, it } from "vitest";
import { z } from "zod";
import { checkReservedColumns, COLUMN_TYPES, ColumnValueError, columnsOption, compileColumns, convertColumnValue } from "../../../src/components/columns.js";
import type { JsonObject, SluiceRecord } from "../../../src/core/record.js";

function record(payload: JsonObject): SluiceRecord {
  return { id: "r1", key: undefined, payload, eventTime: undefined, receivedAt: 0, source: "s", attempts: 0 };
}

describe("columnsOption", () => {
  const schema = z.strictObject({ columns: columnsOption() }).superRefine((o, ctx) => checkReservedColumns(o.columns, new Set(["id", "payload"]), ctx));

  it("defaults to no columns and takes every type name", () => {
    expect(schema.parse({}).columns).toEqual({});
    const columns = Object.fromEntries(COLUMN_TYPES.map((type, i) => [`c${i}`, { field: "f", type }]));
    expect(schema.parse({ columns }).columns).toEqual(columns);
  });

  it("rejects unknown types and keys, and reserved names with their path", () => {
    expect(schema.safeParse({ columns: { a: { field: "f", type: "varchar" } } }).success).toBe(false);
    expect(schema.safeParse({ columns: { a: { field: "f", type: "text", extra: 1 } } }).success).toBe(false);
    expect(schema.safeParse({ columns: { a: { field: "", type: "text" } } }).success).toBe(false);
    const res = schema.safeParse({ columns: { payload: { field: "f", type: "text" }, ok: { field: "g", type: "text" } } });
    expect(res.success).toBe(false);
    expect(res.error!.issues).toHaveLength(1);
    expect(res.error!.issues[0]!.path).toEqual(["columns", "payload"]);
  });
});

describe("compileColumns", () => {
  it("reads dotted fields in the option's order, raw and converted", () => {
    const cols = compileColumns({ temp: { field: "m.t", type: "double precision" }, n: { field: "n", type: "bigint" }, missing: { field: "nope.x", type: "text" } });
    expect(cols.map((c) => [c.name, c.type, c.field])).toEqual([
      ["temp", "double precision", "m.t"],
      ["n", "bigint", "n"],
      ["missing", "text", "nope.x"],
    ]);
    const r = record({ m: { t: "21.5" }, n: 7 });
    expect(cols.map((c) => c.read(r))).toEqual(["21.5", 7, undefined]);
    expect(cols.map((c) => c.value(r))).toEqual([21.5, 7n, null]);
  });

  it("names the column in a conversion error", () => {
    const [c] = compileColumns({ qty: { field: "q", type: "integer" } });
    expect(() => c!.value(record({ q: "lots" }))).toThrow(ColumnValueError);
    expect(() => c!.value(record({ q: "lots" }))).toThrow('column qty: "lots" is not a valid integer');
  });
});

describe("convertColumnValue", () => {
  const ok: [Parameters<typeof convertColumnValue>[0], unknown, unknown][] = [
    ["text", "a\tb", "a\tb"],
    ["text", 1.5, "1.5"],
    ["text", true, "true"],
    ["text", { a: [1] }, '{"a":[1]}'],
    ["jsonb", "x", '"x"'],
    ["jsonb", { a: null }, '{"a":null}'],
    ["integer", 42, 42],
    ["integer", " -7 ", -7],
    ["integer", 2147483647, 2147483647],
    ["bigint", 9007199254740991, 9007199254740991n],
    ["bigint", "9223372036854775807", 9223372036854775807n],
    ["double precision", 0.1, 0.1],
    ["double precision", "1e3", 1000],
    ["numeric", 12.5, "12.5"],
    ["numeric", " 123456789012345678901234.5 ", "123456789012345678901234.5"],
    ["boolean", false, false],
    ["boolean", "Yes", true],
    ["boolean", "off", false],
    ["boolean", 1, true],
    ["timestamptz", 1700000000123, 1700000000123],
    ["timestamptz", "2024-01-02T03:04:05.006Z", Date.UTC(2024, 0, 2, 3, 4, 5, 6)],
    ["uuid", "{A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11}", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"],
    ["uuid", "a0eebc999c0b4ef8bb6d6bb9bd380a11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"],
  ];
  it.each(ok)("%s takes %j (case %#)", (type, v, expected) => {
    expect(convertColumnValue(type, v as never)).toEqual(expected);
  });

  it.each(COLUMN_TYPES)("%s: null and missing are null", (type) => {
    expect(convertColumnValue(type, null)).toBeNull();
    expect(convertColumnValue(type, undefined)).toBeNull();
  });

  const bad: [Parameters<typeof convertColumnValue>[0], unknown][] = [
    ["integer", 1.5],
    ["integer", "1.0"],
    ["integer", 2147483648],
    ["integer", true],
    ["bigint", "9223372036854775808"],
    ["bigint", 1.5],
    ["double precision", "abc"],
    ["double precision", ""],
    ["numeric", "1,5"],
    ["numeric", [1]],
    ["boolean", "maybe"],
    ["boolean", 2],
    ["timestamptz", "yesterday-ish"],
    ["timestamptz", 9e15],
    ["uuid", "not-a-uuid"],
    ["uuid", 5],
  ];
  it.each(bad)("%s refuses %j", (type, v) => {
    expect(() => convertColumnValue(type, v as never, "c")).toThrow(ColumnValueError);
  });
});
