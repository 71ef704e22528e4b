/**
 * sluice's public API. Build pipelines in code with {@link pipeline}, or load a YAML config with
 * {@link loadConfig} + {@link buildPipeline}; implement your own components against the contracts.
 */
export { pipeline, PipelineBuilder, fromDefinition } from "./api/builder.js";
export type { Factory, SourceFactory, SinkFactory, PipelineSettings, EnvelopeFields, RunResult, TransformLimitsInput } from "./api/builder.js";
export { sources, sinks, transforms, deadLetters } from "./api/components.js";
export type { SensorReading } from "./api/components.js";

export type {
  CheckFinding,
  ComponentContext,
  ComponentDefinition,
  DeadLetter,
  DeadLetterFilter,
  DeadLetterStatus,
  DeadLetterStore,
  DeadLetterWorkflow,
  EnqueueOutcome,
  RecordFailure,
  ReplayFailure,
  Sink,
  Source,
  SourceHandle,
  StoredDeadLetter,
  Transform,
  TransformOutput,
  WriteResult,
} from "./components/contracts.js";
export { defineComponent, defineLazyComponent } from "./components/contracts.js";
export { byteSize, duration } from "./components/options.js";

export { SluiceError, ERROR_CODES, classify } from "./core/errors.js";
export type { ErrorCode } from "./core/errors.js";
export type { SluiceRecord, RecordView, JsonObject, JsonValue } from "./core/record.js";
export type { Clock } from "./core/clock.js";
export type { Logger, InternalEvent } from "./core/events.js";
export { Pipeline } from "./core/pipeline.js";
export type { PipelineOptions, PipelineStatus, PipelineState, SourceSettings, SinkSettings } from "./core/pipeline.js";
export type { AdaptiveSettings, Concurrency } from "./core/adaptive-concurrency.js";
export { MemoryBuffer } from "./core/buffer.js";
export type { Buffer, BufferLimits, WhenFull } from "./core/buffer.js";

export { loadConfig, parseConfig, formatIssues } from "./config/load.js";
export { buildPipeline } from "./config/build.js";
export { replayDeadLetters } from "./config/replay.js";
export type { ReplayOptions, ReplayResult } from "./config/replay.js";
export type { ReplayCounts, SkippedEntry } from "./core/dead-letter-replay.js";
export type { BuiltPipeline } from "./config/build.js";
export { Metrics } from "./observability/metrics.js";
export type { RunSummary, CountsSnapshot } from "./observability/metrics.js";
export { readDeadLetters } from "./sinks/dead-letter-sqlite.js";
