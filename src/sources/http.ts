/**
 * The `http` source: producers POST records to `/v1/events` (one JSON object, a JSON array, or
 * NDJSON, optionally gzip-encoded) and get `202 {"accepted":N}` only once the records are durable:
 * on disk when the buffer is durable, else committed by every sink. A request that does not fit
 * waits in the buffer's line, in arrival order, when its turn is expected within `ack_timeout`;
 * otherwise (or when its turn does not come) 429, and 503 when stopping, both with
 * `Retry-After`. The same port serves the pipeline's endpoints, mounted from `server/`:
 * `/health/live`, `/health/ready`, and behind the ingest auth `/metrics` and the dashboard.
 * Bodies are held within one budget of bytes and connections within `max_connections`; answers
 * given before a body is read are followed by draining it.
 */
import { createHash, randomUUID } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { SluiceError } from "../core/errors.js";
import type { Entry } from "../core/record.js";
import { parentFromHeaders } from "../core/tracing.js";
import type { ComponentContext, EndpointMount, EnqueueOptions, EnqueueOutcome, Readiness, Source, SourceHandle } from "../components/contracts.js";
import type { HttpSourceOptions } from "./http-options.js";
import { Authenticator, type SignatureCheck } from "./http-auth.js";
import { ACCEPTED_TYPES, bodyEncoding, bodyFormat, decode, HttpError, parseBody, readBody, text, type BodyEncoding, type BodyFormat, type ParsedBody } from "./http-body.js";
import { RequestMemory, type Claim, type Reply } from "./http-idempotency.js";
import { BodyBudget, BodyHold, endEarly } from "./http-limits.js";


/** A request waiting for its records to be durable: the checkpoint of its chunk. */
interface Pending {
  readonly done: () => void;
  /** Resolves when `done` is called. */
  readonly durable: Promise<void>;
  /** Set when the pipeline ended before the records became durable. */
  abandoned: boolean;
  /** Set by `done`: a request whose chunks are all settled needs no deadline timer to wait for them. */
  settled: boolean;
}

/** A body read, decoded and parsed, with what names it for repeats. */
interface Received {
  readonly parsed: ParsedBody;
  /**
   * First 16 hex digits of the SHA-256 of the decoded body: what binds a key or a signature to
   * its body, and part of the fallback ids. A CRC would let two bodies under one key collide,
   * and the second be answered as a repeat of the first with nothing enqueued.
   */
  readonly sum: string;
  /** The decoded body when its bytes are the records' lines as they are (see `ParsedBody.plain`; no byte order mark). */
  readonly plain: Buffer | undefined;
  /** True when every character of the body is one byte (ASCII): a record's place in the text is its place in the bytes. */
  readonly ascii: boolean;
}

const MAX_IDEMPOTENCY_KEY = 200;
/** Idempotency-Keys remembered with a digest of their body, to refuse a key reused for other records. */
const REMEMBERED_KEYS = 50_000;
/** Signatures remembered with their answer, each until it leaves the replay window. */
const REMEMBERED_SIGNATURES = 100_000;
/** `buffer.max_bytes`'s default, for a context that does not give the buffer's bound. */
const DEFAULT_BUFFER_BYTES = 64 * 1024 * 1024;

/** How long close() lets open connections finish their answers before cutting them, ms. */
const CLOSE_GRACE_MS = 1000;

/** A listen address already taken or not available: the pipeline reports it as a source failure. */
function listenError(listen: string, err: Error): SluiceError {
  return new SluiceError("ERR_SOURCE_READ", `http source cannot listen on ${listen}: ${err.message}`, { cause: err, retryable: false });
}

/** The answer an error becomes. */
function replyOf(err: unknown): Reply {
  const e = err instanceof HttpError ? err : new HttpError(500, `internal error: ${(err as Error).message}`);
  return { status: e.status, body: { error: e.message, ...e.fields } };
}

