/**
 * The transform stage on worker threads (`workers` above 1): chunks go to a {@link TransformPool}
 * several at a time, and their results come back in the order the chunks were pulled, so records
 * reach the sinks in source order (per pipeline, hence per key) whatever order the workers finish
 * in. Acks are unchanged: a record's chunk is settled only once each record is delivered,
 * dead-lettered or filtered, on the main thread.
 */
import type { Chunk } from "./buffer.js";
import { SluiceError } from "./errors.js";
import { PayloadArray, RecordEntry, type Entry, type JsonObject, type LineRun } from "./record.js";
import type { PartMaker, Splitter } from "./split.js";
import { LEAF, type LeafError, type TransformJob, type TransformJobResult } from "./transform-jobs.js";

/**
 * Runs transform jobs on worker threads. `run` resolves with the job's result even when a worker
 * died or hung on the way (the job is redone, see `src/workers/pool.ts`); it rejects only once the
 * pool is closed.
 */
export interface TransformPool {
  /** Jobs in flight (sent, or done and waiting for their turn) before the stage stops pulling. */
  readonly capacity: number;
  run(job: TransformJob): Promise<TransformJobResult>;
  /** Ends the workers; jobs still running are rejected. */
  close(): Promise<void>;
}

/** What the stage reports back to the pipeline, as the in-process chain does. */
export interface ParallelHooks {
  /** A record dropped on purpose (a transform returned null). */
  filtered(record: Entry): void;
  /** A record a transform failed (or a worker died or hung on): dead-lettered with the step's stage. */
  failed(record: Entry, stage: string, error: SluiceError): void;
  /** Records that are not input (`failure` set): dead-lettered with stage `source:<name>`. */
  malformed(records: Entry[]): void;
  /** Transformed records, in order, for every sink. */
  fanOut(records: Entry[]): void;
  /** The workers cannot run at all (they fail to start): the run must stop. */
  fatal(error: SluiceError): void;
  /**
   * Whether anything will read the payloads of a chunk sent now (a sink, a tap reader); asked per
   * chunk. False: the workers send none back and its records hold none ({@link RecordEntry.withhold}).
   */
  payloadsRead(): boolean;
  /** Around each chunk's results (its tracing span). */
  begin?(chunk: Chunk): void;
  end?(chunk: Chunk): void;
}

/** The job of `records` (none of them malformed); undefined for none. */
function encode(job: number, source: string, receivedAt: number, records: readonly Entry[], payloads: boolean): { job: TransformJob; unencodable: Entry[] } {
  // The lines: consecutive records of one run cross as that run's text, a whole run (the common case) without a copy.
  const texts: string[] = [];
  let run: LineRun | undefined;
  let runFrom = 0;
  let runTo = 0;
  const offsets = new Float64Array(records.length);
  const prefixes: [number, string][] = [];
  let ids: (string | null)[] | undefined;
  let keys: (string | null)[] | undefined;
  let times: (number | null)[] | undefined;
  const unencodable: Entry[] = [];
  let n = 0;
  const prefixed = (prefix: string): void => {
    const last = prefixes.at(-1);
    if (last?.[1] === prefix) last[0]++;
    else prefixes.push([1, prefix]);
  };
  for (const r of records) {
    const from = (r as RecordEntry).undecoded;
    if (from !== undefined) {
      const index = (r as RecordEntry).index;
      if (from === run && index === runTo) runTo++;
      else {
        if (run !== undefined) texts.push(run.lines(runFrom, runTo));
        run = from;
        runFrom = index;
        runTo = index + 1;
      }
      offsets[n] = from.offsets[index]!;
      prefixed(from.prefix);
      if (ids !== undefined) {
        ids[n] = null;
        keys![n] = null;
        times![n] = null;
      }
      n++;
      continue;
    }
    // A record decoded by its source keeps its envelope; its payload crosses as JSON text.
    let text = r.text;
    if (text === undefined || text.includes("\n")) {
      try {
        text = JSON.stringify(r.payload);
      } catch {
        unencodable.push(r);
        continue;
      }
    }
    if (run !== undefined) {
      texts.push(run.lines(runFrom, runTo));
      run = undefined;
    }
    if (ids === undefined) {
      ids = new Array<string | null>(n).fill(null);
      keys = new Array<string | null>(n).fill(null);
      times = new Array<number | null>(n).fill(null);
    }
    texts.push(text);
    offsets[n] = NaN;
    prefixed("");
    ids[n] = r.id;
    keys![n] = r.key ?? null;
    times![n] = r.eventTime ?? null;
    n++;
  }
  if (run !== undefined) texts.push(run.lines(runFrom, runTo));
  const positions = ids !== undefined && !ids.includes(null) ? undefined : { offsets: n === offsets.length ? offsets : offsets.slice(0, n), prefixes };
  return {
    job: {
      job,
      source,
      receivedAt,
      lines: texts.join("\n"),
      count: n,
      ...(ids && { ids, keys, times }),
      ...(positions && { positions }),
      ...(!payloads && { payloads: false as const }),
    },
    unencodable,
  };
}

