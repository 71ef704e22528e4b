/**
 * The CLI's span processor: each ended span is written as OTLP/JSON text at once, and the text is
 * POSTed to the collector in batches (OTLP over HTTP, `application/json`). It stands in for the
 * SDK's `BatchSpanProcessor` + `OTLPTraceExporter`, which keep every span object until its batch
 * is exported (so each one survives the young-generation collections and is copied on the way
 * out) and then build a second object tree per span to `JSON.stringify`. Here a span object dies
 * young: its text goes straight into the batch's buffer (see {@link Batch}).
 *
 * Loaded only by `tracing-sdk.ts`, inside `startTracing` (the type imports below are erased).
 */
import { request as httpRequest, Agent as HttpAgent, type IncomingMessage } from "node:http";
import { request as httpsRequest, Agent as HttpsAgent } from "node:https";
import type { Context, HrTime, Link, SpanContext } from "@opentelemetry/api";
import type { ReadableSpan, Span, SpanProcessor, TimedEvent } from "@opentelemetry/sdk-trace-node";

/** How batches are cut and sent. Defaults: {@link OTLP_DEFAULTS}. */
export interface OtlpProcessorOptions {
  /** The full URL spans are POSTed to (`…/v1/traces`). */
  readonly url: string;
  /** Most spans in one request. */
  readonly maxBatchSpans: number;
  /** Most spans waiting to be sent; a span ended beyond it is dropped (and counted). */
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

/** First size of a batch's buffer, bytes (a span is ~600): doubled when full. */
const FIRST_BATCH_BYTES = 256 * 1024;
const BODY_START = '{"resourceSpans":[';
const BODY_END = "]}]}]}";
const COMMA = 0x2c;

/**
 * One export request being filled: its spans as UTF-8 in a Buffer. A span's text goes into the
 * buffer as soon as it is encoded, so the engine's hot heap holds nothing per waiting span: a span
 * kept as a string until its batch went would outlive a few young-generation collections (they
 * run every few ms in a busy pipeline) and be copied by each, and the strings a template builds
 * are ropes of dozens of pieces.
 */
class Batch {
  private length = 0;
  spans = 0;

  /**
   * `head`: the resource and scope of every span in the batch, as {@link headOf} writes them;
   * `buf`: where to write, grown when full (a sent batch's, reused: its pages are mapped already).
   */
  constructor(
    readonly head: string,
    private buf: Buffer,
  ) {
    this.append(BODY_START);
    this.append(head);
  }

  /** The buffer, to be reused once the request is done. */
  get buffer(): Buffer {
    return this.buf;
  }

  add(span: string): void {
    this.append(span, this.spans > 0);
    this.spans++;
  }

  /** The request body. Call once, when the batch is sent. */
  body(): Buffer {
    this.append(BODY_END);
    return this.buf.subarray(0, this.length);
  }

  /** Writes `text`, after a comma when `comma` (stored as a byte: one call less into the runtime per span). */
  private append(text: string, comma = false): void {
    // UTF-8 needs at most 3 bytes per UTF-16 unit.
    const most = text.length * 3 + 1;
    if (this.length + most > this.buf.length) {
      const grown = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.length + most));
      this.buf.copy(grown, 0, 0, this.length);
      this.buf = grown;
    }
    if (comma) this.buf[this.length++] = COMMA;
    this.length += this.buf.write(text, this.length);
  }
}

/**
 * Encodes and batches ended spans, POSTing each batch as one OTLP/JSON export request. One request
 * is in flight at a time; batches that fill meanwhile wait (at most `maxQueuedSpans` spans in all).
 */
export class OtlpJsonSpanProcessor implements SpanProcessor {
  private readonly url: URL;
  private readonly agent: HttpAgent;
  private readonly send: typeof httpRequest;
  private readonly queue: Batch[] = [];
  private queued = 0;
  private dropped = 0;
  private sending: Promise<void> | undefined;
  /** The buffer of the last batch sent, for the next one. */
  private spare: Buffer | undefined;
  private timer: NodeJS.Timeout | undefined;
  /** Set by the timer and by flushes: the last, partial batch goes too. */
  private sendPartial = false;
  private closed = false;

  constructor(private readonly o: OtlpProcessorOptions) {
    this.url = new URL(o.url);
    const https = this.url.protocol === "https:";
    this.agent = https ? new HttpsAgent({ keepAlive: true, maxSockets: 1 }) : new HttpAgent({ keepAlive: true, maxSockets: 1 });
    this.send = https ? httpsRequest : httpRequest;
  }

  onStart(_span: Span, _parentContext: Context): void {}

  onEnd(span: ReadableSpan): void {
    if (this.closed || (span.spanContext().traceFlags & SAMPLED) === 0) return;
    if (this.queued >= this.o.maxQueuedSpans) {
      this.dropped++;
      return;
    }
    // Spans of one tracer share one resource and one scope: a batch holds spans of one head.
    const head = headOf(span);
    let last = this.queue[this.queue.length - 1];
    if (last === undefined || last.head !== head || last.spans >= this.o.maxBatchSpans) {
      last = new Batch(head, this.spare ?? Buffer.allocUnsafe(FIRST_BATCH_BYTES));
      this.spare = undefined;
      this.queue.push(last);
    }
    last.add(encodeSpan(span));
    this.queued++;
    if (last.spans >= this.o.maxBatchSpans) this.kick("full");
    else this.arm();
  }

