/** COPY text encoding of the `postgres` sink, its framing and its statements, without a server. */
import { describe, expect, it } from "vitest";
import type { JsonObject, SluiceRecord } from "../../../../src/core/record.js";
import { columnField, copyJson, copyText, isoTime, NULL_FIELD, payloadField, payloadFields, rowLayout, Unstorable, type RowLayout } from "../../../../src/sinks/postgres/encoding.js";
import { CopyRows } from "../../../../src/sinks/postgres/protocol.js";
import { statements } from "../../../../src/sinks/postgres/statements.js";

describe("COPY text encoding", () => {
  it("escapes backslash, tab, newline and carriage return, and nothing else", () => {
    expect(copyText("plain ' \" ; -- ünï 🚀")).toBe("plain ' \" ; -- ünï 🚀");
    expect(copyText("a\\b\tc\nd\re\\N")).toBe("a\\\\b\\tc\\nd\\re\\\\N");
  });

  it("writes JSON with backslashes doubled and lone surrogates as U+FFFD, keeping escaped backslashes apart", () => {
    expect(copyJson({ a: "x\ty\n\"q\"" })).toBe('{"a":"x\\\\ty\\\\n\\\\"q\\\\""}');
    expect(copyJson({ s: "\ud800", pair: "🚀" })).toBe('{"s":"\\\\ufffd","pair":"🚀"}');
    // The 6 characters `\ud800` typed as text are JSON `\\ud800`: not a surrogate, kept.
    expect(copyJson({ s: "\\ud800" })).toBe('{"s":"\\\\\\\\ud800"}');
    expect(copyJson({ s: "\u0000" })).toBe('{"s":"\\\\u0000"}');
  });
});

function record(over: Partial<SluiceRecord> & { payload: JsonObject }): SluiceRecord {
  return { id: "r1", key: undefined, eventTime: undefined, receivedAt: 0, source: "s", attempts: 0, ...over };
}

describe("fields", () => {
  it("writes the payload from the source's text when it has one, else serialized", () => {
    expect(payloadField(record({ payload: { a: 1 }, text: '{"a": 1, "t": "x\\ty"}' }))).toBe('{"a": 1, "t": "x\\\\ty"}');
    expect(payloadField(record({ payload: { a: 1 } }))).toBe('{"a":1}');
    // Text with \u escapes or a huge exponent is serialized again (lone surrogates, Infinity).
    expect(payloadField(record({ payload: { s: "é" }, text: '{"s":"\\u00e9"}' }))).toBe('{"s":"é"}');
    expect(payloadField(record({ payload: { n: null }, text: '{"n":1e999}' }))).toBe('{"n":null}');
  });

  it("converts a column value by type: NULL, t/f, times from ms, JSON for objects", () => {
    expect(columnField("integer", undefined)).toBe(NULL_FIELD);
    expect(columnField("text", null)).toBe(NULL_FIELD);
    expect(columnField("boolean", true)).toBe("t");
    expect(columnField("text", true)).toBe("true");
    expect(columnField("timestamptz", 1_700_000_000_123)).toBe("2023-11-14T22:13:20.123Z");
    expect(columnField("timestamptz", "2024-01-01 10:00+02")).toBe("2024-01-01 10:00+02");
    expect(columnField("jsonb", "a\tb")).toBe('"a\\\\tb"');
    expect(columnField("text", { a: [1] })).toBe('{"a":[1]}');
    expect(columnField("numeric", 1.5)).toBe("1.5");
  });

  it("formats times as toISOString does, across seconds, with fractions and out of range", () => {
    for (const ms of [0, 5, 999, 1000, 1_700_000_000_001, 1_700_000_000_050, 1_700_000_001_000, -1, -1001, 1.5]) {
      expect(isoTime(ms)).toBe(new Date(ms).toISOString());
    }
    expect(() => isoTime(8.64e15 + 1)).toThrow(RangeError);
  });
});