/** The leaves `[from, to)` of a result as parts of one split record. */
class LeafParts implements PartMaker {
  constructor(
    private readonly record: Entry,
    private readonly result: TransformJobResult,
    private readonly from: number,
    readonly count: number,
    /** Per leaf: its payload's JSON (an ok leaf's output, a failed part's payload), or undefined. */
    private readonly texts: readonly (string | undefined)[],
    /** The workers sent no payloads back: a part without text holds none. */
    private readonly withheld: boolean,
  ) {}

  payload(i: number): JsonObject {
    const text = this.texts[i];
    return text === undefined ? {} : (JSON.parse(text) as JsonObject);
  }

  bytes(i: number): number {
    return this.texts[i]?.length ?? 2;
  }

  make(i: number, bytes: number): RecordEntry {
    const r = this.record;
    const part = new RecordEntry(`${r.id}${this.result.suffixes![this.from + i]!}`, r.key, undefined, r.eventTime, r.source, bytes);
    const text = this.texts[i];
    if (text !== undefined) part.holdText(text);
    else if (this.withheld) part.withhold();
    return part;
  }
}

/** See the module comment. One per pipeline; the pipeline's single consumer loop calls {@link submit}. */
export class ParallelTransforms {
  private nextJob = 0;
  private inFlight = 0;
  private waiting: (() => void)[] = [];
  /** The chunks' results are applied one after the other, in submit order. */
  private tail: Promise<void> = Promise.resolve();
  private bug: unknown;

  constructor(
    private readonly pool: TransformPool,
    private readonly hooks: ParallelHooks,
    private readonly splitter: Splitter,
    /** The run's hard abort: results not applied yet are dropped (their records stay un-acked). */
    private readonly signal: AbortSignal,
  ) {}

  /** Sends a chunk to the workers; waits first while {@link TransformPool.capacity} chunks are in flight. */
  async submit(chunk: Chunk): Promise<void> {
    while (this.inFlight >= this.pool.capacity && !this.signal.aborted) await new Promise<void>((resolve) => this.waiting.push(resolve));
    if (this.signal.aborted) return;
    this.inFlight++;
    const records = chunk.records;
    let input = records;
    let malformed: Entry[] = [];
    for (const r of records) {
      if (r.failure !== undefined) {
        input = records.filter((x) => x.failure === undefined);
        malformed = records.filter((x) => x.failure !== undefined);
        break;
      }
    }
    const first = records[0];
    const { job, unencodable } = encode(this.nextJob++, first?.source ?? "", chunk.ticket.receivedAt, input, this.hooks.payloadsRead());
    if (unencodable.length > 0) input = input.filter((r) => !unencodable.includes(r));
    const result = job.count === 0 ? undefined : this.pool.run(job);
    // Rejected only when the pool closes (hard abort): then nothing is applied.
    result?.catch(() => {});
    this.tail = this.tail
      .then(() => this.apply(chunk, input, malformed, unencodable, result))
      .catch((err: unknown) => {
        this.bug ??= err;
      })
      .finally(() => {
        this.inFlight--;
        this.waiting.shift()?.();
      });
  }

  /** Resolves once every submitted chunk's results are applied (or dropped by the hard abort). */
  async drained(): Promise<void> {
    const abort = new Promise<void>((resolve) => {
      if (this.signal.aborted) resolve();
      else this.signal.addEventListener("abort", () => resolve(), { once: true });
    });
    await Promise.race([this.tail, abort]);
    for (const w of this.waiting.splice(0)) w();
    if (this.bug !== undefined) throw this.bug;
  }

