/**
 * `sluice dlq replay` as a library call: sends selected dead letters back through pipelines built
 * from the config (its transforms, the sinks that failed them) and records the outcome on each.
 */
import { mkdir } from "node:fs/promises";
import { resolve } from "node:path";
import type { ComponentContext, DeadLetterStore, DeadLetterWorkflow, StoredDeadLetter } from "../components/contracts.js";
import { MemoryBuffer } from "../core/buffer.js";
import { systemClock, type Clock } from "../core/clock.js";
import { DeadLetterReplaySource, planReplay, ReplayLedger, ReplayPacer, type ReplayCounts, type ReplayGroup, type SkippedEntry } from "../core/dead-letter-replay.js";
import { SluiceError } from "../core/errors.js";
import type { EventSink, Logger } from "../core/events.js";
import { Pipeline, type PipelineStatus } from "../core/pipeline.js";
import { lockDataDir, sinkSettings } from "./build.js";
import type { PipelineConfig } from "./schema.js";

/** What a replay works on and how. */
export interface ReplayOptions {
  /** Directory of the config file: transform modules and schemas resolve against it. */
  readonly configDir: string;
  /** Working directory: `data_dir` and data paths resolve against it. */
  readonly cwd: string;
  readonly logger: Logger;
  /** The pipeline's dead-letter store, open, and its workflow. */
  readonly store: DeadLetterStore;
  readonly workflow: DeadLetterWorkflow;
  /** The selected entries, oldest first. */
  readonly entries: readonly StoredDeadLetter[];
  /** Send every entry to this sink instead of the one that failed it; must be a sink of the config. */
  readonly to?: string;
  /** Most entries per second; undefined: as fast as the sinks take them. */
  readonly rate?: number;
  /** Aborting it stops the replay gracefully: what is in flight drains, the rest stays pending. */
  readonly signal?: AbortSignal;
  /** Called after each chunk's entries are marked. */
  readonly onProgress?: (counts: Readonly<ReplayCounts>) => void;
  readonly clock?: Clock;
}

/** How a replay ended. */
export interface ReplayResult {
  readonly counts: Readonly<ReplayCounts>;
  readonly skipped: readonly SkippedEntry[];
  /** Records the sinks reported already stored (a redelivery their idempotent writes absorbed). */
  readonly alreadyPresent: number;
  /** `stopped`: the signal aborted; `failed`: a pipeline failed (a sink that cannot connect, ...), `error` says why. */
  readonly outcome: "completed" | "stopped" | "failed";
  readonly error?: SluiceError;
}

/**
 * Replays `o.entries`: takes the `data_dir` lock for the whole replay (`ERR_LOCKED` while a
 * `sluice run` of the pipeline holds it, or another replay), then runs one pipeline per group of
 * {@link planReplay}, one after the other: its sources read the entries at `o.rate`, its
 * transforms are the config's (for entries of a stage before the sinks), its sinks the group's,
 * each driven with its configured batching, retries and concurrency, its buffer in memory with
 * the config's bounds (never the durable buffer, which holds a run's records). An entry is marked
 * replayed once the sink committed its record; one that fails again stays pending with the new
 * error. Stops after the first group that does not complete.
 */
