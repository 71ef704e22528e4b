import type { SpanContext, Tracer } from "@opentelemetry/api";
import type { DeadLetter, DeadLetterStore, EnqueueOptions, EnqueueOutcome, Source, SourceHandle } from "../components/contracts.js";
import { AckTracker } from "./acks.js";
import type { BackoffPolicy } from "./backoff.js";
import type { Buffer, Chunk, WhenFull } from "./buffer.js";
import { systemClock, type Clock } from "./clock.js";
import { DeadLetterWriter } from "./dead-letters.js";
import type { DirLock } from "./dir-lock.js";
import { classify, SluiceError } from "./errors.js";
import { silentLogger, type EventSink, type Logger } from "./events.js";
import { EnvelopeReader } from "./envelope.js";
import { RecordEntry, settle, withPayloads, type AckTicket, type Entry } from "./record.js";
import { SinkRunner, type SinkSettings } from "./sink-runner.js";
import { InProgressTicker, runSource } from "./source-runner.js";
import { ParallelTransforms, type ParallelHooks, type TransformPool } from "./parallel-transforms.js";
import { Splitter } from "./split.js";
import type { RecordTap } from "./tap.js";
import { installedTracer, Tracing } from "./tracing.js";
import { TransformChain, type ChainStep } from "./transform-chain.js";

/** A source and how its records get their envelope. */
export interface SourceSettings {
  readonly name: string;
  readonly source: Source;
  /**
   * Payload field (dotted path allowed) holding the record id; default `id`. `false`: the id is
   * always the envelope's (a replay of dead letters, whose records keep the ids they had).
   */
  readonly idField?: string | false;
  /** Payload field holding the ordering key; none by default. */
  readonly keyField?: string;
  /** Payload field holding the event time (ms since epoch, or a date string); none by default. */
  readonly timeField?: string;
  /** Backoff between connect attempts of a source that has `connect`; default the sinks' default (100 ms doubling to 10 s). */
  readonly connectBackoff?: BackoffPolicy;
}

export type { SinkSettings } from "./sink-runner.js";

/** Everything a pipeline is made of. Built from YAML by `config/build.ts`, or by hand through the library API. */
export interface PipelineOptions {
  readonly sources: readonly SourceSettings[];
  readonly transforms: readonly ChainStep[];
  readonly sinks: readonly SinkSettings[];
  readonly deadLetter: DeadLetterStore;
  readonly buffer: Buffer;
  readonly whenFull: WhenFull;
  /** Records per source chunk; keep it well under the buffer's max_records. */
  readonly chunkSize: number;
  /** How long a graceful stop may drain before in-flight work is abandoned (un-acked), in ms. */
  readonly shutdownTimeoutMs: number;
  /** Backoff of dead-letter store retries. */
  readonly deadLetterBackoff?: BackoffPolicy;
  /** How long a dead-letter write may keep failing before the run fails with `ERR_DEAD_LETTER_WRITE`, in ms; undefined: retried until the hard deadline. */
  readonly deadLetterMaxElapsedMs?: number;
  readonly clock?: Clock;
  readonly random?: () => number;
  readonly logger?: Logger;
  readonly emit?: EventSink;
  /**
   * Where the pipeline's spans go (one per chunk or batch, see `tracing.ts`). Default: the tracer
   * of the OpenTelemetry SDK the host installed before building the pipeline; without one, no spans.
   */
  readonly tracer?: Tracer;
  /** The lock on `data_dir` taken when the pipeline was built; `run()` gives it up when it ends, however it ends. */
  readonly lock?: DirLock;
  /** Shown the records passing each stage while a reader listens (`observability.tap`). */
  readonly tap?: RecordTap;
  /**
   * Worker threads that decode and transform (`workers` above 1), built from the same transforms
   * as `transforms`; undefined: the transforms run on this thread. Closed when the run ends.
   */
  readonly transformPool?: TransformPool;
}

/**
 * How a run ended. `completed`: finite sources exhausted and everything delivered or
 * dead-lettered. `stopped`: a stop was asked and everything in flight drained. `timed_out`: the
 * stop's drain hit `shutdown_timeout`; what was in flight stays un-acked. `failed`: a source
 * failed, a sink could not connect (for good, or within its `connect_timeout`), dead letters could
 * not be written for `deadLetterMaxElapsedMs` (`ERR_DEAD_LETTER_WRITE`), or a stop found a sink
 * that never connected with records in flight and no durable buffer; `error` says why.
 */
