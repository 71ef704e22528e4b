/** The process logger: pino on stderr (stdout stays free for the stdout sink). */
import { writeSync } from "node:fs";
import { pino } from "pino";
import type { Logger } from "../core/events.js";

/** Log levels a config (`observability.log_level`) or `--log-level` may choose. */
export const LOG_LEVELS = ["debug", "info", "warn", "error", "silent"] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

const LEVEL_NAMES: Record<number, string> = { 10: "TRACE", 20: "DEBUG", 30: "INFO", 40: "WARN", 50: "ERROR", 60: "FATAL" };
const OMIT = new Set(["level", "time", "name", "msg", "pid", "hostname"]);

/**
 * One pino JSON line as a terminal line: `19:02:11 WARN write failed; retrying sink=db code=...`.
 * Starts by clearing the terminal line, so a live progress line is overwritten, not interleaved.
 */
export function prettyLine(json: string): string {
  let entry: Record<string, unknown>;
  try {
    entry = JSON.parse(json) as Record<string, unknown>;
  } catch {
    return json;
  }
  const time = new Date(Number(entry.time)).toISOString().slice(11, 19);
  const fields = Object.entries(entry)
    .filter(([k]) => !OMIT.has(k))
    .map(([k, v]) => `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`)
    .join(" ");
  return `\x1b[2K\r${time} ${LEVEL_NAMES[Number(entry.level)] ?? "LOG"} ${String(entry.msg ?? "")}${fields ? ` ${fields}` : ""}\n`;
}

/**
 * Creates the process logger. JSON lines by default; `pretty` (for a terminal) prints one readable
 * line per entry. Writes synchronously so lines are not lost when the process exits.
 */
export function createLogger(level: LogLevel, pretty = false): Logger {
  if (!pretty) return pino({ level, base: { name: "sluice" } }, pino.destination({ fd: 2, sync: true }));
  return pino({ level, base: undefined }, { write: (line: string) => writeSync(2, prettyLine(line)) });
}
