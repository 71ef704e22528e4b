/**
 * Running the `nats_jetstream` source in a real pipeline (memory buffer, in-memory sink and
 * dead-letter store, the system clock) for the integration and fault tests, and publishing to and
 * reading the state of the stream it reads.
 */
import { jetstream, jetstreamManager, type ConsumerInfo } from "@nats-io/jetstream";
import { headers as natsHeaders, type NatsConnection } from "@nats-io/transport-node";
import type { z } from "zod";
import type { Sink } from "../../src/components/contracts.js";
import { MemoryBuffer } from "../../src/core/buffer.js";
import { systemClock } from "../../src/core/clock.js";
import { SluiceError } from "../../src/core/errors.js";
import { silentLogger, type InternalEvent, type Logger } from "../../src/core/events.js";
import { Pipeline, type PipelineStatus } from "../../src/core/pipeline.js";
import type { SluiceRecord } from "../../src/core/record.js";
import { Metrics } from "../../src/observability/metrics.js";
import { definition } from "../../src/sources/nats-jetstream.js";
import { MemoryDeadLetterStore } from "./memory.js";

/** An idempotent in-memory sink whose writes can be held (a slow or stuck sink) and released. */
export class GatedSink implements Sink {
  readonly maxInFlight = 4;
  /** Committed records by id. */
  readonly committed = new Map<string, SluiceRecord>();
  /** Every commit, in order; an id twice was committed twice. */
  readonly commitLog: string[] = [];
  /** Ids of every record a write was called with, redeliveries included. */
  readonly attempted: string[] = [];
  private held: boolean;
  private waiters: (() => void)[] = [];

  constructor(held = false) {
    this.held = held;
  }

  /** Writes from now on wait for {@link release}. */
  hold(): void {
    this.held = true;
  }

  release(): void {
    this.held = false;
    for (const w of this.waiters.splice(0)) w();
  }

  async connect(): Promise<void> {}

  async write(records: readonly SluiceRecord[], signal: AbortSignal): Promise<void> {
    for (const r of records) this.attempted.push(r.id);
    if (this.held) {
      await new Promise<void>((resolve, reject) => {
        this.waiters.push(resolve);
        signal.addEventListener("abort", () => reject(new SluiceError("ERR_ABORTED", "write aborted")), { once: true });
      });
    }
    for (const r of records) {
      this.committed.set(r.id, r);
      this.commitLog.push(r.id);
    }
  }

  async close(): Promise<void> {}
}

/** A run of a pipeline reading the source. */
export interface SourceRun {
  readonly pipeline: Pipeline;
  readonly done: Promise<PipelineStatus>;
  readonly events: InternalEvent[];
  readonly metrics: Metrics;
  readonly deadLetters: MemoryDeadLetterStore;
  readonly buffer: MemoryBuffer;
}

/** Options of {@link runSource}. */
export interface SourceRunOptions {
  /** The source's options (`servers`, `stream`, ...), as in YAML. */
  readonly source: z.input<typeof definition.options>;
  readonly sink: Sink;
  /** `buffer.max_records`; default 10,000. */
  readonly maxRecords?: number;
  /** `buffer.max_bytes`; default 64 MiB. */
  readonly maxBytes?: number;
  /** Records per chunk; default 100. */
  readonly chunkSize?: number;
  /** Records per sink batch; default 100. */
  readonly batch?: number;
  /** default 5 s */
  readonly shutdownTimeoutMs?: number;
  readonly logger?: Logger;
  /** Sees every event right after the metrics did (to sample readiness at a `source_connect_failed`). */
  readonly onEvent?: (e: InternalEvent, metrics: Metrics) => void;
}

/** Starts a pipeline: the `nats_jetstream` source (named `js`) -> `sink` (named `out`). */
export function runSource(o: SourceRunOptions): SourceRun {
  const events: InternalEvent[] = [];
  const metrics = new Metrics(["out"], silentLogger, () => Date.now());
  const maxRecords = o.maxRecords ?? 10_000;
  const buffer = new MemoryBuffer({ maxRecords, maxBytes: o.maxBytes ?? 64 * 1024 * 1024 });
  const deadLetters = new MemoryDeadLetterStore();
  const emit = (e: InternalEvent) => {
    events.push(e);
    metrics.handle(e);
    o.onEvent?.(e, metrics);
  };
  const logger = o.logger ?? silentLogger;
  const source = definition.create(definition.options.parse(o.source), { name: "js", dataDir: "", baseDir: "", clock: systemClock, logger, emit, bufferRecords: maxRecords });
  const pipeline = new Pipeline({
    sources: [{ name: "js", source, connectBackoff: { initialMs: 20, maxMs: 200, multiplier: 2 } }],
    transforms: [],
    sinks: [
      {
        name: "out",
        sink: o.sink,
        batch: { maxRecords: o.batch ?? 100, maxBytes: 4 * 1024 * 1024, maxWaitMs: 5 },
        retry: { maxAttempts: 1000, maxElapsedMs: 600_000, backoff: { initialMs: 10, maxMs: 100, multiplier: 2 } },
        concurrency: 2,
      },
    ],
    deadLetter: deadLetters,
    buffer,
    whenFull: "block",
    chunkSize: o.chunkSize ?? 100,
    shutdownTimeoutMs: o.shutdownTimeoutMs ?? 5_000,
    logger,
    emit,
  });
  return { pipeline, done: pipeline.run(), events, metrics, deadLetters, buffer };
}

/** Polls `cond` every 10 ms of real time; throws after `timeoutMs`. */
export async function until(cond: () => boolean | Promise<boolean>, what: string, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** A message to publish: its body, and optionally its `Nats-Msg-Id` and other headers. */
export interface OutMessage {
  readonly body: string;
  readonly msgId?: string;
  readonly headers?: Record<string, string>;
}

/** Publishes `messages` to `subject`, up to 1000 outstanding at once; resolves once every one was stored. */
export async function publish(nc: NatsConnection, subject: string, messages: Iterable<OutMessage>): Promise<void> {
  const js = jetstream(nc);
  let outstanding: Promise<unknown>[] = [];
  for (const m of messages) {
    let h;
    if (m.headers !== undefined) {
      h = natsHeaders();
      for (const [k, v] of Object.entries(m.headers)) h.set(k, v);
    }
    outstanding.push(js.publish(subject, m.body, { ...(m.msgId === undefined ? {} : { msgID: m.msgId }), ...(h === undefined ? {} : { headers: h }) }));
    if (outstanding.length >= 1000) {
      await Promise.all(outstanding);
      outstanding = [];
    }
  }
  await Promise.all(outstanding);
}

/** Creates stream `name` storing `subjects` (file storage). */
export async function createStream(nc: NatsConnection, name: string, subjects: string | readonly string[]): Promise<void> {
  const jsm = await jetstreamManager(nc);
  await jsm.streams.add({ name, subjects: typeof subjects === "string" ? [subjects] : [...subjects] });
}

/** The consumer's state on the server now. */
export async function consumerInfo(nc: NatsConnection, stream: string, consumer: string): Promise<ConsumerInfo> {
  const jsm = await jetstreamManager(nc);
  return jsm.consumers.info(stream, consumer);
}
