import type { Span } from "@opentelemetry/api";
import type { DeadLetter, PreferredWrite, Sink } from "../components/contracts.js";
import { AdaptiveConcurrency, type Concurrency, type WriteOutcome } from "./adaptive-concurrency.js";
import type { BackoffPolicy } from "./backoff.js";
import { formatSeconds, type Clock } from "./clock.js";
import type { DeadLetterWriter } from "./dead-letters.js";
import { classify, SluiceError } from "./errors.js";
import type { EventSink, Logger } from "./events.js";
import type { Entry } from "./record.js";
import { retry, Retry } from "./retry.js";
import type { Tracing, WriteOutcome as SpanOutcome } from "./tracing.js";

/** When a sink's batch is cut: whichever limit is reached first. */
export interface BatchOptions {
  readonly maxRecords: number;
  readonly maxBytes: number;
  /** How long the first record of a partial batch may wait for more, in ms. */
  readonly maxWaitMs: number;
}

/** How failed writes are retried before records are dead-lettered. */
export interface RetryOptions {
  /** Attempts in all, the first write included. */
  readonly maxAttempts: number;
  /** No new attempt starts once this long has passed since the first, in ms. */
  readonly maxElapsedMs: number;
  readonly backoff: BackoffPolicy;
}

/** A sink and how it is driven: what a pipeline is given per sink. */
export interface SinkSettings {
  readonly name: string;
  readonly sink: Sink;
  readonly batch: BatchOptions;
  readonly retry: RetryOptions;
  /**
   * How long the sink may take to connect before the run fails, in ms; undefined: retry until it
   * connects. `retry.max_elapsed` does not bound connecting: it bounds one batch's retries.
   */
  readonly connectTimeoutMs?: number;
  /**
   * Batches in flight at once: a number (that many lanes) or adaptive (`max` lanes, of which an
   * AIMD limit may have a batch in flight at once). Lanes are capped by the sink's `maxInFlight`.
   */
  readonly concurrency: Concurrency;
}

/** Everything a {@link SinkRunner} needs; built by the pipeline. */
export interface SinkRunnerOptions extends SinkSettings {
  readonly clock: Clock;
  readonly random: () => number;
  readonly emit: EventSink;
  readonly logger: Logger;
  readonly deadLetters: DeadLetterWriter;
  /** Aborts at the shutdown deadline: in-flight writes and retry waits give up, records stay un-acked. */
  readonly signal: AbortSignal;
  /** Makes a `sluice.sink.write` span per write attempt; undefined: no spans. */
  readonly tracing?: Tracing | undefined;
  /** Called once per record when this sink is done with it (committed, or dead-letter committed). */
  readonly onDone: (records: readonly Entry[], deadLettered: boolean) => void;
}

/** One ordered stream of batches: at most one batch in flight, so records of a key keep their order across retries. */
interface Lane {
  queue: Entry[];
  head: number;
  queuedBytes: number;
  firstQueuedAt: number;
  busy: boolean;
  /** Has a batch ready and is queued for a slot of the adaptive limiter. */
  waiting: boolean;
  cancelTimer: (() => void) | undefined;
}

/** What a write without `alreadyPresent` reports: every committed record stored new. */
const NONE_PRESENT: ReadonlySet<Entry> = new Set();

