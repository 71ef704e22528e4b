/**
 * `parseObjectRun`, the one parse of a run of NDJSON object lines that the file and http sources
 * share: it gives values only when each line is exactly one object, else undefined (parse line by line).
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { parseObjectRun } from "../../../src/core/envelope.js";

/** What parseObjectRun must answer: the reference with the regular expression it replaced. */
function reference(text: string, n: number): unknown[] | undefined {
  if (/\}[ \t\r]*,/.test(text)) return undefined;
  try {
    const values = JSON.parse(`[${text.replaceAll("\n", ",")}]`) as unknown[];
    return values.length === n ? values : undefined;
  } catch {
    return undefined;
  }
}

describe("parseObjectRun", () => {
  it("refuses a line with a top-level comma after an object, however spaced, and takes commas elsewhere", () => {
    expect(parseObjectRun('{"a":1}\n{"b":2}', 2)).toEqual([{ a: 1 }, { b: 2 }]);
    expect(parseObjectRun('{"a":[{"x":1}\n{"p":1},{"q":2}]}', 2)).toBeUndefined();
    expect(parseObjectRun('{"a":{"b":{}},"c":1}', 1)).toBeUndefined();
    expect(parseObjectRun('{"a":{}}}, \t\r,', 1)).toBeUndefined();
    expect(parseObjectRun('{"a":1, "b":[1,2]}', 1)).toEqual([{ a: 1, b: [1, 2] }]);
  });

  it("answers as the regular expression check did, on runs of random lines", () => {
    const piece = fc.constantFrom("{", "}", ",", " ", "\t", "\r", '"a":', "1", "[", "]", '"}",', "}}", "},");
    const line = fc.oneof(fc.array(piece, { maxLength: 10 }).map((p) => `{${p.join("")}}`), fc.jsonValue({ maxDepth: 2 }).map((v) => JSON.stringify({ v })));
    fc.assert(
      fc.property(fc.array(line, { minLength: 1, maxLength: 6 }), (lines) => {
        expect(parseObjectRun(lines.join("\n"), lines.length)).toEqual(reference(lines.join("\n"), lines.length));
      }),
      { numRuns: 5000 },
    );
  });
});
