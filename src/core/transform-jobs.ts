/**
 * What crosses between the main thread and a transform worker thread (`workers`), and the work a
 * worker does with it: decode a chunk's JSON lines, read their envelopes, run the transform chain,
 * serialize what comes out. A chunk crosses as one string in (its lines joined by `\n`) and as one
 * string plus a few flat arrays out, never object by object.
 */
import type { Clock } from "./clock.js";
import { EnvelopeReader, Malformed, parseObjectLine, parseObjectRun, type EnvelopeFields } from "./envelope.js";
import { classify, SluiceError } from "./errors.js";
import type { Entry, JsonObject, RecordView } from "./record.js";
import { TransformChain, type ChainStep } from "./transform-chain.js";

/**
 * How a worker makes a transform: its built-in type and validated options, the directory its
 * relative paths resolve against. A step without one (a library closure) cannot run on a worker.
 */
export interface PortableTransform {
  readonly type: string;
  readonly options: unknown;
  readonly baseDir: string;
}

/** A chain step as a worker rebuilds it. */
export interface PortableStep {
  readonly stage: string;
  readonly transform: PortableTransform;
  readonly timeoutMs?: number | undefined;
  readonly maxSplit?: number | undefined;
}

/** What every worker of a pipeline is started with. */
export interface WorkerSetup {
  readonly steps: readonly PortableStep[];
  /** Per source name, the payload fields of its envelope. */
  readonly envelopes: Readonly<Record<string, EnvelopeFields>>;
  readonly dataDir: string;
  /** How often the worker says it is alive, in ms (a worker that stops saying so is stuck in a transform). */
  readonly heartbeatMs: number;
}

/** See {@link TransformJob.positions}. */
export interface JobPositions {
  readonly offsets: Float64Array;
  readonly prefixes: readonly (readonly [records: number, prefix: string])[];
}

/** Record `i`'s position in {@link JobPositions}. */
function positionOf(positions: JobPositions, i: number): string | number {
  let first = 0;
  for (const [records, prefix] of positions.prefixes) {
    first += records;
    if (i < first) return prefix === "" ? positions.offsets[i]! : `${prefix}${positions.offsets[i]!}`;
  }
  return i;
}

/** A record the main thread already knows the outcome of (a worker died on it): not run again. */
export type SkippedRecord = readonly [index: number, stage: string, code: string, message: string];

/** One chunk's work. */
export interface TransformJob {
  readonly job: number;
  readonly source: string;
  readonly receivedAt: number;
  /** The records' payloads as JSON text, one per line, joined by `\n`. */
  readonly lines: string;
  readonly count: number;
  /**
   * Per record, its id when the main thread knows its envelope already (a record decoded by its
   * source), or null for a line to decode, whose envelope the worker reads. Undefined: every line
   * is to decode.
   */
  readonly ids?: readonly (string | null)[];
  /** Per record with a known id: its key and event time. */
  readonly keys?: readonly (string | null)[];
  readonly times?: readonly (number | null)[];
  /**
   * Per record, where it is in its source (a line to decode; a record with a known id has none,
   * NaN): for the fallback id a transform's record view shows. A position is its run of records'
   * prefix followed by its offset; `prefixes` are `[records, prefix]` in record order. Absent: every
   * id is known.
   */
  readonly positions?: JobPositions;
  readonly skip?: readonly SkippedRecord[];
  /**
   * `false`: send no payloads back (no sink reads them, `Sink.readsPayloads`): the result says only
   * what became of each record, and nothing is serialized.
   */
  readonly payloads?: false;
  /** Run record by record, reporting each (and each step) before it runs: to find the record a worker dies on. */
  readonly isolate?: boolean;
}

/** What became of one record, or of one part of a split record. */
export const LEAF = { ok: 0, filtered: 1, failed: 2, malformed: 3 } as const;

/** A failed or malformed leaf: stage, code, message, location, and for a split part its payload's JSON. */
export type LeafError = readonly [stage: string, code: string, message: string, location: string | undefined, payload: string | undefined];