  private async apply(chunk: Chunk, input: readonly Entry[], malformed: Entry[], unencodable: Entry[], pending: Promise<TransformJobResult> | undefined): Promise<void> {
    let result: TransformJobResult | undefined;
    if (pending !== undefined) {
      try {
        result = await pending;
      } catch (err) {
        // ERR_ABORTED: the pool closed at the run's end. Either way the records stay un-acked.
        if (err instanceof SluiceError && err.code !== "ERR_ABORTED") this.hooks.fatal(err);
        return;
      }
    }
    if (this.signal.aborted) return;
    this.hooks.begin?.(chunk);
    try {
      if (malformed.length > 0) this.hooks.malformed(malformed);
      for (const r of unencodable) this.hooks.failed(r, "transform", new SluiceError("ERR_TRANSFORM_FAILED", "the payload is not JSON, so it cannot cross to a transform worker thread"));
      const out: Entry[] = [];
      if (result !== undefined) await this.outcomes(input, result, out);
      if (!this.signal.aborted) this.hooks.fanOut(out);
    } finally {
      this.hooks.end?.(chunk);
    }
  }

  /** Applies a result to its records: envelopes, payloads, and what became of each. */
  private async outcomes(input: readonly Entry[], result: TransformJobResult, out: Entry[]): Promise<void> {
    const { inputs, kinds, errors, suffixes } = result;
    const ids = result.ids;
    const array = result.out === undefined ? undefined : new PayloadArray(result.out, kinds.reduce((n, k) => (k === LEAF.ok ? n + 1 : n), 0));
    let leaf = 0;
    let text = 0;
    let error = 0;
    const leaves = inputs.length;
    for (let i = 0; i < input.length; i++) {
      const r = input[i] as RecordEntry;
      const origin = r.undecoded;
      if (origin !== undefined) {
        r.id = ids?.[i] ?? `${r.source}:${origin.position(r.index)}`;
        r.key = result.keys?.[i] ?? undefined;
        r.eventTime = result.times?.[i] ?? undefined;
      }
      const start = leaf;
      while (leaf < leaves && inputs[leaf] === i) leaf++;
      if (suffixes === undefined || (leaf - start === 1 && suffixes[start] === "")) {
        const kind = kinds[start];
        if (kind === LEAF.ok) {
          if (array === undefined) r.withhold();
          else r.holdElement(array, text++);
          out.push(r);
        } else if (kind === LEAF.filtered) {
          this.hooks.filtered(r);
        } else {
          const e = errors[error++]!;
          if (kind === LEAF.malformed) {
            r.failure = new SluiceError("ERR_RECORD_MALFORMED", e[2], origin === undefined ? {} : { location: `${origin.location}:${origin.firstLine + r.index}` });
            r.raw = r.text;
            r.undecoded = undefined;
            this.hooks.malformed([r]);
          } else {
            this.failed(r, e);
          }
        }
        continue;
      }
      // Split: the parts go through the splitter, for the buffer's bound and their tickets.
      const count = leaf - start;
      const partTexts: (string | undefined)[] = [];
      const partErrors: (LeafError | undefined)[] = [];
      for (let l = start; l < leaf; l++) {
        const kind = kinds[l];
        if (kind === LEAF.ok) {
          partTexts.push(array?.text(text++));
          partErrors.push(undefined);
        } else if (kind === LEAF.filtered) {
          partTexts.push(undefined);
          partErrors.push(undefined);
        } else {
          const e = errors[error++]!;
          partTexts.push(e[4]);
          partErrors.push(e);
        }
      }
      let p = 0;
      const parts = new LeafParts(r, result, start, count, partTexts, array === undefined);
      const pending = this.splitter.runParts(r, parts, out, (part) => {
        const at = p++;
        const kind = kinds[start + at];
        if (kind === LEAF.ok) out.push(part);
        else if (kind === LEAF.filtered) this.hooks.filtered(part);
        else this.failed(part, partErrors[at]!);
        return undefined;
      });
      if (pending !== undefined) await pending;
      if (this.signal.aborted) return;
    }
  }

  private failed(r: Entry, e: LeafError): void {
    const [stage, code, message, location] = e;
    this.hooks.failed(r, stage, new SluiceError(code as never, message, location === undefined ? {} : { location }));
  }
}