  /** Sends everything queued; resolves when the queue is empty (each batch delivered or given up). */
  async forceFlush(): Promise<void> {
    while (this.queue.length > 0 || this.sending !== undefined) {
      this.kick("all");
      await this.sending;
    }
  }

  async shutdown(): Promise<void> {
    await this.forceFlush();
    this.closed = true;
    clearTimeout(this.timer);
    this.timer = undefined;
    this.spare = undefined;
    this.agent.destroy();
  }

  /** Sends the queue's partial batch too once the scheduled delay has passed (a span waits at most that long). */
  private arm(): void {
    if (this.timer !== undefined || this.closed) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.kick("all");
    }, this.o.scheduledDelayMs);
    this.timer.unref();
  }

  /**
   * Starts sending, one request at a time, unless that is going on already: the full batches, or
   * with `all` the partial one too. Spans that end meanwhile wait for their batch to fill or for
   * the timer: sending whatever piled up as soon as a request comes back would make many small ones.
   */
  private kick(what: "full" | "all"): void {
    if (what === "all") this.sendPartial = true;
    if (this.sending !== undefined || !this.ready()) return;
    this.sending = this.drain().finally(() => {
      this.sending = undefined;
      if (this.ready()) this.kick("full");
      else if (this.queue.length > 0) this.arm();
    });
  }

  /** Whether the first batch in the queue may go now. */
  private ready(): boolean {
    const first = this.queue[0];
    return first !== undefined && (this.sendPartial || first.spans >= this.o.maxBatchSpans);
  }

  private async drain(): Promise<void> {
    while (this.ready()) {
      const batch = this.queue.shift()!;
      this.queued -= batch.spans;
      // The partial batch is taken: a later one waits for its own timer or fill.
      if (this.queue.length === 0) this.sendPartial = false;
      const error = await this.deliver(batch.body());
      this.spare = batch.buffer;
      if (error !== undefined) this.o.onError("spans not exported", { url: this.o.url, spans: batch.spans, err: error });
      if (this.dropped > 0) {
        this.o.onError("spans dropped: the export queue was full (is the collector slow?)", { url: this.o.url, spans: this.dropped, max_queued_spans: this.o.maxQueuedSpans });
        this.dropped = 0;
      }
    }
  }

  /** POSTs one request, retrying what may pass later; resolves with why it failed, or undefined. */
  private async deliver(body: Buffer): Promise<string | undefined> {
    let why = "";
    for (let attempt = 1; attempt <= this.o.maxAttempts; attempt++) {
      if (attempt > 1) await sleep(this.o.retryDelayMs * 2 ** (attempt - 2));
      const outcome = await this.post(body);
      if (outcome.tag === "ok") return undefined;
      why = outcome.why;
      if (outcome.tag === "permanent") break;
    }
    return why;
  }

  private post(body: Buffer): Promise<{ tag: "ok" } | { tag: "retryable" | "permanent"; why: string }> {
    return new Promise((resolve) => {
      const req = this.send(this.url, {
        method: "POST",
        agent: this.agent,
        timeout: this.o.timeoutMs,
        headers: { "content-type": "application/json", "content-length": body.length },
      });
      req.on("response", (res: IncomingMessage) => {
        const status = res.statusCode ?? 0;
        res.resume();
        res.on("end", () => {
          if (status >= 200 && status < 300) resolve({ tag: "ok" });
          else resolve({ tag: RETRYABLE_STATUS.has(status) ? "retryable" : "permanent", why: `HTTP ${status}` });
        });
        res.on("error", (err) => resolve({ tag: "retryable", why: err.message }));
      });
      req.on("timeout", () => req.destroy(new Error(`no answer within ${this.o.timeoutMs} ms`)));
      req.on("error", (err) => resolve({ tag: "retryable", why: err.message }));
      req.end(body);
    });
  }
}

/** The statuses OTLP/HTTP says to retry. */
const RETRYABLE_STATUS = new Set([429, 502, 503, 504]);

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

/** The encoded resource + scope of a scope object, cached: a tracer reuses one scope object for every span. */
const heads = new WeakMap<object, { resource: object; head: string }>();

/** `{"resource":…,"scopeSpans":[{"scope":…,"spans":[` for the span's resource and scope. */
function headOf(span: ReadableSpan): string {
  const cached = heads.get(span.instrumentationScope);
  if (cached !== undefined && cached.resource === span.resource) return cached.head;
  const scope = span.instrumentationScope;
  const version = scope.version === undefined ? "" : `,"version":${JSON.stringify(scope.version)}`;
  const head = `{"resource":{"attributes":[${encodeAttributes(span.resource.attributes)}],"droppedAttributesCount":0},"scopeSpans":[{"scope":{"name":${JSON.stringify(scope.name)}${version}},"spans":[`;
  heads.set(scope, { resource: span.resource, head });
  return head;
}

