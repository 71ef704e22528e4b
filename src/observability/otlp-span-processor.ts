/**
 * The CLI's span processor: each ended span is handed, as a few values, to a worker thread that
 * writes it as OTLP/JSON and POSTs it to the collector in batches (OTLP over HTTP,
 * `application/json`; `otlp-export-thread.ts`). It stands in for the SDK's `BatchSpanProcessor` +
 * `OTLPTraceExporter`, which keep every span object until its batch is exported and build a second
 * object tree per span to `JSON.stringify`, on the pipeline's thread. Here a span object dies
 * young: what the thread needs is copied out of it at once, and the copies cross to the thread
 * in messages of up to {@link POST_SPANS} spans (a structured clone, done by the runtime).
 *
 * Loaded only by `tracing-sdk.ts`, inside `startTracing` (the type imports below are erased).
 */
import { Worker } from "node:worker_threads";
import type { Context, Link, SpanContext } from "@opentelemetry/api";
import type { ReadableSpan, Span, SpanProcessor } from "@opentelemetry/sdk-trace-node";
import { otlpExportThread, SPAN_FIELDS, type EncodedLink, type ExportThreadSetup, type FromExportThread, type ToExportThread } from "./otlp-export-thread.js";

/** How batches are cut and sent. Defaults: {@link OTLP_DEFAULTS}. */
export interface OtlpProcessorOptions {
  /** The full URL spans are POSTed to (`…/v1/traces`). */
  readonly url: string;
  /** Most spans in one request. */
  readonly maxBatchSpans: number;
  /** Most spans ended and not yet sent (or given up), the request in flight included; a span ended beyond it is dropped (and counted). */
  readonly maxQueuedSpans: number;
  /** Longest a span waits for its batch to fill, ms. */
  readonly scheduledDelayMs: number;
  /** Longest one request may take, ms. */
  readonly timeoutMs: number;
  /** Sends of one batch at most (the first included), on a network error or a 429/502/503/504. */
  readonly maxAttempts: number;
  /** Wait before the first retry, ms; doubled for each next one. */
  readonly retryDelayMs: number;
  /** A batch that could not be delivered, or spans dropped: said once per batch, never thrown. */
  readonly onError: (message: string, detail: Record<string, unknown>) => void;
}

/**
 * The SDK's batch delay and request timeout, but 2,048 spans a request (the SDK sends 512: four
 * times the requests for the same spans) and so room for 8,192 waiting (the SDK: 2,048).
 */
export const OTLP_DEFAULTS = {
  maxBatchSpans: 2048,
  maxQueuedSpans: 8192,
  scheduledDelayMs: 5000,
  timeoutMs: 10_000,
  maxAttempts: 3,
  retryDelayMs: 1000,
} as const;

const SAMPLED = 1;
/** OTLP span flags above the W3C trace flags: whether the parent is remote is known (always, here); it is. */
const HAS_IS_REMOTE = 0x100;
const IS_REMOTE = 0x200;

/**
 * Defined before the thread's code: esbuild with `keepNames` (as tsx runs it) wraps named functions
 * and classes in calls to its `__name` helper, which is a module-level helper of the transpiled
 * module and so absent from the function's text.
 */
const THREAD_PRELUDE = 'var __name = (target, value) => Object.defineProperty(target, "name", { value, configurable: true });';

/** Most spans in one message to the export thread. */
const POST_SPANS = 256;
const NO_LINKS: readonly EncodedLink[] = Object.freeze([]);

/**
 * Copies ended spans out to the export thread and keeps count of what it has not sent yet. The
 * thread sends a batch when it holds `maxBatchSpans` spans, or all it holds when told to (a flush,
 * or `scheduledDelayMs` after the first span not yet told about).
 */
export class OtlpJsonSpanProcessor implements SpanProcessor {
  private readonly thread: Worker;
  private readonly ready: Promise<void>;
  private setUp: (() => void) | undefined;
  /** {@link SPAN_FIELDS} values per span not yet posted, all of {@link scope} and {@link resource}. */
  private pending: unknown[] = [];
  private scope: ReadableSpan["instrumentationScope"] | undefined;
  private resource: ReadableSpan["resource"] | undefined;
  /** Post when this many spans are pending: a message fills a batch at most. */
  private readonly postAt: number;
  /** Spans ended and kept, not yet reported sent or given up by the thread. */
  private queued = 0;
  private dropped = 0;
  private timer: NodeJS.Timeout | undefined;
  private flushes = new Map<number, () => void>();
  private nextFlush = 0;
  private closed = false;

  constructor(private readonly o: OtlpProcessorOptions) {
    const setup: ExportThreadSetup = { url: o.url, maxBatchSpans: o.maxBatchSpans, timeoutMs: o.timeoutMs, maxAttempts: o.maxAttempts, retryDelayMs: o.retryDelayMs };
    this.postAt = Math.min(POST_SPANS, o.maxBatchSpans);
    this.thread = new Worker(`${THREAD_PRELUDE}(${otlpExportThread.toString()})(require)`, { eval: true, workerData: setup });
    // Only a flush waits for the thread (and holds the process open meanwhile, see forceFlush).
    this.thread.unref();
    this.thread.on("message", (m: FromExportThread) => this.answer(m));
    this.thread.on("error", (err) => this.failed(err));
    this.ready = new Promise((resolve) => (this.setUp = resolve));
  }

