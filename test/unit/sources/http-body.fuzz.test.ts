/**
 * Fuzzing the http source's body handling (issue 11): thousands of random and mutated bodies
 * (random bytes, mutated JSON and NDJSON, deep nesting, huge numbers, prototype keys, invalid
 * UTF-8, gzip garbage) through `decode` -> `text` -> `parseBody` (the NDJSON splitter included),
 * then a smaller number through the real HTTP server. Never a crash (only an `HttpError` of a
 * documented status), never a hang (each body parsed within a time bound), every answer one of
 * the documented codes, and Object.prototype never touched.
 */
import { gzipSync } from "node:zlib";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { decode, HttpError, parseBody, text, type BodyEncoding, type BodyFormat } from "../../../src/sources/http-body.js";
import { send, startHttpPipeline, type HttpPipeline } from "../../helpers/http-pipeline.js";

const MAX_BODY = 64 * 1024;
const MAX_DEPTH = 32;
const MAX_RECORDS = 100;
/** The statuses the README documents for POST /v1/events. */
const DOCUMENTED = new Set([202, 400, 401, 413, 415, 422, 429, 503]);
/** A body of at most 64 KiB parsed in longer than this is taken as a hang (super-linear time). */
const SLOW_MS = 1000;

const enc = (s: string) => Buffer.from(s, "utf8");

/** Valid JSON records, with the awkward values mixed in. */
const record = fc.dictionary(
  fc.oneof(fc.string({ maxLength: 8 }), fc.constantFrom("id", "__proto__", "constructor", "prototype", "\\u005f_proto__")),
  fc.oneof(fc.jsonValue({ maxDepth: 4 }), fc.constantFrom(1e308, -0, Number.MAX_SAFE_INTEGER + 2, "\ud800", "\u2028")),
  { maxKeys: 6 },
);

/** Bodies that are JSON or NDJSON text to begin with. */
const wellFormed = fc.oneof(
  record.map((r) => enc(JSON.stringify(r))),
  fc.array(record, { maxLength: 20 }).map((rs) => enc(JSON.stringify(rs))),
  fc.tuple(fc.array(record, { maxLength: 20 }), fc.constantFrom("\n", "\r\n", "\n\n", "\n \t\n")).map(([rs, sep]) => enc(rs.map((r) => JSON.stringify(r)).join(sep))),
);

/** Nesting around the depth limit and far past it, of objects, arrays or both. */
const deep = fc.tuple(fc.integer({ min: 1, max: 20_000 }), fc.constantFrom("[", '{"a":', '[{"a":'), fc.boolean()).map(([n, open, closed]) => {
  const close = open === "[" ? "]" : open === '{"a":' ? "}" : "}]";
  return enc(`${open.repeat(n)}1${closed ? close.repeat(n) : ""}`);
});

/** Numbers JSON.parse takes but no double holds, and long digit runs. */
const hugeNumbers = fc.constantFrom("1e999999", "-1e-999999", "9".repeat(5000), `0.${"1".repeat(5000)}`, "1E+400").map((n) => enc(`{"n":${n}}\n[${n}]\n{"id":${n}}`));

/** Bytes that are not UTF-8, spliced into a valid body. */
const badUtf8 = fc.tuple(wellFormed, fc.nat(), fc.constantFrom([0xff], [0xc0, 0xaf], [0xed, 0xa0, 0x80], [0xf8, 0x88, 0x80, 0x80, 0x80], [0xe2, 0x82], [0xef, 0xbb, 0xbf])).map(([b, at, bad]) => {
  const i = b.length === 0 ? 0 : at % b.length;
  return Buffer.concat([b.subarray(0, i), Buffer.from(bad), b.subarray(i)]);
});

/** A body with bytes replaced, inserted or deleted at random places. */
const mutated = fc.tuple(wellFormed, fc.array(fc.tuple(fc.constantFrom("set", "insert", "delete"), fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 8 })).map(([b, edits]) => {
  let out = Buffer.from(b);
  for (const [op, at, byte] of edits) {
    const i = out.length === 0 ? 0 : at % out.length;
    if (op === "set" && out.length > 0) out[i] = byte;
    else if (op === "insert") out = Buffer.concat([out.subarray(0, i), Buffer.from([byte]), out.subarray(i)]);
    else out = Buffer.concat([out.subarray(0, i), out.subarray(i + 1)]);
  }
  return out;
});

