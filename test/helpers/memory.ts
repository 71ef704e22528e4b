/**
 * In-memory components for engine tests: a pull (or push) {@link MemorySource}, a scriptable
 * {@link MemorySink}, a {@link MemoryDeadLetterStore}, and {@link makePipeline}, which wires them
 * into a real {@link Pipeline} on a {@link FakeClock}. {@link runToEnd} drives the fake clock
 * until `run()` settles, so no engine test sleeps on real time.
 *
 * Each component also records contract violations it can see for itself (a write before
 * `connect`, more writes in flight than `maxInFlight`, overlapping or backwards acks) in a
 * `violations` list: tests assert it stays empty.
 */
import type { DeadLetter, DeadLetterStore, EnqueueOutcome, PreferredWrite, Sink, Source, SourceAcks, SourceHandle, SourceWhenFull, WriteResult } from "../../src/components/contracts.js";
import type { Concurrency } from "../../src/core/adaptive-concurrency.js";
import type { BackoffPolicy } from "../../src/core/backoff.js";
import { MemoryBuffer, type BufferLimits, type WhenFull } from "../../src/core/buffer.js";
import { sleep, type Clock } from "../../src/core/clock.js";
import { SluiceError } from "../../src/core/errors.js";
import { silentLogger, type InternalEvent } from "../../src/core/events.js";
import { Pipeline, type PipelineStatus, type SinkSettings, type SourceSettings } from "../../src/core/pipeline.js";
import { mulberry32 } from "../../src/core/random.js";
import type { AckTicket, Entry, JsonObject, SluiceRecord } from "../../src/core/record.js";
import type { BatchOptions, RetryOptions } from "../../src/core/sink-runner.js";
import type { ChainStep } from "../../src/core/transform-chain.js";
import { Metrics } from "../../src/observability/metrics.js";
import { FakeClock, flush } from "./fake-clock.js";

// ---------------------------------------------------------------------------------------------
// Source

/** A line a {@link MemorySource} hands over as unparsable input (`handle.malformed`). */
export class MalformedInput {
  constructor(readonly raw: string) {}
}

/** Marks `raw` as input the source could not parse; it is dead-lettered with `ERR_RECORD_MALFORMED`. */
export function malformed(raw: string): MalformedInput {
  return new MalformedInput(raw);
}

/** One input of a {@link MemorySource}: a payload, or a {@link MalformedInput}. */
export type MemoryInput = JsonObject | MalformedInput;

/** Options of a {@link MemorySource}. */
export interface MemorySourceOptions {
  /** The source's name in the pipeline; default `"src"`. */
  readonly name?: string;
  /** How it is acked: `ordered` (default, like a file) or `individual` (like HTTP or a broker). */
  readonly acks?: SourceAcks;
  /** What a full buffer does to `enqueue`: `wait` (default) or `reject` (sees `rejected` under `when_full: reject`). */
  readonly whenFull?: SourceWhenFull;
  /**
   * Gives the source a `connect` that rejects this many times (retryable `ERR_SOURCE_CONNECT`,
   * "ECONNREFUSED") before it resolves; absent: no `connect` at all.
   */
  readonly connectFailures?: number;
  /** With `connect`: `run` rejects with a retryable `ERR_SOURCE_CONNECT` ("connection reset") once, after this many chunks, like a broker that drops. The next `run` starts again after the last acked checkpoint. */
  readonly dropAfterChunks?: number;
  /** With `connect`: a permanent error every `connect` rejects with, instead of succeeding. */
  readonly connectError?: SluiceError;
  /** Waits for room (`handle.waitForRoom`) before it builds each chunk, like a broker source reading COUNT = room; what it was granted is kept in `roomGranted`. */
  readonly roomFirst?: boolean;
  /** With `roomFirst`: the record size it tells `waitForRoom` (its estimate of what it will fetch). */
  readonly recordBytes?: number;
  /** Gives the source an `inProgress` hook, ticked this often (ms); its calls are kept in `inProgressCalls`. */
  readonly workingIntervalMs?: number;
  /** Payload field holding the ordering key (the source's `key_field`); none by default. */
  readonly keyField?: string;
  /**
   * What `run` does after the last input: `"finish"` (default) resolves, like a file read to its
   * end; `"wait"` keeps running until the pipeline stops, like a broker subscription.
   */
  readonly end?: "finish" | "wait";
  /** Waits this long (on the clock) before each chunk; default 0 (no wait at all). */
  readonly gapMs?: number;
  /** Throws `failWith` from `run` once this many chunks were enqueued. */
  readonly failAfterChunks?: number;
  /** What `run` throws with `failAfterChunks`; default a plain `Error("source broke")`. */
  readonly failWith?: unknown;
  /** After the stop signal, `run` lingers this long (on the clock) before it resolves; default 0. */
  readonly lingerMs?: number;
  /** Called after every `enqueue` settles, with its outcome (a good place to sample the buffer). */
  readonly onEnqueued?: (outcome: EnqueueOutcome, checkpoint: number) => void;
  /** Size estimate of a payload for the byte bound; default the length of its JSON. */
  readonly bytesOf?: (payload: JsonObject) => number;
  /** The clock for `gapMs` and `lingerMs`; {@link makePipeline} fills in its own when absent. */
  clock?: Clock;
}

