/**
 * The transform worker threads of a pipeline (`workers` above 1): a fixed number of
 * `node:worker_threads` workers running `transform-worker.ts`, each with up to two jobs (chunks)
 * in flight, and what keeps a job from being lost:
 *
 * - A worker that dies (an error nothing caught, `process.exit` in a transform, out of memory) is
 *   replaced, and every job it held is sent again, in isolate mode: record by record, each
 *   reported before it runs, on a worker that runs nothing else. A worker that dies in isolate
 *   mode names its record: that one is dead-lettered (`ERR_TRANSFORM_FAILED`, with the step's
 *   stage) and the job is sent again without it, so a record that kills workers costs itself only.
 * - A worker that stops saying it is alive for longer than the transforms' shortest `timeout` is
 *   stuck in synchronous code: it is terminated and handled as one that died, its record
 *   dead-lettered with `ERR_TRANSFORM_TIMEOUT`.
 * - Workers that cannot start at all (three in a row die before their first sign of life) fail
 *   every job: the run stops.
 */
import { availableParallelism } from "node:os";
import { createRequire } from "node:module";
import { pathToFileURL } from "node:url";
import { Worker } from "node:worker_threads";
import { SluiceError } from "../core/errors.js";
import type { Logger } from "../core/events.js";
import type { TransformPool } from "../core/parallel-transforms.js";
import type { EnvelopeFields } from "../core/envelope.js";
import type { ChainStep } from "../core/transform-chain.js";
import type { PortableStep, SkippedRecord, TransformJob, TransformJobResult, WorkerMessage, WorkerSetup } from "../core/transform-jobs.js";

/** Jobs one worker holds at once: one running, one waiting in its queue, so it never idles between two. */
const JOBS_PER_WORKER = 2;
/** Workers in a row that die before their first sign of life before the pool gives up. */
const MAX_BOOT_FAILURES = 3;

/** The number of workers `workers: auto` means: one per core the process may use. */
export function autoWorkers(): number {
  return availableParallelism();
}

/** Where the worker's code is, beside this file: `.ts` when running from the sources, else `.js`/`.mjs` (dist/, a bundle). */
function workerEntry(): URL {
  const here = import.meta.url;
  const ext = here.slice(here.lastIndexOf("."));
  return new URL(`./transform-worker${ext}`, here);
}

/**
 * Starts a worker on `entry`. A `.ts` entry (the sources, under tsx or vitest) is loaded through
 * tsx's loader registered inside the worker first: `--import tsx` in a worker's `execArgv`
 * registers it too late for the entry itself.
 */
function startWorker(entry: URL, setup: WorkerSetup): Worker {
  if (!entry.pathname.endsWith(".ts")) return new Worker(entry, { workerData: setup });
  // tsx's ESM API; resolve() gives its CommonJS twin, whose import of the ESM half fails in a worker.
  const api = pathToFileURL(createRequire(import.meta.url).resolve("tsx/esm/api").replace(/\.cjs$/, ".mjs")).href;
  const code = `import { register } from ${JSON.stringify(api)}; register(); await import(${JSON.stringify(entry.href)});`;
  return new Worker(new URL(`data:text/javascript,${encodeURIComponent(code)}`), { workerData: setup });
}

/** A job and who waits for it. */
interface Pending {
  job: TransformJob;
  readonly resolve: (result: TransformJobResult) => void;
  readonly reject: (err: unknown) => void;
  /** Isolate mode: the record and step the worker said it was at. */
  at: { index: number; step: number } | undefined;
}

/** One worker and the jobs it holds. */
interface Slot {
  readonly worker: Worker;
  readonly jobs: Map<number, Pending>;
  /** When it last said it was alive (ms, `performance.now()`); undefined before its first sign of life. */
  lastSeen: number | undefined;
  /** Set once it was found dead (or terminated as stuck): later events of it are ignored. */
  gone: boolean;
}

/** Settings of a {@link WorkerPool}. */
export interface WorkerPoolOptions {
  readonly size: number;
  readonly setup: Omit<WorkerSetup, "heartbeatMs">;
  readonly logger: Logger;
  /** The worker's code; default `transform-worker` beside this file. For tests. */
  readonly entry?: URL;
}

