/**
 * The contender: sluice's library API, `file` source (event time from `ts`) -> `parquet` sink with
 * the readings' typed columns and the payload as JSON text, a batch (and so a file) per
 * `rowsPerFile` records, a buffer holding two batches. Every file is synced and renamed before its
 * batch is acknowledged, as the sink always does.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pipeline, sinks, sources, type SensorReading } from "../../src/index.js";
import { fail, finish, startClock } from "./protocol.js";
import { READING_COLUMNS, readParquetTask } from "./parquet-protocol.js";

const task = readParquetTask();
const dataDir = await mkdtemp(join(tmpdir(), "sluice-bench-parquet-"));
let problem: string | undefined;
try {
  const started = startClock();
  const { status, summary } = await pipeline({ data_dir: dataDir, buffer: { max_records: 2 * task.rowsPerFile, max_bytes: "1GiB" } })
    .source("file", sources.file<SensorReading>({ path: task.file }), { time_field: "ts" })
    .sink("lake", sinks.parquet({ path: task.lake, columns: READING_COLUMNS, file_max_rows: task.rowsPerFile }), {
      batch: { max_records: task.rowsPerFile, max_bytes: "512MiB", max_wait: "1s" },
    })
    .run();
  if (status.tag !== "completed" || summary.records.delivered !== task.records || summary.records.dead_lettered + summary.records.dropped !== 0) {
    problem = `sluice: run did not deliver every record: status ${JSON.stringify(status)}, summary ${JSON.stringify(summary)}`;
  } else {
    finish(task, "sluice", summary.records.delivered, started);
  }
} finally {
  await rm(dataDir, { recursive: true, force: true });
}
if (problem !== undefined) fail(problem);
