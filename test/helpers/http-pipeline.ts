/**
 * A real pipeline around the `http` source for integration tests: http source -> memory buffer ->
 * sqlite sink in a temp dir (optionally behind a {@link GatedSink} that holds writes until
 * released), with a {@link ServiceProbe} over real metrics. Plus the clients the tests need: a
 * `fetch` wrapper that returns status, headers and the parsed body; a `node:http` request for
 * what `fetch` cannot send (a lying Content-Length, a chunked body); and a polling wait.
 *
 * Built from the component definitions and `Pipeline` directly, not the library API, so it does
 * not depend on `config/build.ts`; the buffer is in memory unless a test asks for the durable one.
 */
import { createHash } from "node:crypto";
import { request as httpRequest, type IncomingHttpHeaders } from "node:http";
import { createServer, type AddressInfo } from "node:net";
import { join } from "node:path";
import Database from "better-sqlite3";
import type { Readiness, ServiceProbe, Sink, WriteResult } from "../../src/components/contracts.js";
import { MemoryBuffer } from "../../src/core/buffer.js";
import type { Clock } from "../../src/core/clock.js";
import { DurableBuffer } from "../../src/core/durable-buffer.js";
import { silentLogger } from "../../src/core/events.js";
import { Pipeline, type PipelineStatus } from "../../src/core/pipeline.js";
import type { SluiceRecord } from "../../src/core/record.js";
import { Metrics } from "../../src/observability/metrics.js";
import { Endpoints } from "../../src/server/endpoints.js";
import { definition as deadLetterSqlite } from "../../src/sinks/dead-letter-sqlite.js";
import { definition as sqlite } from "../../src/sinks/sqlite.js";
import { definition as http } from "../../src/sources/http-options.js";
import { makeTempDir, testContext } from "./source-harness.js";