/** See the module comment. */
export class WorkerPool implements TransformPool {
  readonly capacity: number;
  private readonly slots: Slot[] = [];
  /** Jobs not on a worker, in job order (a job sent again goes back in its place). */
  private queue: Pending[] = [];
  private readonly setup: WorkerSetup;
  private readonly entry: URL;
  /** How long a worker may stay silent with jobs before it counts as stuck; undefined: never. */
  private readonly hangMs: number | undefined;
  private watchdog: NodeJS.Timeout | undefined;
  private bootFailures = 0;
  private closed: SluiceError | undefined;

  constructor(private readonly o: WorkerPoolOptions) {
    const timeouts = o.setup.steps.map((s) => s.timeoutMs).filter((t): t is number => t !== undefined);
    this.hangMs = timeouts.length === 0 ? undefined : Math.min(...timeouts);
    const heartbeatMs = Math.max(10, Math.min(1000, Math.floor((this.hangMs ?? 4000) / 4)));
    this.setup = { ...o.setup, heartbeatMs };
    this.entry = o.entry ?? workerEntry();
    this.capacity = o.size * (JOBS_PER_WORKER + 1);
  }

  run(job: TransformJob): Promise<TransformJobResult> {
    if (this.closed !== undefined) return Promise.reject(this.closed);
    // Started on the first job, so a pipeline built and never run holds no threads.
    if (this.slots.length === 0) this.startAll();
    return new Promise((resolve, reject) => {
      this.enqueue({ job, resolve, reject, at: undefined });
      this.dispatch();
    });
  }

  async close(): Promise<void> {
    this.closed ??= new SluiceError("ERR_ABORTED", "the transform workers were closed");
    if (this.watchdog !== undefined) clearInterval(this.watchdog);
    this.failAll(this.closed);
    await Promise.all(
      this.slots.map((slot) => {
        slot.gone = true;
        return slot.worker.terminate();
      }),
    );
  }

  private startAll(): void {
    for (let i = 0; i < this.o.size; i++) this.slots.push(this.start());
    if (this.hangMs !== undefined) {
      const hangMs = this.hangMs;
      this.watchdog = setInterval(() => this.findStuck(hangMs), this.setup.heartbeatMs);
      this.watchdog.unref();
    }
  }

  private start(): Slot {
    const worker = startWorker(this.entry, this.setup);
    const slot: Slot = { worker, jobs: new Map(), lastSeen: undefined, gone: false };
    worker.on("message", (m: WorkerMessage) => this.onMessage(slot, m));
    worker.on("error", (err) => this.died(slot, "ERR_TRANSFORM_FAILED", `the worker thread running the transforms failed: ${err.message}`));
    worker.on("exit", (code) => this.died(slot, "ERR_TRANSFORM_FAILED", `the worker thread running the transforms exited with code ${code}`));
    return slot;
  }

  private onMessage(slot: Slot, m: WorkerMessage): void {
    if (slot.gone) return;
    slot.lastSeen = performance.now();
    if (m.type === "alive") {
      this.bootFailures = 0;
      return;
    }
    if (m.type === "at") {
      const pending = slot.jobs.get(m.job);
      if (pending !== undefined) pending.at = { index: m.index, step: m.step };
      return;
    }
    const done = slot.jobs.get(m.result.job);
    slot.jobs.delete(m.result.job);
    done?.resolve(m.result);
    this.dispatch();
  }

  /** A worker is gone: its jobs go back in the queue, in isolate mode; a new worker takes its place. */
  private died(slot: Slot, code: "ERR_TRANSFORM_FAILED" | "ERR_TRANSFORM_TIMEOUT", message: string): void {
    if (slot.gone || this.closed !== undefined) return;
    slot.gone = true;
    if (slot.lastSeen === undefined && ++this.bootFailures >= MAX_BOOT_FAILURES) {
      this.closed = new SluiceError("ERR_INTERNAL", `transform worker threads cannot start: ${message}`);
      this.failAll(this.closed);
      return;
    }
    this.o.logger.warn({ component: "workers", code, jobs: slot.jobs.size, err: message }, "a transform worker thread is gone; starting another and redoing its chunks record by record");
    for (const pending of slot.jobs.values()) {
      const at = pending.at;
      pending.at = undefined;
      const skip: SkippedRecord[] = [...(pending.job.skip ?? [])];
      if (pending.job.isolate === true && at !== undefined) {
        const stage = this.setup.steps[at.step]?.stage ?? "transform";
        skip.push([at.index, stage, code, `${message} while transforming this record`]);
      }
      pending.job = { ...pending.job, isolate: true, skip };
      this.enqueue(pending);
    }
    slot.jobs.clear();
    const i = this.slots.indexOf(slot);
    if (i >= 0) this.slots[i] = this.start();
    this.dispatch();
  }