/**
 * An in-memory source over a fixed list of inputs. It enqueues chunks of `handle.chunkSize`
 * inputs; a chunk's checkpoint is the index just past it (so the final checkpoint is
 * `inputs.length`). Fallback ids are `mem-<index>`. Every `ack` call is kept in {@link acks}, in
 * order, and every enqueue outcome in {@link outcomes}.
 *
 * Gotcha: a `rejected` or `dropped` chunk is not enqueued again; the source moves on (tests look
 * at {@link outcomes}). A `stopping` outcome ends `run`.
 */
export class MemorySource implements Source {
  readonly name: string;
  readonly acks: SourceAcks;
  readonly whenFull: SourceWhenFull;
  readonly connect: ((signal: AbortSignal) => Promise<void>) | undefined;
  readonly inProgress: ((checkpoint: unknown) => void) | undefined;
  readonly workingIntervalMs: number | undefined;
  /** With `roomFirst`: each grant of `waitForRoom`, and the clock's time when the chunk was then built. */
  readonly roomGranted: { may: number; at: number }[] = [];
  /** Every `inProgress` call, with the clock's time. */
  readonly inProgressCalls: { checkpoint: unknown; at: number }[] = [];
  readonly keyField: string | undefined;
  /** Every checkpoint passed to `ack`, in call order. */
  readonly ackCalls: unknown[] = [];
  /** Calls of `connect`, and of `run`. */
  connects = 0;
  runs = 0;
  private dropped = false;
  /** The outcome of every `enqueue`, in order, with the chunk's checkpoint. */
  readonly outcomes: { outcome: EnqueueOutcome; checkpoint: number; records: number }[] = [];
  /** Contract violations seen by the source (pull: overlapping or backwards acks; push: a chunk acked twice; both: ack after close). */
  readonly violations: string[] = [];
  clock: Clock | undefined;
  /** Whether `close` was called. */
  closed = false;
  /** When set, `ack` awaits it (to make acks slow or failing). */
  ackHook: ((checkpoint: unknown) => Promise<void> | void) | undefined;
  private acking = false;

  constructor(
    readonly inputs: readonly MemoryInput[],
    private readonly o: MemorySourceOptions = {},
  ) {
    this.name = o.name ?? "src";
    this.acks = o.acks ?? "ordered";
    this.whenFull = o.whenFull ?? "wait";
    this.keyField = o.keyField;
    this.clock = o.clock;
    this.workingIntervalMs = o.workingIntervalMs;
    this.inProgress = o.workingIntervalMs === undefined ? undefined : (checkpoint) => this.inProgressCalls.push({ checkpoint, at: this.needClock().now() });
    this.connect =
      o.connectFailures === undefined && o.connectError === undefined
        ? undefined
        : async () => {
            this.connects++;
            if (o.connectError !== undefined) throw o.connectError;
            if (this.connects <= (o.connectFailures ?? 0)) throw new SluiceError("ERR_SOURCE_CONNECT", "ECONNREFUSED 127.0.0.1:6379");
          };
  }