const anyBody = fc.oneof(fc.uint8Array({ maxLength: 4096 }).map((a) => Buffer.from(a)), wellFormed, deep, hugeNumbers, badUtf8, mutated);

/** A body and how it is sent: plain, gzip of it, or gzip garbage (cut short, flipped bits, random bytes). */
const sent = fc.tuple(anyBody, fc.constantFrom("identity", "gzip", "gzip-cut", "gzip-flipped", "gzip-random"), fc.nat()).map(([body, how, at]): { raw: Buffer; encoding: BodyEncoding } => {
  if (how === "identity") return { raw: body, encoding: "identity" };
  if (how === "gzip-random") return { raw: body, encoding: "gzip" };
  const gz = gzipSync(body);
  if (how === "gzip-cut") return { raw: gz.subarray(0, at % gz.length), encoding: "gzip" };
  if (how === "gzip-flipped") {
    const flipped = Buffer.from(gz);
    flipped[at % flipped.length]! ^= 1 << at % 8;
    return { raw: flipped, encoding: "gzip" };
  }
  return { raw: gz, encoding: "gzip" };
});

/** decode -> text -> parseBody, as the source runs them: the records, or the HttpError's status. */
async function outcome(raw: Buffer, encoding: BodyEncoding, format: BodyFormat): Promise<number> {
  try {
    const parsed = parseBody(text(await decode(raw, encoding, MAX_BODY)), format, MAX_DEPTH, MAX_RECORDS);
    expect(parsed.records.length).toBeLessThanOrEqual(MAX_RECORDS);
    expect(parsed.bytes).toHaveLength(parsed.records.length);
    expect(parsed.texts).toHaveLength(parsed.records.length);
    for (const r of parsed.records) {
      expect(typeof r === "object" && r !== null && !Array.isArray(r)).toBe(true);
      expect(Object.getPrototypeOf(r)).toBe(Object.prototype);
      expect(Object.prototype.hasOwnProperty.call(r, "__proto__")).toBe(false);
    }
    return 202;
  } catch (err) {
    if (!(err instanceof HttpError)) throw new Error(`not an HttpError: ${String(err)}`, { cause: err });
    return err.status;
  }
}

