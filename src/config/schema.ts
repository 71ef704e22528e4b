/**
 * The pipeline config schema, in one place: engine keys here, each component's own keys in its
 * definition, composed per `type`. Validation is strict (unknown keys are errors) and reports
 * every problem with its path, a hint for renamed or misspelled keys, and never stops at the first.
 */
import { z } from "zod";
import { DEAD_LETTER_STORES, SINKS, SOURCES, TRANSFORMS } from "../components/builtins.js";
import { chaosOptions } from "../components/chaos.js";
import type { BatchDefaults, ComponentDefinition } from "../components/contracts.js";
import { byteSize, duration } from "../components/options.js";
import { DEFAULTS } from "./defaults.js";

/** One config problem: where (dotted path) and what. */
export interface ConfigIssue {
  readonly path: string;
  readonly message: string;
}

const name = z.string().regex(/^[A-Za-z0-9_.-]+$/, "names may use letters, digits, '_', '.', '-'");

/**
 * Names that address the prototype machinery of the plain objects that names key (the config's
 * mappings, the summary's `sinks`). `__proto__` as a key replaces an object's prototype instead
 * of adding an entry, so zod's records drop it without a word and a sink of that name vanished.
 */
const RESERVED_NAMES: ReadonlySet<string> = new Set(["__proto__", "constructor", "prototype"]);

/** The issue for a source or sink `name` that may not be used, at `path`; undefined when it may. */
export function reservedNameIssue(path: string, name: string): ConfigIssue | undefined {
  if (!RESERVED_NAMES.has(name)) return undefined;
  return { path, message: `the name "${name}" is reserved (${[...RESERVED_NAMES].join(", ")} are); choose another` };
}

const bufferSchema = z.strictObject({
  max_records: z.number().int().positive().default(DEFAULTS.buffer.max_records).describe("Most records held at once: queued, being transformed or written, until acked."),
  max_bytes: byteSize().default(DEFAULTS.buffer.max_bytes).describe("Most estimated bytes held at once, e.g. 64MiB."),
  when_full: z.enum(["block", "reject", "drop_newest"]).default(DEFAULTS.buffer.when_full).describe("block or reject: sources that can stop reading (file, generator) wait, sources that answer producers (http) refuse with 429 and Retry-After; drop_newest: drop and count."),
  chunk_size: z.number().int().positive().default(DEFAULTS.buffer.chunk_size).describe("Records a source hands over at once."),
  durable: z
    .strictObject({
      path: z.string().optional().describe("Directory of the disk log; default <data_dir>/buffer. Relative to the working directory."),
      max_bytes: byteSize().default(DEFAULTS.durable_buffer.max_bytes).describe("Most bytes of un-released entries on disk; then backpressure (when_full)."),
      fsync: z.boolean().default(DEFAULTS.durable_buffer.fsync).describe("true: a chunk counts as accepted only once on disk (O_DSYNC writes; survives power loss); false: after write (survives a process crash)."),
    })
    .optional()
    .describe("A crash-safe disk buffer: what a source was told is accepted survives SIGKILL and is replayed on start."),
});

const sourceCommon = {
  type: z.string(),
  id_field: z.string().default("id").describe("Payload field with the record id (dotted path allowed); else an id from the source position."),
  key_field: z.string().optional().describe("Payload field with the ordering key: same key, same order at every sink."),
  time_field: z.string().optional().describe("Payload field with the event time: ms since epoch or a date string."),
};

/** The `batch` keys, with the engine's defaults or a sink type's own (see `ComponentDefinition.batchDefaults`). */
function batchSchemaWith(defaults: BatchDefaults = {}) {
  return z.strictObject({
    max_records: z.number().int().positive().default(defaults.max_records ?? DEFAULTS.sink.batch.max_records).describe("Most records per batch."),
    max_bytes: byteSize().default(defaults.max_bytes ?? DEFAULTS.sink.batch.max_bytes).describe("Most estimated bytes per batch."),
    max_wait: duration().default(defaults.max_wait ?? DEFAULTS.sink.batch.max_wait_ms).describe("Longest a partial batch waits for more records."),
  });
}

const batchSchema = batchSchemaWith();