/** One chunk's result. Leaves are in input order, a split record's parts in their order. */
export interface TransformJobResult {
  readonly job: number;
  /** Per leaf: the index of the input record it comes from. */
  readonly inputs: Int32Array;
  /** Per leaf: a {@link LEAF} value. */
  readonly kinds: Uint8Array;
  /** Per leaf: the suffix a split part's id gets (`#2`, `#2#0`); undefined when nothing was split. */
  readonly suffixes: string[] | undefined;
  /** The payloads of the `ok` leaves, in leaf order, as one JSON array; undefined when the job asked for none. */
  readonly out: string | undefined;
  /** Per failed or malformed leaf, in leaf order. */
  readonly errors: LeafError[];
  /**
   * Per input decoded here: the id its payload names (null: none; the main thread's fallback
   * applies). Undefined: no input was decoded here. (An array of strings measured as cheap to
   * clone as one JSON string of it, once that string's serializing and parsing are counted.)
   */
  readonly ids: (string | null)[] | undefined;
  readonly keys: (string | null)[] | undefined;
  readonly times: (number | null)[] | undefined;
}

/** Messages a worker posts. */
export type WorkerMessage =
  | { readonly type: "done"; readonly result: TransformJobResult }
  | { readonly type: "alive" }
  /** Isolate mode: record `index` of job `job` is about to run step `step`. */
  | { readonly type: "at"; readonly job: number; readonly index: number; readonly step: number };

/** True when every line of `text` (joined by `\n`) starts with `{` and ends with `}`: a run {@link parseObjectRun} may take. */
function allObjectLines(text: string): boolean {
  if (text === "") return false;
  let from = 0;
  for (;;) {
    const nl = text.indexOf("\n", from);
    const end = nl < 0 ? text.length : nl;
    if (end === from || text.charCodeAt(from) !== 0x7b || text.charCodeAt(end - 1) !== 0x7d) return false;
    if (nl < 0) return true;
    from = nl + 1;
  }
}

/** A record as a worker's chain sees it: the envelope, the payload, and where it came from. */
class WorkerRecord {
  attempts = 0;
  view: RecordView | undefined = undefined;
  constructor(
    readonly id: string,
    readonly key: string | undefined,
    public payload: JsonObject,
    readonly eventTime: number | undefined,
    readonly source: string,
    readonly receivedAt: number,
    readonly input: number,
    readonly suffix: string,
  ) {}
}

interface Decoded {
  /** Undefined where a line is malformed. */
  readonly records: (WorkerRecord | undefined)[];
  /** Why, by index. */
  readonly malformed: Map<number, string>;
  readonly ids: (string | null)[] | undefined;
  readonly keys: (string | null)[] | undefined;
  readonly times: (number | null)[] | undefined;
}

/** The leaves of a job as the chain produces them. */
class Leaves {
  readonly inputs: number[] = [];
  readonly kinds: number[] = [];
  readonly suffixes: string[] = [];
  /** The `ok` leaves' payloads, serialized together at the end; none kept when the job wants none. */
  readonly outputs: JsonObject[] = [];

  constructor(private readonly keep: boolean) {}
  /** Per failed or malformed leaf, by leaf index. */
  readonly errors = new Map<number, LeafError>();
  split = false;

  add(r: WorkerRecord, kind: number): number {
    this.inputs.push(r.input);
    this.kinds.push(kind);
    this.suffixes.push(r.suffix);
    return this.inputs.length - 1;
  }

  push(r: WorkerRecord): void {
    this.add(r, LEAF.ok);
    if (this.keep) this.outputs.push(r.payload);
  }

  fail(r: WorkerRecord, stage: string, err: unknown): void {
    const e = classify(err, "ERR_TRANSFORM_FAILED");
    this.errors.set(this.add(r, LEAF.failed), [stage, e.code, e.message, e.location, r.suffix === "" ? undefined : safeJson(r.payload)]);
  }