  async run(handle: SourceHandle, signal: AbortSignal): Promise<void> {
    this.runs++;
    try {
      await this.produce(handle, signal);
    } finally {
      if (signal.aborted && (this.o.lingerMs ?? 0) > 0) await sleep(this.needClock(), this.o.lingerMs!);
    }
  }

  async ack(checkpoint: unknown): Promise<void> {
    if (this.closed) this.violations.push(`ack(${String(checkpoint)}) after close`);
    const last = this.ackCalls.at(-1);
    if (this.acks === "individual") {
      // Push sources are acked once per chunk, in any order, possibly while another ack runs.
      if (this.ackCalls.includes(checkpoint)) this.violations.push(`ack(${String(checkpoint)}) twice`);
    } else {
      if (this.acking) this.violations.push(`ack(${String(checkpoint)}) while another ack runs`);
      if (typeof last === "number" && typeof checkpoint === "number" && checkpoint <= last) {
        this.violations.push(`ack(${checkpoint}) after ack(${last})`);
      }
    }
    this.ackCalls.push(checkpoint);
    this.acking = true;
    try {
      await this.ackHook?.(checkpoint);
    } finally {
      this.acking = false;
    }
  }

  async close(): Promise<void> {
    this.closed = true;
  }

  private async produce(handle: SourceHandle, signal: AbortSignal): Promise<void> {
    const size = Math.max(1, handle.chunkSize);
    let chunks = 0;
    // Like a broker after a reconnect: what was not acked is delivered again.
    const from = this.runs > 1 && this.acks === "ordered" ? ((this.ackCalls.at(-1) as number | undefined) ?? 0) : 0;
    for (let start = from; start < this.inputs.length; start += size) {
      if (this.o.dropAfterChunks !== undefined && !this.dropped && chunks >= this.o.dropAfterChunks) {
        this.dropped = true;
        throw new SluiceError("ERR_SOURCE_CONNECT", "connection reset by peer");
      }
      if (this.o.failAfterChunks !== undefined && chunks >= this.o.failAfterChunks) throw this.o.failWith ?? new Error("source broke");
      if ((this.o.gapMs ?? 0) > 0) {
        try {
          await sleep(this.needClock(), this.o.gapMs!, signal);
        } catch {
          return;
        }
      }
      if (signal.aborted) return;
      if (this.o.roomFirst === true) {
        const may = await handle.waitForRoom(size, signal, this.o.recordBytes);
        if (may === 0) return;
        this.roomGranted.push({ may, at: this.needClock().now() });
      }
      const end = Math.min(this.inputs.length, start + size);
      if (this.runs > 1 && this.acks === "individual" && this.ackCalls.includes(end)) continue;
      const records: Entry[] = [];
      for (let i = start; i < end; i++) {
        const input = this.inputs[i]!;
        if (input instanceof MalformedInput) {
          records.push(handle.malformed(input.raw, `mem-${i}`, new SluiceError("ERR_RECORD_MALFORMED", `input ${i} is not JSON`)));
        } else {
          records.push(handle.record(input, this.o.bytesOf?.(input) ?? JSON.stringify(input).length, `mem-${i}`));
        }
      }
      const outcome = await handle.enqueue(records, end);
      chunks++;
      this.outcomes.push({ outcome, checkpoint: end, records: records.length });
      this.o.onEnqueued?.(outcome, end);
      if (outcome === "stopping") return;
    }
    if (this.o.failAfterChunks !== undefined && chunks >= this.o.failAfterChunks) throw this.o.failWith ?? new Error("source broke");
    if (this.o.end === "wait" && !signal.aborted) {
      await new Promise<void>((resolve) => signal.addEventListener("abort", () => resolve(), { once: true }));
    }
  }

  private needClock(): Clock {
    if (!this.clock) throw new Error("MemorySource needs a clock for gapMs / lingerMs");
    return this.clock;
  }
}

// ---------------------------------------------------------------------------------------------
// Sink

