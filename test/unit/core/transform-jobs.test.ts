/**
 * What a transform worker thread does with a job, run in this thread: decoding, envelopes, the
 * leaves of filtered, failed and (nested) split records, records skipped after a worker died on
 * them, isolate mode's reports, a job that wants no payloads back; the one-string output cut back
 * into each record's text, and a record whose payload was not sent back.
 */
import { describe, expect, it } from "vitest";
import type { Transform } from "../../../src/components/contracts.js";
import { systemClock } from "../../../src/core/clock.js";
import { LineRun, PayloadArray, RecordEntry, withPayloads, type JsonObject } from "../../../src/core/record.js";
import type { ChainStep } from "../../../src/core/transform-chain.js";
import { JobRunner, LEAF, type TransformJob } from "../../../src/core/transform-jobs.js";

const step = (stage: string, apply: Transform["apply"], maxSplit?: number): ChainStep => ({ stage, transform: { apply, takesRecord: false }, maxSplit });

function job(lines: readonly object[] | string, extra: Partial<TransformJob> = {}): TransformJob {
  const text = typeof lines === "string" ? lines : lines.map((l) => JSON.stringify(l)).join("\n");
  return { job: 1, source: "s", receivedAt: 0, lines: text, count: text === "" ? 0 : text.split("\n").length, ...extra };
}

describe("PayloadArray", () => {
  it("cuts each element's text out of the array, past strings with commas, brackets and escapes", () => {
    const values: JsonObject[] = [{ a: "x,y}]", b: [1, { c: "\"]," }] }, {}, { d: "\\" }, { e: "é\n" }];
    const array = new PayloadArray(JSON.stringify(values), values.length);
    expect(values.map((_, i) => array.text(i))).toEqual(values.map((v) => JSON.stringify(v)));
    expect(array.payload(3)).toEqual({ e: "é\n" });
  });
});

describe("LineRun", () => {
  it("gives each line's bytes, position and text, and a range of lines as one string", () => {
    // Byte offsets differ from the text's: "é" is two bytes.
    const run = new LineRun('{"a":"é"}\n{"b":1}\n{"c":2}', [100, 111, 119], 126, "t:", 7, "f.ndjson");
    expect([0, 1, 2].map((i) => run.bytes(i))).toEqual([10, 7, 7]);
    expect([0, 1, 2].map((i) => run.position(i))).toEqual(["t:100", "t:111", "t:119"]);
    expect(run.lines(0, 3)).toBe(run.text);
    expect([run.lines(0, 1), run.lines(1, 3), run.lines(2, 3)]).toEqual(['{"a":"é"}', '{"b":1}\n{"c":2}', '{"c":2}']);
    expect(new LineRun("{}", [5], 7, "", 1, "f").position(0)).toBe(5);
    const r = new RecordEntry("", undefined, undefined, undefined, "s", run.bytes(1));
    r.holdLine(run, 1);
    expect([r.text, r.payload]).toEqual(['{"b":1}', { b: 1 }]);
  });
});

describe("a record whose payload the workers did not send back", () => {
  it("reads as an empty payload without text, and is left out of what a tap reader is shown", () => {
    const kept = new RecordEntry("a", undefined, { n: 1 }, undefined, "s", 7);
    const withheld = new RecordEntry("b", "k", undefined, undefined, "s", 7);
    withheld.text = '{"n":2}';
    withheld.withhold();
    expect([withheld.payload, withheld.text, withheld.id, withheld.key]).toEqual([{}, undefined, "b", "k"]);
    const records = [kept, withheld];
    expect(withPayloads(records)).toEqual([kept]);
    // None withheld: the same array, no copy.
    const all = [kept];
    expect(withPayloads(all)).toBe(all);
  });
});

