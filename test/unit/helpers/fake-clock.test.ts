import { describe, expect, it } from "vitest";
import { sleep } from "../../../src/core/clock.js";
import { FakeClock } from "../../helpers/fake-clock.js";

describe("FakeClock (test helper)", () => {
  it("fires due timers in due-time order, ties in setting order, with now() at each due time", () => {
    const clock = new FakeClock(1000);
    const fired: string[] = [];
    clock.setTimer(30, () => fired.push(`c@${clock.now()}`));
    clock.setTimer(10, () => fired.push(`a@${clock.now()}`));
    clock.setTimer(10, () => fired.push(`b@${clock.now()}`));
    clock.setTimer(31, () => fired.push("late"));
    clock.advance(30);
    expect(fired).toEqual(["a@1010", "b@1010", "c@1030"]);
    expect(clock.now()).toBe(1030);
    expect(clock.pendingTimers).toBe(1);
    expect(clock.nextTimerAt()).toBe(1031);
  });

  it("fires timers set by callbacks within the same step, and honours cancel", () => {
    const clock = new FakeClock(0);
    const fired: number[] = [];
    clock.setTimer(5, () => {
      fired.push(clock.now());
      clock.setTimer(5, () => fired.push(clock.now()));
    });
    const cancel = clock.setTimer(7, () => fired.push(-1));
    cancel();
    clock.advance(10);
    expect(fired).toEqual([5, 10]);
    expect(clock.pendingTimers).toBe(0);
  });

  it("fires a zero-delay timer on the next advance, never synchronously", () => {
    const clock = new FakeClock(0);
    let fired = false;
    clock.setTimer(0, () => (fired = true));
    expect(fired).toBe(false);
    clock.advance(0);
    expect(fired).toBe(true);
    expect(() => clock.advance(-1)).toThrow(RangeError);
  });

  it("drives an await-then-sleep loop through a whole step with advanceAsync", async () => {
    const clock = new FakeClock(0);
    const woke: number[] = [];
    const loop = (async () => {
      for (let i = 0; i < 3; i++) {
        await sleep(clock, 100);
        woke.push(clock.now());
      }
    })();
    await clock.advanceAsync(300);
    await loop;
    expect(woke).toEqual([100, 200, 300]);
  });
});