/**
 * What one `write` call of a {@link MemorySink} does:
 * - `"ok"`: commits every record;
 * - `"retryable"` / `"permanent"`: throws `ERR_SINK_WRITE` / `ERR_SINK_REJECTED`, commits nothing;
 * - `{ fail }`: commits all but the listed indexes, reported as per-record failures (indexes past
 *   the batch's end are ignored, so a random schedule stays valid for any batch size);
 * - `{ throw }`: throws that value as is (to exercise the classifier);
 * - `"hang"`: never settles on its own; rejects when the write's signal aborts;
 * - `{ delayMs, then }`: waits `delayMs` on the clock (abort-aware), then does `then`.
 */
export type WriteStep =
  | "ok"
  | "retryable"
  | "permanent"
  | "hang"
  | { readonly fail: readonly { readonly index: number; readonly retryable: boolean }[] }
  | { readonly throw: unknown }
  | { readonly delayMs: number; readonly then: WriteStep };

/** One `write` call as a {@link MemorySink} saw it. */
export interface WriteCall {
  /** 0-based number of the call. */
  readonly n: number;
  /** Clock time when the call started. */
  readonly at: number;
  readonly ids: readonly string[];
  readonly records: readonly SluiceRecord[];
}

/** Options of a {@link MemorySink}. */
export interface MemorySinkOptions {
  /** The sink's name in the pipeline; default `"sink"`. */
  readonly name?: string;
  /** Declared `maxInFlight`; default 64, so the runner's `concurrency` decides. */
  readonly maxInFlight?: number;
  /** Declared `preferredWrite`; default none (every write one batch). */
  readonly preferredWrite?: PreferredWrite;
  /**
   * The failure schedule: an array is consumed one step per write call (then `"ok"`), a function
   * is asked for every call.
   */
  readonly schedule?: readonly WriteStep[] | ((call: WriteCall) => WriteStep);
  /** The first this-many `connect` calls reject with a retryable `ERR_SINK_CONNECT`. */
  readonly connectFailures?: number;
  /** Every `connect` call rejects with this error (a sink that can never work). */
  readonly connectError?: SluiceError;
  /**
   * Every `connect` call waits this long on the clock before its outcome, or rejects with the
   * signal's reason when aborted first (a connect that hangs, as to a host that drops packets).
   */
  readonly connectDelayMs?: number;
  /** Called at the start of every write call (a good place to sample the buffer). */
  readonly onWrite?: (call: WriteCall) => void;
  /** Called when a write call settles, whatever its outcome. */
  readonly onWriteDone?: (call: WriteCall) => void;
  /**
   * Ids the sink holds from an earlier run. When given, the sink reports every record whose id it
   * held before the write as `alreadyPresent`, as sqlite and postgres do; without it, none.
   */
  readonly stored?: readonly string[];
  /** The clock for `delayMs` steps; {@link makePipeline} fills in its own when absent. */
  clock?: Clock;
}

/**
 * An in-memory, idempotent sink. Committed records are kept by id ({@link committed}) and in
 * commit order, overall ({@link commitLog}, repeats included) and per key ({@link orderByKey}).
 * It counts writes in flight ({@link maxConcurrentWrites}) and logs every call ({@link writes}).
 */
export class MemorySink implements Sink {
  readonly name: string;
  readonly maxInFlight: number;
  readonly preferredWrite: PreferredWrite | undefined;
  /** Committed records by id. */
  readonly committed = new Map<string, SluiceRecord>();
  /** Every commit of a record, in order; an id listed twice was committed twice. */
  readonly commitLog: string[] = [];
  /** Ids of keyed records in commit order, per key. */
  readonly orderByKey = new Map<string, string[]>();
  /** Every write call, in order of starting. */
  readonly writes: WriteCall[] = [];
  /** Clock time of every `connect` call. */
  readonly connectCalls: number[] = [];
  /** Contract violations seen by the sink (write before connect or after close, too many in flight). */
  readonly violations: string[] = [];
  /** Writes running right now. */
  inFlight = 0;
  /** The most writes that ever ran at once. */
  maxConcurrentWrites = 0;
  closed = false;
  clock: Clock | undefined;
  private connected = false;
  /** Ids held, when the sink reports records already present ({@link MemorySinkOptions.stored}). */
  private readonly held: Set<string> | undefined;

