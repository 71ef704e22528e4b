/**
 * What a transform worker thread does with a job, run in this thread: decoding, envelopes, the
 * leaves of filtered, failed and (nested) split records, records skipped after a worker died on
 * them, isolate mode's reports, a job that wants no payloads back; the one-string output cut back
 * into each record's text, and a record whose payload was not sent back.
 */
import { describe, expect, it } from "vitest";
import type { Transform } from "../../../src/components/contracts.js";
import { systemClock } from "../../../src/core/clock.js";
import { PayloadArray, RecordEntry, withPayloads, type JsonObject } from "../../../src/core/record.js";
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
    const result = await runner.run(job([{ id: "a", n: 0, k: "x", t: 5 }, { n: 1 }, { id: "c", n: 2 }, { id: "d", n: 3 }], { positions: "0\n10\n20\n30" }));
    expect([...result.inputs]).toEqual([0, 1, 2, 2, 2, 3]);
    expect([...result.kinds]).toEqual([LEAF.ok, LEAF.filtered, LEAF.ok, LEAF.ok, LEAF.ok, LEAF.failed]);
    expect(result.suffixes).toEqual(["", "", "#0", "#1#0", "#1#1", ""]);
    expect(JSON.parse(result.out!)).toEqual([{ id: "a", n: 0, k: "x", t: 5, seen: 1 }, { id: "c", n: 2, part: 0 }, { q: 0 }, { q: 1 }]);
    expect(result.errors).toEqual([["transform:a", "ERR_TRANSFORM_FAILED", "no", undefined, undefined]]);
    expect(result.ids).toEqual(["a", null, "c", "d"]);
    expect(result.keys).toEqual(["x", null, null, null]);
    expect(result.times).toEqual([5, null, null, null]);
  });

  it("reports malformed lines in their place, and keeps a known envelope", async () => {
    const runner = new JobRunner([step("transform:a", (p) => p)], {}, systemClock, () => {});
    const result = await runner.run(job('{"x":1}\nnope\n[1]\n{"y":2}', { ids: ["i0", null, null, "i3"], keys: [null, null, null, "k"], times: [null, null, null, null], positions: "0\n8\n13\n17" }));
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
    const result = await runner.run(job([{ id: "a", n: 0, k: "x" }, { n: 1 }, { id: "c", n: 2 }, { id: "d", n: 3 }], { positions: "0\n10\n20\n30", payloads: false }));
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
