import type { Transform, TransformOutput } from "../components/contracts.js";
import type { Clock } from "./clock.js";
import type { PortableTransform } from "./transform-jobs.js";
import { SluiceError } from "./errors.js";
import { envelopeWriteError, recordView, type Entry, type JsonObject, type RecordView } from "./record.js";

/** A transform with the stage name its dead letters carry (`transform:<type>`) and its limits. */
export interface ChainStep {
  readonly stage: string;
  readonly transform: Transform;
  /**
   * How long a promise the transform returns may take to settle, in ms; past it the record is
   * dead-lettered with `ERR_TRANSFORM_TIMEOUT`. Undefined: no limit. A synchronous call cannot be
   * interrupted on the main thread, so this bounds only promises (on a worker thread, the pool's
   * watchdog bounds synchronous work by it too: `src/workers/pool.ts`).
   */
  readonly timeoutMs?: number;
  /** Most records the transform may split one record into; past it the record is dead-lettered with `ERR_TRANSFORM_SPLIT`. Undefined: no limit. */
  readonly maxSplit?: number;
  /** How a worker thread makes the same transform (`workers`); undefined: it cannot (a library closure). */
  readonly portable?: PortableTransform;
}

/** What the chain reports besides its output records. */
export interface ChainHooks {
  /** A transform returned `null` (or an empty array): the record is dropped on purpose. */
  filtered(record: Entry): void;
  /** A transform threw, timed out or broke a rule: the record goes to the dead-letter sink. */
  failed(record: Entry, stage: string, error: unknown): void;
  /**
   * A transform split a record: runs `next` over its parts, one per payload, in order (the
   * `index`-th with id `<id>#<index>`), within the buffer's bound (see `split.ts`); may hand
   * what `out` holds on meanwhile. Returns a promise only when it had to wait.
   */
  split(record: Entry, payloads: readonly JsonObject[], out: Entry[], next: (part: Entry) => Promise<void> | undefined): Promise<void> | undefined;
}

function isThenable(value: unknown): value is PromiseLike<TransformOutput> {
  return typeof (value as PromiseLike<unknown> | null)?.then === "function";
}

/**
 * Runs records through the transforms in order. Synchronous transforms take a fast path that
 * creates no promise per record; a chain returns a promise only when some transform does, and
 * records still leave in input order.
 *
 * A transform gets the payload and a frozen {@link RecordView}, never the engine's record or its
 * ticket, so it cannot change the envelope or settle a chunk. The view is built once per record
 * and only for transforms that take it (`takesRecord`).
 *
 * A promise gets the step's `timeoutMs`; once the record is timed out (or the run hard-aborted
 * while it waits) the promise's later outcome is ignored: the record was dead-lettered (or left
 * un-acked) already and must not also reach the sinks. After the hard abort no further record is
 * transformed: what is left stays un-acked, as the sinks are aborted too.
 */
export class TransformChain {
  constructor(
    private readonly steps: readonly ChainStep[],
    private readonly hooks: ChainHooks,
    private readonly clock: Clock,
    /** The run's hard abort: a record still waiting for a transform then stays un-acked. */
    private readonly signal: AbortSignal,
  ) {}

  /** Appends the transformed records of `records` to `out`, in order. */
  run(records: readonly Entry[], out: Entry[]): void | Promise<void> {
    if (this.steps.length === 0) {
      for (const r of records) out.push(r);
      return;
    }
    for (let i = 0; i < records.length; i++) {
      const pending = this.from(records[i]!, 0, out);
      if (pending !== undefined) return this.continueAsync(pending, records, i + 1, out);
    }
  }

  private async continueAsync(pending: Promise<void>, records: readonly Entry[], next: number, out: Entry[]): Promise<void> {
    await pending;
    for (let i = next; i < records.length && !this.signal.aborted; i++) {
      const p = this.from(records[i]!, 0, out);
      if (p !== undefined) await p;
    }
  }

  /** Applies steps `first..` to one record; returns a promise only if a step was async. */
  private from(record: Entry, first: number, out: Entry[]): Promise<void> | undefined {
    let payload = record.payload;
    for (let s = first; s < this.steps.length; s++) {
      const step = this.steps[s]!;
      const transform = step.transform;
      let result: TransformOutput | Promise<TransformOutput>;
      try {
        result = transform.apply(payload, transform.takesRecord === false ? (undefined as unknown as RecordView) : recordView(record));
      } catch (err) {
        this.hooks.failed(record, step.stage, envelopeWriteError(err) ?? err);
        return undefined;
      }
      // The common result first: a plain object is no promise, and needs no `then` lookup, which
      // is megamorphic across payload shapes.
      if (typeof result === "object" && result !== null && Object.getPrototypeOf(result) === Object.prototype) {
        payload = result as JsonObject;
        continue;
      }
      if (isThenable(result)) return this.settleWithin(result, record, s, out);
      if (result === null || Array.isArray(result)) return this.after(record, s, result, out);
      payload = result;
    }
    record.payload = payload;
    out.push(record);
    return undefined;
  }

  /**
   * Waits for a step's promise, at most its `timeoutMs` and never past the hard abort. Whichever
   * comes first decides; the others find `done` set and do nothing.
   */
  private settleWithin(result: PromiseLike<TransformOutput>, record: Entry, s: number, out: Entry[]): Promise<void> {
    const step = this.steps[s]!;
    const signal = this.signal;
    return new Promise<void>((resolve) => {
      let done = false;
      let cancelTimer: (() => void) | undefined;
      const finish = (): boolean => {
        if (done) return false;
        done = true;
        cancelTimer?.();
        signal.removeEventListener("abort", onAbort);
        return true;
      };
      // Hard abort: leave the record un-acked (neither delivered nor dead-lettered), for the next run.
      const onAbort = () => {
        if (finish()) resolve();
      };
      if (signal.aborted) {
        onAbort();
        return;
      }
      signal.addEventListener("abort", onAbort, { once: true });
      if (step.timeoutMs !== undefined) {
        cancelTimer = this.clock.setTimer(step.timeoutMs, () => {
          if (!finish()) return;
          const error = new SluiceError("ERR_TRANSFORM_TIMEOUT", `the transform's promise did not settle within ${step.timeoutMs} ms (timeout); the record is dead-lettered and its late result ignored`);
          this.hooks.failed(record, step.stage, error);
          resolve();
        });
      }
      result.then(
        (value) => {
          if (!finish()) return;
          resolve(this.after(record, s, value, out));
        },
        (err: unknown) => {
          if (!finish()) return;
          this.hooks.failed(record, step.stage, envelopeWriteError(err) ?? err);
          resolve();
        },
      );
    });
  }

  private after(record: Entry, step: number, value: TransformOutput, out: Entry[]): Promise<void> | undefined {
    if (value === null || (Array.isArray(value) && value.length === 0)) {
      this.hooks.filtered(record);
      return undefined;
    }
    if (!Array.isArray(value)) {
      record.payload = value;
      return this.from(record, step + 1, out);
    }
    if (value.length === 1) {
      record.payload = value[0]!;
      return this.from(record, step + 1, out);
    }
    const { stage, maxSplit } = this.steps[step]!;
    if (maxSplit !== undefined && value.length > maxSplit) {
      this.hooks.failed(record, stage, new SluiceError("ERR_TRANSFORM_SPLIT", `the transform split one record into ${value.length} records, more than max_split (${maxSplit})`));
      return undefined;
    }
    return this.hooks.split(record, value, out, (part) => this.from(part, step + 1, out));
  }
}