const retrySchema = z.strictObject({
  max_attempts: z.number().int().positive().default(DEFAULTS.sink.retry.max_attempts).describe("Attempts in all, the first included; then the record is dead-lettered."),
  max_elapsed: duration().default(DEFAULTS.sink.retry.max_elapsed_ms).describe("No new attempt of a batch after this long since its first; then its records are dead-lettered. Connecting is bounded by connect_timeout."),
  initial_backoff: duration().default(DEFAULTS.sink.retry.initial_backoff_ms).describe("Cap of the first backoff delay (full jitter)."),
  max_backoff: duration().default(DEFAULTS.sink.retry.max_backoff_ms).describe("Cap of any backoff delay."),
  multiplier: z.number().min(1).default(DEFAULTS.sink.retry.multiplier).describe("Growth of the delay cap per attempt."),
});

const adaptiveDefaults = DEFAULTS.sink.adaptive;

const adaptiveSchema = z
  .strictObject({
    initial: z.number().int().positive().default(adaptiveDefaults.initial).describe("Limit at start, in batches in flight."),
    max: z.number().int().positive().default(adaptiveDefaults.max).describe("Highest limit (and number of lanes); also capped by what the sink supports."),
    decrease_ratio: z.number().gt(0).lt(1).default(adaptiveDefaults.decrease_ratio).describe("Factor applied to the limit on a retryable error or a latency rise."),
    ewma_alpha: z.number().gt(0).max(1).default(adaptiveDefaults.ewma_alpha).describe("Weight of each new window in the moving average of past latency."),
    rtt_deviation_scale: z.number().min(0).default(adaptiveDefaults.rtt_deviation_scale).describe("Standard deviations above the past mean latency before a window counts as a rise."),
  })
  // Only once both keys are valid on their own: `max: 0` needs one message, not two.
  .refine((a) => a.initial <= a.max, { path: ["initial"], message: "must not exceed max", when: (payload) => payload.issues.length === 0 });

const concurrencySchema = z
  .union([
    z.number().int().positive(),
    z.literal("adaptive").transform(() => ({ adaptive: adaptiveSchema.parse({}) })),
    z.strictObject({ adaptive: adaptiveSchema.prefault({}) }),
  ])
  .default(DEFAULTS.sink.concurrency)
  .describe("Batches in flight at once (capped by what the sink supports): a number, `adaptive`, or `{ adaptive: { initial, max, decrease_ratio, ewma_alpha, rtt_deviation_scale } }`.");

const sinkDriving = {
  concurrency: concurrencySchema,
  batch: batchSchema.prefault({}),
  retry: retrySchema.prefault({}),
  connect_timeout: duration()
    .optional()
    .describe("How long the sink may take to connect before the run fails (exit 1); unset: retry until it connects. retry.max_elapsed does not bound connecting."),
  chaos: chaosOptions.optional().describe("Injected failures and latency, to rehearse incidents."),
};

const sinkCommon = { type: z.string(), ...sinkDriving };

const transformLimits = {
  timeout: duration()
    .refine((ms) => ms > 0, "must be more than 0")
    .default(DEFAULTS.transform.timeout_ms)
    .describe("How long a promise the transform returns may take to settle; then the record is dead-lettered (ERR_TRANSFORM_TIMEOUT) and the run goes on. A synchronous transform cannot be timed out, except on worker threads (workers above 1), where one busy past it is terminated and its record dead-lettered the same way."),
  max_split: z
    .number()
    .int()
    .positive()
    .default(DEFAULTS.transform.max_split)
    .describe("Most records the transform may split one record into; more dead-letters the record (ERR_TRANSFORM_SPLIT) with the count."),
};

/** The limits every transform has (`timeout`, `max_split`), shared by YAML and the library API. */
export const transformLimitsSchema = z.strictObject(transformLimits);

/** Validated transform limits. */
export type TransformLimits = z.output<typeof transformLimitsSchema>;

/** The engine's keys of the `dead_letter` block, beside the store's own. */
const deadLetterCommon = {
  type: z.string(),
  retry: z
    .strictObject({
      max_elapsed: duration()
        .default(DEFAULTS.dead_letter.retry.max_elapsed_ms)
        .describe("How long a dead-letter write may keep failing (retried with backoff) before the run ends with exit 1; its records stay un-acked and are delivered again by the next run."),
    })
    .prefault({}),
};

/** How any sink is driven (`concurrency`, `batch`, `retry`, `chaos`), shared by YAML and the library API. */
export const sinkDrivingSchema = z.strictObject(sinkDriving);