/**
 * The bytes of bodies held at once: `max_body_bytes_in_flight`, else a quarter of the buffer's
 * byte bound (what is parsed goes on into the buffer, so ingest holds at most about 1.25 times
 * `buffer.max_bytes`), and never less than two bodies of `max_body`. Unverified bodies, and
 * bodies waiting in line for the buffer, may each hold half of it (at least one `max_body`).
 */
function bodyBudget(o: HttpSourceOptions, bufferBytes: number | undefined): BodyBudget {
  const total = o.max_body_bytes_in_flight ?? Math.max(2 * o.max_body, Math.floor((bufferBytes ?? DEFAULT_BUFFER_BYTES) / 4));
  const half = Math.max(o.max_body, Math.floor(total / 2));
  return new BodyBudget(total, half, half);
}

/**
 * Each part's lines (`Chunk.lines`) of a body whose bytes are its records' lines: the whole body
 * for a request of one part; for more, slices of an ASCII body (where the lines' places in the
 * text are their places in the bytes); none otherwise, and the buffer serialises the records.
 */
function partLines(received: Received, parts: readonly Entry[][]): (Buffer | undefined)[] {
  const body = received.plain;
  if (body === undefined || (parts.length > 1 && !received.ascii)) return [];
  if (parts.length === 1) return [body];
  const texts = received.parsed.texts;
  const lines: Buffer[] = [];
  let record = 0;
  let offset = 0;
  for (const part of parts) {
    const start = offset;
    for (const end = record + part.length; record < end; record++) offset += texts[record]!.length + 1;
    lines.push(body.subarray(start, Math.min(offset, body.length)));
  }
  return lines;
}

/** `options` with the chunk's `lines`, when it has them. */
function withLines(options: EnqueueOptions | undefined, lines: Buffer | undefined): EnqueueOptions | undefined {
  return lines === undefined ? options : { ...options, lines };
}

/** The `http` source. */
export class HttpSource implements Source {
  /** Each request is answered on its own, as soon as its records are durable, in any order. */
  readonly acks = "individual";
  /** A producer is answered 429/503 with `Retry-After` instead of queueing (a request may choose to wait in line). */
  readonly whenFull = "reject";
  private server: Server | undefined;
  /** The pipeline's own endpoints (health, metrics, dashboard), served beside the ingest path. */
  private endpoints: EndpointMount | undefined;
  private handle: SourceHandle | undefined;
  private stopping = false;
  private readonly auth: Authenticator;
  private readonly retryAfter: string;
  /** Requests whose records are enqueued and not yet acked. */
  private readonly pending = new Set<Pending>();
  /** Idempotency-Keys bound to the digest of the body whose records were taken under them, with its answer. */
  private readonly keys: RequestMemory;
  /** Signatures of signed requests whose records were taken, with their answer, while in the replay window. */
  private readonly signatures: RequestMemory;
  private readonly budget: BodyBudget;
  /** Requests that sent `Expect: 100-continue` and were not told to go on yet. */
  private readonly awaitingContinue = new WeakSet<IncomingMessage>();

  constructor(
    private readonly o: HttpSourceOptions,
    private readonly ctx: ComponentContext,
  ) {
    this.auth = new Authenticator({ tokens: o.auth?.tokens ?? [], ...(o.auth?.hmac ? { hmac: o.auth.hmac } : {}) }, () => ctx.clock.now());
    this.retryAfter = String(Math.max(1, Math.ceil(o.retry_after / 1000)));
    this.keys = new RequestMemory(REMEMBERED_KEYS, () => ctx.clock.now());
    this.signatures = new RequestMemory(REMEMBERED_SIGNATURES, () => ctx.clock.now());
    this.budget = bodyBudget(o, ctx.bufferBytes);
  }

