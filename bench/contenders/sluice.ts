/**
 * The contender: sluice's library API, `file` source -> `module` transform (the task's) ->
 * `blackhole` sink, engine defaults but the task's `workers`, a fresh temp `data_dir` (so no checkpoint from an earlier
 * run is resumed). The run must complete with every record delivered; anything else fails loudly.
 * With `otlpEndpoint` in the task, the CLI's tracing SDK is installed first (sample ratio 1),
 * before the clock starts, and its last export is part of the timed run.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { silentLogger } from "../../src/core/events.js";
import { pipeline, sinks, sources, transforms, type SensorReading } from "../../src/index.js";
import { startTracing } from "../../src/observability/tracing-sdk.js";
import { fail, finish, readTask, startClock } from "./protocol.js";

const task = readTask();
const dataDir = await mkdtemp(join(tmpdir(), "sluice-bench-"));
let problem: string | undefined;
// As the CLI does: a run without tracing does not load the SDK.
const tracing = task.otlpEndpoint === undefined ? undefined : await startTracing({ otlp_endpoint: task.otlpEndpoint, sample_ratio: 1, service_name: "sluice-bench" }, silentLogger);
try {
  const started = startClock();
  const { status, summary } = await pipeline({ data_dir: dataDir, workers: task.workers ?? 1 })
    .source("file", sources.file<SensorReading>({ path: task.file }))
    .use(transforms.module({ path: task.transform }))
    .sink("null", sinks.blackhole())
    .run();
  await tracing?.shutdown();
  const { records } = summary;
  const delivered = summary.sinks["null"]?.delivered ?? 0;
  if (
    status.tag !== "completed" ||
    records.received !== task.records ||
    records.delivered !== task.records ||
    records.dead_lettered + records.dropped !== 0 ||
    delivered !== task.records
  ) {
    problem = `sluice: run did not deliver every record: status ${JSON.stringify(status)}, summary ${JSON.stringify(summary)}`;
  } else {
    finish(task, "sluice", delivered, started);
  }
} finally {
  await rm(dataDir, { recursive: true, force: true });
}
if (problem !== undefined) fail(problem);