describe("JobRunner", () => {
  it("decodes lines, reads their envelope, and reports each record's leaves in order", async () => {
    const runner = new JobRunner(
      [
        step("transform:a", (p) => (p.n === 1 ? null : p.n === 2 ? [{ ...p, part: 0 }, { ...p, part: 1 }] : p.n === 3 ? Promise.reject(new Error("no")) : { ...p, seen: 1 })),
        step("transform:b", (p) => (p.part === 1 ? [{ q: 0 }, { q: 1 }] : p)),
      ],
      { s: { idField: "id", keyField: "k", timeField: "t" } },
      systemClock,
      () => {},
    );
    const result = await runner.run(job([{ id: "a", n: 0, k: "x", t: 5 }, { n: 1 }, { id: "c", n: 2 }, { id: "d", n: 3 }], { positions: { offsets: Float64Array.of(0, 10, 20, 30), prefixes: [[4, ""]] } }));
    expect([...result.inputs]).toEqual([0, 1, 2, 2, 2, 3]);
    expect([...result.kinds]).toEqual([LEAF.ok, LEAF.filtered, LEAF.ok, LEAF.ok, LEAF.ok, LEAF.failed]);
    expect(result.suffixes).toEqual(["", "", "#0", "#1#0", "#1#1", ""]);
    expect(JSON.parse(result.out!)).toEqual([{ id: "a", n: 0, k: "x", t: 5, seen: 1 }, { id: "c", n: 2, part: 0 }, { q: 0 }, { q: 1 }]);
    expect(result.errors).toEqual([["transform:a", "ERR_TRANSFORM_FAILED", "no", undefined, undefined]]);
    expect(result.ids).toEqual(["a", null, "c", "d"]);
    expect(result.keys).toEqual(["x", null, null, null]);
    expect(result.times).toEqual([5, null, null, null]);
  });

  it("shows a record without an id the fallback id of its position: its run's prefix and its offset", async () => {
    const seen: string[] = [];
    const runner = new JobRunner([{ stage: "transform:a", transform: { apply: (p, r) => (seen.push(r!.id), p), takesRecord: true } }], {}, systemClock, () => {});
    const positions = { offsets: Float64Array.of(0, 8, NaN, 0, 9), prefixes: [[2, "g1:"], [1, ""], [2, "g2:"]] as [number, string][] };
    await runner.run(job([{ n: 0 }, { id: "b" }, { n: 2 }, { n: 3 }, { id: 7 }], { ids: [null, null, "k2", null, null], keys: [null, null, null, null, null], times: [null, null, null, null, null], positions }));
    expect(seen).toEqual(["s:g1:0", "b", "k2", "s:g2:0", "7"]);
  });

  it("reports malformed lines in their place, and keeps a known envelope", async () => {
    const runner = new JobRunner([step("transform:a", (p) => p)], {}, systemClock, () => {});
    const result = await runner.run(job('{"x":1}\nnope\n[1]\n{"y":2}', { ids: ["i0", null, null, "i3"], keys: [null, null, null, "k"], times: [null, null, null, null], positions: { offsets: Float64Array.of(NaN, 8, 13, NaN), prefixes: [[4, ""]] } }));
    expect([...result.kinds]).toEqual([LEAF.ok, LEAF.malformed, LEAF.malformed, LEAF.ok]);
    expect(result.errors.map((e) => [e[0], e[1]])).toEqual([
      ["source:s", "ERR_RECORD_MALFORMED"],
      ["source:s", "ERR_RECORD_MALFORMED"],
    ]);
    expect(result.errors[1]![2]).toBe("line is not a JSON object");
  });

  it("skips the records a worker died on, and in isolate mode reports each record and step before it runs", async () => {
    const reports: [number, number, number][] = [];
    const runner = new JobRunner([step("transform:a", (p) => p), step("transform:b", (p) => p)], {}, systemClock, (j, i, s) => reports.push([j, i, s]));
    const result = await runner.run(job([{ n: 0 }, { n: 1 }, { n: 2 }], { isolate: true, skip: [[1, "transform:b", "ERR_TRANSFORM_FAILED", "died"]] }));
    expect([...result.kinds]).toEqual([LEAF.ok, LEAF.failed, LEAF.ok]);
    expect(result.errors).toEqual([["transform:b", "ERR_TRANSFORM_FAILED", "died", undefined, undefined]]);
    expect(reports).toEqual([
      [1, 0, 0],
      [1, 0, 1],
      [1, 2, 0],
      [1, 2, 1],
    ]);
  });

  it("with payloads: false serializes nothing and still reports every leaf, envelope and error", async () => {
    const runner = new JobRunner(
      [step("transform:a", (p) => (p.n === 1 ? null : p.n === 2 ? [{ part: 0 }, { part: 1 }] : p.n === 3 ? Promise.reject(new Error("no")) : { ...p, seen: 1 }))],
      { s: { idField: "id", keyField: "k" } },
      systemClock,
      () => {},
    );
    const result = await runner.run(job([{ id: "a", n: 0, k: "x" }, { n: 1 }, { id: "c", n: 2 }, { id: "d", n: 3 }], { positions: { offsets: Float64Array.of(0, 10, 20, 30), prefixes: [[4, ""]] }, payloads: false }));
    expect(result.out).toBeUndefined();
    expect([...result.inputs]).toEqual([0, 1, 2, 2, 3]);
    expect([...result.kinds]).toEqual([LEAF.ok, LEAF.filtered, LEAF.ok, LEAF.ok, LEAF.failed]);
    expect(result.suffixes).toEqual(["", "", "#0", "#1", ""]);
    expect(result.errors).toEqual([["transform:a", "ERR_TRANSFORM_FAILED", "no", undefined, undefined]]);
    expect(result.ids).toEqual(["a", null, "c", "d"]);
    expect(result.keys).toEqual(["x", null, null, null]);
  });

  it("fails a result that is not JSON at the last stage, and keeps the others", async () => {
    const runner = new JobRunner([step("transform:a", (p) => (p.n === 1 ? { big: 1n as unknown as number } : p))], {}, systemClock, () => {});
    const result = await runner.run(job([{ n: 0 }, { n: 1 }, { n: 2 }]));
    expect([...result.kinds]).toEqual([LEAF.ok, LEAF.failed, LEAF.ok]);
    expect(JSON.parse(result.out!)).toEqual([{ n: 0 }, { n: 2 }]);
    expect(result.errors[0]!.slice(0, 2)).toEqual(["transform:a", "ERR_TRANSFORM_FAILED"]);
  });
});