export type PipelineStatus =
  | { tag: "completed" }
  | { tag: "stopped" }
  | { tag: "timed_out"; unacked: number }
  | { tag: "failed"; error: SluiceError; unacked: number };

/** A pipeline's lifecycle state. */
export type PipelineState = { tag: "idle" } | { tag: "running" } | { tag: "draining"; deadline: number } | { tag: "done"; status: PipelineStatus };


/** A source handle's `enqueue`, given the span context of the chunk's receive span (when traced) to keep on its ticket. */
type EnqueueChunk = (records: Entry[], checkpoint: unknown, options?: EnqueueOptions, trace?: SpanContext) => Promise<EnqueueOutcome>;

const DEFAULT_DLQ_BACKOFF: BackoffPolicy = { initialMs: 100, maxMs: 10_000, multiplier: 2 };
/** The sinks' default retry backoff (`retry.initial_backoff_ms`, `max_backoff_ms`), so a source reconnects like a sink. */
const DEFAULT_SOURCE_BACKOFF: BackoffPolicy = { initialMs: 100, maxMs: 10_000, multiplier: 2 };
/** How long the components' `close` may take together once the run is over, in ms: one whose service stopped answering is left unclosed (and logged) rather than holding the run's end. */
const CLOSE_TIMEOUT_MS = 5_000;

/**
 * A running pipeline: sources -> buffer -> transform chain -> every sink, with acks flowing back.
 * Call {@link run} once; {@link stop} asks for a graceful stop from anywhere (a signal handler).
 */
export class Pipeline {
  private readonly clock: Clock;
  private readonly random: () => number;
  private readonly logger: Logger;
  private readonly emit: EventSink;
  private readonly sourceAbort = new AbortController();
  private readonly hardAbort = new AbortController();
  private readonly deadLetters: DeadLetterWriter;
  private readonly runners: SinkRunner[];
  private readonly chain: TransformChain;
  /** Set when the transforms run on worker threads (`transformPool`). */
  private readonly parallel: ParallelTransforms | undefined;
  /** The last transform's name (its stage without `transform:`), which the tap's `transform` stage names; undefined without transforms. */
  private readonly lastTransform: string | undefined;
  private readonly trackers: AckTracker[];
  /** Per source: the ticks of its `inProgress` hook, when it has one. */
  private readonly tickers: (InProgressTicker | undefined)[];
  private state: PipelineState = { tag: "idle" };
  private failure: SluiceError | undefined;
  /** Set when a stop did not drain because a sink never connected (see {@link stop}). */
  private abandoned: SluiceError | undefined;
  /** `ordered` sources whose latest ack (or close) failed to save their progress, with why. */
  private readonly unsaved = new Map<string, SluiceError>();
  private cancelDeadline: (() => void) | undefined;
  /** `individual` acks sent and not yet settled: close comes after them (contracts.ts), bounded by the stop's deadline. */
  private readonly acking = new Set<Promise<void>>();
  /** Undefined without a tracer: then no span is made and no record is looked at for tracing. */
  private readonly tracing: Tracing | undefined;
  /** What the chunk being transformed came to so far, for its `sluice.transform` span. */
  private chunkOut = 0;
  private chunkFiltered = 0;
  private chunkDeadLettered = 0;

