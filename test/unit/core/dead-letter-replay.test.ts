import { describe, expect, it } from "vitest";
import type { StoredDeadLetter } from "../../../src/components/contracts.js";
import { planReplay, ReplayPacer } from "../../../src/core/dead-letter-replay.js";
import { FakeClock } from "../../helpers/fake-clock.js";

function entry(seq: number, sink: string): StoredDeadLetter {
  return {
    seq,
    recordId: `r-${seq}`,
    source: "in",
    sink,
    code: "ERR_X",
    message: "m",
    attempts: 1,
    firstFailureAt: 0,
    lastFailureAt: 0,
    payload: "{}",
    raw: undefined,
    status: "pending",
    replayedAt: undefined,
    resolvedAt: undefined,
  };
}

describe("planReplay", () => {
  const entries = [entry(1, "db"), entry(2, "source:in"), entry(3, "gone"), entry(4, "transform:validate"), entry(5, "pg"), entry(6, "db")];

  it("sends a sink's entries to that sink without transforms, a stage's entries through them to every sink, and skips a sink the config lacks", () => {
    const plan = planReplay(entries, ["db", "pg"], undefined);
    expect(plan.groups.map((g) => [g.sinks, g.transforms, g.entries.map((e) => e.seq)])).toEqual([
      [["db"], false, [1, 6]],
      [["db", "pg"], true, [2, 4]],
      [["pg"], false, [5]],
    ]);
    expect(plan.skipped.map((s) => [s.entry.seq, s.reason])).toEqual([[3, "sink gone is not in the config (replay it elsewhere with --to <sink>)"]]);
  });

  it("sends every entry to --to, stages still through the transforms", () => {
    const plan = planReplay(entries, ["db", "pg"], "pg");
    expect(plan.groups.map((g) => [g.sinks, g.transforms, g.entries.map((e) => e.seq)])).toEqual([
      [["pg"], false, [1, 3, 5, 6]],
      [["pg"], true, [2, 4]],
    ]);
    expect(plan.skipped).toEqual([]);
  });
});

describe("ReplayPacer", () => {
  it("lets entry i go no sooner than i/rate seconds after the first, in chunks of a tenth of a second", async () => {
    const clock = new FakeClock(0);
    const pacer = new ReplayPacer(50, clock);
    expect(pacer.chunkSize).toBe(5);
    const signal = new AbortController().signal;
    const went: number[] = [];
    const taking = (async () => {
      for (let i = 0; i < 4; i++) {
        await pacer.take(5, signal);
        went.push(clock.now());
      }
    })();
    for (let t = 0; t < 400; t += 10) await clock.advanceAsync(10);
    await taking;
    expect(went).toEqual([0, 100, 200, 300]);
  });

  it("does not wait without a rate, and answers false once aborted", async () => {
    const pacer = new ReplayPacer(undefined, new FakeClock(0));
    expect(pacer.chunkSize).toBe(Number.POSITIVE_INFINITY);
    const stop = new AbortController();
    expect(await pacer.take(1000, stop.signal)).toBe(true);
    stop.abort();
    expect(await pacer.take(1, stop.signal)).toBe(false);
    const slow = new ReplayPacer(1, new FakeClock(0));
    await slow.take(1, new AbortController().signal);
    const waiting = new AbortController();
    const pending = slow.take(1, waiting.signal);
    waiting.abort();
    expect(await pending).toBe(false);
  });
});