/** The COPY lines (no newline) `layout` makes of `records`, and the errors of those it refused, by index. */
function encodeAll(layout: RowLayout, records: SluiceRecord[]): { lines: string[]; rows: number[]; refused: Map<number, Error> } {
  const rows = new CopyRows(1);
  const refused = new Map<number, Error>();
  const added = layout.encode(records, rows, (i, err) => refused.set(i, err));
  const message = rows.message();
  const lines = message.toString("utf8", 5, message.length - 5).split("\n").slice(0, -1);
  return { lines, rows: added, refused };
}

describe("payloadFields: payloads serialized together", () => {
  const fieldsOf = (records: SluiceRecord[]) => {
    const out: (string | Error)[] = [];
    payloadFields(records, out);
    return out;
  };

  it("cuts one serialization into each record's payload, as payloadField writes it, keeping the source's text where it is usable", () => {
    const payloads: JsonObject[] = [{}, { a: 1, nested: { b: [1, 2] } }, { s: "x\ty \"q\" \\", u: "\ud800🚀" }, { text: "kept" }, { n: 1.5, e: [] }];
    const records = payloads.map((payload, i) => record({ payload, ...(i === 3 ? { text: '{"text": "kept"}' } : {}) }));
    expect(fieldsOf(records)).toEqual(records.map(payloadField));
    expect(fieldsOf(records)[3]).toBe('{"text": "kept"}');
  });

  it("serializes one by one when a cut could fall inside a payload or a payload is not a plain object, with the same fields", () => {
    class Reading {
      constructor(readonly v: number) {}
    }
    const sets: unknown[][] = [
      // A `},{` inside a string and inside an array of objects: more cuts than boundaries.
      [{ a: "},{" }, { b: 1 }],
      [{ list: [{ x: 1 }, { y: 2 }] }, { c: 3 }],
      // JSON that is not an object (a toJSON returning a string, a boxed number, an array), each with as many
      // `},{` inside a payload as it takes away from the boundaries: the count alone would cut wrong.
      [{ a: [{}, {}, {}] }, { toJSON: () => "s" }, { b: 1 }],
      [{ a: [{}, {}, {}] }, new Number(1), { b: 1 }],
      [{ a: [{}, {}, {}] }, [1, 2], { b: 1 }],
      [new Reading(2), { b: 1 }],
      // A toJSON of its own as an accessor, and on an object without a prototype.
      [{ a: [{}, {}, {}] }, Object.defineProperty({}, "toJSON", { get: () => () => "s", enumerable: false }), { b: 1 }],
      [{ a: [{}, {}, {}] }, Object.assign(Object.create(null) as object, { toJSON: () => "s" }), { b: 1 }],
    ];
    for (const payloads of sets) {
      const records = payloads.map((payload) => record({ payload: payload as JsonObject }));
      expect(fieldsOf(records)).toEqual(records.map((r) => copyJson(r.payload)));
    }
  });

  it("serializes one by one when every object inherits a toJSON", () => {
    const proto = Object.prototype as { toJSON?: () => unknown };
    // An empty object's JSON becomes `1`, taking two boundaries away; the string puts two back.
    proto.toJSON = function (this: object) {
      return Array.isArray(this) || Object.keys(this).length > 0 ? this : 1;
    };
    try {
      const records = ([{ s: "},{},{" }, {}, { b: 2 }] as JsonObject[]).map((payload) => record({ payload }));
      expect(fieldsOf(records)).toEqual(records.map((r) => copyJson(r.payload)));
    } finally {
      delete proto.toJSON;
    }
  });

  it("gives an Error for a payload that cannot be serialized, and the others their fields", () => {
    const cycle: Record<string, unknown> = {};
    cycle["self"] = cycle;
    const out = fieldsOf([record({ payload: { a: 1 } }), record({ payload: { big: 1n } as never }), record({ payload: cycle as JsonObject }), record({ payload: { b: 2 } })]);
    expect(out[0]).toBe('{"a":1}');
    expect(out[1]).toBeInstanceOf(TypeError);
    expect(out[2]).toBeInstanceOf(TypeError);
    expect(out[3]).toBe('{"b":2}');
  });
});