  constructor(private readonly o: MemorySinkOptions = {}) {
    this.held = o.stored === undefined ? undefined : new Set(o.stored);
    this.name = o.name ?? "sink";
    this.maxInFlight = o.maxInFlight ?? 64;
    this.preferredWrite = o.preferredWrite;
    this.clock = o.clock;
  }

  /** How many times `id` was committed. */
  commits(id: string): number {
    let n = 0;
    for (const c of this.commitLog) if (c === id) n++;
    return n;
  }

  async connect(signal: AbortSignal): Promise<void> {
    this.connectCalls.push(this.clock?.now() ?? 0);
    if (this.o.connectDelayMs !== undefined) await sleep(this.clock!, this.o.connectDelayMs, signal);
    if (this.o.connectError) throw this.o.connectError;
    if (this.connectCalls.length <= (this.o.connectFailures ?? 0)) {
      throw new SluiceError("ERR_SINK_CONNECT", `connect refused (${this.connectCalls.length})`);
    }
    this.connected = true;
  }

  async write(records: readonly SluiceRecord[], signal: AbortSignal): Promise<WriteResult | void> {
    const call: WriteCall = { n: this.writes.length, at: this.clock?.now() ?? 0, ids: records.map((r) => r.id), records: [...records] };
    this.writes.push(call);
    if (!this.connected) this.violations.push(`write #${call.n} before connect`);
    if (this.closed) this.violations.push(`write #${call.n} after close`);
    this.inFlight++;
    this.maxConcurrentWrites = Math.max(this.maxConcurrentWrites, this.inFlight);
    if (this.inFlight > this.maxInFlight) this.violations.push(`write #${call.n}: ${this.inFlight} in flight > maxInFlight ${this.maxInFlight}`);
    try {
      this.o.onWrite?.(call);
      const schedule = this.o.schedule;
      const step = typeof schedule === "function" ? schedule(call) : (schedule?.[call.n] ?? "ok");
      return await this.perform(step, records, signal);
    } finally {
      this.inFlight--;
      this.o.onWriteDone?.(call);
    }
  }

  async close(): Promise<void> {
    this.closed = true;
  }

  private async perform(step: WriteStep, records: readonly SluiceRecord[], signal: AbortSignal): Promise<WriteResult | void> {
    if (step === "ok") return this.commit(records);
    if (step === "retryable") throw new SluiceError("ERR_SINK_WRITE", "sink unavailable");
    if (step === "permanent") throw new SluiceError("ERR_SINK_REJECTED", "sink rejected the batch");
    if (step === "hang") {
      await new Promise<never>((_, reject) => {
        if (signal.aborted) reject(signal.reason);
        signal.addEventListener("abort", () => reject(signal.reason), { once: true });
      });
      return;
    }
    if ("throw" in step) throw step.throw;
    if ("delayMs" in step) {
      if (!this.clock) throw new Error("MemorySink needs a clock for delayMs steps");
      await sleep(this.clock, step.delayMs, signal);
      return this.perform(step.then, records, signal);
    }
    const failed = new Map<number, boolean>();
    for (const f of step.fail) if (f.index >= 0 && f.index < records.length) failed.set(f.index, f.retryable);
    return {
      ...this.commit(records, failed),
      failures: [...failed].map(([index, retryable]) => ({
        index,
        error: retryable
          ? new SluiceError("ERR_SINK_WRITE", `record ${records[index]!.id} hit a lock`)
          : new SluiceError("ERR_SINK_REJECTED", `record ${records[index]!.id} violates a constraint`),
      })),
    };
  }