  constructor(private readonly o: PipelineOptions) {
    if (o.sinks.length === 0) throw new SluiceError("ERR_CONFIG_INVALID", "a pipeline needs at least one sink");
    if (o.sources.length === 0) throw new SluiceError("ERR_CONFIG_INVALID", "a pipeline needs at least one source");
    this.clock = o.clock ?? systemClock;
    this.random = o.random ?? Math.random;
    this.logger = o.logger ?? silentLogger;
    this.emit = o.emit ?? (() => {});
    const tracer = o.tracer ?? installedTracer();
    this.tracing = tracer === undefined ? undefined : new Tracing(tracer);
    this.deadLetters = new DeadLetterWriter(
      o.deadLetter,
      this.clock,
      this.random,
      o.deadLetterBackoff ?? DEFAULT_DLQ_BACKOFF,
      this.logger,
      this.hardAbort.signal,
      {
        maxElapsedMs: o.deadLetterMaxElapsedMs ?? Number.POSITIVE_INFINITY,
        emit: this.emit,
        // Nothing that needs a dead letter can finish now: waiting for a drain would only wait for shutdown_timeout.
        giveUp: (error) => this.fail(error, "dead_letter", "dead-letter store cannot write; stopping", false),
      },
    );
    this.runners = o.sinks.map(
      (s) =>
        new SinkRunner({
          name: s.name,
          sink: s.sink,
          batch: s.batch,
          retry: s.retry,
          connectTimeoutMs: s.connectTimeoutMs,
          concurrency: s.concurrency,
          clock: this.clock,
          random: this.random,
          emit: this.emit,
          logger: this.logger,
          deadLetters: this.deadLetters,
          signal: this.hardAbort.signal,
          tracing: this.tracing,
          onDone: (records, dead) => {
            if (!dead && o.tap?.listening === true) o.tap.observe("sink", s.name, withPayloads(records));
            this.sinkDone(records, dead);
          },
        }),
    );
    const splitter = new Splitter({ buffer: o.buffer, emit: this.emit, signal: this.hardAbort.signal, handOn: (out) => this.fanOut(out.splice(0)) });
    this.lastTransform = o.transforms.at(-1)?.stage.replace(/^transform:/, "");
    this.chain = new TransformChain(
      o.transforms,
      {
        filtered: (r) => {
          this.chunkFiltered++;
          this.emit({ type: "records_dropped", reason: "filtered", count: 1 });
          settle(r.ticket, 1);
        },
        failed: (r, stage, err) => this.deadLetterEarly([r], stage, classify(err, "ERR_TRANSFORM_FAILED")),
        split: (r, payloads, out, next) => splitter.run(r, payloads, out, next),
      },
      this.clock,
      this.hardAbort.signal,
    );
    const sinksReadPayloads = o.sinks.some((s) => s.sink.readsPayloads !== false);
    this.parallel =
      o.transformPool === undefined
        ? undefined
        : new ParallelTransforms(
            o.transformPool,
            {
              filtered: (r) => {
                this.chunkFiltered++;
                this.emit({ type: "records_dropped", reason: "filtered", count: 1 });
                settle(r.ticket, 1);
              },
              failed: (r, stage, err) => this.deadLetterEarly([r], stage, err),
              malformed: (records) => this.deadLetterEarly(records, `source:${records[0]!.source}`, undefined),
              fanOut: (records) => this.fanOut(records),
              fatal: (error) => this.fail(error, "workers", "transform worker threads cannot run; stopping", false),
              payloadsRead: () => sinksReadPayloads || o.tap?.listening === true,
              ...(this.tracing !== undefined && this.tracedChunks(this.tracing)),
            },
            splitter,
            this.hardAbort.signal,
          );
    this.trackers = o.sources.map(
      (s) =>
        new AckTracker(
          async (checkpoint) => {
            await s.source.ack(checkpoint);
            // A later checkpoint saved covers an earlier one that was not.
            this.unsaved.delete(s.name);
          },
          (err) => {
            const e = classify(err, "ERR_SOURCE_READ");
            this.unsaved.set(s.name, e);
            this.emit({ type: "component_error", component: s.name, code: e.code, message: e.message });
          },
        ),
    );
    this.tickers = o.sources.map((s) => {
      const { source, name } = s;
      if (source.inProgress === undefined) return undefined;
      const interval = source.workingIntervalMs;
      if (interval === undefined || !(interval > 0)) throw new SluiceError("ERR_CONFIG_INVALID", `source ${name} has inProgress but no positive workingIntervalMs`);
      return new InProgressTicker(source, interval, this.clock, (err) => {
        const e = classify(err, "ERR_SOURCE_CONNECT");
        this.emit({ type: "component_error", component: name, code: e.code, message: e.message });
      });
    });
  }

  /** The lifecycle state right now. */
  status(): PipelineState {
    return this.state;
  }

  /** Records and bytes held by the buffer (queued, transforming or being written). */
  bufferUsage(): { records: number; bytes: number } {
    return this.o.buffer.usage();
  }

  /**
   * Runs until finite sources are exhausted and everything is delivered, or until {@link stop}.
   * Resolves with how it ended; rejects only on a bug.
   */
  async run(): Promise<PipelineStatus> {
    if (this.state.tag !== "idle") throw new SluiceError("ERR_INTERNAL", "a pipeline runs once");
    try {
      return await this.runToEnd();
    } finally {
      await this.o.lock?.release().catch((err: unknown) => this.logger.warn({ path: this.o.lock?.file, err: String(err) }, "could not remove the data_dir lock file"));
    }
  }

