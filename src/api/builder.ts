/**
 * The library API: the same pipelines as the YAML config, built in TypeScript and typed end to
 * end. Payload types flow from the source through each `map` to the sinks; built-in components
 * take the same (snake_case) options as in YAML, validated by the same schemas.
 */
import { resolve } from "node:path";
import type { z } from "zod";
import type { BatchDefaults, ComponentContext, ComponentDefinition, DeadLetterStore, OptionConflict, PipelineShape, Sink, Source, Transform } from "../components/contracts.js";
import { assemblePipeline, type BuiltPipeline, type SinkPart, type SourcePart, type TransformPart } from "../config/build.js";
import { DEFAULTS } from "../config/defaults.js";
import { reservedNameIssue, sinkDrivingSchema, sinkDrivingSchemaFor, topSchema, transformLimitsSchema, validateWith, type ConfigIssue } from "../config/schema.js";
import type { Clock } from "../core/clock.js";
import { SluiceError } from "../core/errors.js";
import { silentLogger, type InternalEvent, type Logger } from "../core/events.js";
import type { PipelineStatus } from "../core/pipeline.js";
import type { JsonObject, RecordView } from "../core/record.js";
import { mapTransform } from "../transforms/module.js";
import type { RunSummary } from "../observability/metrics.js";
import { definition as deadLetterSqlite } from "../sinks/dead-letter-sqlite.js";
import { workerRefusals } from "../workers/pool.js";

/** Builds a component instance once the pipeline's context (data_dir, clock, logger) is known. */
export interface Factory<T> {
  readonly type: string;
  /** May resolve later (a built-in loads its implementation on first use). */
  create(ctx: ComponentContext): T | Promise<T>;
  /** Options the rest of the pipeline makes unkeepable (see `ComponentDefinition.conflicts`); checked by `build()`. */
  conflicts?(pipeline: PipelineShape): readonly OptionConflict[];
  /** A sink type's own `batch` defaults (see `ComponentDefinition.batchDefaults`). */
  readonly batchDefaults?: BatchDefaults;
  /** The built-in type and validated options, from which a transform worker thread makes the same component (`workers`). */
  readonly portable?: { readonly type: string; readonly options: unknown };
}

/** A source whose records carry payloads of type `P`. */
export interface SourceFactory<P extends object> extends Factory<Source> {
  /** Phantom: carries the payload type; never set. */
  readonly payload?: P;
}

/** A sink that accepts payloads of type `P` (built-in sinks accept any object). */
export interface SinkFactory<in P extends object> extends Factory<Sink> {
  /** Phantom: makes the payload type contravariant; never called. */
  readonly accepts?: (payload: P) => void;
}

/** Throws `issues` as one `ERR_CONFIG_INVALID`, each with its path, as the YAML loader words them. */
function throwInvalid(issues: readonly ConfigIssue[], location?: string): never {
  throw new SluiceError("ERR_CONFIG_INVALID", issues.map((i) => `${i.path}: ${i.message}`).join("; "), { location });
}

/**
 * Wraps a component definition as a factory, validating `options` with the definition's own
 * schema now, so a mistake fails where it is written.
 * @throws SluiceError `ERR_CONFIG_INVALID` listing every issue with its path (`<type>.<key>`),
 *   and for an unknown key the likely one ("did you mean").
 */
export function fromDefinition<O extends z.ZodObject, T>(def: ComponentDefinition<O, T>, options: z.input<O>): Factory<T> {
  const parsed = validateWith(def.options, options, def.type);
  if (parsed.value === undefined) throwInvalid(parsed.issues, def.type);
  const data = parsed.value;
  const conflicts = def.conflicts;
  return {
    type: def.type,
    create: (ctx) => def.create(data, ctx),
    portable: { type: def.type, options: data },
    ...(conflicts && { conflicts: (pipeline: PipelineShape) => conflicts(data, pipeline) }),
    ...(def.batchDefaults && { batchDefaults: def.batchDefaults }),
  };
}

/** Settings of the whole pipeline; the same keys and defaults as the YAML's top level. */
export type PipelineSettings = Omit<z.input<typeof topSchema>, "sources" | "sinks" | "transforms" | "dead_letter"> & {
  /** Logger for components; silent by default. */
  logger?: Logger;
  clock?: Clock;
  /** Working directory for relative paths; default `process.cwd()`. */
  cwd?: string;
  /**
   * Hears every internal event, e.g. `sink_connect_failed` (which sink, since when, why) while a
   * sink cannot connect. Called on the hot path (once per batch, or per chunk): keep it cheap. An
   * error it throws is logged and ignored.
   */
  onEvent?: (event: InternalEvent) => void;
};

/** How a source's records get their envelope, keyed by the payload's own fields. */
export interface EnvelopeFields<P> {
  id_field?: keyof P & string;
  key_field?: keyof P & string;
  time_field?: keyof P & string;
}

/** How a run ended, with the summary the CLI prints. */
export interface RunResult {
  readonly status: PipelineStatus;
  readonly summary: RunSummary;
}

