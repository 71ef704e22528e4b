/** The rate limit on repeated failure logs, on a fake clock: what passes, what is counted, when the count is said. */
import { describe, expect, it } from "vitest";
import type { ErrorLogFields } from "../../../src/core/events.js";
import { RateLimitedLogger } from "../../../src/observability/rate-limited-logger.js";
import { FakeClock } from "../../helpers/fake-clock.js";

interface Line {
  readonly level: string;
  readonly fields: Record<string, unknown>;
  readonly msg: string | undefined;
}

function recording(): { lines: Line[]; logger: RateLimitedLogger; clock: FakeClock } {
  const lines: Line[] = [];
  const at = (level: string) => (fields: object, msg?: string) => lines.push({ level, fields: fields as Record<string, unknown>, msg });
  const clock = new FakeClock();
  const logger = new RateLimitedLogger({ debug: at("debug"), info: at("info"), warn: at("warn"), error: at("error") }, clock, { max: 3, intervalMs: 10_000 });
  return { lines, logger, clock };
}

const failure = (n: number, code = "ERR_SINK_WRITE", component = "db"): ErrorLogFields => ({ component, code, first_record_id: `r-${n}`, err: `boom ${n}` });

describe("RateLimitedLogger", () => {
  it("passes max lines of a component and code per window, then counts them and says how many when the window ends", () => {
    const { lines, logger, clock } = recording();
    for (let i = 1; i <= 10; i++) {
      logger.error(failure(i), "records dead-lettered");
      clock.advance(100);
    }
    expect(lines.map((l) => l.fields.first_record_id)).toEqual(["r-1", "r-2", "r-3"]);
    clock.advance(10_000 - 1000 - 1);
    expect(lines).toHaveLength(3); // the window (opened at 0) has not ended yet
    clock.advance(1);
    expect(lines).toHaveLength(4);
    const report = lines[3]!;
    expect(report.level).toBe("error");
    expect(report.fields).toMatchObject({ component: "db", code: "ERR_SINK_WRITE", suppressed: 7, window_s: 10, first_record_id: "r-10" });
    expect(report.msg).toBe("7 more like this suppressed in 10 s: records dead-lettered");
    expect(clock.pendingTimers).toBe(0);

    // A new window: max lines pass again.
    for (let i = 11; i <= 14; i++) logger.error(failure(i), "records dead-lettered");
    expect(lines.slice(4).map((l) => l.fields.first_record_id)).toEqual(["r-11", "r-12", "r-13"]);
  });

  it("keeps a window per component and code (and level); lines without a code pass", () => {
    const { lines, logger } = recording();
    for (let i = 0; i < 5; i++) {
      logger.error(failure(i, "ERR_SINK_WRITE", "db"), "a");
      logger.error(failure(i, "ERR_SINK_REJECTED", "db"), "b");
      logger.error(failure(i, "ERR_SINK_WRITE", "files"), "c");
      logger.warn(failure(i, "ERR_SINK_WRITE", "db"), "d");
      logger.warn({ path: "/x" }, "e");
      logger.info({ component: "db", code: "ERR_SINK_WRITE" }, "f");
    }
    const count = (msg: string) => lines.filter((l) => l.msg === msg).length;
    expect([count("a"), count("b"), count("c"), count("d"), count("e"), count("f")]).toEqual([3, 3, 3, 3, 5, 5]);
  });

  it("sets no timer while nothing is suppressed, and flush says the counts at once", () => {
    const { lines, logger, clock } = recording();
    for (let i = 0; i < 3; i++) logger.warn(failure(i), "write failed; retrying");
    expect(clock.pendingTimers).toBe(0);
    logger.warn(failure(3), "write failed; retrying");
    logger.warn(failure(4), "write failed; retrying");
    expect(clock.pendingTimers).toBe(1);
    logger.flush();
    expect(clock.pendingTimers).toBe(0);
    expect(lines.at(-1)).toMatchObject({ level: "warn", fields: { suppressed: 2, component: "db", code: "ERR_SINK_WRITE" } });
    logger.flush();
    clock.advance(60_000);
    expect(lines).toHaveLength(4);
  });

  it("after the window ended and its count was said, the next line opens a new window", () => {
    const { lines, logger, clock } = recording();
    for (let i = 0; i < 4; i++) logger.error(failure(i), "x");
    clock.advance(10_000); // the timer fires at the window's end
    expect(lines.at(-1)!.fields.suppressed).toBe(1);
    logger.error(failure(9), "x");
    expect(lines.at(-1)!.fields).toEqual(failure(9));
  });
});