  /** Commits `records` but those at the indexes in `skip`; reports the ones held before, when the sink reports them. */
  private commit(records: readonly SluiceRecord[], skip?: ReadonlyMap<number, boolean>): WriteResult {
    const alreadyPresent: number[] = [];
    for (const [i, r] of records.entries()) {
      if (skip?.has(i)) continue;
      if (this.held?.has(r.id)) alreadyPresent.push(i);
      this.held?.add(r.id);
      this.commitLog.push(r.id);
      this.committed.set(r.id, r);
      if (r.key !== undefined) {
        const ids = this.orderByKey.get(r.key) ?? [];
        ids.push(r.id);
        this.orderByKey.set(r.key, ids);
      }
    }
    return this.held === undefined ? {} : { alreadyPresent };
  }
}

// ---------------------------------------------------------------------------------------------
// Dead-letter store

/** A dead-letter store that keeps entries in memory and can be told to fail its next writes. */
export class MemoryDeadLetterStore implements DeadLetterStore {
  /** Entries committed so far, in order. */
  readonly entries: DeadLetter[] = [];
  /** Number of `write` calls, failed ones included. */
  writeCalls = 0;
  opened = false;
  closed = false;

  /** @param failures the first this-many `write` calls reject (with a plain `Error`, as a driver would). */
  constructor(public failures = 0) {}

  async open(): Promise<void> {
    this.opened = true;
  }

  async write(entries: readonly DeadLetter[]): Promise<void> {
    this.writeCalls++;
    if (this.failures > 0) {
      this.failures--;
      throw new Error("dead-letter store unavailable");
    }
    this.entries.push(...entries);
  }

  async close(): Promise<void> {
    this.closed = true;
  }

  /** Entries whose `sink` (sink name or stage) is `sink`. */
  for(sink: string): DeadLetter[] {
    return this.entries.filter((e) => e.sink === sink);
  }
}

// ---------------------------------------------------------------------------------------------
// Records

/** Options of {@link makeEntry}. */
export interface EntryOptions {
  readonly key?: string;
  readonly bytes?: number;
  readonly payload?: JsonObject;
  readonly source?: string;
  readonly receivedAt?: number;
  /** The chunk's ticket; default a detached ticket for this one record. */
  readonly ticket?: AckTicket;
}

/** A bare engine {@link Entry} for tests that drive a buffer or a sink runner directly. */
export function makeEntry(id: string, o: EntryOptions = {}): Entry {
  return {
    id,
    key: o.key,
    payload: o.payload ?? { id },
    eventTime: undefined,
    receivedAt: o.receivedAt ?? 0,
    source: o.source ?? "src",
    attempts: 0,
    bytes: o.bytes ?? 10,
    ticket: o.ticket ?? { seq: 0, checkpoint: undefined, receivedAt: 0, records: 1, bytes: o.bytes ?? 10, pending: 1, onDone: () => {} },
    pendingSinks: 1,
    deadLettered: false,
    storedNew: false,
    failure: undefined,
    raw: undefined,
  };
}

// ---------------------------------------------------------------------------------------------
// Pipeline

/** Options of {@link makePipeline}; everything has a small test default. */
export interface TestPipelineOptions {
  /** Inputs of the default source (one {@link MemorySource} named `src`); ignored when `sources` is given. */
  readonly inputs?: readonly MemoryInput[];
  readonly sources?: readonly MemorySource[];
  /** Default: one {@link MemorySink} named `sink`. */
  readonly sinks?: readonly MemorySink[];
  readonly transforms?: readonly ChainStep[];
  readonly deadLetter?: MemoryDeadLetterStore;
  /** Default 1000 records, 1 MiB. */
  readonly limits?: Partial<BufferLimits>;
  readonly whenFull?: WhenFull;
  /** Default 10. */
  readonly chunkSize?: number;
  /** Default 5000 ms. */
  readonly shutdownTimeoutMs?: number;
  /** Per-sink batching; default 10 records, 1 MiB, 100 ms. */
  readonly batch?: Partial<BatchOptions>;
  /** Per-sink retry; default 5 attempts, 60 s, backoff 100 ms x2 up to 1 s. */
  readonly retry?: Partial<RetryOptions>;
  /** Per-sink connect timeout, ms; default none (retry until connected). */
  readonly connectTimeoutMs?: number;
  /** Per-sink lanes (or an adaptive limit); default 1. */
  readonly concurrency?: Concurrency;
  readonly deadLetterBackoff?: BackoffPolicy;
  /** How long a dead-letter write may keep failing, ms; default: until the hard deadline. */
  readonly deadLetterMaxElapsedMs?: number;
  /** Seed of the pipeline's random (backoff jitter); default 1. Ignored when `random` is given. */
  readonly seed?: number;
  readonly random?: () => number;
  readonly clock?: FakeClock;
}