  /**
   * The `ok` payloads as one JSON array. One that is not JSON (a BigInt, a cycle) fails its leaf
   * with `ERR_TRANSFORM_FAILED` at `stage`, the last transform's, and is left out.
   */
  serialize(stage: string): string {
    try {
      return JSON.stringify(this.outputs);
    } catch {
      const kept: JsonObject[] = [];
      let o = 0;
      for (let leaf = 0; leaf < this.kinds.length; leaf++) {
        if (this.kinds[leaf] !== LEAF.ok) continue;
        const payload = this.outputs[o++]!;
        try {
          JSON.stringify(payload);
          kept.push(payload);
        } catch (err) {
          this.kinds[leaf] = LEAF.failed;
          this.errors.set(leaf, [stage, "ERR_TRANSFORM_FAILED", `the transforms' result is not JSON: ${(err as Error).message}`, undefined, undefined]);
        }
      }
      return JSON.stringify(kept);
    }
  }
}

function safeJson(payload: JsonObject): string | undefined {
  try {
    return JSON.stringify(payload);
  } catch {
    return undefined;
  }
}

/**
 * Runs jobs inside a worker: the chain built once from the pipeline's steps (made by the worker's
 * own loader), envelopes read with each source's fields.
 */
export class JobRunner {
  private readonly envelopes = new Map<string, EnvelopeReader>();
  /** A worker's chains are never hard-aborted (the pool terminates the worker); one signal for every job, not an AbortController per job. */
  private readonly never = new AbortController().signal;

  constructor(
    private readonly steps: readonly ChainStep[],
    envelopes: Readonly<Record<string, EnvelopeFields>>,
    private readonly clock: Clock,
    /** Isolate mode's reports (see {@link TransformJob.isolate}). */
    private readonly report: (job: number, index: number, step: number) => void,
  ) {
    for (const [name, fields] of Object.entries(envelopes)) this.envelopes.set(name, new EnvelopeReader(fields));
  }

  async run(job: TransformJob): Promise<TransformJobResult> {
    const leaves = new Leaves(job.payloads !== false);
    const { records, malformed, ids, keys, times } = this.decode(job);
    const skipped = new Map(job.skip?.map((s) => [s[0], s] as const));
    // Isolate mode runs one record at a time: the record its steps report.
    const current = { index: 0 };
    const chain = this.chainFor(job, leaves, current);
    const lastStage = this.steps.at(-1)?.stage ?? "transform";
    const out = { push: (r: WorkerRecord) => leaves.push(r) } as unknown as Entry[];
    if (job.isolate !== true && skipped.size === 0 && malformed.size === 0) {
      // The common case: the whole chunk through the chain at once (its synchronous fast path).
      const pending = chain.run(records as unknown as Entry[], out);
      if (pending !== undefined) await pending;
      return this.result(job, leaves, lastStage, ids, keys, times);
    }
    for (let i = 0; i < records.length; i++) {
      const r = records[i];
      if (r === undefined) {
        const leaf = leaves.add(new WorkerRecord("", undefined, {}, undefined, job.source, job.receivedAt, i, ""), LEAF.malformed);
        leaves.errors.set(leaf, [`source:${job.source}`, "ERR_RECORD_MALFORMED", malformed.get(i)!, undefined, undefined]);
        continue;
      }
      const skip = skipped.get(i);
      if (skip !== undefined) {
        leaves.errors.set(leaves.add(r, LEAF.failed), [skip[1], skip[2], skip[3], undefined, undefined]);
        continue;
      }
      current.index = i;
      const pending = chain.run([r as unknown as Entry], out);
      if (pending !== undefined) await pending;
    }
    return this.result(job, leaves, lastStage, ids, keys, times);
  }

  private result(job: TransformJob, leaves: Leaves, lastStage: string, ids: Decoded["ids"], keys: Decoded["keys"], times: Decoded["times"]): TransformJobResult {
    const out = job.payloads === false ? undefined : leaves.serialize(lastStage);
    const { inputs, kinds, suffixes, split } = leaves;
    const errors = [...leaves.errors.entries()].sort((a, b) => a[0] - b[0]).map((e) => e[1]);
    return {
      job: job.job,
      inputs: Int32Array.from(inputs),
      kinds: Uint8Array.from(kinds),
      suffixes: split ? suffixes : undefined,
      out,
      errors,
      ids,
      keys,
      times,
    };
  }

