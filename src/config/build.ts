/**
 * Turns a validated config into a running-ready pipeline: instantiates components from the
 * built-in list, wraps sinks in their chaos block, and wires the metrics.
 */
import { mkdir } from "node:fs/promises";
import { join, resolve } from "node:path";
import { withChaos } from "../components/chaos.js";
import type { ComponentContext, Readiness, ServiceProbe, Sink } from "../components/contracts.js";
import { MemoryBuffer, type Buffer } from "../core/buffer.js";
import { DurableBuffer } from "../core/durable-buffer.js";
import type { Concurrency } from "../core/adaptive-concurrency.js";
import { systemClock, type Clock } from "../core/clock.js";
import { acquireDirLock, type DirLock } from "../core/dir-lock.js";
import type { EventSink, Logger } from "../core/events.js";
import { Pipeline, type SinkSettings } from "../core/pipeline.js";
import { mulberry32 } from "../core/random.js";
import { LiveStats, type LiveSnapshot } from "../observability/live-stats.js";
import { Metrics } from "../observability/metrics.js";
import { RateLimitedLogger } from "../observability/rate-limited-logger.js";
import { Tap } from "../observability/tap.js";
import { Endpoints } from "../server/endpoints.js";
import { DEFAULTS } from "./defaults.js";
import type { PipelineConfig, SinkDriving } from "./schema.js";

/** Where relative paths resolve and what the components log to. */
export interface BuildOptions {
  /** Directory of the config file: `module` and `validate` paths resolve against it. */
  readonly configDir: string;
  /** Working directory: `data_dir` and data paths (files, databases) resolve against it. */
  readonly cwd: string;
  readonly logger: Logger;
  readonly clock?: Clock;
}

/** A pipeline built (from config or the library builder) but not yet run, with its metrics. */
export interface BuiltPipeline {
  /** `run()` runs it to its end; `stop()` starts a graceful stop. */
  readonly pipeline: Pipeline;
  /** Its counters: `summary()` (elapsed time: the pipeline's run), `registry` for Prometheus. */
  readonly metrics: Metrics;
  /** `data_dir`, resolved. */
  readonly dataDir: string;
  /** Readiness as `/health/ready` reports it, and the metrics text. */
  readonly service: ServiceProbe;
}

/** The engine's {@link Concurrency} from the validated `concurrency` key. */
function concurrencyOf(c: SinkDriving["concurrency"]): Concurrency {
  if (typeof c === "number") return c;
  const a = c.adaptive;
  return { tag: "adaptive", initial: a.initial, max: a.max, decreaseRatio: a.decrease_ratio, ewmaAlpha: a.ewma_alpha, rttDeviationScale: a.rtt_deviation_scale };
}

/** How the engine drives a sink, from validated driving settings; wraps the sink in its chaos block. */
export function sinkSettings(name: string, sink: Sink, d: SinkDriving, clock: Clock): SinkSettings {
  const random = d.chaos?.seed === undefined ? Math.random : mulberry32(d.chaos.seed);
  return {
    name,
    sink: d.chaos ? withChaos(sink, d.chaos, clock, random) : sink,
    batch: { maxRecords: d.batch.max_records, maxBytes: d.batch.max_bytes, maxWaitMs: d.batch.max_wait },
    retry: {
      maxAttempts: d.retry.max_attempts,
      maxElapsedMs: d.retry.max_elapsed,
      backoff: { initialMs: d.retry.initial_backoff, maxMs: d.retry.max_backoff, multiplier: d.retry.multiplier },
    },
    connectTimeoutMs: d.connect_timeout,
    concurrency: concurrencyOf(d.concurrency),
  };
}

/** The buffer `buffer` describes: in memory, or the durable disk log under `data_dir`. */
export function createBuffer(buffer: PipelineConfig["buffer"], dataDir: string, cwd: string, emit: EventSink, logger: Logger): Buffer {
  const memory = { maxRecords: buffer.max_records, maxBytes: buffer.max_bytes };
  if (!buffer.durable) return new MemoryBuffer(memory);
  const d = buffer.durable;
  return new DurableBuffer({
    path: d.path === undefined ? resolve(dataDir, DEFAULTS.durable_buffer.path) : resolve(cwd, d.path),
    maxBytes: d.max_bytes,
    fsync: d.fsync,
    memory,
    emit,
    logger,
  });
}

/**
 * The pipeline's readiness, metrics and HTTP endpoints, for the observability listener and the
 * components serving HTTP. `pipeline` is read on each call: components are created before the
 * pipeline that holds them.
 */
