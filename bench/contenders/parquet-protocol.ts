/**
 * What the parquet section's runner and its two contenders share: the task (the NDJSON file, the
 * lake directory, rows per file) and the one file layout both write: the sink's envelope columns,
 * the readings' typed fields, the payload as JSON text, Snappy, one row group per file.
 */
import { readTask as readBaseTask, type Task } from "./protocol.js";

/** One parquet contender run. */
export interface ParquetTask extends Task {
  /** Empty directory the contender writes its files into. */
  readonly lake: string;
  /** Rows per file: sluice's batch size, and the plain script's file size. */
  readonly rowsPerFile: number;
}

/** Reads the task the runner passed. */
export function readParquetTask(): ParquetTask {
  return readBaseTask() as ParquetTask;
}

/** The typed columns both contenders write besides the envelope (the sink's `columns` option). */
export const READING_COLUMNS = {
  sensor: { field: "sensor", type: "text" },
  value: { field: "value", type: "double precision" },
  unit: { field: "unit", type: "text" },
  seq: { field: "seq", type: "bigint" },
} as const;