  async run(handle: SourceHandle, signal: AbortSignal): Promise<void> {
    this.handle = handle;
    // Metrics name the sinks and count traffic: with auth configured the endpoints that show
    // them (metrics, the dashboard) need it too (a signed request signs an empty body). Load
    // balancers keep the health endpoints.
    this.endpoints = this.ctx.service?.mount({
      readiness: () => this.readiness(),
      guard: (req) => {
        if (this.o.auth?.public_metrics === true) return;
        const signed = this.auth.checkHeaders(req.headers, undefined);
        if (signed !== "ok") signed.verify();
      },
      // While stopping, every answer ends its connection, so close() finds none idle to reset.
      headers: (): Record<string, string> => (this.stopping ? { connection: "close" } : {}),
    });
    const server = createServer({
      headersTimeout: this.o.header_timeout,
      requestTimeout: this.o.request_timeout,
      keepAliveTimeout: this.o.keep_alive_timeout,
      connectionsCheckingInterval: Math.max(100, Math.min(1000, this.o.header_timeout / 2)),
    });
    server.maxConnections = this.o.max_connections;
    server.on("drop", () => this.ctx.emit({ type: "http_connection_refused", source: this.ctx.name }));
    server.on("request", (req: IncomingMessage, res: ServerResponse) => {
      this.route(req, res).catch((err: unknown) => this.answerError(res, err));
    });
    // Taken over from node:http, which would send 100 Continue at once: a request refused from its
    // headers (401, 413, 415, 503) is answered without asking the client for its body.
    server.on("checkContinue", (req: IncomingMessage, res: ServerResponse) => {
      this.awaitingContinue.add(req);
      this.route(req, res).catch((err: unknown) => this.answerError(res, err));
    });
    this.server = server;
    const sep = this.o.listen.lastIndexOf(":");
    await new Promise<void>((resolve, reject) => {
      server.once("error", (err) => reject(listenError(this.o.listen, err)));
      // A backlog as deep as max_connections (the kernel caps it at somaxconn): with node's 511, a
      // burst of connects overflows the accept queue and a client's SYN is retried after 1 s, 3 s.
      server.listen({ port: Number(this.o.listen.slice(sep + 1)), host: this.o.listen.slice(0, sep), backlog: this.o.max_connections }, () => {
        server.removeAllListeners("error");
        resolve();
      });
    });
    server.on("error", (err) => this.ctx.logger.error({ component: this.ctx.name, code: "ERR_SOURCE_READ", err: err.message }, "http server error"));
    const address = server.address();
    this.ctx.logger.info({ component: this.ctx.name, address: typeof address === "object" && address ? `${address.address}:${address.port}` : String(address), path: this.o.path }, "http source listening");
    if (!signal.aborted) await new Promise<void>((resolve) => signal.addEventListener("abort", () => resolve(), { once: true }));
    // The server keeps listening while the pipeline drains, so that a load balancer reads 503 on
    // /health/ready and a producer gets 503 with Retry-After (both with Connection: close) instead
    // of a refused connection; requests already enqueued are answered as their records drain.
    // close() stops listening once the drain is over.
    this.stopping = true;
  }

  ack(checkpoint: unknown): void {
    const p = checkpoint as Pending;
    if (this.pending.delete(p)) p.done();
  }

  async close(): Promise<void> {
    this.stopping = true;
    // Whatever is still waiting did not become durable before the pipeline ended.
    for (const p of this.pending) {
      p.abandoned = true;
      p.done();
    }
    this.pending.clear();
    this.endpoints?.close();
    const server = this.server;
    if (!server) return;
    // Answers on their way (a 202 whose ack came just now, the 503s of abandoned requests) are
    // written a few microtasks from here, each with Connection: close: cutting every connection
    // at once would reset some of them, and a client would retry records that were committed.
    // So stop listening, let the connections end after their answers, and cut only those still
    // open after a grace (a client still sending its body, or not reading its answer).
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    server.closeIdleConnections();
    let cancel = () => {};
    await Promise.race([closed, new Promise<void>((resolve) => (cancel = this.ctx.clock.setTimer(CLOSE_GRACE_MS, resolve)))]);
    cancel();
    server.closeAllConnections();
    await closed;
  }