/** A port nobody listens on right now: bind port 0 on loopback, read it, close. */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** Polls `check` every 10 ms until it is true; throws after `timeoutMs` (real time) naming `what`. */
export async function waitUntil(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/**
 * The id the http source gives record `index` of a request sent under `key` with `body` (the
 * decoded body) when the record has no id of its own: `<source>:<key>:<16 hex of sha256(body)>:<index>`.
 */
export function keyedId(key: string, body: string, index: number, source = "web"): string {
  return `${source}:${key}:${createHash("sha256").update(body).digest("hex").slice(0, 16)}:${index}`;
}

/** A promise with its resolve exposed. */
function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

/**
 * A sink fault, scripted: wraps a real sink and holds every write until {@link release} (writes
 * already released go straight through). {@link stalled} resolves once the first write is held.
 */
export class GatedSink implements Sink {
  readonly maxInFlight: number;
  private gate = deferred();
  private firstHeld = deferred();
  /** Writes being held right now. */
  held = 0;
  /** Ids of every record the inner sink committed, repeats included (a redelivery shows up twice). */
  readonly committed: string[] = [];

  constructor(private readonly inner: Sink) {
    this.maxInFlight = inner.maxInFlight;
  }

  /** Resolves once a write is being held. */
  get stalled(): Promise<void> {
    return this.firstHeld.promise;
  }

  /** Lets held and future writes through. */
  release(): void {
    this.gate.resolve();
  }

  /** Holds the writes from now on again, until the next {@link release}. */
  hold(): void {
    this.gate = deferred();
  }

  connect(signal: AbortSignal): Promise<void> {
    return this.inner.connect(signal);
  }

  async write(records: readonly SluiceRecord[], signal: AbortSignal): Promise<WriteResult | void> {
    this.held++;
    this.firstHeld.resolve();
    try {
      // Like a real sink, a held write gives up when the shutdown deadline aborts it.
      await new Promise<void>((resolve, reject) => {
        if (signal.aborted) reject(signal.reason);
        const onAbort = () => reject(signal.reason);
        signal.addEventListener("abort", onAbort, { once: true });
        void this.gate.promise.then(() => {
          signal.removeEventListener("abort", onAbort);
          resolve();
        });
      });
    } finally {
      this.held--;
    }
    const result = await this.inner.write(records, signal);
    const failed = new Set((result?.failures ?? []).map((f) => f.index));
    records.forEach((r, i) => {
      if (!failed.has(i)) this.committed.push(r.id);
    });
    return result;
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

/**
 * A sink that drains at a steady rate: every write takes `msPerRecord` ms per record before the
 * inner sink writes it, so a flood of producers keeps the buffer full.
 */
export class ThrottledSink implements Sink {
  readonly maxInFlight: number;

  constructor(
    private readonly inner: Sink,
    private readonly msPerRecord: number,
  ) {
    this.maxInFlight = inner.maxInFlight;
  }

  connect(signal: AbortSignal): Promise<void> {
    return this.inner.connect(signal);
  }

  async write(records: readonly SluiceRecord[], signal: AbortSignal): Promise<WriteResult | void> {
    await new Promise((resolve) => setTimeout(resolve, records.length * this.msPerRecord));
    return this.inner.write(records, signal);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

/** Options of {@link startHttpPipeline}. */
export interface HttpPipelineOptions {
  /** The http source's own options (snake_case, as in YAML); `listen` is filled in with a free port. */
  readonly source?: Record<string, unknown>;
  /** The memory buffer's bound; default 10 000 records, 64 MiB. */
  readonly buffer?: { maxRecords: number; maxBytes?: number };
  /** A durable buffer (no fsync) in the temp dir instead of the memory buffer: enqueue then waits for a disk write, as in production. */
  readonly durable?: boolean;
  /** The durable buffer's bound on its log, bytes; default 256 MiB. */
  readonly durableMaxBytes?: number;
  /** Put the sqlite sink behind a {@link ThrottledSink} of this many ms per record. */
  readonly msPerRecord?: number;
  /** The sink's batch `max_records`; default 500. */
  readonly batchRecords?: number;
  /** Put the sqlite sink behind a {@link GatedSink}. */
  readonly gated?: boolean;
  /** The http source's `id_field` (the pipeline's); default `id`. */
  readonly idField?: string;
  readonly shutdownTimeoutMs?: number;
  /** Run in this directory (sink, buffer, dead letters), left in place on close, instead of a new temp dir: a second pipeline on it is a restart on the same sink. */
  readonly dir?: string;
  /** The http source's clock (its deadlines and timeouts); the system clock by default. */
  readonly clock?: Clock;
}

/** A running pipeline with an http source, and what a test needs to drive and inspect it. */
export interface HttpPipeline {
  /** `http://127.0.0.1:<port>` */
  readonly base: string;
  readonly port: number;
  readonly pipeline: Pipeline;
  /** Resolves with the run's status once it ends. */
  readonly done: Promise<PipelineStatus>;
  /** The gated sink, when `gated` was asked for. */
  readonly gate: GatedSink | undefined;
  /** The source's name in the pipeline (the prefix of fallback record ids). */
  readonly sourceName: string;
  /** Payloads in the sqlite sink by record id (each id at most once: it is the primary key). */
  rows(): Map<string, Record<string, unknown>>;
  /** Stops the pipeline (releasing the gate), waits for the run to end, removes the temp dir. */
  close(): Promise<void>;
}

/** Starts a pipeline: http source on a free loopback port -> memory buffer -> sqlite (gated if asked). Resolves once the port answers. */
export async function startHttpPipeline(o: HttpPipelineOptions = {}): Promise<HttpPipeline> {
  const dir = o.dir !== undefined ? { path: o.dir, remove: async () => {} } : await makeTempDir("sluice-http-");
  const port = await freePort();
  const sourceName = "web";
  const dbPath = join(dir.path, "out.db");
  const metrics = new Metrics(["db"], silentLogger);
  // Called only once the pipeline runs, so `pipeline` is set by then.
  const readiness = (): Readiness => (pipeline.status().tag === "running" ? { ready: true, problems: [] } : { ready: false, problems: ["pipeline: not running"] });
  const metricsText = async () => ({ contentType: metrics.registry.contentType, text: await metrics.registry.metrics() });
  const endpoints = new Endpoints({ readiness, metrics: metricsText });
  const service: ServiceProbe = { readiness, metrics: metricsText, mount: (options) => endpoints.mount(options) };
  const limits = { maxRecords: o.buffer?.maxRecords ?? 10_000, maxBytes: o.buffer?.maxBytes ?? 64 * 1024 * 1024 };
  const ctx = (name: string) => ({ ...testContext({ name, dataDir: dir.path, baseDir: dir.path, service, bufferBytes: limits.maxBytes }), emit: metrics.handle });
  const source = await http.create(http.options.parse({ listen: `127.0.0.1:${port}`, ...o.source }), { ...ctx(sourceName), ...(o.clock ? { clock: o.clock } : {}) });
  const inner = sqlite.create(sqlite.options.parse({ path: dbPath }), ctx("db"));
  const throttled = o.msPerRecord === undefined ? inner : new ThrottledSink(inner, o.msPerRecord);
  const gate = o.gated ? new GatedSink(throttled) : undefined;
  const pipeline = new Pipeline({
    sources: [{ name: sourceName, source, idField: o.idField }],
    transforms: [],
    sinks: [
      {
        name: "db",
        sink: gate ?? throttled,
        batch: { maxRecords: o.batchRecords ?? 500, maxBytes: 16 * 1024 * 1024, maxWaitMs: 5 },
        retry: { maxAttempts: 5, maxElapsedMs: 10_000, backoff: { initialMs: 10, maxMs: 100, multiplier: 2 } },
        concurrency: 1,
      },
    ],
    deadLetter: deadLetterSqlite.create(deadLetterSqlite.options.parse({ path: join(dir.path, "dlq.db") }), ctx("dead_letter")),
    buffer: o.durable
      ? new DurableBuffer({ path: join(dir.path, "buffer"), maxBytes: o.durableMaxBytes ?? 256 * 1024 * 1024, fsync: false, memory: limits, emit: metrics.handle, logger: silentLogger })
      : new MemoryBuffer(limits),
    whenFull: "reject",
    chunkSize: Math.min(100, o.buffer?.maxRecords ?? 100),
    shutdownTimeoutMs: o.shutdownTimeoutMs ?? 10_000,
    emit: metrics.handle,
  });
  metrics.watchBuffer(() => pipeline.bufferUsage());
  const done = pipeline.run();
  const base = `http://127.0.0.1:${port}`;
  await waitUntil(
    "the http source to listen",
    () =>
      fetch(`${base}/health/live`).then(
        (r) => r.ok,
        () => false,
      ),
    10_000,
  );
  let db: Database.Database | undefined;
  return {
    base,
    port,
    pipeline,
    done,
    gate,
    sourceName,
    rows() {
      db ??= new Database(dbPath, { readonly: true, fileMustExist: true });
      const all = db.prepare("SELECT id, payload FROM records").all() as { id: string; payload: string }[];
      return new Map(all.map((r) => [r.id, JSON.parse(r.payload) as Record<string, unknown>]));
    },
    async close() {
      gate?.release();
      pipeline.stop();
      await done;
      db?.close();
      await dir.remove();
    },
  };
}

/** An answer: status, headers, and the body parsed as JSON (or the text, when it is not JSON). */
export interface Answer {
  readonly status: number;
  readonly headers: IncomingHttpHeaders;
  readonly body: unknown;
  readonly text: string;
}

function answer(status: number, headers: IncomingHttpHeaders, text: string): Answer {
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // Not JSON: `body` stays the text.
  }
  return { status, headers, body, text };
}

/** A request with `fetch`; headers of the answer lower-cased like node:http's. */
export async function send(url: string, init: RequestInit = {}): Promise<Answer> {
  const res = await fetch(url, init);
  const headers: IncomingHttpHeaders = {};
  res.headers.forEach((v, k) => (headers[k] = v));
  return answer(res.status, headers, await res.text());
}

/** Options of {@link rawRequest}. */
export interface RawRequestOptions {
  readonly method?: string;
  readonly headers?: Record<string, string | number>;
  /** Written in order; with no `content-length` header node:http sends them chunked. */
  readonly chunks?: readonly (Buffer | string)[];
  /** Keep writing `filler` chunks until the answer arrives or this many bytes were written. */
  readonly fillTo?: number;
  readonly filler?: Buffer;
}

/**
 * A request with node:http, for what `fetch` will not send: a Content-Length the body does not
 * match, a chunked body with no length. Write errors after the answer (the server closed the
 * connection) are expected and ignored; the answer is what counts.
 */
export function rawRequest(url: string, o: RawRequestOptions): Promise<Answer & { written: number }> {
  return new Promise((resolve, reject) => {
    let answered = false;
    let written = 0;
    const req = httpRequest(url, { method: o.method ?? "POST", headers: o.headers, agent: false }, (res) => {
      answered = true;
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (d: string) => (text += d));
      res.on("end", () => resolve({ ...answer(res.statusCode ?? 0, res.headers, text), written }));
      res.on("error", reject);
    });
    req.on("error", (err) => {
      if (!answered) reject(err);
    });
    for (const c of o.chunks ?? []) {
      written += c.length;
      req.write(c);
    }
    if (o.fillTo === undefined) {
      if (o.headers?.["content-length"] === undefined || written >= Number(o.headers["content-length"])) req.end();
      return;
    }
    const filler = o.filler ?? Buffer.alloc(16 * 1024, 0x20);
    const pump = () => {
      while (!answered && written < o.fillTo! && !req.destroyed) {
        written += filler.length;
        if (!req.write(filler)) {
          req.once("drain", pump);
          return;
        }
      }
      if (!answered && !req.destroyed) req.end();
    };
    pump();
  });
}