  private async runToEnd(): Promise<PipelineStatus> {
    this.state = { tag: "running" };
    this.emit({ type: "pipeline_run", phase: "started" });
    try {
      await this.o.buffer.open();
    } catch (err) {
      const error = classify(err, "ERR_BUFFER_IO");
      this.logger.error({ component: "buffer", code: error.code, err: error.message }, "buffer cannot open; stopping");
      const status: PipelineStatus = { tag: "failed", error, unacked: 0 };
      await this.closeAll();
      this.state = { tag: "done", status };
      this.emit({ type: "pipeline_run", phase: "done" });
      return status;
    }
    const deadLetterError = await this.deadLetters.open();
    if (deadLetterError !== undefined) {
      this.logger.warn({ component: "dead_letter", code: deadLetterError.code, err: deadLetterError.message }, "dead-letter store cannot open; opened again at the first dead letter");
    }
    this.runners.forEach((runner, i) => {
      void runner.start().then((error) => {
        if (error) this.fail(error, this.o.sinks[i]!.name, "sink cannot connect; stopping", false);
      });
    });

    const sourcesDone = Promise.all(this.o.sources.map((s, i) => this.runSource(s, this.trackers[i]!, this.tickers[i]))).then(() => this.o.buffer.close());

    for (let chunk = await this.o.buffer.pull(); chunk !== undefined; chunk = await this.o.buffer.pull()) {
      if (this.parallel !== undefined) {
        await this.parallel.submit(chunk);
        continue;
      }
      const pending = this.tracing === undefined ? this.process(chunk.records) : this.processTraced(chunk, this.tracing);
      if (pending !== undefined) await pending;
    }
    await this.parallel?.drained();
    await sourcesDone;
    for (const runner of this.runners) runner.drain();

    // The deadline may already have passed while sources were still returning: an abort listener
    // added now would never fire, and run() would wait forever for records that stay in flight.
    const hard = this.hardAbort.signal.aborted
      ? Promise.resolve()
      : new Promise<void>((resolve) => this.hardAbort.signal.addEventListener("abort", () => resolve(), { once: true }));
    await Promise.race([this.o.buffer.whenEmpty(), hard]);
    this.cancelDeadline?.();
    await Promise.race([Promise.all([...this.trackers.map((t) => t.flush()), ...this.acking]), hard]);
    await this.deadLetters.flush();

    // Chunks still in flight now stay un-acked: their broker may redeliver them, nobody works on them.
    for (const t of this.tickers) t?.stopAll();
    const unacked = this.o.buffer.usage().records;
    const ended: PipelineStatus = this.failure
      ? { tag: "failed", error: this.failure, unacked }
      : this.abandoned !== undefined
        ? unacked > 0 && !this.o.buffer.durable
          ? { tag: "failed", error: this.abandoned, unacked }
          : { tag: "stopped" }
        : this.hardAbort.signal.aborted
        ? { tag: "timed_out", unacked }
        : this.sourceAbort.signal.aborted
          ? { tag: "stopped" }
          : { tag: "completed" };
    await this.closeAll();
    const status = this.withUnsavedProgress(ended, unacked);
    this.state = { tag: "done", status };
    this.emit({ type: "pipeline_run", phase: "done" });
    return status;
  }

  /**
   * Graceful stop: sources stop taking records, what is in flight drains for up to
   * `shutdownTimeoutMs`, then anything left is abandoned un-acked. Safe to call more than once.
   *
   * While a sink has never connected the stop does not wait: every record needs every sink, so
   * nothing in flight can finish, and the records stay un-acked where they are (at the source, or
   * in the durable buffer) for the next run. The run then ends `stopped` if nothing was in flight
   * or the buffer is durable (the backlog stays in its log, as on any stop), else `failed` with
   * `ERR_SINK_CONNECT` saying which sink and why.
   */
  stop(): void {
    if (this.state.tag !== "running") return;
    this.state = { tag: "draining", deadline: this.clock.now() + this.o.shutdownTimeoutMs };
    this.sourceAbort.abort(new SluiceError("ERR_STOPPING", "pipeline is stopping"));
    this.o.buffer.close(true);
    const down = this.runners.find((r) => !r.isConnected);
    if (down !== undefined) {
      this.abandoned = down.neverConnected();
      this.hardAbort.abort(this.abandoned);
      return;
    }
    for (const runner of this.runners) runner.drain();
    this.cancelDeadline = this.clock.setTimer(this.o.shutdownTimeoutMs, () => {
      this.hardAbort.abort(new SluiceError("ERR_ABORTED", "shutdown_timeout reached"));
    });
  }