export function serviceProbe(pipeline: () => Pipeline | undefined, metrics: Metrics, unreadyAfterMs: number, limits: { records: number; bytes: number }, tap?: Tap): ServiceProbe {
  const readiness = (): Readiness => {
    const state = pipeline()?.status().tag ?? "idle";
    const bufferError = metrics.bufferUnwritable();
    const readError = metrics.bufferUnreadable();
    const deadLetterError = metrics.deadLetterUnwritable();
    const problems: string[] = [];
    if (state !== "running") problems.push(`pipeline: ${state === "idle" ? "starting" : state === "draining" ? "stopping" : "stopped"}`);
    const sourcesDown = metrics.sourcesDown();
    problems.push(...sourcesDown, ...metrics.sinksDown(unreadyAfterMs));
    if (bufferError !== undefined) problems.push(`buffer: cannot write: ${bufferError}`);
    if (readError !== undefined) problems.push(`buffer: cannot read: ${readError}`);
    if (deadLetterError !== undefined) problems.push(`dead_letter: cannot write: ${deadLetterError}`);
    return { ready: state === "running" && sourcesDown.length === 0 && metrics.failingSinks(unreadyAfterMs).length === 0 && bufferError === undefined && readError === undefined && deadLetterError === undefined, problems };
  };
  const metricsText = async () => ({ contentType: metrics.registry.contentType, text: await metrics.registry.metrics() });
  const state = (): LiveSnapshot["state"] => {
    const tag = pipeline()?.status().tag ?? "idle";
    return tag === "idle" ? "starting" : tag === "draining" ? "stopping" : tag === "done" ? "stopped" : "running";
  };
  const live = new LiveStats({ metrics, readiness, state, limits });
  const endpoints = new Endpoints({ readiness, metrics: metricsText, live: () => live.sample(), ...(tap ? { tap } : {}) });
  return { readiness, metrics: metricsText, mount: (options) => endpoints.mount(options) };
}

/**
 * Takes the lock on `data_dir` that a pipeline holds from its build to the end of its run, so that
 * a second run of the same pipeline is refused instead of redoing the work from the same
 * checkpoints. Rejects with `ERR_LOCKED` naming the data_dir and the pid that holds it.
 */
export async function lockDataDir(dataDir: string, logger: Logger): Promise<DirLock> {
  const lock = await acquireDirLock(join(dataDir, "pipeline.lock"), `data_dir ${dataDir}`);
  if (lock.staleFrom !== undefined) logger.warn({ path: dataDir, pid: lock.staleFrom }, "data_dir: took over the lock of a process that is gone");
  return lock;
}

/** Makes the pipeline; gives `lock` up if that throws or rejects, so a build that fails leaves data_dir free. */
export async function releasingOnThrow<T>(lock: DirLock, make: () => T | Promise<T>): Promise<T> {
  try {
    return await make();
  } catch (err) {
    await lock.release();
    throw err;
  }
}

/**
 * Passes events to `emit`; when the run ends, reports the log lines `logger` suppressed meanwhile,
 * so no count is lost and no rate-limit timer outlives the run.
 */
export function flushingAtEnd(emit: EventSink, logger: RateLimitedLogger): EventSink {
  return (event) => {
    emit(event);
    if (event.type === "pipeline_run" && event.phase === "done") logger.flush();
  };
}

/**
 * Builds the pipeline a config describes. Creates `data_dir` and takes its lock (`ERR_LOCKED` when
 * another live run holds it); does no other I/O (components connect when run).
 */
export async function buildPipeline(config: PipelineConfig, o: BuildOptions): Promise<BuiltPipeline> {
  const clock = o.clock ?? systemClock;
  const dataDir = resolve(o.cwd, config.dataDir);
  await mkdir(dataDir, { recursive: true });
  const logger = new RateLimitedLogger(o.logger, clock);
  const lock = await lockDataDir(dataDir, logger);
  const metrics = new Metrics(
    config.sinks.map((s) => s.name),
    logger,
    () => clock.now(),
  );
  const emit = flushingAtEnd(metrics.handle, logger);
  // Components are created before the pipeline that holds them; the probe reads it when asked.
  const created: { pipeline?: Pipeline } = {};
  const tap = config.observability.tap ? new Tap(emit) : undefined;
  const service = serviceProbe(() => created.pipeline, metrics, config.observability.unready_after, { records: config.buffer.max_records, bytes: config.buffer.max_bytes }, tap);
  const ctx = (name: string, baseDir: string): ComponentContext => ({ name, dataDir, baseDir, clock, logger, emit, service, bufferBytes: config.buffer.max_bytes, bufferRecords: config.buffer.max_records });

  const pipeline = await releasingOnThrow(lock, async () => new Pipeline({
    sources: await Promise.all(config.sources.map(async (s) => ({
      name: s.name,
      source: await s.definition.create(s.options as never, ctx(s.name, o.cwd)),
      idField: s.idField,
      keyField: s.keyField,
      timeField: s.timeField,
    }))),
    transforms: await Promise.all(config.transforms.map(async (t) => ({
      stage: `transform:${t.name}`,
      transform: await t.definition.create(t.options as never, ctx(t.name, o.configDir)),
      timeoutMs: t.limits.timeout,
      maxSplit: t.limits.max_split,
    }))),
    sinks: await Promise.all(config.sinks.map(async (s) => sinkSettings(s.name, await s.definition.create(s.options as never, ctx(s.name, o.cwd)), s.driving, clock))),
    deadLetter: await config.deadLetter.definition.create(config.deadLetter.options as never, ctx("dead_letter", o.cwd)),
    buffer: createBuffer(config.buffer, dataDir, o.cwd, emit, logger),
    whenFull: config.buffer.when_full,
    chunkSize: Math.min(config.buffer.chunk_size, config.buffer.max_records),
    shutdownTimeoutMs: config.shutdownTimeoutMs,
    deadLetterMaxElapsedMs: config.deadLetter.retry.max_elapsed,
    clock,
    logger,
    emit,
    lock,
    ...(tap ? { tap } : {}),
  }));
  created.pipeline = pipeline;
  metrics.watchBuffer(() => pipeline.bufferUsage(), { records: config.buffer.max_records, bytes: config.buffer.max_bytes });
  return { pipeline, metrics, dataDir, service };
}