/** One span as OTLP/JSON (ids in hex, 64-bit times as decimal strings, enums as numbers). */
export function encodeSpan(span: ReadableSpan): string {
  const context = span.spanContext();
  const parent = span.parentSpanContext;
  const parentId = parent?.spanId ? `,"parentSpanId":"${parent.spanId}"` : "";
  const state = context.traceState === undefined ? "" : `,"traceState":${JSON.stringify(context.traceState.serialize())}`;
  const status = span.status.message === undefined ? `{"code":${span.status.code}}` : `{"code":${span.status.code},"message":${JSON.stringify(span.status.message)}}`;
  return (
    `{"traceId":"${context.traceId}","spanId":"${context.spanId}"${parentId}${state},"name":${quotedNames.get(span.name)},"kind":${span.kind + 1},` +
    `"startTimeUnixNano":"${nanos(span.startTime)}","endTimeUnixNano":"${nanos(span.endTime)}",` +
    `"attributes":[${encodeAttributes(span.attributes)}],"droppedAttributesCount":${span.droppedAttributesCount},` +
    `"events":[${span.events.length === 0 ? "" : span.events.map(encodeEvent).join(",")}],"droppedEventsCount":${span.droppedEventsCount},` +
    `"status":${status},"links":[${span.links.length === 0 ? "" : span.links.map(encodeLink).join(",")}],"droppedLinksCount":${span.droppedLinksCount},` +
    `"flags":${flags(context, parent?.isRemote)}}`
  );
}

function encodeEvent(event: TimedEvent): string {
  return `{"name":${JSON.stringify(event.name)},"timeUnixNano":"${nanos(event.time)}","attributes":[${encodeAttributes(event.attributes)}],"droppedAttributesCount":${event.droppedAttributesCount ?? 0}}`;
}

function encodeLink(link: Link): string {
  const state = link.context.traceState === undefined ? "" : `,"traceState":${JSON.stringify(link.context.traceState.serialize())}`;
  return `{"traceId":"${link.context.traceId}","spanId":"${link.context.spanId}"${state},"attributes":[${encodeAttributes(link.attributes)}],"droppedAttributesCount":${link.droppedAttributesCount ?? 0},"flags":${flags(link.context, link.context.isRemote)}}`;
}

function flags(context: SpanContext, remote: boolean | undefined): number {
  return (context.traceFlags & 0xff) | HAS_IS_REMOTE | (remote === true ? IS_REMOTE : 0);
}

/** Nanoseconds since the epoch of an `[seconds, nanoseconds]` time, as decimal digits (past 2^53: no float). */
function nanos(time: HrTime): string {
  const [s, ns] = time;
  return s === 0 ? String(ns) : `${s}${String(ns).padStart(9, "0")}`;
}

/** Most texts a {@link TextCache} keeps, and the longest string it keeps one for. */
const CACHED_MAX = 512;
const CACHED_MAX_LENGTH = 64;

/**
 * The JSON text of short strings, kept. Span names, attribute keys and most attribute values repeat
 * from span to span (a source's or sink's name, an outcome), and `JSON.stringify` of a short
 * string is a call into the runtime each time, a large part of encoding a span while V8 has not
 * optimized it yet: the first few hundred short ones are kept.
 */
class TextCache {
  private readonly texts = new Map<string, string>();

  constructor(private readonly encode: (text: string) => string) {}

  get(text: string): string {
    let json = this.texts.get(text);
    if (json === undefined) {
      json = this.encode(text);
      if (text.length <= CACHED_MAX_LENGTH && this.texts.size < CACHED_MAX) this.texts.set(text, json);
    }
    return json;
  }
}

const quotedNames = new TextCache((name) => JSON.stringify(name));
/** `{"key":…,"value":` of an attribute key. */
const keyHeads = new TextCache((key) => `{"key":${JSON.stringify(key)},"value":`);
const stringValues = new TextCache((value) => `{"stringValue":${JSON.stringify(value)}}`);

function encodeAttributes(attributes: Readonly<Record<string, unknown>> | undefined): string {
  let out = "";
  for (const key in attributes) {
    const value = attributes[key];
    if (value === undefined) continue;
    if (out !== "") out += ",";
    out += `${keyHeads.get(key)}${encodeValue(value)}}`;
  }
  return out;
}

/** An attribute value as an OTLP AnyValue (the SDK admits strings, numbers, booleans and arrays of them). */
function encodeValue(value: unknown): string {
  switch (typeof value) {
    case "string":
      return stringValues.get(value);
    case "boolean":
      return `{"boolValue":${value}}`;
    case "number":
      if (Number.isSafeInteger(value)) return `{"intValue":${value}}`;
      // JSON has no NaN or Infinity: the OTLP/JSON mapping spells them as strings.
      return Number.isFinite(value) ? `{"doubleValue":${value}}` : `{"doubleValue":"${String(value)}"}`;
    default:
      if (Array.isArray(value)) return `{"arrayValue":{"values":[${value.map((v: unknown) => (v === null || v === undefined ? "{}" : encodeValue(v))).join(",")}]}}`;
      return "{}";
  }
}