  /**
   * Runs a source until it returns, or until the stop's hard deadline: a source that does not
   * return after its abort (a read stuck in the kernel, a bug) must not hold the run past
   * `shutdown_timeout`. It is left behind: the buffer closes under it, so nothing it enqueues
   * later is taken, and what it had not had acked stays un-acked for the next run.
   */
  private async runSource(s: SourceSettings, tracker: AckTracker, ticker: InProgressTicker | undefined): Promise<void> {
    const hard = this.hardAbort.signal;
    let onHard: () => void = () => {};
    const deadline = new Promise<"deadline">((resolve) => {
      onHard = () => resolve("deadline");
      if (hard.aborted) onHard();
      else hard.addEventListener("abort", onHard, { once: true });
    });
    try {
      const running = runSource(this.handleFor(s, tracker, ticker), {
        name: s.name,
        source: s.source,
        backoff: s.connectBackoff ?? DEFAULT_SOURCE_BACKOFF,
        clock: this.clock,
        random: this.random,
        emit: this.emit,
        signal: this.sourceAbort.signal,
      });
      const ended = await Promise.race([running, deadline]);
      // Without `abandoned` (a sink never connected: the stop aborts at once, no time to return).
      if (ended === "deadline" && this.abandoned === undefined) this.logger.warn({ component: s.name }, "source did not stop before shutdown_timeout; leaving it, its records un-acked");
    } catch (err) {
      if (this.sourceAbort.signal.aborted) return;
      this.fail(classify(err, "ERR_SOURCE_READ"), s.name, "source failed; stopping", true);
    } finally {
      hard.removeEventListener("abort", onHard);
    }
  }

  /**
   * A component failed for good: stop with status `failed`. A sink that cannot connect ends the
   * run at once (nothing could drain into it); a failed source lets what is in flight drain.
   */
  private fail(error: SluiceError, component: string, msg: string, drain: boolean): void {
    this.failure ??= error;
    this.logger.error({ component, code: error.code, err: error.message }, msg);
    this.stop();
    if (!drain) this.hardAbort.abort(error);
  }

