/**
 * OpenTelemetry spans, one per chunk or batch and never per record, through `@opentelemetry/api`
 * only: the library installs no SDK. A host that wants traces installs one (the CLI does when
 * `observability.tracing` is set) before it builds the pipeline; without one the engine makes no
 * span at all and does no per-record work for tracing.
 */
import { createRequire } from "node:module";
import type * as OtelApi from "@opentelemetry/api";
import type { Context, Link, Span, SpanContext, SpanOptions, Tracer } from "@opentelemetry/api";
import type { AckTicket, Entry } from "./record.js";

const require = createRequire(import.meta.url);

/**
 * Where the API keeps what a host registered (a tracer provider, a propagator), shared by every
 * copy of `@opentelemetry/api` 1.x in the process. Absent: nothing was ever registered.
 */
const OTEL_GLOBAL = Symbol.for("opentelemetry.js.api.1");

let api: typeof OtelApi | undefined;

/**
 * `@opentelemetry/api`, loaded at first use: a process in which no SDK registered anything (the
 * CLI without `observability.tracing`, most library hosts) never loads it.
 */
function otel(): typeof OtelApi {
  api ??= require("@opentelemetry/api") as typeof OtelApi;
  return api;
}

/** The instrumentation scope of every sluice span. */
export const TRACER_NAME = "sluice";

/** Span names, as the README lists them. */
export const SPAN = {
  receive: "sluice.source.receive",
  transform: "sluice.transform",
  sinkWrite: "sluice.sink.write",
} as const;

/** Attribute names of sluice spans. */
export const ATTR = {
  source: "sluice.source",
  sink: "sluice.sink",
  records: "sluice.records",
  recordsIn: "sluice.records.in",
  recordsOut: "sluice.records.out",
  filtered: "sluice.records.filtered",
  deadLettered: "sluice.records.dead_lettered",
  chunks: "sluice.chunks",
  attempt: "sluice.attempt",
  outcome: "sluice.outcome",
  errorCode: "sluice.error.code",
} as const;

/**
 * How one write attempt of a batch ended: `ok` every record committed; `retry` some records are
 * written again; `dead_letter` the attempt's failed records went to the dead-letter sink and none
 * is retried; `failed` the run's hard abort cut it off (its records stay un-acked).
 */
export type WriteOutcome = "ok" | "retry" | "dead_letter" | "failed";

/**
 * Span options of every span but a linked batch's: no attributes at the start. They are set on the
 * span instead, one `setAttribute` each: the SDK copies and checks start attributes twice before
 * it sets them one by one anyway (see docs/architecture.md).
 */
const NO_OPTIONS: SpanOptions = Object.freeze({});

/** Most chunks a batch span links to (OpenTelemetry's default link limit). */
const MAX_LINKS = 128;

/**
 * The tracer of the SDK the host installed, or undefined when none is: the global provider is
 * then the API's proxy without a delegate, and every span would be a no-op. Decided once per
 * pipeline, so the hot path tests one field.
 */
export function installedTracer(): Tracer | undefined {
  if (!(OTEL_GLOBAL in globalThis)) return undefined;
  const { trace, ProxyTracerProvider } = otel();
  const provider = trace.getTracerProvider();
  if (provider instanceof ProxyTracerProvider) return provider.getDelegateTracer(TRACER_NAME);
  return provider.getTracer(TRACER_NAME);
}

/**
 * The trace context an incoming request carries (W3C `traceparent`/`tracestate`, read by the
 * propagator the host installed), or undefined when the request has none.
 */
export function parentFromHeaders(headers: Readonly<Record<string, string | string[] | undefined>>): Context | undefined {
  if (headers.traceparent === undefined) return undefined;
  const { propagation, ROOT_CONTEXT } = otel();
  return propagation.extract(ROOT_CONTEXT, headers);
}

/**
 * Makes the engine's spans for one pipeline, on the tracer it was given (see {@link installedTracer}).
 * `sluice.source.receive` per chunk a source enqueues, a child of the producer's context when the
 * source has one (an HTTP request's `traceparent`), else a root; `sluice.transform` per chunk
 * through the chain, a child of that chunk's receive span; `sluice.sink.write` per write attempt
 * of a batch, a child of the receive span when the batch holds records of one chunk, else a root
 * linked to the receive span of each of its chunks.
 */
export class Tracing {
  /** The API, loaded by then: a tracer comes from an SDK registered through it. */
  private readonly api = otel();

  constructor(private readonly tracer: Tracer) {}

  /** Starts the receive span of a chunk of `records` records from `source`. */
  receive(source: string, records: number, parent: Context | undefined): Span {
    const span = this.tracer.startSpan(SPAN.receive, NO_OPTIONS, parent ?? this.api.ROOT_CONTEXT);
    span.setAttribute(ATTR.source, source);
    span.setAttribute(ATTR.records, records);
    return span;
  }