  private async route(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? "/").split("?", 1)[0];
    if (path === this.o.path) {
      if (req.method !== "POST") throw new HttpError(405, `use POST on ${this.o.path}`, {});
      await this.ingest(req, res);
      return;
    }
    if (this.endpoints && (await this.endpoints.serve(req, res))) return;
    throw new HttpError(404, `no route ${path}; records go to POST ${this.o.path}`);
  }

  /** This source stopping, on top of what the pipeline says. */
  private readiness(): Readiness {
    const r = this.ctx.service?.readiness() ?? { ready: true, problems: [] };
    return this.stopping ? { ready: false, problems: [`source ${this.ctx.name}: stopping`, ...r.problems] } : r;
  }

  /**
   * Takes a request: headers checked first (stopping, Idempotency-Key, auth, type, size), then
   * the body read within the budget, then claimed under its key and signature
   * (a repeat gets the first answer), then enqueued.
   */
  private async ingest(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (this.stopping) throw new HttpError(503, "sluice is stopping; retry against another instance or later");
    // node:http joins a repeated header into one string; only set-cookie comes as an array.
    const keyHeader = req.headers["idempotency-key"];
    const idempotencyKey = typeof keyHeader === "string" ? keyHeader : undefined;
    if (idempotencyKey !== undefined && (idempotencyKey.length === 0 || idempotencyKey.length > MAX_IDEMPOTENCY_KEY)) {
      throw new HttpError(400, `Idempotency-Key must have 1 to ${MAX_IDEMPOTENCY_KEY} characters`);
    }
    const check = this.auth.checkHeaders(req.headers, idempotencyKey);
    const signed = check === "ok" ? undefined : check;
    const format = bodyFormat(req.headers["content-type"]);
    if (format === undefined) {
      throw new HttpError(415, `Content-Type must be one of ${ACCEPTED_TYPES.join(", ")}`, { accepted_types: ACCEPTED_TYPES });
    }
    const encoding = bodyEncoding(req.headers["content-encoding"]);
    const length = req.headers["content-length"];
    const declared = length === undefined ? undefined : Number(length);
    if (declared !== undefined && declared > this.o.max_body) throw new HttpError(413, `body larger than the limit of ${this.o.max_body} bytes`);

    const hold = new BodyHold(this.budget, signed !== undefined);
    try {
      const received = await this.receive(req, res, { format, encoding }, hold, signed, idempotencyKey !== undefined || signed !== undefined);
      // From the claims to the enqueue, no await comes before a claim is made: a concurrent
      // request of the same key or signature finds it and waits for this one's answer.
      const signature = signed ? this.signatures.claim(signed.signature, received.sum, signed.expiresAt) : undefined;
      // A repeat holds no body while it waits for the first one's answer.
      if (signature && signature.tag !== "first") {
        hold.release();
        this.send(res, await this.repeat(signature, "this signature was used before for a different body"));
        return;
      }
      const key = idempotencyKey !== undefined ? this.keys.claim(idempotencyKey, received.sum) : undefined;
      const settle = (reply: Reply, taken: boolean) => {
        if (signature?.tag === "first") signature.settle(reply, taken);
        if (key?.tag === "first") key.settle(reply, taken);
      };
      if (key && key.tag !== "first") {
        hold.release();
        const reply = await this.repeat(key, `Idempotency-Key ${JSON.stringify(idempotencyKey)} was used before for a different body; send new records under a new key`);
        settle(reply, reply.status >= 200 && reply.status < 300);
        this.send(res, reply);
        return;
      }
      const taken = { records: false };
      let reply: Reply;
      try {
        reply = await this.take(received, this.idPrefix(idempotencyKey, signed, received.sum), hold, taken, res);
      } catch (err) {
        reply = replyOf(err);
      }
      settle(reply, taken.records);
      this.send(res, reply);
    } finally {
      hold.release();
    }
  }

  /**
   * What a request's fallback record ids start with. Under a key, the body's digest goes in too:
   * the key's binding to its body lives only in memory, and once forgotten (a restart, 50,000
   * later keys) another body under the key must not take the earlier records' ids, or the sinks
   * would drop its records as redeliveries after answering 202. A retry of the same body keeps
   * its ids whatever memory holds.
   */
  private idPrefix(key: string | undefined, signed: SignatureCheck | undefined, sum: string): string {
    if (key !== undefined) return `${key}:${sum}`;
    return signed ? `sig-${signed.signature.slice(0, 32)}` : randomUUID();
  }

  /**
   * Reads the body within `max_body` and the body budget (503 once a part does not fit), checks
   * its signature, decodes and parses it.
   */
  private async receive(req: IncomingMessage, res: ServerResponse, form: { format: BodyFormat; encoding: BodyEncoding }, hold: BodyHold, signed: SignatureCheck | undefined, named: boolean): Promise<Received> {
    const take = (bytes: number) => {
      if (!hold.take(bytes)) throw new HttpError(503, "too many request bodies are being received; retry after the Retry-After delay");
    };
    // Bytes are reserved as they arrive, never by the declared length: a Content-Length costs a
    // client nothing to send, and reserving it let a few sockets that sent headers and then
    // nothing hold the whole budget until request_timeout. A stalled body is cut at body_timeout.
    if (this.awaitingContinue.delete(req)) res.writeContinue();
    const raw = await readBody(req, {
      limit: this.o.max_body,
      take,
      idle: { ms: this.o.body_timeout, setTimer: (ms, fn) => this.ctx.clock.setTimer(ms, fn) },
      ...(signed ? { onChunk: (c: Buffer) => signed.update(c) } : {}),
    });
    signed?.verify();
    // Inflating may take up to max_body more: reserved before, so gzip cannot multiply the budget.
    if (form.encoding === "gzip") take(this.o.max_body);
    const body = await decode(raw, form.encoding, this.o.max_body);
    const sum = named ? createHash("sha256").update(body).digest("hex").slice(0, 16) : "";
    const s = text(body);
    const parsed = parseBody(s, form.format, this.o.max_depth, this.o.max_records);
    return { parsed, sum, plain: parsed.plain && body[0] === 0x7b ? body : undefined, ascii: s.length === body.length };
  }

  /** The answer to a repeat of a request: the first one's, or 422 when the name is bound to another body. */
  private async repeat(claim: Exclude<Claim, { tag: "first" }>, conflict: string): Promise<Reply> {
    if (claim.tag === "answered") return claim.reply;
    if (claim.tag === "wait") return claim.reply;
    return replyOf(new HttpError(422, conflict));
  }

  /**
   * Enqueues a request's records and waits until they are durable; the answer. `taken.records`
   * turns true once the buffer took (or dropped by policy) records of it: from then on its key is
   * bound to its body. The body's bytes are given back to the budget once the records are in.
   *
   * Admission: a request that fits at once goes in. One that does not waits in the buffer's line,
   * behind every request that came before it and ahead of every later one, whatever the sizes,
   * when the buffer expects to take it within `ack_timeout` (at the rate it freed room lately)
   * and the bodies already waiting leave room for its own in the body budget's share for them.
   * Otherwise it cannot wait: 429 at once, as before. A waiting request leaves the line when its
   * client disconnects, when `ack_timeout` passes (429: none of its records were taken), or when
   * sluice stops (503).
   */
  private async take(received: Received, prefix: string, hold: BodyHold, taken: { records: boolean }, res: ServerResponse): Promise<Reply> {
    const handle = this.handle!;
    const parsed = received.parsed;
    const records: Entry[] = new Array<Entry>(parsed.records.length);
    let bytes = 0;
    // Fallback ids `<source>:<prefix>:<index>`, built only for a record without an id of its own.
    const positionPrefix = `${prefix}:`;
    for (let i = 0; i < records.length; i++) {
      records[i] = handle.record(parsed.records[i]!, parsed.bytes[i]!, i, parsed.texts[i], undefined, positionPrefix);
      bytes += parsed.bytes[i]!;
    }
    // A request larger than a chunk goes in as several, so the buffer's bound holds for it too.
    // When one is refused, the chunks before it were taken: they are delivered, and the client's
    // retry (same Idempotency-Key, same ids) leaves each record once.
    const parts: Entry[][] = [];
    for (let at = 0; at < records.length; at += handle.chunkSize) parts.push(records.length <= handle.chunkSize ? records : records.slice(at, at + handle.chunkSize));
    const lines = partLines(received, parts);

    // One deadline for the whole request: room for its chunks, then their acks.
    const clock = this.ctx.clock;
    const deadline = clock.now() + this.o.ack_timeout;
    // Made only for a request that waits in line (most go in at once).
    let giveUp: AbortController | undefined;
    let cancelTimer: (() => void) | undefined;
    const gone = () => giveUp?.abort();
    // The request's `traceparent`: each of its chunks' receive spans is a child of it.
    const parent = parentFromHeaders(res.req.headers);
    const atOnce: EnqueueOptions | undefined = parent === undefined ? undefined : { parent };
    // Armed only for a request that waits in line (most go in at once): it leaves the line at its
    // deadline, or when its client is gone (the connection closed before the answer).
    const wait = (): EnqueueOptions => {
      if (giveUp === undefined) {
        giveUp = new AbortController();
        cancelTimer = clock.setTimer(Math.max(0, deadline - clock.now()), gone);
        res.once("close", gone);
        if (res.socket === null || res.socket.destroyed) giveUp.abort();
      }
      return { wait: true, signal: giveUp.signal, parent };
    };
    const chunks: Pending[] = [];
    try {
      const expected = handle.expectedWait(records.length, bytes);
      const waits = expected > 0 && expected <= this.o.ack_timeout && hold.queue();
      // Every chunk joins the line in one synchronous pass: no other request can come between
      // them, so the request as a whole keeps its place.
      let outcomes: PromiseSettledResult<EnqueueOutcome>[];
      if (waits) outcomes = await Promise.allSettled(parts.map((part, i) => this.enqueue(handle, part, chunks, withLines(wait(), lines[i]))));
      else {
        // The first chunk is refused at once when it does not fit (429); the rest of a request
        // partly taken waits for room.
        const first = await Promise.allSettled([this.enqueue(handle, parts[0]!, chunks, withLines(atOnce, lines[0]))]);
        const went = first[0]!.status === "fulfilled" && (first[0]!.value === "accepted" || first[0]!.value === "dropped");
        outcomes = went ? [...first, ...(await Promise.allSettled(parts.slice(1).map((part, i) => this.enqueue(handle, part, chunks, withLines(wait(), lines[i + 1])))))] : first;
      }
      let dropped = 0;
      const took = outcomes.some((o) => o.status === "fulfilled" && (o.value === "accepted" || o.value === "dropped"));
      if (took) taken.records = true;
      outcomes.forEach((o, i) => {
        if (o.status === "fulfilled" && o.value === "dropped") dropped += parts[i]!.length;
      });
      for (const o of outcomes) {
        if (o.status === "rejected") throw o.reason;
        if (o.value === "stopping") throw new HttpError(503, "sluice is stopping; retry against another instance or later");
      }
      if (outcomes.some((o) => o.status === "fulfilled" && o.value === "rejected")) {
        if (took) throw new HttpError(503, `buffer had no room for the rest of the request within ${this.o.ack_timeout} ms; retry with the same Idempotency-Key`);
        if (waits) throw new HttpError(429, `buffer had no room for the request within ${this.o.ack_timeout} ms; retry after the Retry-After delay`);
        throw new HttpError(429, "buffer is full; retry after the Retry-After delay");
      }
      hold.release();
      if (!(await this.waitDurable(chunks, deadline))) {
        throw new HttpError(503, `records not committed within ${this.o.ack_timeout} ms; retry with the same Idempotency-Key`);
      }
      if (chunks.some((p) => p.abandoned)) throw new HttpError(503, "sluice stopped before the records were committed; retry with the same Idempotency-Key");
      return { status: 202, body: dropped > 0 ? { accepted: records.length - dropped, dropped } : { accepted: records.length } };
    } finally {
      if (cancelTimer !== undefined) {
        cancelTimer();
        res.off("close", gone);
      }
      for (const p of chunks) this.pending.delete(p);
    }
  }

  /** Enqueues one chunk of a request; its checkpoint joins `chunks` when the buffer took it. */
  private async enqueue(handle: SourceHandle, part: Entry[], chunks: Pending[], options: EnqueueOptions | undefined): Promise<EnqueueOutcome> {
    let resolve!: () => void;
    const durable = new Promise<void>((r) => (resolve = r));
    const pending: Pending = {
      done: () => {
        pending.settled = true;
        resolve();
      },
      durable,
      abandoned: false,
      settled: false,
    };
    this.pending.add(pending);
    let outcome: EnqueueOutcome;
    try {
      outcome = await handle.enqueue(part, pending, options);
    } catch (err) {
      this.pending.delete(pending);
      throw new HttpError(503, `buffer cannot take records: ${(err as Error).message}`);
    }
    if (outcome === "accepted") chunks.push(pending);
    else this.pending.delete(pending);
    return outcome;
  }

  /** Waits for the acks of every chunk of a request until `deadline` (ms since epoch); false on timeout. */
  private async waitDurable(chunks: readonly Pending[], deadline: number): Promise<boolean> {
    // With a durable buffer the chunks were acked on the way in: no timer, no race.
    if (chunks.every((p) => p.settled)) return true;
    let cancel = () => {};
    const timeout = new Promise<boolean>((resolve) => {
      cancel = this.ctx.clock.setTimer(Math.max(0, deadline - this.ctx.clock.now()), () => resolve(false));
    });
    try {
      return await Promise.race([Promise.all(chunks.map((p) => p.durable)).then(() => true), timeout]);
    } finally {
      cancel();
    }
  }

  private answerError(res: ServerResponse, err: unknown): void {
    if (res.headersSent) {
      res.destroy();
      return;
    }
    if (!(err instanceof HttpError)) this.ctx.logger.error({ component: this.ctx.name, code: "ERR_INTERNAL", err: String(err) }, "http source failed on a request");
    this.send(res, replyOf(err));
  }

  /**
   * Sends an answer. One given before the request's body was read (refused from the headers, or
   * while the body streamed in) goes through {@link endEarly}, so the client reads it.
   */
  private send(res: ServerResponse, reply: Reply): void {
    const req = res.req;
    if (req.url?.startsWith(this.o.path)) this.ctx.emit({ type: "http_request", source: this.ctx.name, status: reply.status });
    const json = JSON.stringify(reply.body);
    const headers: Record<string, string | number> = { "content-type": "application/json", "content-length": Buffer.byteLength(json) };
    if (reply.status === 429 || reply.status === 503) headers["retry-after"] = this.retryAfter;
    if (reply.status === 401) headers["www-authenticate"] = 'Bearer realm="sluice"';
    if (reply.status === 405) headers.allow = req.url?.startsWith(this.o.path) ? "POST" : "GET, HEAD";
    // While stopping, every answer ends its connection, so close() finds none idle to reset.
    if (reply.status === 413 || reply.status === 408 || this.stopping) headers.connection = "close";
    // A 408 answers a client that stopped sending: waiting to discard the rest of its body would
    // keep its connection until request_timeout, so the connection closes after the answer.
    if (!req.complete && reply.status !== 408) endEarly(req, res, reply.status, headers, json, this.awaitingContinue.has(req));
    else res.writeHead(reply.status, headers).end(json);
  }
}
