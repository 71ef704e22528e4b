/**
 * What the runner and a contender child process say to each other. The runner passes a
 * {@link Task} as JSON in argv[2]; the child does the work, times it itself (so process start,
 * module loading and compilation are not measured) and prints one {@link RESULT_PREFIX} line.
 * A child that could not process every record prints why on stderr and exits non-zero.
 */
import { pathToFileURL } from "node:url";

/** What one contender run must do. */
export interface Task {
  /** NDJSON file of sensor readings. */
  readonly file: string;
  /** Lines in `file`: the records every contender must get through the transform. */
  readonly records: number;
  /** The module transform (bench/enrich.mjs), absolute path. */
  readonly transform: string;
  /** sluice only: its `workers` setting (default 1: decode and transform on the main thread). */
  readonly workers?: number | "auto";
  /** sluice only: install the CLI's OpenTelemetry SDK (sample ratio 1) exporting to this OTLP/HTTP endpoint; absent: no tracing. */
  readonly otlpEndpoint?: string;
}

/** What one contender run reports. */
export interface ContenderResult {
  readonly contender: string;
  /** Records that came out of the transform and reached the discarding end. */
  readonly records: number;
  /** Wall-clock time from just before the file is opened to the last record discarded. */
  readonly seconds: number;
  /** CPU time (user + system, every thread of the process) over the same span. */
  readonly cpuSeconds: number;
  /** `process.resourceUsage().maxRSS` at the end, in MiB. */
  readonly maxRssMiB: number;
}

/** Marks the result line on the child's stdout. */
export const RESULT_PREFIX = "BENCH_RESULT ";

/** The transform function every contender calls. */
export type PayloadFunction = (payload: Record<string, unknown>) => Record<string, unknown> | null;

/** Reads the task the runner passed. */
export function readTask(): Task {
  const arg = process.argv[2];
  if (arg === undefined) throw new Error("usage: <contender> '<task json>'");
  return JSON.parse(arg) as Task;
}

/** Imports the transform the way sluice's `module` transform does: Node's own `import()`. */
export async function loadTransform(path: string): Promise<PayloadFunction> {
  const mod = (await import(pathToFileURL(path).href)) as { default: PayloadFunction };
  return mod.default;
}

/** Where a measurement starts: wall clock and CPU time. */
export interface Start {
  readonly wall: number;
  readonly cpu: NodeJS.CpuUsage;
}

/** Starts the measurement: call just before reading begins. */
export function startClock(): Start {
  return { wall: performance.now(), cpu: process.cpuUsage() };
}

/** Prints the result line, or fails the run when not every record made it through. */
export function finish(task: Task, contender: string, records: number, started: Start): void {
  const seconds = (performance.now() - started.wall) / 1000;
  const cpu = process.cpuUsage(started.cpu);
  if (records !== task.records) fail(`${contender}: processed ${records} of ${task.records} records`);
  const result: ContenderResult = {
    contender,
    records,
    seconds,
    cpuSeconds: (cpu.user + cpu.system) / 1e6,
    maxRssMiB: process.resourceUsage().maxRSS / 1024,
  };
  process.stdout.write(`${RESULT_PREFIX}${JSON.stringify(result)}\n`);
}

/** Reports a failed run on stderr and exits 1. */
export function fail(message: string): never {
  process.stderr.write(`${message}\n`);
  process.exit(1);
}