  /** The job's records, decoded, and the envelopes read. */
  private decode(job: TransformJob): Decoded {
    const { count, source, receivedAt } = job;
    // Split into lines only when the run cannot be parsed at once: the common case allocates no line.
    let values: (JsonObject | Malformed)[] | undefined = job.isolate !== true && allObjectLines(job.lines) ? parseObjectRun(job.lines, count) : undefined;
    if (values === undefined) {
      const lines = count === 0 ? [] : job.lines.split("\n");
      if (lines.length !== count) throw new SluiceError("ERR_INTERNAL", `a transform job of ${count} records holds ${lines.length} lines`);
      values = lines.map(parseObjectLine);
    }
    const envelope = this.envelopes.get(source) ?? new EnvelopeReader({});
    const known = job.ids;
    const decodesAny = known === undefined || known.includes(null);
    const ids: (string | null)[] | undefined = decodesAny ? new Array<string | null>(count).fill(null) : undefined;
    const keys: (string | null)[] | undefined = decodesAny && envelope.keyed ? new Array<string | null>(count).fill(null) : undefined;
    const times: (number | null)[] | undefined = decodesAny && envelope.timed ? new Array<number | null>(count).fill(null) : undefined;
    const records: (WorkerRecord | undefined)[] = new Array<WorkerRecord | undefined>(count);
    const malformed = new Map<number, string>();
    for (let i = 0; i < count; i++) {
      const value = values[i]!;
      const knownId = known?.[i] ?? null;
      if (value instanceof Malformed) {
        malformed.set(i, value.message);
        continue;
      }
      if (knownId !== null) {
        records[i] = new WorkerRecord(knownId, job.keys?.[i] ?? undefined, value, job.times?.[i] ?? undefined, source, receivedAt, i, "");
        continue;
      }
      const id = envelope.id(value);
      const key = envelope.key(value);
      const time = envelope.time(value);
      ids![i] = id ?? null;
      if (keys !== undefined) keys[i] = key ?? null;
      if (times !== undefined) times[i] = time ?? null;
      records[i] = new WorkerRecord(id ?? `${source}:${job.positions === undefined ? i : positionOf(job.positions, i)}`, key, value, time, source, receivedAt, i, "");
    }
    return { records, malformed, ids, keys, times };
  }

  /** The chain for a job: the steps as they are, or (isolate mode) each reporting before it runs. */
  private chainFor(job: TransformJob, leaves: Leaves, current: { index: number }): TransformChain {
    const steps =
      job.isolate !== true
        ? this.steps
        : this.steps.map((step, s) => ({
            ...step,
            transform: {
              get takesRecord() {
                return step.transform.takesRecord;
              },
              apply: (payload: JsonObject, record: RecordView) => {
                this.report(job.job, current.index, s);
                return step.transform.apply(payload, record);
              },
            },
          }));
    return new TransformChain(
      steps,
      {
        filtered: (r) => leaves.add(r as unknown as WorkerRecord, LEAF.filtered),
        failed: (r, stage, err) => leaves.fail(r as unknown as WorkerRecord, stage, err),
        split: (r, payloads, out, next) => {
          leaves.split = true;
          const parent = r as unknown as WorkerRecord;
          const part = (i: number) =>
            new WorkerRecord(`${parent.id}#${i}`, parent.key, payloads[i]!, parent.eventTime, parent.source, parent.receivedAt, parent.input, `${parent.suffix}#${i}`);
          const from = (first: number): Promise<void> | undefined => {
            for (let i = first; i < payloads.length; i++) {
              const pending = next(part(i) as unknown as Entry);
              if (pending !== undefined) return pending.then(() => from(i + 1));
            }
            return undefined;
          };
          return from(0);
        },
      },
      this.clock,
      this.never,
    );
  }
}

