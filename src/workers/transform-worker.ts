/**
 * The entry of a transform worker thread (`workers` above 1): rebuilds the pipeline's transforms
 * from their types and options (as `config/build.ts` does), then runs each job it is sent and
 * posts the result. Says it is alive every `heartbeatMs`, so a worker stuck in a synchronous
 * transform is found and replaced (see `pool.ts`).
 */
import { parentPort, workerData } from "node:worker_threads";
import { TRANSFORMS } from "../components/builtin-transforms.js";
import type { ComponentContext } from "../components/contracts.js";
import { systemClock } from "../core/clock.js";
import { SluiceError } from "../core/errors.js";
import { silentLogger } from "../core/events.js";
import type { ChainStep } from "../core/transform-chain.js";
import { JobRunner, type TransformJob, type WorkerMessage, type WorkerSetup } from "../core/transform-jobs.js";

const port = parentPort;
if (port === null) throw new SluiceError("ERR_INTERNAL", "transform-worker.ts runs as a worker thread only");
const setup = workerData as WorkerSetup;

// A port queues what is sent before its first listener: jobs wait while the transforms load.
const steps: ChainStep[] = await Promise.all(setup.steps.map(async (s) => {
  const definition = TRANSFORMS.find((d) => d.type === s.transform.type);
  if (definition === undefined) throw new SluiceError("ERR_INTERNAL", `no transform type ${s.transform.type} on a worker thread`);
  // Logs and events of transforms on a worker stay there: the main thread counts their outcomes.
  const ctx: ComponentContext = { name: s.transform.type, dataDir: setup.dataDir, baseDir: s.transform.baseDir, clock: systemClock, logger: silentLogger, emit: () => {} };
  return { stage: s.stage, transform: await definition.create(s.transform.options as never, ctx), timeoutMs: s.timeoutMs, maxSplit: s.maxSplit };
}));

const post = (message: WorkerMessage, transfer?: ArrayBuffer[]): void => port.postMessage(message, transfer);
const runner = new JobRunner(steps, setup.envelopes, systemClock, (job, index, step) => post({ type: "at", job, index, step }));

port.on("message", (job: TransformJob) => {
  // A rejection here is a bug: rethrown, it ends the worker, and the pool redoes the job record by record.
  void runner.run(job).then((result) => post({ type: "done", result }, [result.inputs.buffer as ArrayBuffer, result.kinds.buffer as ArrayBuffer]));
});
setInterval(() => post({ type: "alive" }), setup.heartbeatMs);
post({ type: "alive" });