/** A pipeline built by {@link makePipeline}, with its parts exposed for assertions. */
export interface TestPipeline {
  readonly pipeline: Pipeline;
  readonly clock: FakeClock;
  readonly metrics: Metrics;
  readonly buffer: MemoryBuffer;
  readonly sources: readonly MemorySource[];
  readonly sinks: readonly MemorySink[];
  readonly deadLetters: MemoryDeadLetterStore;
  /** Every internal event emitted, in order. */
  readonly events: InternalEvent[];
  /** The first source (the default one). */
  readonly source: MemorySource;
  /** The first sink (the default one). */
  readonly sink: MemorySink;
  /** {@link runToEnd} on this pipeline and clock: runs it (or finishes `running`) to the end. */
  run(running?: RunningPipeline, options?: DriveOptions): Promise<PipelineStatus>;
  /** {@link startRun}: starts `run()` without driving the clock. */
  start(): RunningPipeline;
  /** {@link driveUntil} on this pipeline's clock. */
  drive(done: () => boolean, options?: DriveOptions): Promise<void>;
}

/**
 * Builds a {@link Pipeline} on a {@link MemoryBuffer}, a {@link FakeClock} and a seeded random,
 * with an `emit` that feeds a {@link Metrics} (read `metrics.snapshot()`) and keeps every event.
 * Sources and sinks without a clock get the pipeline's.
 */
export function makePipeline(o: TestPipelineOptions = {}): TestPipeline {
  const clock = o.clock ?? new FakeClock();
  const sources = o.sources ?? [new MemorySource(o.inputs ?? [])];
  const sinks = o.sinks ?? [new MemorySink()];
  for (const c of [...sources, ...sinks]) c.clock ??= clock;
  const deadLetters = o.deadLetter ?? new MemoryDeadLetterStore();
  const buffer = new MemoryBuffer({ maxRecords: o.limits?.maxRecords ?? 1000, maxBytes: o.limits?.maxBytes ?? 1024 * 1024 });
  const metrics = new Metrics(
    sinks.map((s) => s.name),
    silentLogger,
    () => clock.now(),
  );
  metrics.watchBuffer(() => buffer.usage());
  const events: InternalEvent[] = [];
  const batch: BatchOptions = { maxRecords: 10, maxBytes: 1024 * 1024, maxWaitMs: 100, ...o.batch };
  const retry: RetryOptions = { maxAttempts: 5, maxElapsedMs: 60_000, backoff: { initialMs: 100, maxMs: 1000, multiplier: 2 }, ...o.retry };
  const sourceSettings: SourceSettings[] = sources.map((s) => ({ name: s.name, source: s, keyField: s.keyField }));
  const sinkSettings: SinkSettings[] = sinks.map((s) => ({ name: s.name, sink: s, batch, retry, connectTimeoutMs: o.connectTimeoutMs, concurrency: o.concurrency ?? 1 }));
  const pipeline = new Pipeline({
    sources: sourceSettings,
    transforms: o.transforms ?? [],
    sinks: sinkSettings,
    deadLetter: deadLetters,
    buffer,
    whenFull: o.whenFull ?? "block",
    chunkSize: o.chunkSize ?? 10,
    shutdownTimeoutMs: o.shutdownTimeoutMs ?? 5000,
    deadLetterBackoff: o.deadLetterBackoff,
    deadLetterMaxElapsedMs: o.deadLetterMaxElapsedMs,
    clock: guardClock(clock),
    random: o.random ?? mulberry32(o.seed ?? 1),
    logger: silentLogger,
    emit: (e) => {
      events.push(e);
      metrics.handle(e);
    },
  });
  return {
    pipeline,
    clock,
    metrics,
    buffer,
    sources,
    sinks,
    deadLetters,
    events,
    source: sources[0]!,
    sink: sinks[0]!,
    run: (running, options) => runToEnd(running ?? pipeline, clock, options),
    start: () => startRun(pipeline),
    drive: (done, options) => driveUntil(clock, done, options),
  };
}

