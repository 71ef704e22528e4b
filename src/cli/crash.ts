/**
 * What the `sluice` process does with an error nothing else caught: a timer in a transform module
 * that throws, a promise rejected with no handler, a bug. One line on stderr (code, message, where
 * it was thrown), the stack to the log at debug level, exit 1. Carrying on after an uncaught error
 * is unsafe (Node's own advice), and stopping at once loses nothing: records not yet acked stay at
 * their source or in the durable buffer and are redelivered by the next run.
 */
import { writeSync } from "node:fs";
import { relative } from "node:path";
import { fileURLToPath } from "node:url";
import { classify } from "../core/errors.js";
import type { Logger } from "../core/events.js";

let crashLog: Logger | undefined;
/** Set once {@link exitOnCrash} is ending the process, so the early-exit report does not blame user code. */
let crashing = false;

/** Where the stack of an uncaught error goes, at debug level: the running command's logger, or none. */
export function logCrashesTo(logger: Logger | undefined): void {
  crashLog = logger;
}

/**
 * The first frame of `err`'s stack outside Node's own code, as `path:line:column` (relative to
 * `cwd` when under it): where to look first.
 */
function thrownAt(err: unknown, cwd: string): string | undefined {
  const stack = err instanceof Error && typeof err.stack === "string" ? err.stack : "";
  for (const line of stack.split("\n")) {
    const m = /^\s+at (?:.*? \()?(.+?):(\d+):(\d+)\)?$/.exec(line);
    if (!m || m[1]!.startsWith("node:")) continue;
    let file = m[1]!;
    if (file.startsWith("file://")) file = fileURLToPath(file);
    const rel = relative(cwd, file);
    return `${rel.startsWith("..") ? file : rel}:${m[2]}:${m[3]}`;
  }
  return undefined;
}

/**
 * The one line printed for a crash: `sluice crashed: ERR_INTERNAL: boom (thrown at
 * transforms/late.mjs:3:28); observability.log_level: debug logs its stack`.
 */
export function crashLine(err: unknown, cwd: string = process.cwd()): string {
  const e = classify(err, "ERR_INTERNAL");
  const where = thrownAt(err, cwd);
  return `sluice crashed: ${e.code}: ${e.message}${where === undefined ? "" : ` (thrown at ${where})`}; observability.log_level: debug logs its stack`;
}

/**
 * Makes an uncaught exception or unhandled rejection (Node reports both here once a listener is
 * set) end the process with {@link crashLine} on stderr and `exitCode`. For the process entry only:
 * tests that run the CLI in-process keep their runner's own handling.
 */
export function exitOnCrash(exitCode: number): void {
  process.on("uncaughtException", (err, origin) => {
    // Synchronous, as the logger writes: process.exit does not wait for a pipe to drain.
    writeSync(2, `\n${crashLine(err)}\n`);
    crashLog?.debug({ origin, err: err instanceof Error ? (err.stack ?? err.message) : String(err) }, "uncaught error");
    crashing = true;
    process.exit(exitCode);
  });
}

/**
 * Calls `report` once if the process ends before the returned function is called: `process.exit()`
 * called by user code (a transform module's `process.exit(0)`), or an event loop left with nothing
 * to wait for while a promise is unsettled (Node would exit with code 13 and print nothing).
 * `report` must be synchronous; it gets why, and sets the exit code (`process.exitCode`).
 *
 * Gotcha: the `exit` listener is prepended, because Node's own ESM entry listener calls
 * `process.exit()` again from inside the event, which exits before later listeners run.
 */
export function reportEarlyExit(report: (reason: string) => void): () => void {
  let reported = false;
  const once = (reason: string) => {
    if (reported) return;
    reported = true;
    report(reason);
  };
  const onBeforeExit = () => once("nothing was left to wait for while records were in flight (a promise that never settles, with no timer or I/O behind it)");
  const onExit = (code: number) => once(crashing ? "it crashed (see the line above)" : `process.exit(${code}) was called before the run ended (by a transform module or other user code?)`);
  process.on("beforeExit", onBeforeExit);
  process.prependListener("exit", onExit);
  return () => {
    process.off("beforeExit", onBeforeExit);
    process.off("exit", onExit);
  };
}
