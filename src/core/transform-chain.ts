import type { Transform, TransformOutput } from "../components/contracts.js";
import type { JsonObject, Entry } from "./record.js";

/** A transform with the stage name its dead letters carry (`transform:<type>`). */
export interface ChainStep {
  readonly stage: string;
  readonly transform: Transform;
}

/** What the chain reports besides its output records. */
export interface ChainHooks {
  /** A transform returned `null` (or an empty array): the record is dropped on purpose. */
  filtered(record: Entry): void;
  /** A transform threw: the record goes to the dead-letter sink. */
  failed(record: Entry, stage: string, error: unknown): void;
  /** A transform split a record: returns the record for the `index`-th part (id suffixed `#index`). */
  split(record: Entry, payload: JsonObject, index: number): Entry;
}

function isThenable(value: unknown): value is PromiseLike<TransformOutput> {
  return typeof (value as PromiseLike<unknown> | null)?.then === "function";
}

/**
 * Runs records through the transforms in order. Synchronous transforms take a fast path that
 * creates no promise per record; a chain returns a promise only when some transform does, and
 * records still leave in input order.
 */
export class TransformChain {
  constructor(
    private readonly steps: readonly ChainStep[],
    private readonly hooks: ChainHooks,
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
    for (let i = next; i < records.length; i++) {
      const p = this.from(records[i]!, 0, out);
      if (p !== undefined) await p;
    }
  }

  /** Applies steps `first..` to one record; returns a promise only if a step was async. */
  private from(record: Entry, first: number, out: Entry[]): Promise<void> | undefined {
    let payload = record.payload;
    for (let s = first; s < this.steps.length; s++) {
      const step = this.steps[s]!;
      let result: TransformOutput | Promise<TransformOutput>;
      try {
        result = step.transform.apply(payload, record);
      } catch (err) {
        this.hooks.failed(record, step.stage, err);
        return undefined;
      }
      if (isThenable(result)) {
        return Promise.resolve(result).then(
          (value) => this.after(record, s, value, out),
          (err: unknown) => this.hooks.failed(record, step.stage, err),
        );
      }
      if (result === null || Array.isArray(result)) return this.after(record, s, result, out);
      payload = result;
    }
    record.payload = payload;
    out.push(record);
    return undefined;
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
    const parts = value.map((payload, index) => this.hooks.split(record, payload, index));
    let chain: Promise<void> | undefined;
    for (const part of parts) {
      chain = chain === undefined ? this.from(part, step + 1, out) : chain.then(() => this.from(part, step + 1, out));
    }
    return chain;
  }
}