/** Validated sink driving settings. */
export type SinkDriving = z.output<typeof sinkDrivingSchema>;

/** {@link sinkDrivingSchema} with a sink type's own `batch` defaults, if it has any. */
export function sinkDrivingSchemaFor(batchDefaults: BatchDefaults | undefined): typeof sinkDrivingSchema {
  if (batchDefaults === undefined) return sinkDrivingSchema;
  // Same keys and output as sinkDrivingSchema; only the defaults differ.
  return z.strictObject({ ...sinkDriving, batch: batchSchemaWith(batchDefaults).prefault({}) }) as unknown as typeof sinkDrivingSchema;
}

/** The engine-level keys of a config; exported for the library API, which shares its defaults. */
export const topSchema = z.strictObject({
  data_dir: z.string().default(DEFAULTS.data_dir).describe("Checkpoints and the default dead-letter store. Relative to the working directory."),
  shutdown_timeout: duration().default(DEFAULTS.shutdown_timeout_ms).describe("How long a graceful stop may drain."),
  buffer: bufferSchema.prefault({}),
  workers: z
    .union([z.number().int().positive().max(64), z.literal("auto")])
    .default(DEFAULTS.workers)
    .describe(
      "Threads that decode and transform: 1 runs them on the main thread; more (or auto: one per core) runs them on worker threads, several chunks at once, in source order. Every transform must then load in a worker (module and validate do; a library closure does not).",
    ),
  sources: z.record(name, z.unknown()).refine((r) => Object.keys(r).length > 0, "at least one source is needed"),
  transforms: z.array(z.unknown()).default([]),
  sinks: z.record(name, z.unknown()).refine((r) => Object.keys(r).length > 0, "at least one sink is needed"),
  dead_letter: z.record(z.string(), z.unknown()).default({ type: "sqlite" }),
  observability: z
    .strictObject({
      listen: z.string().regex(/^[^:]+:\d+$/, "use host:port").optional().describe("Serve /metrics, /health/*, the dashboard at / (and /tap when tap is on) on host:port."),
      log_level: z.enum(["debug", "info", "warn", "error", "silent"]).default(DEFAULTS.observability.log_level),
      progress: z.enum(["auto", "always", "never"]).default("auto").describe("Live progress line: auto shows it on a terminal."),
      unready_after: duration().default(DEFAULTS.observability.unready_after_ms).describe("A sink failing this long without one success makes /health/ready answer 503."),
      tap: z.boolean().default(false).describe("Serve /tap on the observability listener: live records for `sluice tap`. Off by default: it shows payloads to whoever reaches the listener."),
      tracing: z
        .strictObject({
          otlp_endpoint: z.url({ protocol: /^https?$/, error: "use an http:// or https:// URL" }).describe("OTLP/HTTP base URL of the collector, e.g. http://127.0.0.1:4318; spans are POSTed to <otlp_endpoint>/v1/traces."),
          sample_ratio: z.number().min(0).max(1).default(DEFAULTS.observability.tracing.sample_ratio).describe("Share of traces started here that are kept (0 to 1); a request's sampled traceparent is always followed."),
          service_name: z.string().min(1).default(DEFAULTS.observability.tracing.service_name).describe("service.name of the spans."),
        })
        .optional()
        .describe("Send OpenTelemetry spans (per chunk and per batch) over OTLP/HTTP; off when absent."),
    })
    .prefault({}),
});

/** A component as validated: its definition and its options with defaults applied. */
export interface ComponentConfig<D> {
  readonly name: string;
  readonly definition: D;
  readonly options: Record<string, unknown>;
}

/** A source as validated. */
export interface SourceConfig extends ComponentConfig<(typeof SOURCES)[number]> {
  readonly idField: string;
  readonly keyField: string | undefined;
  readonly timeField: string | undefined;
}

/** A sink as validated. */
export interface SinkConfig extends ComponentConfig<(typeof SINKS)[number]> {
  readonly driving: SinkDriving;
}

/** A transform as validated. */
export interface TransformConfig extends ComponentConfig<(typeof TRANSFORMS)[number]> {
  readonly limits: TransformLimits;
}

