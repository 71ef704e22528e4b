/**
 * Turns a validated config into a running-ready pipeline: instantiates components from the
 * built-in list, wraps sinks in their chaos block, and wires the metrics.
 */
import { mkdir } from "node:fs/promises";
import { join, resolve } from "node:path";
import { withChaos } from "../components/chaos.js";
import type { ComponentContext, DeadLetterStore, Readiness, ServiceProbe, Sink, Source, Transform } from "../components/contracts.js";
import { MemoryBuffer, type Buffer } from "../core/buffer.js";
import { DurableBuffer } from "../core/durable-buffer.js";
import type { Concurrency } from "../core/adaptive-concurrency.js";
import { systemClock, type Clock } from "../core/clock.js";
import { acquireDirLock, type DirLock } from "../core/dir-lock.js";
import type { EventSink, InternalEvent, Logger } from "../core/events.js";
import { Pipeline, type SinkSettings } from "../core/pipeline.js";
import type { PortableTransform } from "../core/transform-jobs.js";
import { mulberry32 } from "../core/random.js";
import { LiveStats, type LiveSnapshot } from "../observability/live-stats.js";
import { Metrics } from "../observability/metrics.js";
import { RateLimitedLogger } from "../observability/rate-limited-logger.js";
import { Tap } from "../observability/tap.js";
import { Endpoints } from "../server/endpoints.js";
import { transformPoolFor } from "../workers/pool.js";
import { DEFAULTS } from "./defaults.js";
import type { PipelineConfig, SinkDriving, TransformLimits } from "./schema.js";

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

/** A source of a pipeline being assembled: how to create it once the context is known, and its envelope fields. */
export interface SourcePart {
  readonly name: string;
  create(ctx: ComponentContext): Source | Promise<Source>;
  readonly idField?: string | undefined;
  readonly keyField?: string | undefined;
  readonly timeField?: string | undefined;
}

/** A transform of a pipeline being assembled. */
export interface TransformPart {
  /** Its stage is `transform:<name>`. */
  readonly name: string;
  create(ctx: ComponentContext): Transform | Promise<Transform>;
  readonly limits: TransformLimits;
  /** The built-in type, options and base directory a transform worker thread makes it from (`workers`); undefined for a function of this thread. */
  readonly portable?: PortableTransform | undefined;
}

/** A sink of a pipeline being assembled, with how the engine drives it. */
export interface SinkPart {
  readonly name: string;
  create(ctx: ComponentContext): Sink | Promise<Sink>;
  readonly driving: SinkDriving;
}

/**
 * A pipeline's parts, validated, whichever way it was described: a YAML config
 * ({@link buildPipeline}) or the library builder. {@link assemblePipeline} turns them into one.
 */
export interface PipelineParts {
  /** `data_dir`, resolved. */
  readonly dataDir: string;
  readonly buffer: PipelineConfig["buffer"];
  readonly observability: Pick<PipelineConfig["observability"], "tap" | "unready_after">;
  readonly shutdownTimeoutMs: number;
  readonly deadLetterMaxElapsedMs: number;
  /** `workers`: 1, a number of worker threads, or `auto`. */
  readonly workers: number | "auto";
  readonly sources: readonly SourcePart[];
  readonly transforms: readonly TransformPart[];
  readonly sinks: readonly SinkPart[];
  createDeadLetter(ctx: ComponentContext): DeadLetterStore | Promise<DeadLetterStore>;
}

/** What {@link assemblePipeline} needs besides the parts. */
export interface AssembleOptions {
  /** Where components' relative paths resolve (`ComponentContext.baseDir`; a part may pass another). */
  readonly baseDir: string;
  readonly logger: Logger;
  readonly clock?: Clock | undefined;
  /** Hears every internal event after the metrics; an error it throws is logged and ignored. */
  readonly onEvent?: ((event: InternalEvent) => void) | undefined;
}

/**
 * The one assembly of a pipeline: creates `data_dir` and takes its lock (`ERR_LOCKED` when another
 * live run holds it), wires the metrics, the rate-limited logger, the tap and the service probe,
 * creates every component (awaiting the ones that load their implementation) and the buffer.
 * Does no other I/O: components connect when run. A failure gives the lock up.
 */