// ---------------------------------------------------------------------------------------------
// Driving the fake clock

/**
 * The engine's view of `clock`, guarded against timer storms: setting more than `limit` timers
 * without time moving (a timer that re-arms itself for "now", say) throws instead of spinning
 * forever inside {@link FakeClock.advanceAsync}, where {@link driveUntil}'s step guard cannot
 * reach. {@link makePipeline} hands this to the pipeline.
 */
export function guardClock(clock: FakeClock, limit = 10_000): Clock {
  let at = Number.NaN;
  let count = 0;
  return {
    now: () => clock.now(),
    setTimer(ms, fn) {
      const now = clock.now();
      if (now !== at) {
        at = now;
        count = 0;
      }
      if (++count > limit) throw new Error(`timer storm: over ${limit} timers set at t=${now} without time moving`);
      return clock.setTimer(ms, fn);
    },
  };
}

/** Options of {@link runToEnd} and {@link driveUntil}. */
export interface DriveOptions {
  /** Clock steps (and idle turns) before giving up; default 20,000. */
  readonly maxSteps?: number;
}

/**
 * Drives `clock` until `done()` is true: lets pending promises and immediates run, then jumps to
 * the next timer, again and again. Throws when nothing is scheduled and `done()` stays false
 * (the code under test waits for something that never comes) or after `maxSteps` steps, so a bug
 * fails the test instead of hanging it.
 */
export async function driveUntil(clock: FakeClock, done: () => boolean, options: DriveOptions = {}): Promise<void> {
  const maxSteps = options.maxSteps ?? 20_000;
  let idle = 0;
  for (let step = 0; step < maxSteps; step++) {
    await flush();
    if (done()) return;
    const next = clock.nextTimerAt();
    if (next === undefined) {
      // Nothing on the clock: allow a few more turns for promise chains, then call it stuck.
      if (++idle > 5) throw new Error(`stuck at t=${clock.now()}: no timer pending and the awaited condition is still false`);
      continue;
    }
    idle = 0;
    await clock.advanceAsync(Math.max(0, next - clock.now()));
  }
  throw new Error(`gave up after ${maxSteps} steps at t=${clock.now()}`);
}

/** A `pipeline.run()` in progress, as {@link startRun} returns it. */
export interface RunningPipeline {
  /** Whether `run()` has settled. */
  readonly settled: boolean;
  /** The status `run()` resolved with; throws its rejection; undefined while it runs. */
  status(): PipelineStatus | undefined;
}

/**
 * Calls `pipeline.run()` without driving the clock, so a test can drive part of the run with
 * {@link driveUntil}, look at the state, and finish with {@link runToEnd}.
 */
export function startRun(pipeline: Pipeline): RunningPipeline {
  let outcome: { ok: true; status: PipelineStatus } | { ok: false; error: unknown } | undefined;
  pipeline.run().then(
    (status) => (outcome = { ok: true, status }),
    (error: unknown) => (outcome = { ok: false, error }),
  );
  return {
    get settled() {
      return outcome !== undefined;
    },
    status() {
      if (outcome === undefined) return undefined;
      if (!outcome.ok) throw outcome.error;
      return outcome.status;
    },
  };
}

/**
 * Drives `clock` (see {@link driveUntil}) until the run settles; resolves with its status, rejects
 * with its error or when the drive gets stuck. Given a pipeline, calls `run()` first; given a
 * {@link RunningPipeline} from {@link startRun}, finishes that run.
 */
export async function runToEnd(target: Pipeline | RunningPipeline, clock: FakeClock, options: DriveOptions = {}): Promise<PipelineStatus> {
  const running = target instanceof Pipeline ? startRun(target) : target;
  await driveUntil(clock, () => running.settled, options);
  return running.status()!;
}