/** A whole validated pipeline config. */
export interface PipelineConfig {
  readonly dataDir: string;
  readonly shutdownTimeoutMs: number;
  readonly buffer: z.output<typeof bufferSchema>;
  /** `workers`: 1, a number of worker threads, or `auto`. */
  readonly workers: number | "auto";
  readonly sources: readonly SourceConfig[];
  readonly transforms: readonly TransformConfig[];
  readonly sinks: readonly SinkConfig[];
  readonly deadLetter: ComponentConfig<(typeof DEAD_LETTER_STORES)[number]> & { readonly retry: { readonly max_elapsed: number } };
  readonly observability: z.output<typeof topSchema>["observability"];
}

/** Keys that were renamed or are commonly guessed, with the key to use instead. */
const RENAMED: Record<string, string> = {
  max_batch_size: "batch.max_records",
  batch_size: "batch.max_records",
  retries: "retry.max_attempts",
  max_retries: "retry.max_attempts",
  size: "max_records",
  capacity: "max_records",
  dlq: "dead_letter",
  dead_letters: "dead_letter",
  inputs: "sources",
  outputs: "sinks",
  processors: "transforms",
  "when-full": "when_full",
  metrics: "observability",
};

function editDistance(a: string, b: string): number {
  const d = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let prev = d[0]!;
    d[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const tmp = d[j]!;
      d[j] = Math.min(d[j]! + 1, d[j - 1]! + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = tmp;
    }
  }
  return d[b.length]!;
}

function unknownKeyMessage(key: string, known: readonly string[]): string {
  // Own keys only: `constructor` or `__proto__` must not find Object.prototype's.
  const renamed = Object.hasOwn(RENAMED, key) ? RENAMED[key] : undefined;
  if (renamed !== undefined) return `unknown key "${key}"; it is called "${renamed}"`;
  // The closest known key, not the first one within reach: `mx` means `max`, not `min`.
  const close = known.map((k) => ({ k, d: editDistance(k, key) })).filter((c) => c.d <= 2).sort((a, b) => a.d - b.d);
  if (close.length > 0) return `unknown key "${key}"; did you mean "${close[0]!.k}"?`;
  return `unknown key "${key}"; allowed: ${known.join(", ")}`;
}

function joinPath(prefix: string, path: readonly PropertyKey[]): string {
  let out = prefix;
  for (const p of path) out += typeof p === "number" ? `[${p}]` : out === "" ? String(p) : `.${String(p)}`;
  return out;
}

function objectKeys(schema: z.ZodType, path: readonly PropertyKey[]): string[] {
  let s: unknown = schema;
  for (const p of path) {
    s = unwrap(s);
    if (s instanceof z.ZodObject) s = s.shape[p as string];
    else return [];
  }
  s = unwrap(s);
  return s instanceof z.ZodObject ? Object.keys(s.shape) : [];
}

/** Strips defaults, optionals and transforms; a union gives its (first) object option, where unknown keys can occur. */
function unwrap(s: unknown): unknown {
  for (;;) {
    if (s instanceof z.ZodPipe) s = s.in;
    else if (s instanceof z.ZodDefault || s instanceof z.ZodPrefault || s instanceof z.ZodOptional) s = (s as z.ZodOptional).unwrap();
    else if (s instanceof z.ZodUnion) {
      const objects = (s.options as unknown[]).map(unwrap).filter((o) => o instanceof z.ZodObject);
      if (objects.length === 0) return s;
      s = objects[0];
    } else return s;
  }
}

type Issue = z.core.$ZodIssue;

/**
 * True when a union branch failed only because the value has another type (`received string`,
 * `expected object`). `expected int` is not one: zod reports a fractional number that way, and
 * `concurrency: 1.5` should hear that it is not an integer, not that it is not `adaptive`.
 */
function wrongType(branch: readonly Issue[]): boolean {
  return branch.every(
    (i) =>
      i.path.length === 0 &&
      ((i.code === "invalid_type" && i.expected !== "int") || (i.code === "invalid_union" && i.errors.every((b) => wrongType(b)))),
  );
}

/** The `expected` types a union's branches name, flattened. */
function expectedTypes(branches: readonly (readonly Issue[])[]): string[] {
  const out: string[] = [];
  for (const b of branches) {
    for (const i of b) {
      if (i.code === "invalid_type") out.push(i.expected);
      else if (i.code === "invalid_union") out.push(...expectedTypes(i.errors));
    }
  }
  return [...new Set(out)];
}

