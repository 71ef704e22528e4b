import { describe, expect, it } from "vitest";
import { formatCount } from "../../../src/cli/format.js";

describe("formatCount", () => {
  it("writes what toLocaleString(en-US) writes for whole numbers, rounded", () => {
    for (const n of [0, 7, 999, 1000, 12_345, 999_999.6, 1_234_567, 12_345_678_901, -1234]) {
      expect(formatCount(n)).toBe(Math.round(n).toLocaleString("en-US"));
    }
  });
});