/** A transform as the builder keeps it: its `portable` gets its base directory at build. */
interface TransformStage extends Omit<TransformPart, "portable"> {
  readonly portable: Factory<Transform>["portable"];
}

interface SourceStage extends SourcePart {
  /** Issues of the source's options in a pipeline of this shape. */
  readonly conflicts: (pipeline: PipelineShape) => ConfigIssue[];
}

/** A transform's limits as the library takes them: the YAML's `timeout` (ms or `"30s"`) and `max_split`. */
export type TransformLimitsInput = z.input<typeof transformLimitsSchema>;

type PayloadOf<F> = F extends SourceFactory<infer P> ? P : never;

/**
 * A pipeline under construction whose records carry payloads of type `P`. Each step returns a new
 * builder typed by what that step produces. Nothing runs until {@link build} or {@link run}.
 */
export class PipelineBuilder<P extends object> {
  private constructor(
    private readonly settings: PipelineSettings,
    private readonly sources: readonly SourceStage[],
    private readonly transforms: readonly TransformStage[],
    private readonly sinks: readonly SinkPart[],
    private readonly deadLetterFactory: Factory<DeadLetterStore> | undefined,
  ) {}

  /** Starts a pipeline with engine settings (buffer, data_dir, shutdown_timeout). */
  static create(settings: PipelineSettings = {}): PipelineBuilder<never> {
    return new PipelineBuilder(settings, [], [], [], undefined);
  }

  /** Adds a source; the pipeline's payload type becomes the union of its sources' payloads. */
  source<F extends SourceFactory<object>>(name: string, factory: F, envelope: EnvelopeFields<PayloadOf<F>> = {}): PipelineBuilder<P | PayloadOf<F>> {
    const reserved = reservedNameIssue(`sources.${name}`, name);
    if (reserved) throwInvalid([reserved]);
    const stage: SourceStage = {
      name,
      conflicts: (pipeline) => (factory.conflicts?.(pipeline) ?? []).map((c) => ({ path: `sources.${name}.${c.key}`, message: c.message })),
      create: (ctx) => factory.create(ctx),
      idField: envelope.id_field,
      keyField: envelope.key_field,
      timeField: envelope.time_field,
    };
    return this.with({ sources: [...this.sources, stage] });
  }

  /**
   * Maps each payload (sync or async). `record` is a frozen view of the envelope, for context: a
   * write to it throws, failing that record (`ERR_TRANSFORM_ENVELOPE`), and changes nothing. A
   * function declared with one parameter gets no view (none is built).
   * `limits`: `timeout` for a returned promise (default 30 s) and `max_split`, as in YAML.
   */
  map<Q extends object>(fn: (payload: P, record: RecordView) => Q | Promise<Q>, limits: TransformLimitsInput = {}): PipelineBuilder<Q> {
    return this.step("map", fn as unknown as Transform["apply"], limits);
  }

  /** Keeps payloads for which `fn` is true; the others are counted as dropped (`filtered`). */
  filter(fn: (payload: P, record: RecordView) => boolean | Promise<boolean>, limits: TransformLimitsInput = {}): PipelineBuilder<P> {
    const decide = (keep: boolean | Promise<boolean>, payload: JsonObject) => (typeof keep === "boolean" ? (keep ? payload : null) : keep.then((k) => (k ? payload : null)));
    // Declared with the payload only, the wrapper too takes one parameter: no view is built per record.
    const apply: Transform["apply"] =
      fn.length >= 2 ? (payload, record) => decide(fn(payload as unknown as P, record), payload) : (payload) => decide(fn(payload as unknown as P, undefined as unknown as RecordView), payload);
    return this.step("filter", apply, limits);
  }

  /** Splits each payload into zero or more; parts get ids `<id>#<n>`. More than `limits.max_split` (default 10,000) dead-letters the record. */
  flatMap<Q extends object>(fn: (payload: P, record: RecordView) => Q[] | Promise<Q[]>, limits: TransformLimitsInput = {}): PipelineBuilder<Q> {
    return this.step("flat_map", fn as unknown as Transform["apply"], limits);
  }

  /**
   * Adds a transform component (e.g. `transforms.validate(...)`); the payload type is kept.
   * @throws SluiceError `ERR_CONFIG_INVALID` when `limits` is invalid.
   */
  use(factory: Factory<Transform>, limits: TransformLimitsInput = {}): PipelineBuilder<P> {
    const name = factory.type;
    const parsed = validateWith(transformLimitsSchema, limits, `transforms.${name}`);
    if (parsed.value === undefined) throwInvalid(parsed.issues);
    return this.with({ transforms: [...this.transforms, { name, limits: parsed.value, portable: factory.portable, create: (ctx) => factory.create(ctx) }] });
  }