/**
 * Replaces a failed union ("Invalid input", zod's default) by the issues of the branch whose type
 * the value has, so `latency: 3 parsecs` says why it is not a duration and `latency: { min, mx }`
 * names the unknown key. When the value matches no branch's type, says which types are accepted.
 */
function flattenIssue(issue: Issue): Issue[] {
  if (issue.code !== "invalid_union" || issue.errors.length === 0) return [issue];
  const branch = issue.errors.find((b) => !wrongType(b));
  if (branch === undefined) {
    const received = /received (\w+)/.exec(JSON.stringify(issue.errors))?.[1];
    const types = expectedTypes(issue.errors);
    const expected = types.length > 1 ? `${types.slice(0, -1).join(", ")} or ${types.at(-1)}` : types.join("");
    const message = `Invalid input: expected ${expected}${received ? `, received ${received}` : ""}`;
    return [{ ...issue, message, errors: [] }];
  }
  return branch.flatMap((i) => flattenIssue({ ...i, path: [...issue.path, ...i.path] } as Issue));
}

function collect(schema: z.ZodType, value: unknown, prefix: string, issues: ConfigIssue[]): unknown {
  const r = schema.safeParse(value);
  if (r.success) return r.data;
  for (const issue of r.error.issues.flatMap((i) => flattenIssue(i))) {
    if (issue.code === "unrecognized_keys") {
      const known = objectKeys(schema, issue.path);
      for (const key of issue.keys) issues.push({ path: joinPath(prefix, [...issue.path, key]), message: unknownKeyMessage(key, known) });
    } else {
      issues.push({ path: joinPath(prefix, issue.path) || "(root)", message: issue.message });
    }
  }
  return undefined;
}

function componentSchema(def: ComponentDefinition<z.ZodObject, unknown>, common: z.ZodRawShape): z.ZodObject {
  // safeExtend keeps the component's own refinements (e.g. "exactly one of schema / schema_inline") and its strictness.
  return def.options.safeExtend({ ...common, type: z.literal(def.type) });
}

/**
 * Validates `raw` against `schema` for the library API, with the YAML loader's messages: a failed
 * union reports its matching branch, an unknown key its likely meaning ("did you mean"). `prefix`
 * (e.g. `sinks.db`) starts every issue's path.
 */
export function validateWith<S extends z.ZodType>(schema: S, raw: unknown, prefix: string): { value: z.output<S>; issues: [] } | { value: undefined; issues: ConfigIssue[] } {
  const issues: ConfigIssue[] = [];
  const value = collect(schema, raw, prefix, issues) as z.output<S> | undefined;
  return value === undefined ? { value: undefined, issues } : { value, issues: [] };
}

function findDefinition<D extends { type: string }>(defs: readonly D[], raw: unknown, path: string, kind: string, issues: ConfigIssue[]): D | undefined {
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
    issues.push({ path, message: `a ${kind} must be a mapping with a "type"` });
    return undefined;
  }
  const type = (raw as { type?: unknown }).type;
  const def = defs.find((d) => d.type === type);
  if (def === undefined) {
    const types = defs.map((d) => d.type).join(", ");
    issues.push({ path: `${path}.type`, message: type === undefined ? `missing "type"; one of: ${types}` : `unknown ${kind} type "${String(type)}"; one of: ${types}` });
  }
  return def;
}

/**
 * Validates a parsed config object (after `${ENV}` interpolation). Returns the config with every
 * default applied, or every issue found.
 */
