/**
 * A tiny in-memory {@link SourceHandle} for source unit tests: it builds Entry-shaped records,
 * collects enqueued chunks with their checkpoints, can hold `enqueue` to simulate backpressure,
 * and acks collected chunks back to the source in order. Integration tests use the real engine.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { ComponentContext, EnqueueOutcome, Source, SourceHandle } from "../../src/components/contracts.js";
import { systemClock, type Clock } from "../../src/core/clock.js";
import type { SluiceError } from "../../src/core/errors.js";
import type { InternalEvent, Logger } from "../../src/core/events.js";
import type { AckTicket, Entry, JsonObject } from "../../src/core/record.js";

/** One chunk as the source enqueued it. */
export interface CollectedChunk {
  readonly seq: number;
  readonly records: Entry[];
  readonly checkpoint: unknown;
}

/** Options of a {@link SourceHarness}. */
export interface SourceHarnessOptions {
  /** `chunkSize` the source sees; default 100. */
  chunkSize?: number;
  /** The envelope's `source`; default `"test"`. */
  source?: string;
  /** Clock for `receivedAt`; default the system clock. */
  clock?: Clock;
  /** The handle's `wantsText`; default absent (true). */
  wantsText?: boolean;
}

const noop = (): void => {};

/**
 * The in-memory handle. Records get their id from `payload.id` (string or number) else from
 * `<source>:<position>`, like the engine's default `id_field: id`; key and event time stay undefined.
 *
 * Gotcha: `ack` is never called by the harness on its own; call {@link SourceHarness.ackThrough}.
 */
export class SourceHarness implements SourceHandle {
  readonly chunkSize: number;
  readonly wantsText?: boolean;
  readonly chunks: CollectedChunk[] = [];
  /** Resolved value of every `enqueue`; set to `"stopping"` to make the source stop. */
  outcome: EnqueueOutcome = "accepted";
  /**
   * Called on every enqueue after the chunk is collected; `enqueue` resolves only after the
   * returned promise does, which is how a test holds the source (backpressure).
   */
  onEnqueue: ((chunk: CollectedChunk) => Promise<void> | void) | undefined;
  private readonly sourceName: string;
  private readonly clock: Clock;
  private ackedThrough = -1;
  private waiters: { count: number; resolve: () => void }[] = [];

  constructor(options: SourceHarnessOptions = {}) {
    this.chunkSize = options.chunkSize ?? 100;
    this.sourceName = options.source ?? "test";
    this.clock = options.clock ?? systemClock;
    if (options.wantsText !== undefined) this.wantsText = options.wantsText;
  }

  record(payload: JsonObject, bytes: number, position: string | number, _text?: string, _envelope?: unknown, positionPrefix = ""): Entry {
    const id = payload.id;
    return this.entry(payload, typeof id === "string" || typeof id === "number" ? String(id) : `${this.sourceName}:${positionPrefix}${position}`, bytes, undefined, undefined);
  }

  malformed(raw: string, position: string | number, error: SluiceError): Entry {
    return this.entry({}, `${this.sourceName}:${position}`, raw.length, error, raw);
  }

  async enqueue(records: Entry[], checkpoint: unknown): Promise<EnqueueOutcome> {
    const chunk: CollectedChunk = { seq: this.chunks.length, records, checkpoint };
    const ticket: AckTicket = {
      seq: chunk.seq,
      checkpoint,
      receivedAt: this.clock.now(),
      records: records.length,
      bytes: records.reduce((sum, r) => sum + r.bytes, 0),
      pending: records.length,
      onDone: noop,
    };
    for (const r of records) r.ticket = ticket;
    this.chunks.push(chunk);
    this.wake();
    await this.onEnqueue?.(chunk);
    return this.outcome;
  }

  /** Room is always there, for as many as asked, until the harness answers `stopping`. */
  waitForRoom(n: number): Promise<number> {
    return Promise.resolve(this.outcome === "stopping" ? 0 : n);
  }

  /** Room is always there: the harness never makes a source wait in line. */
  expectedWait(): number {
    return 0;
  }

  /** Every record enqueued so far, in order (malformed ones included). */
  get entries(): Entry[] {
    return this.chunks.flatMap((c) => c.records);
  }