export async function replayDeadLetters(config: PipelineConfig, o: ReplayOptions): Promise<ReplayResult> {
  if (o.to !== undefined && !config.sinks.some((s) => s.name === o.to)) {
    throw new SluiceError("ERR_CONFIG_INVALID", `--to ${o.to}: no such sink in the config (sinks: ${config.sinks.map((s) => s.name).join(", ")})`);
  }
  const clock = o.clock ?? systemClock;
  const dataDir = resolve(o.cwd, config.dataDir);
  await mkdir(dataDir, { recursive: true });
  const lock = await lockDataDir(dataDir, o.logger);
  try {
    const plan = planReplay(
      o.entries,
      config.sinks.map((s) => s.name),
      o.to,
    );
    const counts: ReplayCounts = { total: plan.groups.reduce((n, g) => n + g.entries.length, 0), replayed: 0, failedAgain: 0 };
    const pacer = new ReplayPacer(o.rate, clock);
    let alreadyPresent = 0;
    const emit: EventSink = (event) => {
      if (event.type === "records_delivered") alreadyPresent += event.alreadyPresent;
      else if (event.type === "records_retried") o.logger.warn({ component: event.sink, code: event.code, first_record_id: event.firstRecordId, err: event.message, records: event.count }, "replay: write failed, retrying");
    };
    for (const group of plan.groups) {
      if (o.signal?.aborted === true) return { counts, skipped: plan.skipped, alreadyPresent, outcome: "stopped" };
      const ledger = new ReplayLedger(group.entries, o.workflow, o.store, clock, counts, () => o.onProgress?.(counts));
      const pipeline = await groupPipeline(config, o, group, ledger, pacer, dataDir, clock, emit);
      const stop = () => pipeline.stop();
      o.signal?.addEventListener("abort", stop, { once: true });
      let status: PipelineStatus;
      try {
        status = await pipeline.run();
      } finally {
        o.signal?.removeEventListener("abort", stop);
      }
      const error = status.tag === "failed" ? status.error : ledger.markFailure();
      if (error !== undefined) return { counts, skipped: plan.skipped, alreadyPresent, outcome: "failed", error };
      if (status.tag !== "completed") return { counts, skipped: plan.skipped, alreadyPresent, outcome: "stopped" };
    }
    return { counts, skipped: plan.skipped, alreadyPresent, outcome: "completed" };
  } finally {
    await lock.release();
  }
}

/** The pipeline of one group: a replay source per original source (so records keep its name, key and time fields). */
async function groupPipeline(
  config: PipelineConfig,
  o: ReplayOptions,
  group: ReplayGroup,
  ledger: ReplayLedger,
  pacer: ReplayPacer,
  dataDir: string,
  clock: Clock,
  emit: EventSink,
): Promise<Pipeline> {
  const ctx = (name: string, baseDir: string): ComponentContext => ({ name, dataDir, baseDir, clock, logger: o.logger, emit, bufferBytes: config.buffer.max_bytes });
  const bySource = new Map<string, StoredDeadLetter[]>();
  for (const e of group.entries) {
    const list = bySource.get(e.source);
    if (list === undefined) bySource.set(e.source, [e]);
    else list.push(e);
  }
  return new Pipeline({
    sources: [...bySource].map(([name, entries]) => {
      const configured = config.sources.find((s) => s.name === name);
      return { name, source: new DeadLetterReplaySource(entries, pacer, ledger), idField: false, keyField: configured?.keyField, timeField: configured?.timeField };
    }),
    transforms: group.transforms
      ? await Promise.all(config.transforms.map(async (t) => ({
          stage: `transform:${t.name}`,
          transform: await t.definition.create(t.options as never, ctx(t.name, o.configDir)),
          timeoutMs: t.limits.timeout,
          maxSplit: t.limits.max_split,
        })))
      : [],
    sinks: await Promise.all(group.sinks.map(async (name) => {
      const s = config.sinks.find((c) => c.name === name)!;
      return sinkSettings(s.name, await s.definition.create(s.options as never, ctx(s.name, o.cwd)), s.driving, clock);
    })),
    deadLetter: ledger.deadLetterStore(),
    buffer: new MemoryBuffer({ maxRecords: config.buffer.max_records, maxBytes: config.buffer.max_bytes }),
    whenFull: "block",
    chunkSize: Math.min(config.buffer.chunk_size, config.buffer.max_records),
    shutdownTimeoutMs: config.shutdownTimeoutMs,
    deadLetterMaxElapsedMs: config.deadLetter.retry.max_elapsed,
    clock,
    logger: o.logger,
    emit,
  });
}