  /**
   * The enqueue side of a source. When a chunk counts as done for its source: with a durable
   * buffer, once it is on disk; otherwise once every sink (or the dead-letter sink) committed
   * every record. `acks: "ordered"` sources are acked over the contiguous prefix of done chunks
   * (their checkpoint is a resume position); `individual` ones per chunk, in any order, since
   * each chunk answers its own producer or broker message. Apart from that, `whenFull` says
   * whether a full buffer makes `enqueue` wait or answer `rejected`.
   */
  private handleFor(s: SourceSettings, tracker: AckTracker, ticker: InProgressTicker | undefined): SourceHandle {
    const envelopeOf = new EnvelopeReader(s);
    const name = s.name;
    const source = s.source;
    const { buffer, whenFull } = this.o;
    const durable = buffer.durable;
    // A `reject` source answers its producer instead of waiting for room (DESIGN.md: 429/503, not queueing).
    const wait = source.whenFull === "wait" && whenFull !== "drop_newest";
    const signal = this.sourceAbort.signal;
    const ackOne = (checkpoint: unknown) => {
      const acked: Promise<void> = Promise.resolve()
        .then(() => source.ack(checkpoint))
        .catch((err: unknown) => {
          const e = classify(err, "ERR_SOURCE_READ");
          this.emit({ type: "component_error", component: name, code: e.code, message: e.message });
        })
        .finally(() => this.acking.delete(acked));
      this.acking.add(acked);
    };
    /** The chunk is done for its source. */
    const ack = source.acks === "individual" ? (ticket: AckTicket) => ackOne(ticket.checkpoint) : (ticket: AckTicket) => tracker.complete(ticket);
    const done =
      ticker === undefined
        ? ack
        : (ticket: AckTicket) => {
            ticker.done(ticket);
            ack(ticket);
          };
    const onDone = durable
      ? () => {}
      : (ticket: AckTicket) => {
          buffer.release(ticket);
          // A chunk handed straight to a waiting pull can finish inside buffer.push (every record
          // filtered, synchronously), before enqueue gave it a seq: enqueue completes it then.
          if (ticket.seq >= 0) done(ticket);
        };
    const tracing = this.tracing;
    const enqueue: EnqueueChunk = async (records, checkpoint, options, trace) => {
      if (signal.aborted) return "stopping";
      const waitHere = wait || (options?.wait === true && whenFull !== "drop_newest");
      const giveUp = options?.signal;
      const now = this.clock.now();
      let bytes = 0;
      const ticket: AckTicket = { seq: -1, checkpoint, receivedAt: now, records: records.length, bytes: 0, pending: records.length, onDone, trace };
      for (const r of records) {
        r.ticket = ticket;
        bytes += r.bytes;
      }
      (ticket as { bytes: number }).bytes = bytes;
      if (records.length === 0) {
        ticket.seq = tracker.nextTicketSeq();
        done(ticket);
        return "accepted";
      }
      // Only `giveUp`, not AbortSignal.any([signal, giveUp]): on Node 20 the long-lived `signal`
      // keeps every composite made from it until it aborts (a leak per call), and a stop needs
      // no signal here: stop() closes the buffer, which answers every waiting push `closed`.
      // A chunk waiting for room ages at its broker like one in flight: keep telling it (working()).
      // Shown before the push: the buffer may hand the chunk to the transforms at once, which
      // replace payloads before push returns.
      if (this.o.tap?.listening === true) this.o.tap.observe("source", name, records);
      const tickWhileWaiting = ticker !== undefined && waitHere;
      if (tickWhileWaiting) ticker.start(ticket);
      // The producer's bytes only for the durable log: a memory buffer would keep them alive for nothing.
      const result = await buffer.push({ records, ticket, lines: durable ? options?.lines : undefined }, waitHere, giveUp ?? signal);
      const waited = this.clock.now() - now;
      if (waited > 0 && result !== "full" && waitHere) this.emit({ type: "backpressure", source: name, seconds: waited / 1000 });
      if (result === "accepted") {
        ticket.seq = tracker.nextTicketSeq();
        this.emit({ type: "records_received", source: name, count: records.length, bytes });
        if (durable || ticket.pending === 0) done(ticket);
        // A durable buffer acked the chunk already: its broker is done with it.
        else if (!tickWhileWaiting) ticker?.start(ticket);
        return "accepted";
      }
      if (tickWhileWaiting) ticker.done(ticket);
      if (result === "closed") return signal.aborted || giveUp?.aborted !== true ? "stopping" : "rejected";
      if (whenFull === "drop_newest") {
        ticket.seq = tracker.nextTicketSeq();
        this.emit({ type: "records_received", source: name, count: records.length, bytes });
        this.emit({ type: "records_dropped", reason: "buffer_full", count: records.length });
        done(ticket);
        return "dropped";
      }
      return "rejected";
    };
    return {
      chunkSize: this.o.chunkSize,
      record: (payload, bytes, position, text, envelope, positionPrefix) => {
        const id = envelopeOf.id(payload) ?? envelope?.id ?? `${name}:${positionPrefix ?? ""}${position}`;
        const key = envelopeOf.key(payload) ?? envelope?.key;
        const eventTime = envelopeOf.time(payload) ?? envelope?.eventTime;
        const entry = new RecordEntry(id, key, payload, eventTime, name, bytes);
        entry.text = text;
        return entry;
      },
      decodesLines: this.parallel !== undefined && !durable,
      wantsText: durable || this.o.transforms.length === 0,
      lines: (run, into) => {
        // The envelope is read once the line is decoded (ParallelTransforms).
        for (let i = 0; i < run.count; i++) {
          const entry = new RecordEntry("", undefined, undefined, undefined, name, run.bytes(i));
          entry.holdLine(run, i);
          into.push(entry);
        }
      },
      malformed: (raw, position, error, envelope) => {
        const e = new RecordEntry(envelope?.id ?? `${name}:${position}`, envelope?.key, {}, undefined, name, raw.length);
        e.failure = error;
        e.raw = raw;
        return e;
      },
      expectedWait: (records, bytes) => buffer.expectedWait(records, bytes),
      waitForRoom: async (n, giveUp, recordBytes) => {
        if (whenFull === "drop_newest") return signal.aborted ? 0 : n;
        for (;;) {
          if (signal.aborted || giveUp?.aborted === true) return 0;
          const room = buffer.room(recordBytes);
          if (room > 0) return Math.max(1, Math.min(n, room));
          // A listener, not AbortSignal.any: on Node 20 a composite of the long-lived `signal` leaks until it aborts.
          let onAbort: () => void = () => {};
          const aborted = new Promise<void>((resolve) => (onAbort = resolve));
          signal.addEventListener("abort", onAbort, { once: true });
          giveUp?.addEventListener("abort", onAbort, { once: true });
          try {
            await Promise.race([buffer.whenFreed(), aborted]);
          } finally {
            signal.removeEventListener("abort", onAbort);
            giveUp?.removeEventListener("abort", onAbort);
          }
        }
      },
      enqueue: tracing === undefined ? enqueue : (records, checkpoint, options) => this.enqueueTraced(tracing, name, enqueue, records, checkpoint, options),
    };
  }