  /** Ends a receive span with what the buffer did with the chunk (`accepted`, `rejected`, `dropped`, `stopping`). */
  received(span: Span, outcome: string): void {
    span.setAttribute(ATTR.outcome, outcome);
    span.end();
  }

  /** Starts the transform span of the chunk of `ticket`. */
  transform(ticket: AckTicket, records: number): Span {
    const span = this.tracer.startSpan(SPAN.transform, NO_OPTIONS, contextOf(ticket.trace));
    span.setAttribute(ATTR.recordsIn, records);
    return span;
  }

  /** Ends a transform span with the chunk's counts. */
  transformed(span: Span, out: number, filtered: number, deadLettered: number): void {
    span.setAttribute(ATTR.recordsOut, out);
    span.setAttribute(ATTR.filtered, filtered);
    span.setAttribute(ATTR.deadLettered, deadLettered);
    span.end();
  }

  /** Starts the span of one write attempt of `records` to `sink`. */
  sinkWrite(sink: string, records: readonly Entry[], attempt: number): Span {
    const chunks = chunkContexts(records);
    const span =
      chunks.length <= 1
        ? this.tracer.startSpan(SPAN.sinkWrite, NO_OPTIONS, contextOf(chunks[0]))
        : this.tracer.startSpan(SPAN.sinkWrite, { links: chunks.slice(0, MAX_LINKS).map((context): Link => ({ context })) }, this.api.ROOT_CONTEXT);
    span.setAttribute(ATTR.sink, sink);
    span.setAttribute(ATTR.records, records.length);
    span.setAttribute(ATTR.attempt, attempt);
    span.setAttribute(ATTR.chunks, chunks.length);
    return span;
  }

  /** Ends a write attempt's span with its outcome and, when it failed, the error's code. */
  wrote(span: Span, outcome: WriteOutcome, error?: { code: string; message: string }): void {
    span.setAttribute(ATTR.outcome, outcome);
    if (error !== undefined) {
      span.setAttribute(ATTR.errorCode, error.code);
      span.setStatus({ code: this.api.SpanStatusCode.ERROR, message: error.message });
    }
    span.end();
  }
}

function contextOf(span: SpanContext | undefined): Context {
  return span === undefined ? otel().ROOT_CONTEXT : new ParentContext(span);
}

/**
 * The API's context key of a context's span: `Symbol.for` of this description, so that every copy
 * of `@opentelemetry/api` 1.x in the process reads the same key (the API's own reason for it).
 */
const SPAN_KEY = Symbol.for("OpenTelemetry Context Key SPAN");

/**
 * A root context holding only a chunk's receive span, as the parent of its transform and write
 * spans. What `trace.setSpanContext(ROOT_CONTEXT, span)` returns holds the same, but each one
 * copies the root's `Map` and makes three closures, and every read goes through one of them:
 * twice per span made (the tracer and the sampler read the parent). Setting or deleting a value
 * gives the API's own context.
 */
class ParentContext implements Context {
  private readonly span: Span;

  constructor(context: SpanContext) {
    this.span = otel().trace.wrapSpanContext(context);
  }

  getValue(key: symbol): unknown {
    return key === SPAN_KEY ? this.span : undefined;
  }

  setValue(key: symbol, value: unknown): Context {
    const { ROOT_CONTEXT, trace } = otel();
    return trace.setSpan(ROOT_CONTEXT, this.span).setValue(key, value);
  }

  deleteValue(key: symbol): Context {
    const { ROOT_CONTEXT, trace } = otel();
    return key === SPAN_KEY ? ROOT_CONTEXT : trace.setSpan(ROOT_CONTEXT, this.span);
  }
}

/**
 * The receive span contexts of the chunks `records` came from, each once. A batch holds the records
 * of its chunks in the order the chunks were pulled (fan-out, lanes and retries keep that order),
 * so a chunk's records are one run: the end of each run is found by galloping and bisecting
 * instead of looking at every record, and a batch of one chunk (its first and last record from
 * it) costs two reads.
 */
function chunkContexts(records: readonly Entry[]): SpanContext[] {
  const contexts: SpanContext[] = [];
  const n = records.length;
  for (let start = 0; start < n; ) {
    const c = records[start]!.ticket.trace;
    // A chunk read back from disk has no context: such records are passed one by one (they are
    // not one run: several chunks share `undefined`).
    if (c === undefined) {
      start++;
      continue;
    }
    // The run's end: `lo` is known in it, `hi` known past it.
    let lo = start;
    if (records[n - 1]!.ticket.trace === c) lo = n - 1;
    else {
      let hi = n - 1;
      let step = 1;
      for (; lo + step < hi && records[lo + step]!.ticket.trace === c; step *= 2) lo += step;
      hi = Math.min(hi, lo + step);
      while (hi - lo > 1) {
        const mid = (lo + hi) >>> 1;
        if (records[mid]!.ticket.trace === c) lo = mid;
        else hi = mid;
      }
    }
    if (!contexts.includes(c)) contexts.push(c);
    start = lo + 1;
  }
  return contexts;
}
