/**
 * What the PostgreSQL section's runner (bench/postgres.ts) and its contender children say to each
 * other: the same convention as {@link ./protocol.ts} (a task as JSON in argv[2], one
 * `BENCH_RESULT` line on stdout, non-zero exit with the reason on stderr), with a task that names
 * the database and table. A child times itself from just before it opens its first connection
 * to the moment its last row is committed; the runner checks the table afterwards.
 */
import { RESULT_PREFIX, fail, type ContenderResult, type Start } from "./protocol.js";

/** What one PostgreSQL contender run must do. */
export interface PgTask {
  /** NDJSON file of sensor readings (bench/data-gen.ts). */
  readonly file: string;
  /** The same rows in COPY text format, `id<TAB>payload` (bench/pg-copy-file.ts). */
  readonly copyFile: string;
  /** Lines in `file`: the rows every contender must write (or, for a duplicate run, offer). */
  readonly records: number;
  /** Connection string, e.g. `postgres://postgres@127.0.0.1:5432/test`. */
  readonly url: string;
  /** Table to write, unquoted; the runner created it (or, for sluice's first run, dropped it for the sink to create). */
  readonly table: string;
  /** sluice only: the `module` transform it runs (bench/enrich.mjs or bench/enrich-copy.mjs), absolute path; none when absent. */
  readonly transform?: string;
}

/** Reads the task the runner passed. */
export function readPgTask(): PgTask {
  const arg = process.argv[2];
  if (arg === undefined) throw new Error("usage: <contender> '<task json>'");
  return JSON.parse(arg) as PgTask;
}

/** Quotes an SQL identifier (the bench's table names are plain, but quoting costs nothing). */
export function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

/**
 * Prints the result line. `records` is what the contender itself saw go through (rows COPY
 * reported, rows the INSERTs reported, records sluice delivered); `cpuSeconds` is what the caller
 * measured (the client side only: the server's CPU is measured by the runner).
 */
export function finishPg(task: PgTask, contender: string, records: number, started: Start, cpuSeconds: number): void {
  const seconds = (performance.now() - started.wall) / 1000;
  if (records !== task.records) fail(`${contender}: wrote ${records} of ${task.records} records`);
  const result: ContenderResult = { contender, records, seconds, cpuSeconds, maxRssMiB: process.resourceUsage().maxRSS / 1024 };
  process.stdout.write(`${RESULT_PREFIX}${JSON.stringify(result)}\n`);
}

/** CPU seconds (user + system) this process used since `started`. */
export function ownCpuSeconds(started: Start): number {
  const cpu = process.cpuUsage(started.cpu);
  return (cpu.user + cpu.system) / 1e6;
}