  /** Payloads of the well-formed records, in order. */
  get payloads(): JsonObject[] {
    return this.entries.filter((e) => e.failure === undefined).map((e) => e.payload);
  }

  /** The records built with `malformed`, in order. */
  get failures(): Entry[] {
    return this.entries.filter((e) => e.failure !== undefined);
  }

  /**
   * Acks, in order, every chunk up to and including `index` (default: the last one) that was not
   * acked yet, calling `source.ack` once with the newest one's checkpoint, as the engine would.
   */
  async ackThrough(source: Source, index = this.chunks.length - 1): Promise<void> {
    if (index <= this.ackedThrough) return;
    const chunk = this.chunks[index];
    if (!chunk) throw new Error(`no chunk ${index}; ${this.chunks.length} collected`);
    this.ackedThrough = index;
    await source.ack(chunk.checkpoint);
  }

  /** Resolves once at least `count` records were enqueued; rejects after `timeoutMs` (real time). */
  waitForRecords(count: number, timeoutMs = 5_000): Promise<void> {
    if (this.entries.length >= count) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        reject(new Error(`waited ${timeoutMs}ms for ${count} records; got ${this.entries.length}`));
      }, timeoutMs);
      const waiter = {
        count,
        resolve: () => {
          clearTimeout(timer);
          resolve();
        },
      };
      this.waiters.push(waiter);
    });
  }

  private wake(): void {
    const have = this.entries.length;
    const ready = this.waiters.filter((w) => w.count <= have);
    this.waiters = this.waiters.filter((w) => w.count > have);
    for (const w of ready) w.resolve();
  }

  private entry(payload: JsonObject, id: string, bytes: number, failure: SluiceError | undefined, raw: string | undefined): Entry {
    return {
      id,
      key: undefined,
      payload,
      eventTime: undefined,
      receivedAt: this.clock.now(),
      source: this.sourceName,
      attempts: 0,
      bytes,
      // Replaced by the chunk's ticket in enqueue.
      ticket: { seq: -1, checkpoint: undefined, receivedAt: 0, records: 0, bytes: 0, pending: 0, onDone: noop },
      pendingSinks: 1,
      deadLettered: false,
      storedNew: false,
      failure,
      raw,
    };
  }
}

/** One logged line captured by {@link CapturingLogger}. */
export interface LoggedLine {
  readonly level: "debug" | "info" | "warn" | "error";
  readonly obj: object;
  readonly msg: string | undefined;
}

/** A {@link Logger} that keeps every line, so tests can assert that a warning was logged. */
export class CapturingLogger implements Logger {
  readonly lines: LoggedLine[] = [];
  debug(obj: object, msg?: string): void {
    this.lines.push({ level: "debug", obj, msg });
  }
  info(obj: object, msg?: string): void {
    this.lines.push({ level: "info", obj, msg });
  }
  warn(obj: object, msg?: string): void {
    this.lines.push({ level: "warn", obj, msg });
  }
  error(obj: object, msg?: string): void {
    this.lines.push({ level: "error", obj, msg });
  }
  /** Lines of one level. */
  at(level: LoggedLine["level"]): LoggedLine[] {
    return this.lines.filter((l) => l.level === level);
  }
}

/** A {@link ComponentContext} for tests: capturing logger, events kept in `events`, system clock unless given. */
export function testContext(
  overrides: Partial<ComponentContext> & Pick<ComponentContext, "dataDir" | "baseDir">,
): ComponentContext & { logger: CapturingLogger; events: InternalEvent[] } {
  const events: InternalEvent[] = [];
  return {
    name: "test",
    clock: systemClock,
    emit: (e) => events.push(e),
    ...overrides,
    logger: overrides.logger instanceof CapturingLogger ? overrides.logger : new CapturingLogger(),
    events,
  };
}

/** Creates a fresh directory under the OS temp dir; call `remove` in `afterEach`. */
export async function makeTempDir(prefix = "sluice-test-"): Promise<{ path: string; remove: () => Promise<void> }> {
  const path = await mkdtemp(join(tmpdir(), prefix));
  return { path, remove: () => rm(path, { recursive: true, force: true }) };
}