  /** A source's `enqueue` inside the chunk's `sluice.source.receive` span, whose context goes on the chunk's ticket. */
  private async enqueueTraced(tracing: Tracing, source: string, enqueue: EnqueueChunk, records: Entry[], checkpoint: unknown, options: EnqueueOptions | undefined): Promise<EnqueueOutcome> {
    if (records.length === 0) return enqueue(records, checkpoint, options, undefined);
    const span = tracing.receive(source, records.length, options?.parent);
    let outcome: EnqueueOutcome | "error" = "error";
    try {
      outcome = await enqueue(records, checkpoint, options, span.spanContext());
      return outcome;
    } finally {
      tracing.received(span, outcome);
    }
  }

  /** With worker threads: each chunk's results applied inside its `sluice.transform` span. */
  private tracedChunks(tracing: Tracing): Pick<ParallelHooks, "begin" | "end"> {
    const spans = new Map<Chunk, ReturnType<Tracing["transform"]>>();
    return {
      begin: (chunk) => {
        spans.set(chunk, tracing.transform(chunk.ticket, chunk.records.length));
        this.chunkOut = 0;
        this.chunkFiltered = 0;
        this.chunkDeadLettered = 0;
      },
      end: (chunk) => {
        const span = spans.get(chunk);
        spans.delete(chunk);
        if (span !== undefined) tracing.transformed(span, this.chunkOut, this.chunkFiltered, this.chunkDeadLettered);
      },
    };
  }

  /** {@link process} inside the chunk's `sluice.transform` span. */
  private processTraced(chunk: Chunk, tracing: Tracing): Promise<void> | undefined {
    const span = tracing.transform(chunk.ticket, chunk.records.length);
    this.chunkOut = 0;
    this.chunkFiltered = 0;
    this.chunkDeadLettered = 0;
    const end = () => tracing.transformed(span, this.chunkOut, this.chunkFiltered, this.chunkDeadLettered);
    const pending = this.process(chunk.records);
    if (pending === undefined) {
      end();
      return undefined;
    }
    return pending.finally(end);
  }

  /** Transforms a chunk and fans the result out to every sink. Returns a promise only if a transform was async. */
  private process(records: Entry[]): Promise<void> | undefined {
    let input = records;
    for (const r of records) {
      if (r.failure !== undefined) {
        input = records.filter((x) => x.failure === undefined);
        this.deadLetterEarly(
          records.filter((x) => x.failure !== undefined),
          `source:${records[0]!.source}`,
          undefined,
        );
        break;
      }
    }
    // A transform may change a payload in place: its text no longer says what it holds.
    if (this.o.transforms.length > 0) for (const r of input) r.text = undefined;
    const out: Entry[] = [];
    const pending = this.chain.run(input, out);
    if (pending === undefined) {
      this.fanOut(out);
      return undefined;
    }
    // After the hard abort the runners are aborted: what is left stays un-acked.
    return pending.then(() => {
      if (!this.hardAbort.signal.aborted) this.fanOut(out);
    });
  }

  private fanOut(records: Entry[]): void {
    if (records.length === 0) return;
    const tap = this.o.tap;
    if (tap?.listening === true && this.lastTransform !== undefined) tap.observe("transform", this.lastTransform, withPayloads(records));
    this.chunkOut += records.length;
    const n = this.runners.length;
    for (const r of records) r.pendingSinks = n;
    for (const runner of this.runners) runner.accept(records);
  }