  /**
   * Resolves once the export thread is set up (or failed): `startTracing` waits for it, so that its
   * start is part of setting tracing up, as the SDK's loading is.
   */
  whenReady(): Promise<void> {
    return this.ready;
  }

  onStart(_span: Span, _parentContext: Context): void {}

  onEnd(span: ReadableSpan): void {
    const context = span.spanContext();
    if (this.closed || (context.traceFlags & SAMPLED) === 0) return;
    if (this.queued >= this.o.maxQueuedSpans) {
      this.dropped++;
      return;
    }
    // Spans of one tracer share one scope and one resource: a message holds spans of one of each.
    if (span.instrumentationScope !== this.scope || span.resource !== this.resource) {
      this.post(false);
      this.scope = span.instrumentationScope;
      this.resource = span.resource;
    }
    const parent = span.parentSpanContext;
    this.pending.push(
      context.traceId,
      context.spanId,
      parent?.spanId ?? "",
      context.traceState?.serialize(),
      span.name,
      span.kind,
      span.startTime,
      span.endTime,
      span.attributes,
      span.droppedAttributesCount,
      span.events,
      span.droppedEventsCount,
      span.status,
      span.links.length === 0 ? NO_LINKS : span.links.map(encodedLink),
      span.droppedLinksCount,
      flags(context, parent?.isRemote),
    );
    this.queued++;
    if (this.pending.length >= this.postAt * SPAN_FIELDS) this.post(false);
    this.arm();
  }

  /** Sends everything ended so far; resolves when it is delivered or given up. */
  async forceFlush(): Promise<void> {
    if (this.closed) return;
    const id = this.nextFlush++;
    const flushed = new Promise<void>((resolve) => this.flushes.set(id, resolve));
    // The thread holds the process open until it answers (a run's last spans must not be lost to an exit).
    this.thread.ref();
    this.post(true, id);
    await flushed;
    if (this.flushes.size === 0) this.thread.unref();
  }

  async shutdown(): Promise<void> {
    await this.forceFlush();
    this.closed = true;
    clearTimeout(this.timer);
    this.timer = undefined;
    await this.thread.terminate();
  }

  /** Hands the pending spans to the thread; `partial`: it sends all it holds, not only full batches. */
  private post(partial: boolean, flush?: number): void {
    if (this.pending.length === 0 && !partial) return;
    if (partial) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    const message: ToExportThread = {
      resource: this.resource?.attributes ?? {},
      scope: { name: this.scope?.name ?? "", version: this.scope?.version },
      spans: this.pending,
      partial,
      ...(flush === undefined ? {} : { flush }),
    };
    // The message is a copy: the array is free again once posted.
    try {
      this.thread.postMessage(message);
    } catch (err) {
      // Not expected (the SDK keeps only plain values in a span), but never thrown into `span.end()`.
      const spans = this.pending.length / SPAN_FIELDS;
      this.queued -= spans;
      this.o.onError("spans not exported: they could not be copied to the export thread", { url: this.o.url, spans, err: String(err) });
      // What the message asked (send all, answer a flush) still goes.
      if (partial) this.thread.postMessage({ ...message, spans: [] });
    }
    this.pending.length = 0;
  }

  /** Tells the thread to send all it holds once the scheduled delay has passed (a span waits at most that long). */
  private arm(): void {
    if (this.timer !== undefined || this.closed) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.post(true);
    }, this.o.scheduledDelayMs);
    this.timer.unref();
  }

  private answer(m: FromExportThread): void {
    if (m.tag === "ready") {
      this.setUp?.();
      return;
    }
    if (m.tag === "flushed") {
      this.flushes.get(m.id)?.();
      this.flushes.delete(m.id);
      return;
    }
    this.queued -= m.spans;
    if (m.error !== undefined) this.o.onError("spans not exported", { url: this.o.url, spans: m.spans, err: m.error });
    if (this.dropped > 0) {
      this.o.onError("spans dropped: the export queue was full (is the collector slow?)", { url: this.o.url, spans: this.dropped, max_queued_spans: this.o.maxQueuedSpans });
      this.dropped = 0;
    }
  }

  /**
   * Ends the thread at once, with whatever it still holds: for the end of a run that gave up waiting
   * for the last export (a flush holds the process open, see {@link forceFlush}).
   */
  async abandon(): Promise<void> {
    this.stop();
    await this.thread.terminate();
  }

  /** The thread died (it should not): said once; spans from now on are not kept, and flushes end. */
  private failed(err: Error): void {
    this.o.onError("the span export thread failed; spans are no longer exported", { url: this.o.url, err: err.message });
    this.stop();
  }

  private stop(): void {
    this.closed = true;
    clearTimeout(this.timer);
    this.timer = undefined;
    this.pending.length = 0;
    for (const resolve of this.flushes.values()) resolve();
    this.flushes.clear();
    this.setUp?.();
  }
}

function encodedLink(link: Link): EncodedLink {
  const c = link.context;
  return { traceId: c.traceId, spanId: c.spanId, traceState: c.traceState?.serialize(), attributes: link.attributes, droppedAttributesCount: link.droppedAttributesCount ?? 0, flags: flags(c, c.isRemote) };
}

function flags(context: SpanContext, remote: boolean | undefined): number {
  return (context.traceFlags & 0xff) | HAS_IS_REMOTE | (remote === true ? IS_REMOTE : 0);
}