export async function assemblePipeline(parts: PipelineParts, o: AssembleOptions): Promise<BuiltPipeline> {
  const clock = o.clock ?? systemClock;
  const { dataDir, buffer } = parts;
  await mkdir(dataDir, { recursive: true });
  const logger = new RateLimitedLogger(o.logger, clock);
  const lock = await lockDataDir(dataDir, logger);
  const metrics = new Metrics(
    parts.sinks.map((s) => s.name),
    logger,
    () => clock.now(),
  );
  const onEvent = o.onEvent;
  const emit = flushingAtEnd(
    onEvent === undefined
      ? metrics.handle
      : (event) => {
          metrics.handle(event);
          try {
            onEvent(event);
          } catch (err) {
            logger.error({ component: "pipeline", code: "ERR_INTERNAL", event: event.type, err: String(err) }, "onEvent listener threw; ignored");
          }
        },
    logger,
  );
  // Components are created before the pipeline that holds them; the probe reads it when asked.
  const created: { pipeline?: Pipeline } = {};
  const tap = parts.observability.tap ? new Tap(emit) : undefined;
  const limits = { records: buffer.max_records, bytes: buffer.max_bytes };
  const service = serviceProbe(() => created.pipeline, metrics, parts.observability.unready_after, limits, tap);
  const ctx = (name: string): ComponentContext => ({ name, dataDir, baseDir: o.baseDir, clock, logger, emit, service, bufferBytes: buffer.max_bytes, bufferRecords: buffer.max_records });

  const pipeline = await releasingOnThrow(lock, async () => {
    const sources = await Promise.all(parts.sources.map(async (s) => ({
      name: s.name,
      source: await s.create(ctx(s.name)),
      idField: s.idField,
      keyField: s.keyField,
      timeField: s.timeField,
    })));
    const transforms = await Promise.all(parts.transforms.map(async (t) => ({
      stage: `transform:${t.name}`,
      transform: await t.create(ctx(t.name)),
      timeoutMs: t.limits.timeout,
      maxSplit: t.limits.max_split,
      ...(t.portable && { portable: t.portable }),
    })));
    const transformPool = transformPoolFor(parts.workers, transforms, sources, dataDir, logger);
    return new Pipeline({
    sources,
    transforms,
    ...(transformPool && { transformPool }),
    sinks: await Promise.all(parts.sinks.map(async (s) => sinkSettings(s.name, await s.create(ctx(s.name)), s.driving, clock))),
    deadLetter: await parts.createDeadLetter(ctx("dead_letter")),
    buffer: createBuffer(buffer, dataDir, o.baseDir, emit, logger),
    whenFull: buffer.when_full,
    chunkSize: Math.min(buffer.chunk_size, buffer.max_records),
    shutdownTimeoutMs: parts.shutdownTimeoutMs,
    deadLetterMaxElapsedMs: parts.deadLetterMaxElapsedMs,
    clock,
    logger,
    emit,
    lock,
    ...(tap ? { tap } : {}),
    });
  });
  created.pipeline = pipeline;
  metrics.watchBuffer(() => pipeline.bufferUsage(), limits);
  return { pipeline, metrics, dataDir, service };
}

/**
 * Builds the pipeline a config describes (see {@link assemblePipeline}): data paths resolve against
 * `cwd`, transforms' paths against the config's directory.
 */
export async function buildPipeline(config: PipelineConfig, o: BuildOptions): Promise<BuiltPipeline> {
  return assemblePipeline(
    {
      dataDir: resolve(o.cwd, config.dataDir),
      buffer: config.buffer,
      observability: config.observability,
      shutdownTimeoutMs: config.shutdownTimeoutMs,
      deadLetterMaxElapsedMs: config.deadLetter.retry.max_elapsed,
      workers: config.workers,
      sources: config.sources.map((s) => ({ name: s.name, create: (ctx) => s.definition.create(s.options as never, ctx), idField: s.idField, keyField: s.keyField, timeField: s.timeField })),
      transforms: config.transforms.map((t) => ({
        name: t.name,
        create: (ctx) => t.definition.create(t.options as never, { ...ctx, baseDir: o.configDir }),
        limits: t.limits,
        portable: { type: t.definition.type, options: t.options, baseDir: o.configDir },
      })),
      sinks: config.sinks.map((s) => ({ name: s.name, create: (ctx) => s.definition.create(s.options as never, ctx), driving: s.driving })),
      createDeadLetter: (ctx) => config.deadLetter.definition.create(config.deadLetter.options as never, ctx),
    },
    { baseDir: o.cwd, logger: o.logger, clock: o.clock },
  );
}