  /** Dead-letters records rejected before any sink (unparsable input, failed transform): done for every sink at once. */
  private deadLetterEarly(records: Entry[], stage: string, error: SluiceError | undefined): void {
    this.chunkDeadLettered += records.length;
    const now = this.clock.now();
    const entries: DeadLetter[] = records.map((record) => {
      const e = error ?? record.failure!;
      return {
        record,
        raw: record.raw,
        sink: stage,
        code: e.code,
        message: e.location ? `${e.message} (at ${e.location})` : e.message,
        attempts: 0,
        firstFailureAt: now,
        lastFailureAt: now,
      };
    });
    this.deadLetters.add(entries, () => {
      const byCode = new Map<string, { count: number; first: DeadLetter }>();
      for (const e of entries) {
        const seen = byCode.get(e.code);
        if (seen === undefined) byCode.set(e.code, { count: 1, first: e });
        else seen.count++;
      }
      for (const [code, { count, first }] of byCode) this.emit({ type: "records_dead_lettered", sink: stage, code, count, firstRecordId: first.record.id, message: first.message });
      this.emit({ type: "records_completed", delivered: 0, alreadyPresent: 0, deadLettered: records.length });
      for (const r of records) {
        r.deadLettered = true;
        settle(r.ticket, 1);
      }
    });
  }

  private sinkDone(records: readonly Entry[], deadLettered: boolean): void {
    let delivered = 0;
    let present = 0;
    let dead = 0;
    // Records of one chunk sit together in a batch: settle each run of them at once.
    let ticket: AckTicket | undefined;
    let run = 0;
    for (const r of records) {
      if (deadLettered) r.deadLettered = true;
      if (--r.pendingSinks === 0) {
        if (r.deadLettered) dead++;
        else {
          delivered++;
          if (!r.storedNew) present++;
        }
        if (r.ticket !== ticket) {
          if (ticket !== undefined) settle(ticket, run);
          ticket = r.ticket;
          run = 0;
        }
        run++;
      }
    }
    if (ticket !== undefined) settle(ticket, run);
    if (delivered + dead > 0) this.emit({ type: "records_completed", delivered, alreadyPresent: present, deadLettered: dead });
  }

  /**
   * A run that ended well but could not save an `ordered` source's progress (its last ack and its
   * `close` both failed) ends `failed` with `ERR_CHECKPOINT_WRITE`: its records were delivered,
   * but the next run starts from the last checkpoint saved and delivers them again.
   */
  private withUnsavedProgress(status: PipelineStatus, unacked: number): PipelineStatus {
    const [first] = this.unsaved;
    if (first === undefined) return status;
    for (const [name, e] of this.unsaved) this.logger.error({ component: name, code: e.code, err: e.message }, "source progress not saved");
    if (status.tag !== "completed" && status.tag !== "stopped") return status;
    const [name, e] = first;
    const message = `source ${name}: progress not saved (${e.message}); its records were delivered, but the next run starts again from the last checkpoint saved`;
    return { tag: "failed", error: new SluiceError("ERR_CHECKPOINT_WRITE", message, { cause: e, location: e.location }), unacked };
  }

  private async closeAll(): Promise<void> {
    const open = new Set<string>();
    const closing = (component: string, close: () => Promise<unknown> | undefined): Promise<void> => {
      open.add(component);
      return (async () => close())().then(
        () => void open.delete(component),
        (err: unknown) => {
          open.delete(component);
          this.logger.warn({ component, err: String(err) }, "error while closing a component");
        },
      );
    };
    const all = Promise.all([
      ...this.o.sources.map((s) => closing(s.name, () => this.closeSource(s))),
      ...this.o.sinks.map((s) => closing(s.name, () => s.sink.close())),
      ...this.o.transforms.map((t) => closing(t.stage, () => t.transform.close?.())),
      ...(this.o.transformPool === undefined ? [] : [closing("workers", () => this.o.transformPool?.close())]),
      closing("buffer", () => this.o.buffer.shutdown()),
    ]);
    let cancel: () => void = () => {};
    const late = new Promise<void>((resolve) => (cancel = this.clock.setTimer(CLOSE_TIMEOUT_MS, resolve)));
    await Promise.race([all, late]);
    cancel();
    for (const component of open) this.logger.warn({ component, timeoutMs: CLOSE_TIMEOUT_MS }, "component did not close in time; leaving it");
    await this.o.deadLetter.close();
  }

  /** An `ordered` source's `close` persists its progress: its outcome is the last word on whether it was saved. */
  private async closeSource(s: SourceSettings): Promise<void> {
    if (s.source.acks === "individual") return s.source.close();
    try {
      await s.source.close();
      this.unsaved.delete(s.name);
    } catch (err) {
      this.unsaved.set(s.name, classify(err, "ERR_SOURCE_READ"));
      throw err;
    }
  }
}