  /**
   * Adds a sink. `driving` takes the YAML's sink keys: `concurrency` (a number, `"adaptive"` or
   * `{ adaptive: {...} }`), `batch`, `retry`, `chaos`.
   * @throws SluiceError `ERR_CONFIG_INVALID` when `driving` is invalid.
   */
  sink(name: string, factory: SinkFactory<P>, driving: z.input<typeof sinkDrivingSchema> = {}): PipelineBuilder<P> {
    const reserved = reservedNameIssue(`sinks.${name}`, name);
    if (reserved) throwInvalid([reserved]);
    const parsed = validateWith(sinkDrivingSchemaFor(factory.batchDefaults), driving, `sinks.${name}`);
    if (parsed.value === undefined) throwInvalid(parsed.issues);
    return this.with({ sinks: [...this.sinks, { name, create: (ctx) => factory.create(ctx), driving: parsed.value }] });
  }

  /** Replaces the dead-letter store (default: SQLite at `<data_dir>/dlq.db`). */
  deadLetter(factory: Factory<DeadLetterStore>): PipelineBuilder<P> {
    return this.with({ deadLetterFactory: factory });
  }

  /**
   * Builds the pipeline (creates `data_dir`) without running it: `pipeline.run()` runs it,
   * `pipeline.stop()` starts a graceful stop, and `metrics.summary()` is the summary {@link run}
   * gives (its elapsed time is the pipeline's run), `metrics.registry` the Prometheus registry. The pipeline holds a lock on
   * `data_dir` until its run ends, so a second pipeline on the same `data_dir` (in this process or
   * another) is refused with `ERR_LOCKED` meanwhile. Gotcha: a pipeline built and never run keeps
   * the lock until the process exits.
   */
  async build(): Promise<BuiltPipeline> {
    const { logger: _l, clock: _c, cwd: _w, onEvent, ...engine } = this.settings;
    // Sources and sinks are validated by their factories; stand-ins satisfy the top-level schema.
    const top = validateWith(topSchema, { ...engine, sources: { x: {} }, sinks: { x: {} } }, "");
    if (top.value === undefined) throwInvalid(top.issues);
    const t = top.value;
    const shape: PipelineShape = { durableBuffer: t.buffer.durable !== undefined };
    const conflicts = this.sources.flatMap((s) => s.conflicts(shape));
    const refusals = workerRefusals(
      t.workers,
      this.transforms.map((s) => ({ stage: `transform:${s.name}`, portable: s.portable && { ...s.portable, baseDir: "" } })),
    );
    conflicts.push(...refusals.map(([stage, message]) => ({ path: stage.replace(/^transform:/, "transforms."), message })));
    if (conflicts.length > 0) throwInvalid(conflicts);
    const cwd = this.settings.cwd ?? process.cwd();
    return assemblePipeline(
      {
        dataDir: resolve(cwd, t.data_dir),
        buffer: t.buffer,
        observability: t.observability,
        shutdownTimeoutMs: t.shutdown_timeout,
        deadLetterMaxElapsedMs: DEFAULTS.dead_letter.retry.max_elapsed_ms,
        sources: this.sources,
        workers: t.workers,
        transforms: this.transforms.map((s) => ({ ...s, portable: s.portable && { ...s.portable, baseDir: cwd } })),
        sinks: this.sinks,
        createDeadLetter: (ctx) => (this.deadLetterFactory ?? fromDefinition(deadLetterSqlite, {})).create(ctx),
      },
      { baseDir: cwd, logger: this.settings.logger ?? silentLogger, clock: this.settings.clock, onEvent },
    );
  }

  /**
   * Builds and runs to the end (finite sources); resolves with the status and summary.
   * @throws SluiceError the run's error when it failed (status `failed`, exit 1 in the CLI), with
   * its stable code: `ERR_SINK_CONNECT` when a sink could not connect within its `connect_timeout`
   * (or failed to connect for good), `ERR_SOURCE_READ` when a source failed, `ERR_BUFFER_IO` when
   * the buffer could not open, `ERR_DEAD_LETTER_WRITE` when dead letters could not be written for
   * 60 s (their records un-acked), `ERR_CHECKPOINT_WRITE` when everything was delivered but a
   * source could not save its progress. {@link build} gives the status itself instead.
   */
  async run(): Promise<RunResult> {
    const { pipeline, metrics } = await this.build();
    const status = await pipeline.run();
    if (status.tag === "failed") throw status.error;
    return { status, summary: metrics.summary() };
  }

  private step(name: string, fn: Transform["apply"], limits: TransformLimitsInput): PipelineBuilder<never> {
    const transform: Factory<Transform> = { type: name, create: () => mapTransform(fn) };
    return this.use(transform, limits) as unknown as PipelineBuilder<never>;
  }

  private with(change: Partial<{ sources: readonly SourceStage[]; transforms: readonly TransformStage[]; sinks: readonly SinkPart[]; deadLetterFactory: Factory<DeadLetterStore> }>): PipelineBuilder<never> {
    return new PipelineBuilder(
      this.settings,
      change.sources ?? this.sources,
      change.transforms ?? this.transforms,
      change.sinks ?? this.sinks,
      change.deadLetterFactory ?? this.deadLetterFactory,
    );
  }
}

/** Starts a typed pipeline. */
export function pipeline(settings: PipelineSettings = {}): PipelineBuilder<never> {
  return PipelineBuilder.create(settings);
}