describe("http body parsing, fuzzed", () => {
  it("thousands of random and mutated bodies, JSON and NDJSON, plain and gzip: records, or an HttpError of 400 or 413; never slow", async () => {
    await fc.assert(
      fc.asyncProperty(sent, fc.constantFrom<BodyFormat>("json", "ndjson"), async ({ raw, encoding }, format) => {
        const started = performance.now();
        const status = await outcome(raw, encoding, format);
        expect(performance.now() - started).toBeLessThan(SLOW_MS);
        expect([202, 400, 413]).toContain(status);
      }),
      { numRuns: 5000 },
    );
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    expect(Object.keys(Object.prototype)).toEqual([]);
  });

  it("NDJSON: one parse of a run of lines answers as a parse of each line would (records, texts, the first bad line)", () => {
    const plain = fc.dictionary(fc.string({ maxLength: 6 }), fc.jsonValue({ maxDepth: 3 }), { maxKeys: 4 });
    const line = fc.oneof(
      // Without prototype keys at any depth, which are refused by design (a line that is valid JSON).
      { weight: 6, arbitrary: plain.map((r) => JSON.stringify(r)).filter((t) => !t.includes("__proto__") && !t.includes("constructor")) },
      fc.constantFrom('{"a":}', '{"a":1}{"b":2}', '{"a":1},{"b":2}', '{"a":1} ,{"b":2}', "[1]", "1", '"x"', "{", "}", ' {"a":1}', '{"a":1} ', "", " \t", '{"s":"},"}', "{}"),
    );
    const body = fc.tuple(fc.array(line, { minLength: 1, maxLength: 12 }), fc.constantFrom("\n", "\r\n")).map(([lines, sep]) => lines.join(sep));
    fc.assert(
      fc.property(body, (s) => {
        let expected: { records: unknown[]; texts: string[] } | { line: number };
        const records: unknown[] = [];
        const texts: string[] = [];
        expected = { records, texts };
        const lines = s.split("\n");
        for (let i = 0; i < lines.length; i++) {
          const t = lines[i]!.endsWith("\r") ? lines[i]!.slice(0, -1) : lines[i]!;
          if (t.trim() === "") continue;
          let v: unknown;
          try {
            v = JSON.parse(t);
          } catch {
            expected = { line: i + 1 };
            break;
          }
          if (typeof v !== "object" || v === null || Array.isArray(v)) {
            expected = { line: i + 1 };
            break;
          }
          records.push(v);
          texts.push(t);
        }
        if (lines.every((l) => l.trim() === "")) return;
        let got: { records: unknown[]; texts: string[] } | { line: number };
        try {
          const parsed = parseBody(s, "ndjson", MAX_DEPTH, MAX_RECORDS);
          got = { records: parsed.records, texts: parsed.texts as string[] };
          // A plain body goes to the durable log as its bytes: it must be exactly the records' lines.
          if (parsed.plain) {
            expect([parsed.texts.join("\n"), `${parsed.texts.join("\n")}\n`]).toContain(s);
            for (const t of parsed.texts) expect(t!.startsWith("{") && t!.endsWith("}")).toBe(true);
          }
        } catch (err) {
          if (!(err instanceof HttpError) || err.status !== 400) throw err;
          got = { line: err.fields.line as number };
        }
        expect(got).toEqual(expected);
      }),
      { numRuns: 3000 },
    );
  });

  it("bodies at and past the limits: 100k-deep nesting, a body of max_body, a gzip bomb", async () => {
    expect(await outcome(enc("[".repeat(100_000)), "identity", "json")).toBe(400);
    expect(await outcome(enc(`${'{"a":'.repeat(100_000)}1${"}".repeat(100_000)}`), "identity", "ndjson")).toBe(400);
    expect(await outcome(enc(`{"a":"${"x".repeat(MAX_BODY - 8)}"}`), "identity", "json")).toBe(202);
    expect(await outcome(gzipSync(Buffer.alloc(16 * MAX_BODY, 0x20)), "gzip", "json")).toBe(413);
    expect(await outcome(enc(Array.from({ length: MAX_RECORDS + 1 }, () => "{}").join("\n")), "identity", "ndjson")).toBe(413);
  });
});

describe("http body parsing, fuzzed through the server", () => {
  let p: HttpPipeline;
  beforeAll(async () => {
    p = await startHttpPipeline({ source: { max_body: MAX_BODY, max_depth: MAX_DEPTH, max_records: MAX_RECORDS } });
  });
  afterAll(async () => {
    await p?.close();
  });

  it("hundreds of random requests (body, Content-Type, Content-Encoding, Idempotency-Key): every answer a documented code, the server still serves", async () => {
    const contentType = fc.constantFrom("application/json", "application/x-ndjson", "application/jsonl", "text/plain", "application/json; charset=latin1", "");
    const encoding = fc.constantFrom(undefined, "gzip", "br", "identity");
    await fc.assert(
      fc.asyncProperty(sent, contentType, encoding, fc.option(fc.constantFrom("k1", "k2", "k3")), async ({ raw, encoding: e }, type, forced, key) => {
        const headers: Record<string, string> = { "content-type": type };
        const ce = forced ?? (e === "gzip" ? "gzip" : undefined);
        if (ce !== undefined) headers["content-encoding"] = ce;
        if (key !== null) headers["idempotency-key"] = key;
        const a = await send(`${p.base}/v1/events`, { method: "POST", headers, body: raw, signal: AbortSignal.timeout(10_000) });
        expect(DOCUMENTED, `${a.status} ${a.text}`).toContain(a.status);
        if (a.status !== 202) expect(a.body).toMatchObject({ error: expect.any(String) });
      }),
      { numRuns: 300 },
    );
    const ok = await send(`${p.base}/v1/events`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ id: "after-fuzz" }) });
    expect(ok.status).toBe(202);
    expect(p.rows().get("after-fuzz")).toEqual({ id: "after-fuzz" });
  });
});
