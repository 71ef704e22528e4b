import { describe, expect, it } from "vitest";
import { CopyRows } from "../../../../src/sinks/postgres/protocol.js";

/** The rows of a CopyData message (after its 5-byte header, before CopyDone), as text lines. */
function linesOf(message: Buffer): string[] {
  expect(message[0]).toBe(0x64);
  expect(message.readUInt32BE(1)).toBe(message.length - 1 - 5);
  expect([...message.subarray(message.length - 5)]).toEqual([0x63, 0, 0, 0, 4]);
  return message.toString("utf8", 5, message.length - 5).split("\n").slice(0, -1);
}

describe("CopyRows", () => {
  const rows = new CopyRows(1);
  const texts: string[] = [];
  for (let i = 0; i < 1001; i++) {
    const fields = [`id-${i}`, i % 3 === 0 ? "\\N" : "é🚀", `{"n":${i},"s":"${"x".repeat(i % 40)}"}`];
    rows.add(fields);
    texts.push(fields.join("\t"));
  }

  it("frames every row added, growing its buffer as it goes", () => {
    expect(rows.length).toBe(1001);
    expect(linesOf(rows.message())).toEqual(texts);
  });

  it("staged: each row of a range with its index and a tab in front, across every change in the index's digits", () => {
    for (const [lo, hi] of [
      [0, 1],
      [0, 12],
      [95, 105],
      [990, 1001],
      [0, 1001],
      [7, 7],
    ] as const) {
      expect(linesOf(rows.staged(lo, hi))).toEqual(texts.slice(lo, hi).map((t, k) => `${lo + k}\t${t}`));
    }
  });
});
