/**
 * The worker thread the CLI's span processor (`otlp-span-processor.ts`) hands ended spans to: it
 * writes them as OTLP/JSON and POSTs them to the collector, so that the encoding, the HTTP client
 * and its timers run beside the pipeline instead of on its thread.
 *
 * The thread's code is {@link otlpExportThread}'s text (a `Worker` with `eval`), so that it runs
 * from a bundle as from the sources without a file of its own to find: the function reads nothing
 * from this module's scope but types, and loads Node's modules through the `require` it is called
 * with (a bundler rewrites `require` calls it sees in the function's text).
 */
import type * as Http from "node:http";
import type * as Https from "node:https";
import type * as WorkerThreads from "node:worker_threads";

/** What the thread is started with (`workerData`). */
export interface ExportThreadSetup {
  /** The full URL spans are POSTed to (`…/v1/traces`). */
  readonly url: string;
  /** Most spans in one request. */
  readonly maxBatchSpans: number;
  /** Longest one request may take, ms. */
  readonly timeoutMs: number;
  /** Sends of one batch at most (the first included), on a network error or a 429/502/503/504. */
  readonly maxAttempts: number;
  /** Wait before the first retry, ms; doubled for each next one. */
  readonly retryDelayMs: number;
}

/**
 * Values per span in {@link ToExportThread.spans}, in this order: trace id, span id, parent span id
 * (`""` for none), serialized trace state (or undefined), name, kind, start and end time
 * (`HrTime`), attributes, dropped attributes, events, dropped events, status, links (each
 * {@link EncodedLink}), dropped links, OTLP flags.
 */
export const SPAN_FIELDS = 16;

/** A link as the thread gets it: its trace state serialized and its flags computed. */
export interface EncodedLink {
  readonly traceId: string;
  readonly spanId: string;
  readonly traceState: string | undefined;
  readonly attributes: Readonly<Record<string, unknown>> | undefined;
  readonly droppedAttributesCount: number;
  readonly flags: number;
}

/** To the thread: spans to send (all of one resource and scope), and whether to send what it holds now. */
export interface ToExportThread {
  /** The attributes of the spans' resource. */
  readonly resource: Readonly<Record<string, unknown>>;
  /** Their instrumentation scope. */
  readonly scope: { readonly name: string; readonly version?: string | undefined };
  /** {@link SPAN_FIELDS} values per span. */
  readonly spans: readonly unknown[];
  /** Send the partial batch too (its delay passed, or a flush). */
  readonly partial: boolean;
  /** Answer `{ tag: "flushed", id }` once everything sent so far is delivered or given up. */
  readonly flush?: number;
}

/** From the thread: it is set up (its first message); a batch is delivered or given up (with why); a flush is done. */
export type FromExportThread = { readonly tag: "ready" } | { readonly tag: "sent"; readonly spans: number; readonly error?: string } | { readonly tag: "flushed"; readonly id: number };

