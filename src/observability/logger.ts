/** The process logger: pino, JSON lines on stderr (stdout stays free for the stdout sink). */
import { pino } from "pino";
import type { Logger } from "../core/events.js";

/** Log levels a config may choose. */
export type LogLevel = "debug" | "info" | "warn" | "error" | "silent";

/** Creates the process logger. Writes synchronously so lines are not lost when the process exits. */
export function createLogger(level: LogLevel): Logger {
  return pino({ level, base: { name: "sluice" } }, pino.destination({ fd: 2, sync: true }));
}