/** FNV-1a: a cheap, well-spread string hash for picking a key's lane. */
function hashKey(key: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < key.length; i++) {
    h ^= key.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/**
 * Drives one sink: spreads records over lanes (by key hash; keyless records round-robin per
 * chunk, or with adaptive concurrency to a lane free to take them), cuts batches by records,
 * bytes and wait, writes each with retry (exponential backoff with full jitter), sends only the
 * failing records of a batch to the dead-letter sink, and reports every record done exactly once.
 *
 * With adaptive concurrency a lane with a batch ready also needs a slot of the
 * {@link AdaptiveConcurrency} limiter; lanes without one queue for it in the order they became
 * ready. A batch holds its slot until it is done, retry waits included, so a sink in trouble does
 * not get fresh batches while old ones back off.
 *
 * Memory needs no bound of its own here: every record it holds is counted in the pipeline's buffer.
 */
export class SinkRunner {
  private readonly lanes: Lane[];
  private readonly limiter: AdaptiveConcurrency | undefined;
  /** Lanes with a batch ready and no slot yet, oldest first (adaptive concurrency only). */
  private readonly waiting: Lane[] = [];
  private nextLane = 0;
  private connected = false;
  private draining = false;
  /** When connecting started (clock ms; construction until `start`), and the last attempt's error while not connected. */
  private connectingSince: number;
  private connectError: SluiceError | undefined;
  /** The sink's `preferredWrite`, read once. */
  private readonly preferred: PreferredWrite | undefined;

  constructor(private readonly o: SinkRunnerOptions) {
    this.preferred = o.sink.preferredWrite;
    this.connectingSince = o.clock.now();
    const c = o.concurrency;
    const n = Math.max(1, Math.min(typeof c === "number" ? c : c.max, o.sink.maxInFlight));
    this.lanes = Array.from({ length: n }, () => ({
      queue: [],
      head: 0,
      queuedBytes: 0,
      firstQueuedAt: 0,
      busy: false,
      waiting: false,
      cancelTimer: undefined,
    }));
    this.limiter = typeof c === "number" ? undefined : new AdaptiveConcurrency({ ...c, max: n }, o.clock);
    this.emitLimit();
  }

  /**
   * Connects the sink, retrying retryable failures with backoff until it succeeds, the hard
   * deadline aborts, or `connectTimeoutMs` passes. Resolves with the error that should end the run:
   * a permanent one (a table of the wrong shape; retrying would only hang the pipeline), or
   * `ERR_SINK_CONNECT` naming the sink, the timeout and the last failure.
   */
  async start(): Promise<SluiceError | undefined> {
    const { clock, signal, name } = this.o;
    this.connectingSince = clock.now();
    // One signal for the connect phase, aborted by the hard deadline or by connect_timeout, so an
    // attempt that hangs (a dropped SYN) is cut off too. A listener, not AbortSignal.any: on Node 20
    // that keeps every composite made from the long-lived `signal` alive until it aborts.
    const connecting = new AbortController();
    const onAbort = () => connecting.abort(signal.reason);
    if (signal.aborted) onAbort();
    else signal.addEventListener("abort", onAbort, { once: true });
    const timeoutMs = this.o.connectTimeoutMs;
    let timedOut = false;
    const cancelTimeout =
      timeoutMs === undefined
        ? undefined
        : clock.setTimer(timeoutMs, () => {
            timedOut = true;
            connecting.abort(new SluiceError("ERR_SINK_CONNECT", "connect_timeout reached"));
          });
    try {
      const outcome = await retry(() => this.o.sink.connect(connecting.signal), {
        backoff: this.o.retry.backoff,
        minDelayMs: 1,
        clock,
        random: this.o.random,
        signal: connecting.signal,
        fallback: "ERR_SINK_CONNECT",
        onFailure: (e, attempt) => {
          this.connectError = e;
          this.o.emit({ type: "sink_connect_failed", sink: name, attempt, downSince: this.connectingSince, code: e.code, message: e.message, retryable: e.retryable, connectTimeoutMs: timeoutMs });
        },
      });
      if (outcome.tag === "done") {
        this.connected = true;
        this.connectError = undefined;
        this.o.emit({ type: "sink_connected", sink: name, attempt: outcome.attempts });
        for (const lane of this.lanes) this.pump(lane);
        return undefined;
      }
      if (outcome.tag === "gave_up") return outcome.error;
      if (!timedOut) return undefined;
      return new SluiceError("ERR_SINK_CONNECT", `sink ${name} could not connect within ${formatSeconds(timeoutMs!)}: ${this.downReason()}`, {
        cause: this.connectError,
        retryable: false,
        location: name,
      });
    } finally {
      cancelTimeout?.();
      signal.removeEventListener("abort", onAbort);
    }
  }

  /** Whether the sink has connected; until it has, no record can be written to it. */
  get isConnected(): boolean {
    return this.connected;
  }

  /**
   * Why a stop does not wait for this sink, which never connected: `ERR_SINK_CONNECT` with how long
   * it has been down and its last error.
   */
  neverConnected(): SluiceError {
    const down = formatSeconds(this.o.clock.now() - this.connectingSince);
    return new SluiceError("ERR_SINK_CONNECT", `stopped before sink ${this.o.name} connected (down ${down}: ${this.downReason()})`, {
      cause: this.connectError,
      retryable: false,
      location: this.o.name,
    });
  }

  private downReason(): string {
    return this.connectError?.message ?? "the first attempt did not finish";
  }

  /** Takes records to write. Never waits: the pipeline's buffer bounds how many can be here. */
  accept(records: readonly Entry[]): void {
    const now = this.o.clock.now();
    if (this.lanes.length === 1) {
      this.append(this.lanes[0]!, records, now);
      return;
    }
    const rr = this.keylessLane();
    const touched = new Set<Lane>();
    // A Set insertion only where the lane changes: records without a key all go to one lane.
    let last: Lane | undefined;
    for (const r of records) {
      const lane = r.key === undefined ? rr : this.lanes[hashKey(r.key) % this.lanes.length]!;
      if (lane.head === lane.queue.length) lane.firstQueuedAt = now;
      lane.queue.push(r);
      lane.queuedBytes += r.bytes;
      if (lane !== last) touched.add((last = lane));
    }
    for (const lane of touched) this.pump(lane);
  }

  /** No more records are coming soon: write partial batches now instead of waiting `max_wait`. */
  drain(): void {
    this.draining = true;
    for (const lane of this.lanes) this.pump(lane);
  }

  /**
   * The lane for a chunk's keyless records. Round-robin, except under an adaptive limit: there
   * most lanes may be without a slot, and records spread over all of them would sit in partial
   * batches until `max_wait`. So the records stay on one lane until it is writing or holds a full
   * batch, then move to the next lane that is neither.
   */
  private keylessLane(): Lane {
    const n = this.lanes.length;
    if (this.limiter === undefined) {
      const lane = this.lanes[this.nextLane]!;
      this.nextLane = (this.nextLane + 1) % n;
      return lane;
    }
    let fewest = this.lanes[this.nextLane]!;
    for (let i = 0; i < n; i++) {
      const index = (this.nextLane + i) % n;
      const lane = this.lanes[index]!;
      const queued = lane.queue.length - lane.head;
      if (!lane.busy && queued < this.o.batch.maxRecords && lane.queuedBytes < this.o.batch.maxBytes) {
        this.nextLane = index;
        return lane;
      }
      if (queued < fewest.queue.length - fewest.head) fewest = lane;
    }
    return fewest;
  }

  private append(lane: Lane, records: readonly Entry[], now: number): void {
    if (lane.head === lane.queue.length) lane.firstQueuedAt = now;
    for (const r of records) {
      lane.queue.push(r);
      lane.queuedBytes += r.bytes;
    }
    this.pump(lane);
  }

  private pump(lane: Lane): void {
    if (lane.busy || !this.connected || this.o.signal.aborted) return;
    const queued = lane.queue.length - lane.head;
    if (queued === 0) return;
    const { maxRecords, maxBytes, maxWaitMs } = this.o.batch;
    const waited = this.o.clock.now() - lane.firstQueuedAt;
    if (queued < maxRecords && lane.queuedBytes < maxBytes && waited < maxWaitMs && !this.draining) {
      lane.cancelTimer ??= this.o.clock.setTimer(maxWaitMs - waited, () => {
        lane.cancelTimer = undefined;
        this.pump(lane);
      });
      return;
    }
    lane.cancelTimer?.();
    lane.cancelTimer = undefined;
    if (this.limiter !== undefined) {
      // Queued lanes are served in order by admitWaiting, not by whoever calls pump first.
      if (lane.waiting) return;
      if (!this.limiter.tryAcquire()) {
        lane.waiting = true;
        this.waiting.push(lane);
        return;
      }
    }
    const batch = this.cut(lane);
    lane.busy = true;
    void this.writeWithRetry(batch).then(
      () => this.laneFree(lane),
      (err: unknown) => {
        this.o.logger.error({ component: this.o.name, code: "ERR_INTERNAL", first_record_id: batch[0]?.id, err: String(err) }, "internal error in sink runner");
        this.laneFree(lane);
      },
    );
  }

  private laneFree(lane: Lane): void {
    lane.busy = false;
    if (this.limiter !== undefined) {
      this.limiter.release();
      // Lanes that waited for a slot go before this lane's next batch.
      this.admitWaiting();
    }
    this.pump(lane);
  }

  /** Starts queued lanes while the limiter has slots. */
  private admitWaiting(): void {
    const limiter = this.limiter;
    if (limiter === undefined) return;
    while (this.waiting.length > 0 && limiter.available && this.connected && !this.o.signal.aborted) {
      const lane = this.waiting.shift()!;
      lane.waiting = false;
      this.pump(lane);
    }
  }

  /** Feeds one write attempt to the limiter; a changed limit is reported and may admit queued lanes. */
  private observe(outcome: WriteOutcome): void {
    if (this.limiter?.observe(outcome) !== true) return;
    this.emitLimit();
    this.admitWaiting();
  }

  private emitLimit(): void {
    this.o.emit({ type: "concurrency_limit", sink: this.o.name, limit: this.limiter?.limit ?? this.lanes.length });
  }

  /**
   * Takes the next write off the lane: one batch (`batch.max_records`, `batch.max_bytes`, at least
   * one record), then, for a sink with a `preferredWrite`, the batches after it, whole and in
   * order, while the write stays within the sink's bounds. A lane frees with several batches
   * waiting when the sink is slower than the source: the backlog then goes out as fewer, larger
   * writes (fewer commits) instead of one batch per round trip.
   */
  private cut(lane: Lane): Entry[] {
    const { queue, head } = lane;
    let i = this.batchEnd(queue, head);
    let bytes = this.bytesOf(queue, head, i);
    const preferred = this.preferred;
    if (preferred !== undefined) {
      while (i < queue.length) {
        const next = this.batchEnd(queue, i);
        const more = this.bytesOf(queue, i, next);
        if (next - head > preferred.maxRecords || bytes + more > preferred.maxBytes) break;
        i = next;
        bytes += more;
      }
    }
    const batch = queue.slice(head, i);
    lane.queuedBytes -= bytes;
    if (i === queue.length) {
      lane.queue = [];
      lane.head = 0;
    } else {
      lane.head = i;
      if (lane.head > 4096 && lane.head * 2 > queue.length) {
        lane.queue = queue.slice(lane.head);
        lane.head = 0;
      }
    }
    return batch;
  }

  /** Where the batch starting at `from` ends: `batch.max_records` and `batch.max_bytes`, at least one record (a record larger than max_bytes goes out alone). */
  private batchEnd(queue: readonly Entry[], from: number): number {
    const { maxRecords, maxBytes } = this.o.batch;
    const end = Math.min(queue.length, from + maxRecords);
    let i = from;
    let bytes = 0;
    do {
      bytes += queue[i]!.bytes;
      i++;
    } while (i < end && bytes + queue[i]!.bytes <= maxBytes);
    return i;
  }

  private bytesOf(queue: readonly Entry[], from: number, to: number): number {
    let bytes = 0;
    for (let i = from; i < to; i++) bytes += queue[i]!.bytes;
    return bytes;
  }

  /**
   * Writes one batch until every record is committed or dead-lettered. Records still pending when
   * the hard deadline aborts are left alone: un-acked, they are redelivered on the next run.
   */
  private async writeWithRetry(batch: Entry[]): Promise<void> {
    const { clock, sink, signal, name } = this.o;
    let pending = batch;
    const retries = new Retry(this.o.retry, this.o);
    let firstFailureAt: number | undefined;
    for (;;) {
      const attempt = retries.begin();
      if (signal.aborted) return;
      for (const r of pending) if (r.attempts < attempt) r.attempts = attempt;
      const span = this.o.tracing?.sinkWrite(name, pending, attempt);
      const started = clock.now();
      let error: SluiceError | undefined;
      let failures: readonly { index: number; error: SluiceError }[] = [];
      let present: ReadonlySet<Entry> = NONE_PRESENT;
      try {
        const result = await sink.write(pending, signal);
        failures = result?.failures ?? [];
        if (result?.alreadyPresent !== undefined && result.alreadyPresent.length > 0) present = new Set(result.alreadyPresent.map((i) => pending[i]!));
      } catch (err) {
        error = classify(err);
      }
      const now = clock.now();
      this.o.emit({ type: "sink_batch_written", sink: name, seconds: (now - started) / 1000 });
      if (signal.aborted) {
        this.traced(span, "failed", error ?? new SluiceError("ERR_ABORTED", "the hard abort cut the write off; its records stay un-acked"));
        return;
      }
      const backPressure = error !== undefined ? error.retryable : failures.some((f) => f.error.retryable);
      this.observe({ tag: backPressure ? "back_pressure" : error !== undefined ? "rejected" : "ok", startedAt: started });
      if (error === undefined && failures.length === 0) {
        this.traced(span, "ok");
        this.commit(pending, present, now);
        return;
      }
      firstFailureAt ??= now;

      let retryable: Entry[];
      let lastError: SluiceError;
      if (error !== undefined) {
        lastError = error;
        if (!error.retryable) {
          this.traced(span, "dead_letter", error);
          this.deadLetter(pending, error, attempt, firstFailureAt, now);
          return;
        }
        retryable = pending;
      } else {
        const failed = new Map<number, SluiceError>();
        for (const f of failures) failed.set(f.index, f.error);
        const committed: Entry[] = [];
        retryable = [];
        lastError = failures[0]!.error;
        const permanent = new Map<string, { error: SluiceError; records: Entry[] }>();
        for (let i = 0; i < pending.length; i++) {
          const e = failed.get(i);
          const r = pending[i]!;
          if (e === undefined) committed.push(r);
          else if (e.retryable) {
            retryable.push(r);
            lastError = e;
          } else {
            const group = permanent.get(e.code) ?? { error: e, records: [] };
            group.records.push(r);
            permanent.set(e.code, group);
          }
        }
        if (committed.length > 0) this.commit(committed, present, now);
        for (const { error: e, records } of permanent.values()) this.deadLetterEach(records, failures, pending, e, attempt, firstFailureAt, now);
        if (retryable.length === 0) {
          this.traced(span, "dead_letter", lastError);
          return;
        }
      }

      const decision = retries.decide(lastError);
      if (decision.tag === "give_up") {
        this.traced(span, "dead_letter", lastError);
        this.deadLetter(retryable, lastError, attempt, firstFailureAt, now);
        return;
      }
      this.traced(span, "retry", lastError);
      this.o.emit({ type: "records_retried", sink: name, count: retryable.length, code: lastError.code, message: lastError.message, delayMs: decision.delayMs, firstRecordId: retryable[0]!.id });
      if (!(await retries.wait(decision.delayMs))) return;
      pending = retryable;
    }
  }

  /** Ends a write attempt's span, when there is one (tracing on). */
  private traced(span: Span | undefined, outcome: SpanOutcome, error?: SluiceError): void {
    if (span !== undefined) this.o.tracing!.wrote(span, outcome, error);
  }

  /** `present`: records of the write the sink reported already stored; the others it stored new. */
  private commit(records: Entry[], present: ReadonlySet<Entry>, now: number): void {
    let alreadyPresent = 0;
    for (const r of records) {
      if (present.has(r)) alreadyPresent++;
      // Never cleared: with several sinks, a record one sink stored new stays new for the pipeline.
      else r.storedNew = true;
    }
    this.o.emit({ type: "records_delivered", sink: this.o.name, records, alreadyPresent, now });
    this.o.deadLetters.committed(this.o.name, records);
    this.o.onDone(records, false);
  }

  /** Dead-letters permanent per-record failures, each with its own error message. */
  private deadLetterEach(
    records: Entry[],
    failures: readonly { index: number; error: SluiceError }[],
    batch: readonly Entry[],
    error: SluiceError,
    attempts: number,
    firstFailureAt: number,
    now: number,
  ): void {
    const messages = new Map<Entry, string>();
    for (const f of failures) {
      const r = batch[f.index];
      if (r !== undefined) messages.set(r, f.error.message);
    }
    this.writeDeadLetters(records, error.code, (r) => messages.get(r) ?? error.message, attempts, firstFailureAt, now);
  }

  private deadLetter(records: Entry[], error: SluiceError, attempts: number, firstFailureAt: number, now: number): void {
    this.writeDeadLetters(records, error.code, () => error.message, attempts, firstFailureAt, now);
  }

  private writeDeadLetters(
    records: Entry[],
    code: string,
    message: (r: Entry) => string,
    attempts: number,
    firstFailureAt: number,
    lastFailureAt: number,
  ): void {
    const entries: DeadLetter[] = records.map((record) => ({
      record,
      raw: record.raw,
      sink: this.o.name,
      code,
      message: message(record),
      attempts,
      firstFailureAt,
      lastFailureAt,
    }));
    this.o.deadLetters.add(entries, () => {
      this.o.emit({ type: "records_dead_lettered", sink: this.o.name, code, count: records.length, firstRecordId: entries[0]!.record.id, message: entries[0]!.message });
      this.o.onDone(records, true);
    });
  }
}