  /** Terminates workers silent for longer than `hangMs` while holding jobs: stuck in a synchronous transform. */
  private findStuck(hangMs: number): void {
    const now = performance.now();
    for (const slot of this.slots) {
      if (slot.gone || slot.jobs.size === 0 || slot.lastSeen === undefined || now - slot.lastSeen <= hangMs) continue;
      const worker = slot.worker;
      this.died(slot, "ERR_TRANSFORM_TIMEOUT", `the transform ran for more than its timeout (${hangMs} ms) without giving the worker thread back (synchronous code); the worker was terminated`);
      void worker.terminate();
    }
  }

  private enqueue(pending: Pending): void {
    const id = pending.job.job;
    let i = this.queue.length;
    while (i > 0 && this.queue[i - 1]!.job.job > id) i--;
    this.queue.splice(i, 0, pending);
  }

  /**
   * Sends queued jobs, in order, to the least busy worker. A job in isolate mode goes only to a
   * worker holding nothing, and holds it alone, so a death is blamed on the record it reported.
   */
  private dispatch(): void {
    while (this.queue.length > 0) {
      const pending = this.queue[0]!;
      const isolate = pending.job.isolate === true;
      let best: Slot | undefined;
      for (const slot of this.slots) {
        if (slot.gone) continue;
        const alone = [...slot.jobs.values()].some((p) => p.job.isolate === true);
        if (alone || (isolate && slot.jobs.size > 0) || slot.jobs.size >= JOBS_PER_WORKER) continue;
        if (best === undefined || slot.jobs.size < best.jobs.size) best = slot;
      }
      if (best === undefined) return;
      this.queue.shift();
      // A worker that was idle counts its silence from now, not from its last job.
      if (best.jobs.size === 0 && best.lastSeen !== undefined) best.lastSeen = performance.now();
      best.jobs.set(pending.job.job, pending);
      best.worker.postMessage(pending.job);
    }
  }

  private failAll(error: SluiceError): void {
    for (const p of this.queue) p.reject(error);
    this.queue = [];
    for (const slot of this.slots) {
      for (const p of slot.jobs.values()) p.reject(error);
      slot.jobs.clear();
    }
  }
}

/** A source's name and envelope fields, as the pipeline has them. */
export interface SourceEnvelope {
  readonly name: string;
  readonly idField?: string | false;
  readonly keyField?: string;
  readonly timeField?: string;
}

/** How many threads `workers` asks for: `auto` is one per core. */
export function workerCount(workers: number | "auto"): number {
  return workers === "auto" ? autoWorkers() : workers;
}

/**
 * Why each transform cannot run on worker threads (one that has no {@link ChainStep.portable}: a
 * function given to the library's `map`, `filter` or `flatMap`, or a custom transform factory),
 * as `[stage, reason]`; empty when `workers` is 1 or every transform can.
 */
export function workerRefusals(workers: number | "auto", steps: readonly Pick<ChainStep, "stage" | "portable">[]): [string, string][] {
  if (workerCount(workers) <= 1) return [];
  return steps
    .filter((s) => s.portable === undefined)
    .map((s) => [
      s.stage,
      `cannot run on worker threads (workers: ${workers}): it is a function of this thread, which a worker cannot load; use a module transform (its file is loaded in each worker) or workers: 1`,
    ]);
}

/**
 * The pool `workers` asks for, or undefined when the transforms run on the main thread (`workers`
 * 1, or `auto` on one core). Call {@link workerRefusals} first: a step without `portable` throws.
 */
export function transformPoolFor(workers: number | "auto", steps: readonly ChainStep[], sources: readonly SourceEnvelope[], dataDir: string, logger: Logger): WorkerPool | undefined {
  const size = workerCount(workers);
  if (size <= 1) return undefined;
  const portable: PortableStep[] = steps.map((s) => {
    if (s.portable === undefined) throw new SluiceError("ERR_CONFIG_INVALID", `${s.stage} cannot run on worker threads`);
    return { stage: s.stage, transform: s.portable, timeoutMs: s.timeoutMs, maxSplit: s.maxSplit };
  });
  const envelopes: Record<string, EnvelopeFields> = {};
  for (const s of sources) envelopes[s.name] = { idField: s.idField, keyField: s.keyField, timeField: s.timeField };
  return new WorkerPool({ size, setup: { steps: portable, envelopes, dataDir }, logger });
}