export function validateConfig(raw: unknown): { config: PipelineConfig; issues: [] } | { config: undefined; issues: ConfigIssue[] } {
  const issues: ConfigIssue[] = [];
  const top = collect(topSchema, raw, "", issues) as z.output<typeof topSchema> | undefined;
  if (top === undefined) {
    // Still check the components, so one run of `validate` reports everything it can.
    if (raw === null || typeof raw !== "object") return { config: undefined, issues };
  }
  const rawObj = raw as Record<string, unknown>;
  // Checked on the raw mappings: zod's records never show a `__proto__` key.
  const reserved = new Set<string>();
  for (const kind of ["sources", "sinks"] as const) {
    const names = isRecord(rawObj[kind]) ? Object.keys(rawObj[kind]) : [];
    for (const n of names) {
      const issue = reservedNameIssue(`${kind}.${n}`, n);
      if (issue === undefined) continue;
      issues.push(issue);
      reserved.add(kind);
    }
  }
  // "at least one sink is needed" would be wrong there: a sink was given, under a reserved name.
  if (reserved.size > 0) issues.splice(0, issues.length, ...issues.filter((i) => !reserved.has(i.path)));
  const sourcesRaw = (top?.sources ?? (isRecord(rawObj.sources) ? rawObj.sources : {})) as Record<string, unknown>;
  const sinksRaw = (top?.sinks ?? (isRecord(rawObj.sinks) ? rawObj.sinks : {})) as Record<string, unknown>;
  const transformsRaw = top?.transforms ?? (Array.isArray(rawObj.transforms) ? rawObj.transforms : []);

  const sources: SourceConfig[] = [];
  for (const [n, v] of Object.entries(sourcesRaw)) {
    if (RESERVED_NAMES.has(n)) continue; // reported above
    const def = findDefinition(SOURCES, v, `sources.${n}`, "source", issues);
    if (!def) continue;
    const parsed = collect(componentSchema(def, sourceCommon), v, `sources.${n}`, issues) as Record<string, unknown> | undefined;
    if (!parsed) continue;
    const { type: _t, id_field, key_field, time_field, ...options } = parsed;
    sources.push({ name: n, definition: def, options, idField: id_field as string, keyField: key_field as string | undefined, timeField: time_field as string | undefined });
    const shape = { durableBuffer: (top?.buffer ?? (isRecord(rawObj.buffer) ? rawObj.buffer : {})).durable !== undefined };
    for (const c of def.conflicts?.(options as never, shape) ?? []) issues.push({ path: `sources.${n}.${c.key}`, message: c.message });
  }

  const transforms: TransformConfig[] = [];
  transformsRaw.forEach((v, i) => {
    const def = findDefinition(TRANSFORMS, v, `transforms[${i}]`, "transform", issues);
    if (!def) return;
    const parsed = collect(componentSchema(def, { type: z.string(), ...transformLimits }), v, `transforms[${i}]`, issues) as Record<string, unknown> | undefined;
    if (!parsed) return;
    const { type: _t, timeout, max_split, ...options } = parsed;
    transforms.push({ name: def.type, definition: def, options, limits: { timeout, max_split } as TransformLimits });
  });

  const sinks: SinkConfig[] = [];
  for (const [n, v] of Object.entries(sinksRaw)) {
    if (RESERVED_NAMES.has(n)) continue; // reported above
    const def = findDefinition(SINKS, v, `sinks.${n}`, "sink", issues);
    if (!def) continue;
    const common = def.batchDefaults === undefined ? sinkCommon : { ...sinkCommon, batch: batchSchemaWith(def.batchDefaults).prefault({}) };
    const parsed = collect(componentSchema(def, common), v, `sinks.${n}`, issues) as Record<string, unknown> | undefined;
    if (!parsed) continue;
    const { type: _t, concurrency, batch, retry, connect_timeout, chaos, ...options } = parsed;
    sinks.push({ name: n, definition: def, options, driving: { concurrency, batch, retry, connect_timeout, chaos } as SinkDriving });
  }

  let deadLetter: PipelineConfig["deadLetter"] | undefined;
  const dlRaw = top?.dead_letter ?? rawObj.dead_letter ?? { type: "sqlite" };
  const dlDef = findDefinition(DEAD_LETTER_STORES, dlRaw, "dead_letter", "dead_letter", issues);
  if (dlDef) {
    const parsed = collect(componentSchema(dlDef, deadLetterCommon), dlRaw, "dead_letter", issues) as Record<string, unknown> | undefined;
    if (parsed) {
      const { type: _t, retry, ...options } = parsed;
      deadLetter = { name: "dead_letter", definition: dlDef, options, retry: retry as { max_elapsed: number } };
    }
  }

  if (issues.length > 0 || !top || !deadLetter) return { config: undefined, issues };
  return {
    config: {
      dataDir: top.data_dir,
      shutdownTimeoutMs: top.shutdown_timeout,
      buffer: top.buffer,
      workers: top.workers,
      sources,
      transforms,
      sinks,
      deadLetter,
      observability: top.observability,
    },
    issues: [],
  };
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === "object" && !Array.isArray(v);
}
