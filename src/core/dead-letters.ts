import type { DeadLetter, DeadLetterStore } from "../components/contracts.js";
import { backoffDelay, type BackoffPolicy } from "./backoff.js";
import { sleep, type Clock } from "./clock.js";
import { classify } from "./errors.js";
import type { Logger } from "./events.js";

interface Pending {
  entries: readonly DeadLetter[];
  onCommitted: () => void;
}

/**
 * Serializes writes to the dead-letter store and retries them with backoff until they commit or
 * the pipeline's hard deadline aborts: a dead letter is never dropped. Entries queued while a
 * write runs are written together in the next one.
 */
export class DeadLetterWriter {
  private queue: Pending[] = [];
  private running: Promise<void> | undefined;

  constructor(
    private readonly store: DeadLetterStore,
    private readonly clock: Clock,
    private readonly random: () => number,
    private readonly backoff: BackoffPolicy,
    private readonly logger: Logger,
    private readonly signal: AbortSignal,
  ) {}

  /** Queues entries; `onCommitted` runs once they are durable. Never runs it if the deadline aborts first. */
  add(entries: readonly DeadLetter[], onCommitted: () => void): void {
    if (entries.length === 0) {
      onCommitted();
      return;
    }
    this.queue.push({ entries, onCommitted });
    this.kick();
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
      if (this.queue.length > 0 && !this.signal.aborted) this.kick();
    });
  }

  private async drain(): Promise<void> {
    while (this.queue.length > 0 && !this.signal.aborted) {
      const batch = this.queue;
      this.queue = [];
      const entries = batch.length === 1 ? batch[0]!.entries : batch.flatMap((p) => p.entries);
      if (!(await this.writeWithRetry(entries))) return;
      for (const p of batch) p.onCommitted();
    }
  }

  private async writeWithRetry(entries: readonly DeadLetter[]): Promise<boolean> {
    for (let attempt = 1; ; attempt++) {
      try {
        await this.store.write(entries);
        return true;
      } catch (err) {
        const e = classify(err, "ERR_DEAD_LETTER_WRITE");
        this.logger.error({ code: e.code, err: e.message, attempt, entries: entries.length }, "dead-letter write failed; retrying");
        try {
          await sleep(this.clock, Math.max(1, backoffDelay(this.backoff, attempt, this.random)), this.signal);
        } catch {
          return false;
        }
      }
    }
  }
}