/** The thread's code, called with the thread's `require`. Self-contained: see the module's comment. */
export function otlpExportThread(load: (id: string) => unknown): void {
  const { parentPort, workerData } = load("node:worker_threads") as typeof WorkerThreads;
  const setup = workerData as ExportThreadSetup;
  const port = parentPort!;

  const FIELDS = 16;
  /** First size of a batch's buffer, bytes (a span is ~600): doubled when full. */
  const FIRST_BATCH_BYTES = 256 * 1024;
  const BODY_START = '{"resourceSpans":[';
  const BODY_END = "]}]}]}";
  const COMMA = 0x2c;
  /** The statuses OTLP/HTTP says to retry. */
  const RETRYABLE_STATUS = new Set([429, 502, 503, 504]);
  /** Most texts a {@link TextCache} keeps, and the longest string it keeps one for. */
  const CACHED_MAX = 512;
  const CACHED_MAX_LENGTH = 64;

  /**
   * One export request being filled: its spans as UTF-8 in a Buffer, written as each span is
   * encoded (no string per waiting span to outlive collections); a sent batch's buffer is reused
   * by the next (its pages are mapped already).
   */
  class Batch {
    private length = 0;
    spans = 0;

    constructor(
      readonly head: string,
      private buf: Buffer,
    ) {
      this.append(BODY_START);
      this.append(head);
    }

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
   * The JSON text of short strings, kept: span names, attribute keys and most values repeat from
   * span to span, and `JSON.stringify` of a short string is a call into the runtime each time.
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

  const quoted = new TextCache((text) => JSON.stringify(text));
  /** `{"key":…,"value":` of an attribute key. */
  const keyHeads = new TextCache((key) => `{"key":${JSON.stringify(key)},"value":`);
  const stringValues = new TextCache((value) => `{"stringValue":${JSON.stringify(value)}}`);

  /** Nanoseconds since the epoch of an `[seconds, nanoseconds]` time, as decimal digits (past 2^53: no float). */
  function nanos(time: readonly [number, number]): string {
    const [s, ns] = time;
    return s === 0 ? String(ns) : `${s}${String(ns).padStart(9, "0")}`;
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

  function encodeEvent(event: { name: string; time: [number, number]; attributes?: Record<string, unknown>; droppedAttributesCount?: number }): string {
    return `{"name":${quoted.get(event.name)},"timeUnixNano":"${nanos(event.time)}","attributes":[${encodeAttributes(event.attributes)}],"droppedAttributesCount":${event.droppedAttributesCount ?? 0}}`;
  }

  function encodeLink(link: EncodedLink): string {
    const state = link.traceState === undefined ? "" : `,"traceState":${JSON.stringify(link.traceState)}`;
    return `{"traceId":"${link.traceId}","spanId":"${link.spanId}"${state},"attributes":[${encodeAttributes(link.attributes)}],"droppedAttributesCount":${link.droppedAttributesCount},"flags":${link.flags}}`;
  }

  /** The span at `s[i…]` as OTLP/JSON (ids in hex, 64-bit times as decimal strings, enums as numbers). */
  function encodeSpan(s: readonly unknown[], i: number): string {
    const parentId = s[i + 2] === "" ? "" : `,"parentSpanId":"${s[i + 2] as string}"`;
    const state = s[i + 3] === undefined ? "" : `,"traceState":${JSON.stringify(s[i + 3])}`;
    const status = s[i + 12] as { code: number; message?: string };
    const statusText = status.message === undefined ? `{"code":${status.code}}` : `{"code":${status.code},"message":${JSON.stringify(status.message)}}`;
    const events = s[i + 10] as Parameters<typeof encodeEvent>[0][];
    const links = s[i + 13] as EncodedLink[];
    return (
      `{"traceId":"${s[i] as string}","spanId":"${s[i + 1] as string}"${parentId}${state},"name":${quoted.get(s[i + 4] as string)},"kind":${(s[i + 5] as number) + 1},` +
      `"startTimeUnixNano":"${nanos(s[i + 6] as [number, number])}","endTimeUnixNano":"${nanos(s[i + 7] as [number, number])}",` +
      `"attributes":[${encodeAttributes(s[i + 8] as Record<string, unknown>)}],"droppedAttributesCount":${s[i + 9] as number},` +
      `"events":[${events.length === 0 ? "" : events.map(encodeEvent).join(",")}],"droppedEventsCount":${s[i + 11] as number},` +
      `"status":${statusText},"links":[${links.length === 0 ? "" : links.map(encodeLink).join(",")}],"droppedLinksCount":${s[i + 14] as number},` +
      `"flags":${s[i + 15] as number}}`
    );
  }

  const url = new URL(setup.url);
  // `node:https` only for an https collector: it loads TLS, a large part of the thread's start.
  const client = (url.protocol === "https:" ? load("node:https") : load("node:http")) as typeof Http | typeof Https;
  const agent = new client.Agent({ keepAlive: true, maxSockets: 1 });
  const send = client.request;
  const queue: Batch[] = [];
  /** The buffer of the last batch sent, for the next one. */
  let spare: Buffer | undefined;
  let sending: Promise<void> | undefined;
  /** Set by a partial or flush message: the last, partial batch goes too. */
  let sendPartial = false;
  /** The batch being sent. */
  let current: Batch | undefined;
  /** Flushes waiting, each for the last batch there was when it came (or none: answered when nothing is left). */
  let flushes: { readonly id: number; readonly after: Batch | undefined }[] = [];

  function answer(done: (after: Batch | undefined) => boolean): void {
    const waiting = flushes;
    flushes = [];
    for (const f of waiting) {
      if (done(f.after)) port.postMessage({ tag: "flushed", id: f.id } satisfies FromExportThread);
      else flushes.push(f);
    }
  }

  function post(body: Buffer): Promise<{ tag: "ok" } | { tag: "retryable" | "permanent"; why: string }> {
    return new Promise((resolve) => {
      const req = send(url, { method: "POST", agent, timeout: setup.timeoutMs, headers: { "content-type": "application/json", "content-length": body.length } });
      req.on("response", (res: Http.IncomingMessage) => {
        const status = res.statusCode ?? 0;
        res.resume();
        res.on("end", () => {
          if (status >= 200 && status < 300) resolve({ tag: "ok" });
          else resolve({ tag: RETRYABLE_STATUS.has(status) ? "retryable" : "permanent", why: `HTTP ${status}` });
        });
        res.on("error", (err) => resolve({ tag: "retryable", why: err.message }));
      });
      req.on("timeout", () => req.destroy(new Error(`no answer within ${setup.timeoutMs} ms`)));
      req.on("error", (err) => resolve({ tag: "retryable", why: err.message }));
      req.end(body);
    });
  }

  /** POSTs one request, retrying what may pass later; resolves with why it failed, or undefined. */
  async function deliver(body: Buffer): Promise<string | undefined> {
    let why = "";
    for (let attempt = 1; attempt <= setup.maxAttempts; attempt++) {
      if (attempt > 1) await new Promise((resolve) => setTimeout(resolve, setup.retryDelayMs * 2 ** (attempt - 2)));
      const outcome = await post(body);
      if (outcome.tag === "ok") return undefined;
      why = outcome.why;
      if (outcome.tag === "permanent") break;
    }
    return why;
  }

  /** Whether the first batch in the queue may go now. */
  function ready(): boolean {
    const first = queue[0];
    return first !== undefined && (sendPartial || first.spans >= setup.maxBatchSpans);
  }

  async function drain(): Promise<void> {
    while (ready()) {
      const batch = queue.shift()!;
      // The partial batch is taken: a later one waits for its own fill or message.
      if (queue.length === 0) sendPartial = false;
      current = batch;
      const error = await deliver(batch.body());
      current = undefined;
      spare = batch.buffer;
      const sent: FromExportThread = error === undefined ? { tag: "sent", spans: batch.spans } : { tag: "sent", spans: batch.spans, error };
      port.postMessage(sent);
      answer((after) => after === batch);
    }
  }

  /** Starts sending, one request at a time, unless that is going on already. */
  function kick(): void {
    if (sending !== undefined) return;
    if (!ready()) {
      if (queue.length === 0) answer(() => true);
      return;
    }
    sending = drain().finally(() => {
      sending = undefined;
      kick();
    });
  }

  /** `{"resource":…,"scopeSpans":[{"scope":…,"spans":[` of a message's spans: a batch holds spans of one head. */
  function headOf(m: ToExportThread): string {
    const version = m.scope.version === undefined ? "" : `,"version":${JSON.stringify(m.scope.version)}`;
    return `{"resource":{"attributes":[${encodeAttributes(m.resource)}],"droppedAttributesCount":0},"scopeSpans":[{"scope":{"name":${JSON.stringify(m.scope.name)}${version}},"spans":[`;
  }

  port.on("message", (m: ToExportThread) => {
    const head = headOf(m);
    for (let i = 0; i < m.spans.length; i += FIELDS) {
      let last = queue[queue.length - 1];
      if (last === undefined || last.head !== head || last.spans >= setup.maxBatchSpans) {
        last = new Batch(head, spare ?? Buffer.allocUnsafe(FIRST_BATCH_BYTES));
        spare = undefined;
        queue.push(last);
      }
      last.add(encodeSpan(m.spans, i));
    }
    if (m.partial) sendPartial = true;
    if (m.flush !== undefined) flushes.push({ id: m.flush, after: queue[queue.length - 1] ?? current });
    kick();
  });
  port.postMessage({ tag: "ready" } satisfies FromExportThread);
}