describe("rowLayout", () => {
  it("insert: id, key, payload, event_time, then mapped columns, as one COPY line", () => {
    const layout = rowLayout({ mode: "insert", columns: { temp: { field: "m.t", type: "double precision" }, ok: { field: "ok", type: "boolean" } } });
    expect(layout.columns.map((c) => `${c.name} ${c.type}`)).toEqual(["id text", "key text", "payload jsonb", "event_time timestamptz", "temp double precision", "ok boolean"]);
    expect([layout.keyIndex, layout.versionIndex]).toEqual([-1, -1]);
    const { lines, rows } = encodeAll(layout, [record({ id: "a\tb", key: "k", eventTime: 0, payload: { m: { t: 21.5 }, ok: false } }), record({ payload: {} })]);
    expect(lines).toEqual(['a\\tb\tk\t{"m":{"t":21.5},"ok":false}\t1970-01-01T00:00:00.000Z\t21.5\tf', "r1\t\\N\t{}\t\\N\t\\N\t\\N"]);
    expect(rows).toEqual([0, 1]);
  });

  it("writes non-ASCII ids and keys, short and long, in UTF-8", () => {
    const { lines } = encodeAll(rowLayout({ mode: "insert", columns: {} }), [
      record({ id: "ü", key: "🚀k", payload: {} }),
      record({ id: `${"x".repeat(20)}é`, key: "é".repeat(30), payload: {} }),
    ]);
    expect(lines).toEqual(["ü\t🚀k\t{}\t\\N", `${"x".repeat(20)}é\t${"é".repeat(30)}\t{}\t\\N`]);
  });

  it("leaves out a record that cannot be a row, and says why; the others keep their rows", () => {
    const cycle: Record<string, unknown> = {};
    cycle["self"] = cycle;
    const { lines, rows, refused } = encodeAll(rowLayout({ mode: "insert", columns: {} }), [
      record({ id: "a", payload: { v: 1 } }),
      record({ id: "b", payload: cycle as JsonObject }),
      record({ id: "c", eventTime: 8.64e15 + 1, payload: { v: 3 } }),
      record({ id: "d", payload: { v: 4 } }),
    ]);
    expect(lines).toEqual(['a\t\\N\t{"v":1}\t\\N', 'd\t\\N\t{"v":4}\t\\N']);
    expect(rows).toEqual([0, 3]);
    expect([...refused.keys()]).toEqual([1, 2]);
    expect(refused.get(1)?.message).toMatch(/circular/);
    expect(refused.get(2)).toBeInstanceOf(RangeError);
  });

  it("upsert_latest: refuses records without the key or the version, naming why", () => {
    const refusal = (layout: RowLayout, r: SluiceRecord) => encodeAll(layout, [r]).refused.get(0);
    const byTime = rowLayout({ mode: "upsert_latest", columns: {} });
    expect([byTime.keyIndex, byTime.versionIndex]).toEqual([1, 3]);
    expect(refusal(byTime, record({ payload: {}, eventTime: 1 }))).toBeInstanceOf(Unstorable);
    expect(refusal(byTime, record({ payload: {}, key: "k" }))?.message).toMatch(/no event time/);
    const byVersion = rowLayout({ mode: "upsert_latest", columns: { device: { field: "d", type: "text" } }, versionField: "v", keyColumn: "device" });
    expect(byVersion.columns.map((c) => c.name)).toEqual(["id", "key", "payload", "event_time", "version", "device"]);
    expect([byVersion.keyIndex, byVersion.versionIndex]).toEqual([5, 4]);
    expect(encodeAll(byVersion, [record({ payload: { d: "x", v: 3 } })]).lines).toEqual(['r1\t\\N\t{"d":"x","v":3}\t\\N\t3\tx']);
    expect(refusal(byVersion, record({ payload: { v: 3 } }))?.message).toMatch(/device column \(upsert_latest key_column\) would be null/);
    expect(refusal(byVersion, record({ payload: { d: "x" } }))?.message).toMatch(/version column/);
  });
});

