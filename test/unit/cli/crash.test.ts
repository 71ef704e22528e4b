/**
 * `reportEarlyExit`: the CLI's report of a process that ends while a run is pending. The `exit`
 * path (a transform's `process.exit(0)`) needs a real process: test/integration/cli-transforms.test.ts.
 * Here the `beforeExit` path: the event loop emptied while `run()` waited for a promise that
 * nothing will settle (Node would exit with code 13 and print nothing).
 */
import { afterEach, expect, it } from "vitest";
import { reportEarlyExit } from "../../../src/cli/crash.js";

let stop: (() => void) | undefined;

afterEach(() => {
  stop?.();
  stop = undefined;
});

it("reports once, with why, when the loop empties during the run; nothing after the run ended", () => {
  const reasons: string[] = [];
  stop = reportEarlyExit((reason) => reasons.push(reason));
  process.emit("beforeExit", 0);
  process.emit("beforeExit", 0);
  expect(reasons).toEqual(["nothing was left to wait for while records were in flight (a promise that never settles, with no timer or I/O behind it)"]);

  stop();
  const after: string[] = [];
  const stopAfter = reportEarlyExit((reason) => after.push(reason));
  stopAfter();
  process.emit("beforeExit", 0);
  expect(after).toEqual([]);
  expect(process.listeners("exit").some((l) => l.name === "onExit")).toBe(false);
});
