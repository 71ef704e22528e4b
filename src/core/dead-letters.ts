import type { DeadLetter, DeadLetterStore } from "../components/contracts.js";
import type { SluiceRecord } from "./record.js";
import type { BackoffPolicy } from "./backoff.js";
import { formatSeconds, type Clock } from "./clock.js";
import { classify, SluiceError } from "./errors.js";
import type { EventSink, Logger } from "./events.js";
import { retry } from "./retry.js";

interface Pending {
  entries: readonly DeadLetter[];
  onCommitted: () => void;
}

/**
 * Whether a dead letter's `sink` names a stage before the sinks (`source:<name>`,
 * `transform:<type>`) rather than a sink: a record a sink committed has passed those stages, and
 * a replay sends such an entry through the transforms to every sink.
 */
export function isStage(sink: string): boolean {
  return sink.startsWith("source:") || sink.startsWith("transform:");
}

/** What a {@link DeadLetterWriter} does about failing writes besides retrying them. */
export interface DeadLetterFailures {
  /** Longest time one write may keep failing, ms; then {@link giveUp}. */
  readonly maxElapsedMs: number;
  /** Receives `dead_letter_write_failed` per failed attempt and `dead_letter_write_recovered` on the next success (readiness). */
  readonly emit: EventSink;
  /** A write kept failing for `maxElapsedMs`: its records stay un-acked, and nothing more is written. */
  readonly giveUp: (error: SluiceError) => void;
}

/** Retry until the hard deadline, silently: for callers that bound the run some other way. */
const UNBOUNDED: DeadLetterFailures = { maxElapsedMs: Number.POSITIVE_INFINITY, emit: () => {}, giveUp: () => {} };

/**
 * Serializes writes to the dead-letter store and retries them with backoff until they commit,
 * the pipeline's hard deadline aborts, or a write has failed for `failures.maxElapsedMs`: a dead
 * letter is never dropped; when its write is given up its record stays un-acked (redelivered by
 * the next run), and `failures.giveUp` ends the run. Entries queued while a write runs are
 * written together in the next one.
 */
export class DeadLetterWriter {
  private queue: Pending[] = [];
  private running: Promise<void> | undefined;
  private failing = false;
  private gaveUp = false;
  private opened = false;

  constructor(
    private readonly store: DeadLetterStore,
    private readonly clock: Clock,
    private readonly random: () => number,
    private readonly backoff: BackoffPolicy,
    private readonly logger: Logger,
    private readonly signal: AbortSignal,
    private readonly failures: DeadLetterFailures = UNBOUNDED,
  ) {}

  /**
   * Opens the store; resolves with why it could not, or undefined. A failure does not stop the
   * run: a store on a full disk (that of a durable buffer which filled it) cannot create its files
   * until the backlog drains, which only the run does. The first write opens it again, within
   * that write's retries and bound.
   */
  async open(): Promise<SluiceError | undefined> {
    try {
      await this.store.open();
      this.opened = true;
      return undefined;
    } catch (err) {
      return classify(err, "ERR_DEAD_LETTER_WRITE");
    }
  }

  /** Queues entries; `onCommitted` runs once they are durable. Never runs it if the deadline aborts first. */
  add(entries: readonly DeadLetter[], onCommitted: () => void): void {
    if (entries.length === 0) {
      onCommitted();
      return;
    }
    this.queue.push({ entries, onCommitted });
    this.kick();
  }

  /**
   * Tells the store `sink` committed `records` (see `DeadLetterStore.committed`): called by the
   * sink runner per committed batch. Does nothing while the store is not open or has no such
   * method; a failure is logged and forgotten (the entries stay pending).
   */
  committed(sink: string, records: readonly SluiceRecord[]): void {
    if (!this.opened || this.store.committed === undefined) return;
    const failed = (err: unknown) => this.logger.warn({ component: "dead_letter", sink, err: String(err) }, "could not mark dead letters of delivered records resolved");
    try {
      const pending = this.store.committed(sink, records);
      if (pending !== undefined) pending.catch(failed);
    } catch (err) {
      failed(err);
    }
  }

  /** Resolves when everything queued so far is written (or abandoned at the deadline). */
  async flush(): Promise<void> {
    while (this.running) await this.running;
  }

  private kick(): void {
    if (this.running) return;
    // Cleared in `finally`, which always runs after this assignment: once the deadline aborted,
    // drain() returns without awaiting, and clearing `running` inside it would come before the
    // assignment, leaving it set forever (flush() spinning, the pipeline never ending).
    this.running = this.drain().finally(() => {
      this.running = undefined;
      if (this.queue.length > 0 && !this.signal.aborted && !this.gaveUp) this.kick();
    });
  }

  private async drain(): Promise<void> {
    while (this.queue.length > 0 && !this.signal.aborted && !this.gaveUp) {
      const batch = this.queue;
      this.queue = [];
      const entries = batch.length === 1 ? batch[0]!.entries : batch.flatMap((p) => p.entries);
      if (!(await this.writeWithRetry(entries))) return;
      for (const p of batch) p.onCommitted();
    }
  }

  private async writeWithRetry(entries: readonly DeadLetter[]): Promise<boolean> {
    const outcome = await retry(
      async () => {
        if (!this.opened) {
          await this.store.open();
          this.opened = true;
        }
        await this.store.write(entries);
      },
      {
        backoff: this.backoff,
        maxElapsedMs: this.failures.maxElapsedMs,
        elapsed: "failing",
        minDelayMs: 1,
        // A dead letter is never dropped: even an error its store calls permanent is retried, within the bound.
        retry: "all",
        clock: this.clock,
        random: this.random,
        signal: this.signal,
        fallback: "ERR_DEAD_LETTER_WRITE",
        onFailure: (e, attempt, decision) => {
          this.failing = true;
          this.failures.emit({ type: "dead_letter_write_failed", code: e.code, message: e.message });
          const giving = decision.tag === "give_up";
          this.logger.error({ component: "dead_letter", code: e.code, first_record_id: entries[0]?.record.id, err: e.message, attempt, entries: entries.length }, giving ? "dead-letter write failed; giving up" : "dead-letter write failed; retrying");
        },
      },
    );
    if (outcome.tag === "done") {
      if (this.failing) {
        this.failing = false;
        this.failures.emit({ type: "dead_letter_write_recovered" });
      }
      return true;
    }
    if (outcome.tag === "gave_up") {
      this.gaveUp = true;
      const e = outcome.error;
      this.failures.giveUp(
        new SluiceError(
          "ERR_DEAD_LETTER_WRITE",
          `dead letters could not be written for ${formatSeconds(outcome.elapsedMs)} (${outcome.attempts} attempts; the last: ${e.message}); their records are not acked, the next run delivers them again`,
          { cause: e, location: e.location },
        ),
      );
    }
    return false;
  }
}