describe("CopyRows: the CopyData and CopyDone messages", () => {
  const rowsOf = (lines: string[], expected = 1) => {
    const rows = new CopyRows(expected);
    for (const line of lines) rows.add(line.split("\t"));
    return rows;
  };

  it("frames every row with its newline in place, in UTF-8, growing past its first guess", () => {
    const long = "x".repeat(1000);
    const rows = rowsOf(["a\tb", "ü🚀", long]);
    expect(rows.length).toBe(3);
    const message = rows.message();
    const body = Buffer.from(`a\tb\nü🚀\n${long}\n`, "utf8");
    expect(message[0]).toBe(0x64);
    expect(message.readUInt32BE(1)).toBe(4 + body.length);
    expect(message.subarray(5, 5 + body.length).equals(body)).toBe(true);
    expect([...message.subarray(5 + body.length)]).toEqual([0x63, 0, 0, 0, 4]);
    expect(message.length).toBe(5 + body.length + 5);
  });

  it("copies a range with each row's index in front, for the staging table", () => {
    const rows = rowsOf(["a\tb", "ü🚀", "c", "d"], 100);
    const staged = rows.staged(1, 3);
    const body = Buffer.from("1\tü🚀\n2\tc\n", "utf8");
    expect(staged[0]).toBe(0x64);
    expect(staged.readUInt32BE(1)).toBe(4 + body.length);
    expect(staged.subarray(5, 5 + body.length).equals(body)).toBe(true);
    expect([...staged.subarray(5 + body.length)]).toEqual([0x63, 0, 0, 0, 4]);
    expect(rows.staged(0, 1).toString("utf8", 5, 5 + 6)).toBe("0\ta\tb\n");
    expect(rows.staged(0, 4).toString("utf8", 5, rows.staged(0, 4).length - 5)).toBe("0\ta\tb\n1\tü🚀\n2\tc\n3\td\n");
    // Staging after the direct message: the rows are still there.
    rows.message();
    expect(rows.staged(3, 4).toString("utf8", 5, 9)).toBe("3\td\n");
  });
});

describe("statements", () => {
  it("insert: COPY into the table; staging keeps jsonb as text, casts only rows not stored, ON CONFLICT (id) DO NOTHING RETURNING id", () => {
    const sql = statements('"t"', rowLayout({ mode: "insert", columns: { "we\"ird": { field: "x", type: "integer" }, doc: { field: "d", type: "jsonb" } } }));
    expect(sql.directCopy).toBe('COPY "t" ("id", "key", "payload", "event_time", "we""ird", "doc") FROM STDIN');
    expect(sql.createTable).toBe(
      'CREATE TABLE IF NOT EXISTS "t" (id text PRIMARY KEY, key text, payload jsonb, event_time timestamptz, ingested_at timestamptz DEFAULT now(), "we""ird" integer, "doc" jsonb)',
    );
    expect(sql.createStage).toContain("(seq integer, s0 text, s1 text, s2 text, s3 timestamptz, s4 integer, s5 text)");
    expect(sql.apply(2, 5)).toBe(
      'INSERT INTO "t" ("id", "key", "payload", "event_time", "we""ird", "doc") SELECT s0, s1, s2::jsonb, s3, s4, s5::jsonb FROM pg_temp.sluice_stage' +
        ' WHERE seq >= 2 AND seq < 5 AND NOT EXISTS (SELECT 1 FROM "t" t WHERE t.id = pg_temp.sluice_stage.s0) ORDER BY seq ON CONFLICT (id) DO NOTHING RETURNING id',
    );
    expect(sql.apply()).toContain("FROM pg_temp.sluice_stage WHERE NOT EXISTS (SELECT 1");
  });

  it("upsert_latest: a unique key column and the newest per key by the version column", () => {
    const sql = statements('"t"', rowLayout({ mode: "upsert_latest", columns: {}, versionField: "v" }));
    expect(sql.createTable).toContain(', "version" numeric, UNIQUE ("key"))');
    // Staged as they are: upsert_latest compares staged columns.
    expect(sql.createStage).toContain("s2 jsonb");
    expect(sql.apply()).toContain("SELECT DISTINCT ON (s1) * FROM pg_temp.sluice_stage ORDER BY s1, s4 DESC, seq");
    expect(sql.apply()).toContain('ON CONFLICT ("key") DO UPDATE SET');
  });
});
