/** The terminal form of a log line: one readable line per JSON entry. */
import { describe, expect, it } from "vitest";
import { prettyLine } from "../../../src/observability/logger.js";

describe("prettyLine", () => {
  it("turns a pino JSON line into time, level, message and key=value fields, clearing the progress line first", () => {
    const json = JSON.stringify({ level: 50, time: Date.UTC(2026, 11, 7, 19, 2, 11), pid: 1, hostname: "h", component: "db", code: "ERR_SINK_REJECTED", first_record_id: "gen-4", err: "bad row", records: 3, msg: "records dead-lettered" });
    expect(prettyLine(json)).toBe("\x1b[2K\r19:02:11 ERROR records dead-lettered component=db code=ERR_SINK_REJECTED first_record_id=gen-4 err=bad row records=3\n");
  });

  it("passes a line that is not JSON through", () => {
    expect(prettyLine("not json")).toBe("not json");
  });
});
