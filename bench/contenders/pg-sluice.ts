/**
 * The contender: sluice's library API, `file` source -> the task's `module` transform, if any ->
 * `postgres` sink (`mode: insert`), engine
 * and sink defaults (the report prints the ones that matter: batch size, concurrency, pool), a
 * fresh temp `data_dir` (so no checkpoint from an earlier run is resumed). For the first run the
 * runner has dropped the table and the sink creates it (`create_table`, its default); for the
 * duplicate run the table already holds every row. Either way the run must end `completed` with
 * every record delivered and none dead-lettered or dropped; the runner then checks the table.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pipeline, sinks, sources, transforms, type SensorReading } from "../../src/index.js";
import { fail, startClock } from "./protocol.js";
import { finishPg, ownCpuSeconds, readPgTask } from "./pg-protocol.js";

const task = readPgTask();
const dataDir = await mkdtemp(join(tmpdir(), "sluice-bench-pg-"));
let problem: string | undefined;
try {
  const started = startClock();
  const source = pipeline({ data_dir: dataDir }).source("file", sources.file<SensorReading>({ path: task.file }));
  const { status, summary } = await (task.transform === undefined ? source : source.use(transforms.module({ path: task.transform })))
    .sink("pg", sinks.postgres({ url: task.url, table: task.table, mode: "insert" }))
    .run();
  const { records } = summary;
  const delivered = summary.sinks["pg"]?.delivered ?? 0;
  if (
    status.tag !== "completed" ||
    records.received !== task.records ||
    records.delivered !== task.records ||
    records.dead_lettered + records.dropped !== 0 ||
    delivered !== task.records
  ) {
    problem = `sluice: run did not deliver every record: status ${JSON.stringify(status)}, summary ${JSON.stringify(summary)}`;
  } else {
    finishPg(task, "sluice", delivered, started, ownCpuSeconds(started));
  }
} finally {
  await rm(dataDir, { recursive: true, force: true });
}
if (problem !== undefined) fail(problem);
