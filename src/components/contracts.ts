/**
 * The contracts between the engine and its components. Each method says who calls it, how
 * often, and what its errors mean; a component that keeps these gets sluice's guarantees.
 */
import type { Context } from "@opentelemetry/api";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { z } from "zod";
import type { Clock } from "../core/clock.js";
import type { SluiceError } from "../core/errors.js";
import type { EventSink, Logger } from "../core/events.js";
import type { Entry, JsonObject, LineRun, RecordView, SluiceRecord } from "../core/record.js";

/** What every component factory gets besides its own config. */
export interface ComponentContext {
  /** The component's name in the pipeline (the key under `sources:` / `sinks:`), or its type for transforms. */
  readonly name: string;
  /** The pipeline's `data_dir`: where checkpoints and default stores live. Created before any factory runs. */
  readonly dataDir: string;
  /**
   * Directory the component's relative paths resolve against: the working directory for sources,
   * sinks and dead-letter stores (data paths), the config file's directory for transforms (code
   * that ships with the config).
   */
  readonly baseDir: string;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly emit: EventSink;
  /** The pipeline's readiness, metrics and HTTP endpoints, for a source that listens on a port (http) and serves them there too. */
  readonly service?: ServiceProbe;
  /** The buffer's byte bound (`buffer.max_bytes`), for a source that sizes its own memory by it (http). */
  readonly bufferBytes?: number;
  /** The buffer's record bound (`buffer.max_records`), for a broker source that caps what its broker delivers ahead by it (nats_jetstream, rabbitmq's prefetch). */
  readonly bufferRecords?: number;
}

/**
 * Whether the pipeline takes traffic, and what is wrong: each source that is not connected
 * (`source q: connecting, down 12 s: ...`; unready at once), each sink that cannot connect, from its
 * first failed attempt (`sink db: connecting, down 45 s: ECONNREFUSED 127.0.0.1:5433`; before
 * `observability.unready_after` that does not yet make it unready), and each sink whose writes
 * have failed for `unready_after`.
 */
export interface Readiness {
  readonly ready: boolean;
  readonly problems: readonly string[];
}

/** The `/health/ready` answer for a {@link Readiness}: the same on every port that serves it. */
export function readinessAnswer(r: Readiness): { status: 200 | 503; body: { status: "ready" | "not_ready"; problems?: readonly string[] } } {
  const body = { status: r.ready ? ("ready" as const) : ("not_ready" as const) };
  return { status: r.ready ? 200 : 503, body: r.problems.length > 0 ? { ...body, problems: r.problems } : body };
}

/** What a component serving HTTP can ask the pipeline. */
export interface ServiceProbe {
  /** Not ready while the pipeline is not running (starting, stopping), a source with a connection is down, a sink has been failing past `observability.unready_after`, or the durable buffer cannot write. */
  readiness(): Readiness;
  /** The Prometheus exposition of the pipeline's metrics. */
  metrics(): Promise<{ contentType: string; text: string }>;
  /**
   * The pipeline's own endpoints (`/health/live`, `/health/ready`, `/metrics`, the dashboard at
   * `/` and its live feed), served by `server/`, for a source that listens on a port to answer
   * beside its own routes, so every port answers them alike. Call once per server, and close the
   * mount when the server stops.
   */
  mount(options?: MountOptions): EndpointMount;
}

/** How a server mounts the pipeline's endpoints. */
export interface MountOptions {
  /** Readiness as this server reports it (the http source adds its own stopping); default the pipeline's. */
  readonly readiness?: () => Readiness;
  /**
   * Called before answering an endpoint that shows the pipeline's traffic (metrics, the dashboard
   * and its feed; never the health endpoints). Throws to refuse: the error is what
   * {@link EndpointMount.serve} rejects with, for the server to answer as its own errors.
   */
  readonly guard?: (req: IncomingMessage) => void;
  /** Headers put on every answer (the http source's `connection: close` while stopping). */
  readonly headers?: () => Record<string, string>;
  /** Serve `/tap` (live records, when `observability.tap` is on): only the observability listener does. */
  readonly tap?: boolean;
}

/** The pipeline's endpoints as mounted on one server. */
export interface EndpointMount {
  /**
   * Answers `req` when its path is one of the endpoints and resolves true; resolves false, having
   * written nothing, when it is not (the server answers it). Rejects with what `guard` threw.
   */
  serve(req: IncomingMessage, res: ServerResponse): Promise<boolean>;
  /** Ends the live streams (dashboard feed, tap) opened through this mount. */
  close(): void;
}

/** What happened to a chunk a source enqueued. */
export type EnqueueOutcome =
  /** In the buffer; the source will be acked once it is delivered. */
  | "accepted"
  /** Dropped by `when_full: drop_newest`; counted, and acked at once. */
  | "dropped"
  /** Refused: the buffer is full and the source declared `whenFull: "reject"` (or `when_full: reject`): tell the producer to retry later. */
  | "rejected"
  /** The pipeline is stopping: tell the producer to retry elsewhere or later. */
  | "stopping";

/**
 * The enqueue-only handle a source gets. Sources build records with it and hand them over
 * in chunks (arrays), which is what makes the hot path cheap.
 */
export interface SourceHandle {
  /** Records per chunk a source should aim for; never above the buffer's `max_records`. */
  readonly chunkSize: number;
  /**
   * Builds a record around a parsed payload. The envelope's id, key and event time come from the
   * source's `id_field`, `key_field` and `time_field`. When the payload has no id, the id is
   * `<source name>:<position>`, where `position` is the record's place in the source (a byte
   * offset within a file's generation, an entry id, a sequence number), so redelivery yields the
   * same id. The id string is
   * built only when needed, and so is the position's when `positionPrefix` is given: the position
   * is then `positionPrefix` followed by `position` (a file generation's token and a byte offset).
   * `bytes` is the record's size estimate for the buffer's byte bound.
   * `text`, when the source has it, is the payload's JSON as received (see
   * {@link SluiceRecord.text}): the durable buffer and the postgres sink write it instead of
   * serializing the payload again.
   */
  record(payload: JsonObject, bytes: number, position: string | number, text?: string, envelope?: ServiceEnvelope, positionPrefix?: string): Entry;
  /**
   * Builds a record for input that could not be parsed, or that its service gave up on (id
   * `envelope.id`, else `<source name>:<position>`); it goes to the dead-letter sink with `error`.
   */
  malformed(raw: string, position: string | number, error: SluiceError, envelope?: ServiceEnvelope): Entry;
  /**
   * True when the pipeline decodes JSON lines where it runs the transforms, on worker threads
   * (`workers` above 1, with the memory buffer): a source reading NDJSON then hands each line to
   * {@link lines} instead of parsing it, so the parsing runs in parallel too. Absent: false.
   */
  readonly decodesLines?: boolean;
  /**
   * False when nothing reads a record's `text` before the transforms replace the payload (the
   * pipeline has transforms and no durable buffer): a source that would cut each record's text out
   * of a larger one only for {@link record} may skip that. Absent: true.
   */
  readonly wantsText?: boolean;
  /**
   * Builds a record around each line of `run` (undecoded JSON lines, their `\r` and byte order
   * mark already stripped) and appends it to `into`; call only when {@link decodesLines}. Each is
   * decoded where the transforms run, and gets its envelope there as {@link record} would give it;
   * a line that is not a JSON object is dead-lettered as `ERR_RECORD_MALFORMED` at
   * `<location>:<line>`.
   */
  lines?(run: LineRun, into: Entry[]): void;
  /**
   * Hands a chunk to the buffer. A source with `whenFull: "wait"` waits for room (unless
   * `when_full: drop_newest`): that wait is the backpressure. One with `whenFull: "reject"` is
   * answered `rejected` at once when the buffer is full, unless it passes `wait`: then it waits for
   * room, in line behind every chunk waiting before it, until `signal` aborts (`rejected`) or the
   * pipeline stops (`stopping`).
   * `checkpoint` is given back to {@link Source.ack} once the chunk is done.
   */
  enqueue(records: Entry[], checkpoint: unknown, options?: EnqueueOptions): Promise<EnqueueOutcome>;
  /**
   * Room first: waits until the buffer could take records now, and resolves with how many of the
   * `n` the source wants it may fetch (at least 1, at most `n`), or 0 when the pipeline stops or
   * `signal` aborts first. For a source that would otherwise read first and wait in `enqueue`
   * after, while what it read ages at its service (entries pending in a Redis group, messages
   * toward JetStream's `ack_wait`). An estimate, not a reservation: another source may take the
   * room meanwhile, and `enqueue` then waits as usual. Under `when_full: drop_newest` it does not
   * wait (the chunk would be dropped, not held). `recordBytes` is the source's estimate of one
   * record's size (e.g. the average of what it read lately): the grant then fits the buffer's byte
   * bound at that size, also in an empty buffer; without it, records are taken to be the size of
   * those held, and an empty buffer grants all `n`.
   */
  waitForRoom(n: number, signal?: AbortSignal, recordBytes?: number): Promise<number>;
  /**
   * How long, in ms, records of this size enqueued now with `wait` would wait for room: 0 when
   * they fit at once, `Infinity` while the buffer frees nothing (see `Buffer.expectedWait`). For a
   * `whenFull: "reject"` source deciding whether its producer waits in line or is told to come back later.
   */
  expectedWait(records: number, bytes: number): number;
}

/**
 * The envelope a broker stored beside a payload (a `redis_streams` entry's `id`, `key` and
 * `event_time` fields, a JetStream message's `Nats-Msg-Id` and headers), so a record keeps its id,
 * key and event time from one sluice to the next. Each is used only where the source's
 * `id_field`, `key_field` or `time_field` finds nothing in the payload.
 */
export interface ServiceEnvelope {
  readonly id?: string | undefined;
  readonly key?: string | undefined;
  /** ms since the epoch. */
  readonly eventTime?: number | undefined;
}

/** How a `whenFull: "reject"` source asks {@link SourceHandle.enqueue} to wait for room. */
export interface EnqueueOptions {
  /** Wait for room instead of answering `rejected` at once. */
  readonly wait?: boolean;
  /** Gives up waiting: the chunk is then `rejected`. */
  readonly signal?: AbortSignal;
  /**
   * The producer's trace context (an HTTP request's `traceparent`, see `parentFromHeaders`): the
   * chunk's `sluice.source.receive` span is its child. Used only when a tracer is installed.
   */
  readonly parent?: Context;
  /** The records' payloads as their producer's bytes, one line each (see `Chunk.lines`): a durable buffer writes them as they are. */
  readonly lines?: Buffer;
}

/**
 * How a source is told its chunks are done. `ordered`: one contiguous checkpoint, moved only over
 * the prefix of chunks that are all done, acks in order and never concurrent (a file offset, a
 * sequence number). `individual`: each chunk acked on its own as soon as it is done, in any order
 * and possibly concurrently (broker messages, HTTP requests): one slow or failing record holds
 * back only its own chunk.
 */
export type SourceAcks = "ordered" | "individual";

/**
 * What a source's `enqueue` does when the buffer is full (under `when_full: block` or `reject`;
 * `drop_newest` drops either way). `wait`: it waits for room, which is the backpressure (a source
 * that can simply stop reading: files, generators, brokers). `reject`: it is answered `rejected`
 * at once, unless it asks to wait per chunk (a source that must answer a producer now: HTTP).
 */
export type SourceWhenFull = "wait" | "reject";

/**
 * A source of records. Created by its definition's factory, used by one pipeline.
 *
 * The engine calls, in this order: {@link connect} (if present) until it resolves, then
 * {@link run}; {@link ack} and {@link inProgress} while chunks are in flight; {@link close} once
 * at the end. A source with `connect` that loses its connection mid-run rejects `run` with a
 * retryable error: the engine then calls `connect` again (with backoff) and `run` again. What was
 * read and not acked before the loss is the source's to redeliver (a broker does).
 */
export interface Source {
  /** How the engine acks chunks (see {@link SourceAcks}). */
  readonly acks: SourceAcks;
  /** What `enqueue` does when the buffer is full (see {@link SourceWhenFull}). */
  readonly whenFull: SourceWhenFull;
  /**
   * Optional. Opens the connection to the source's service. Called by the engine before each
   * `run`: at start, and again after `run` rejected with a retryable error (a lost connection).
   * A rejection is retried with the sinks' backoff until it resolves or the pipeline stops; while
   * it fails, `/health/ready` names the source (`source q: connecting, down 12 s: ...`). A
   * permanent error (`retryable: false`: bad credentials, a missing stream with creation off)
   * ends the run, exit 1. `signal` aborts an attempt when the pipeline stops. Wrap the client's
   * errors in `ERR_SOURCE_CONNECT`.
   */
  connect?(signal: AbortSignal): Promise<void>;
  /**
   * Called after `connect` resolved (or once, without `connect`). Produces records until the input
   * is exhausted (a finite source resolves) or `signal` aborts (stop taking new records and
   * resolve). A rejection of a source with `connect` that is retryable means "connection lost":
   * the engine reconnects and calls `run` again. Any other rejection is a fatal runtime error of
   * the pipeline (exit 1).
   */
  run(handle: SourceHandle, signal: AbortSignal): Promise<void>;
  /**
   * Tells the source a chunk is done: on disk when the buffer is durable, else delivered,
   * dead-lettered or dropped by every sink; never before. With `acks: "ordered"` it is called in
   * order and never concurrently, with the checkpoint of the newest chunk such that it and all
   * chunks before it are done: persist it (files: save the offset); it may batch or delay
   * persistence, since redelivery is safe; it rejects when it could not save the checkpoint: the
   * run goes on, and ends `failed` (`ERR_CHECKPOINT_WRITE`, exit 1) unless a later ack or `close`
   * saves its progress. With `acks: "individual"` it is called once per chunk with that chunk's
   * own checkpoint, in any order, possibly concurrently: ack the broker's messages, answer the
   * producer; a rejection is logged (the message is redelivered by its broker).
   */
  ack(checkpoint: unknown): Promise<void> | void;
  /**
   * Optional. Tells the source's service that a chunk is still being worked on (JetStream
   * `working()`, extending a visibility timeout), so it is not redelivered while it is slow.
   * Called by the engine every {@link workingIntervalMs} (on the pipeline's clock) for each chunk
   * in flight, with that chunk's checkpoint, until the chunk is acked or the run ends. Not
   * awaited in order; a rejection is logged and the next tick tries again.
   */
  inProgress?(checkpoint: unknown): Promise<void> | void;
  /** How often {@link inProgress} is called for a chunk in flight, ms; required with it (e.g. a third of the broker's ack wait). */
  readonly workingIntervalMs?: number;
  /**
   * Called once after `run` resolved and the last ack settled; persist state and release
   * resources. With `acks: "ordered"`, resolving means its progress is saved, rejecting that it is not.
   */
  close(): Promise<void>;
}

/** A payload transform's result: a payload, `null` to filter the record out, or an array to split it. */
export type TransformOutput = JsonObject | null | JsonObject[];

/** A transform in the chain. Called per record, in order; results may be promises. */
export interface Transform {
  /**
   * Maps one payload. Throw (ideally a {@link SluiceError}) to dead-letter the record; the
   * pipeline goes on. `record` is a frozen view of the envelope, not the engine's record: a write
   * to it throws in strict code (dead-lettered with `ERR_TRANSFORM_ENVELOPE`) and changes nothing.
   * A returned promise is bounded by the transform's `timeout` (`ERR_TRANSFORM_TIMEOUT`); a
   * synchronous call is not, as nothing on the main thread can interrupt it, except on a worker
   * thread (`workers` above 1), which is terminated when it stays busy past the timeout.
   */
  apply(payload: JsonObject, record: RecordView): TransformOutput | Promise<TransformOutput>;
  /**
   * `false` when `apply` never reads `record`: the chain then builds no view and passes
   * `undefined` (a view is an allocation per record). Read before every call, so it may change
   * once a lazily loaded function is known. Default: the view is passed.
   */
  readonly takesRecord?: boolean;
  /** Called once when the pipeline stops. */
  close?(): Promise<void>;
}

/** A record of a batch that failed on its own; the rest of the batch is committed. */
export interface RecordFailure {
  /** Index into the batch passed to {@link Sink.write}. */
  readonly index: number;
  /** Retryable errors are retried for this record only; permanent ones dead-letter it. */
  readonly error: SluiceError;
}

/**
 * What a sink's write reports. Absent or empty `failures` means every record is durable.
 *
 * `alreadyPresent` lists (by index into the batch) the committed records the sink found already
 * stored and left as they were: a redelivery its idempotent write absorbed (for postgres
 * `upsert_latest`, also a record not applied because its key's row held one at least as new).
 * Filled by sinks that can tell from their conflict handling (sqlite, postgres); absent or empty
 * means every committed record was stored new, which is also true of sinks that write every record
 * they get (stdout, file) or none (blackhole). Never lists an index that is in `failures`. Gotcha:
 * a batch retried after a commit whose answer was lost reports its records as already present.
 */
export interface WriteResult {
  readonly failures?: readonly RecordFailure[];
  readonly alreadyPresent?: readonly number[];
}

/**
 * What a sink's write returns for a batch: `failures` (sorted by index, in place) and, when the
 * sink tells them, the records it found `alreadyPresent`; `{}` when both are empty.
 */
export function writeResult(failures: RecordFailure[], alreadyPresent?: readonly number[]): WriteResult {
  failures.sort((a, b) => a.index - b.index);
  if (alreadyPresent === undefined) return failures.length > 0 ? { failures } : {};
  return failures.length > 0 || alreadyPresent.length > 0 ? { failures, alreadyPresent } : {};
}

/** Bounds of the write a sink prefers when records pile up ({@link Sink.preferredWrite}). */
export interface PreferredWrite {
  /** Most records in one write. */
  readonly maxRecords: number;
  /** Most estimated bytes (the records' `bytes`) in one write. */
  readonly maxBytes: number;
}

/** A destination of records. Writes must be idempotent by record id: redelivery leaves one copy. */
export interface Sink {
  /** Most writes the sink can have in flight at once (1 for an embedded database); the engine uses min(this, `concurrency`). */
  readonly maxInFlight: number;
  /**
   * The largest write the sink would take when records pile up; optional. When a lane is ready to
   * write and more than one batch (cut by `batch.*`) waits in it, the engine joins the waiting
   * batches, whole and in order, into one write while it stays within these bounds (a single batch
   * is always written, whatever its size). For sinks whose cost is per write (a commit, a round
   * trip): a backlog then becomes fewer, larger writes, and the sink needs no queue of its own.
   * Without it every write is one batch. Read once, when the engine starts driving the sink.
   */
  readonly preferredWrite?: PreferredWrite;
  /**
   * `false`: the sink reads neither `payload` nor `text` of the records it is given, and fails
   * none of them (so no dead letter of it needs a payload); a sink that discards (blackhole). When
   * no sink of a pipeline reads payloads and no tap reader listens, the transform worker threads
   * (`workers`) send no payloads back, only what became of each record, and such records read as
   * `{}`. Absent: the sink reads them.
   */
  readonly readsPayloads?: false;
  /**
   * Called by the engine before the first write; on rejection it is called again after backoff
   * until it resolves or the pipeline stops.
   */
  connect(signal: AbortSignal): Promise<void>;
  /**
   * Writes one batch (or several joined, see `preferredWrite`). Resolve only when every record
   * not listed in `failures` is durable. Throw for a failure of the whole write: a retryable error
   * retries it (so a partial commit must be safe to repeat, which idempotent writes make it), a
   * permanent one dead-letters every record of it. Called with at most `maxInFlight` writes at
   * once; records of one key always in order.
   */
  write(records: readonly SluiceRecord[], signal: AbortSignal): Promise<WriteResult | void>;
  /** Called once after the last write settled. Flush and release. */
  close(): Promise<void>;
}

/** One dead-lettered record, with why and when it failed. */
export interface DeadLetter {
  readonly record: SluiceRecord;
  /** The unparsable input, for records that never became JSON. */
  readonly raw: string | undefined;
  /** The sink that gave up on it, or the stage (`source`, `transform:<type>`) that rejected it. */
  readonly sink: string;
  readonly code: string;
  readonly message: string;
  readonly attempts: number;
  readonly firstFailureAt: number;
  readonly lastFailureAt: number;
}

/**
 * Where an entry stands. `pending`: nobody delivered its record yet. `replayed`: `sluice dlq replay`
 * delivered it. `resolved`: a normal run delivered its record later (a redelivery that succeeded).
 */
export type DeadLetterStatus = "pending" | "replayed" | "resolved";

/** One entry as a store keeps it, for `sluice dlq`. Times are ms since the epoch, `undefined` when not known. */
export interface StoredDeadLetter {
  /** The entry's number in its store: stable, unique, in the order entries were first written. */
  readonly seq: number;
  readonly recordId: string;
  readonly source: string;
  /** The sink that gave up on the record, or the stage (`source:<name>`, `transform:<type>`) that rejected it. */
  readonly sink: string;
  readonly code: string;
  readonly message: string;
  readonly attempts: number;
  readonly firstFailureAt: number | undefined;
  readonly lastFailureAt: number | undefined;
  /** The payload as JSON text (for a sink's entry, as the transforms left it; for a transform's, as the source read it). */
  readonly payload: string | undefined;
  /** The unparsable input, for records that never became JSON. */
  readonly raw: string | undefined;
  readonly status: DeadLetterStatus;
  readonly replayedAt: number | undefined;
  readonly resolvedAt: number | undefined;
}

/** Which entries a `sluice dlq` command works on: every given criterion must hold (a list: any of its values). */
export interface DeadLetterFilter {
  readonly sinks?: readonly string[];
  readonly codes?: readonly string[];
  readonly recordIds?: readonly string[];
  /** Last failure at or after this time, ms since the epoch. */
  readonly since?: number;
  /** Last failure before this time, ms since the epoch. */
  readonly until?: number;
  /** Default: every status. */
  readonly statuses?: readonly DeadLetterStatus[];
  /** At most this many entries, the oldest (lowest `seq`) first. */
  readonly limit?: number;
}

/** A replayed entry's record failed again: what the store records on the entry, which stays `pending`. */
export interface ReplayFailure {
  readonly code: string;
  readonly message: string;
  /** Write attempts of the replay, added to the entry's. */
  readonly attempts: number;
  /** ms since the epoch. */
  readonly at: number;
}

/**
 * What `sluice dlq` needs of a store besides writing: read entries, record a replay's outcome,
 * delete. Every method is called only after {@link DeadLetterStore.open} resolved; a rejection is
 * reported by the command (nothing is retried).
 */
export interface DeadLetterWorkflow {
  /** The entries `filter` selects, oldest first. */
  select(filter: DeadLetterFilter): Promise<StoredDeadLetter[]>;
  /** Marks entries `replayed` at `at` (ms): called once the sink committed their records. */
  markReplayed(seqs: readonly number[], at: number): Promise<void>;
  /** The entry's record failed again on replay: its attempts add up, code, message and last failure are the new ones, it stays `pending`. */
  failedAgain(seq: number, failure: ReplayFailure): Promise<void>;
  /** Deletes the entries `filter` selects; resolves with how many. */
  purge(filter: DeadLetterFilter): Promise<number>;
}

/** Where records go that cannot be delivered. Writes must be durable when they resolve. */
export interface DeadLetterStore {
  /**
   * Called at start; when it rejects, called again before each write until it resolves (a store
   * on a full disk opens once the run has freed room). Resolves once; a rejection leaves nothing open.
   */
  open(): Promise<void>;
  /** Persists entries; the engine retries a rejection with backoff (it never drops a dead letter). */
  write(entries: readonly DeadLetter[]): Promise<void>;
  /**
   * Optional. Called by each sink runner with every batch `sink` committed, on the hot path, after
   * `open` resolved: the store marks `resolved` its pending entries of those record ids and that
   * sink (and of the stages before the sinks, which the record has now passed). Must be cheap when
   * it holds none of the ids (a set lookup per record, nothing when it holds no pending entry of
   * the sink). Best effort: a rejection (or throw) is logged, and the entry stays `pending`; a
   * replay of it is absorbed by the sink's idempotent write.
   */
  committed?(sink: string, records: readonly SluiceRecord[]): void | Promise<void>;
  /** Optional: reading, replay bookkeeping and purging for `sluice dlq`; a store without it is only written. */
  readonly workflow?: DeadLetterWorkflow;
  /** Called once at the end. */
  close(): Promise<void>;
}

/** What a component may need to know of the rest of its pipeline, to refuse a combination in which it cannot keep its promise. */
export interface PipelineShape {
  /** The buffer is the durable disk log (`buffer.durable`), which acks sources once a chunk is on disk. */
  readonly durableBuffer: boolean;
}

/** A component option that cannot work in this pipeline: the key (relative to the component) and why. */
export interface OptionConflict {
  readonly key: string;
  readonly message: string;
}

/** A sink type's own defaults of the engine's `batch` keys (see {@link ComponentDefinition.batchDefaults}). */
export interface BatchDefaults {
  readonly max_records?: number;
  /** Bytes. */
  readonly max_bytes?: number;
  /** ms. */
  readonly max_wait?: number;
}

/**
 * A component type: its name, one-line summary, config schema (with defaults) and factory, in one
 * declaration. `Made` is what `create` returns: the instance, or (a component that loads its
 * implementation on first use, {@link defineLazyComponent}) a promise of it.
 */
export interface ComponentDefinition<Options extends z.ZodObject, Instance, Made extends Instance | Promise<Instance> = Instance | Promise<Instance>> {
  /** The `type:` value in the config. */
  readonly type: string;
  /** One line for docs and `--help`. */
  readonly summary: string;
  /** The component's own config keys (besides `type` and the engine's common keys), strict, with defaults. */
  readonly options: Options;
  /**
   * Builds an instance from validated options. Must not do I/O; connecting happens later. May
   * resolve later: a component whose implementation needs a client library (pg, better-sqlite3,
   * ajv) or HTTP code loads it here with `import()`, so a pipeline that does not use the
   * component never loads it (see "Start-up" in docs/architecture.md).
   */
  create(options: z.output<Options>, ctx: ComponentContext): Made;
  /**
   * Optional, sinks only. The defaults of the engine's `batch` keys for this sink type where they
   * differ from the engine's (`max_wait` in ms, `max_bytes` in bytes): a sink whose every batch
   * becomes a file (parquet) prefers fewer, larger batches. The user's `batch` keys still win.
   */
  readonly batchDefaults?: BatchDefaults;
  /**
   * Optional. Options that the rest of the pipeline makes unkeepable (a source that needs order
   * kept through the buffer, with the durable buffer); checked with the config (`sluice validate`
   * reports them, exit 2) and by the library's `build()`, before anything is created.
   */
  conflicts?(options: z.output<Options>, pipeline: PipelineShape): readonly OptionConflict[];
  /**
   * Optional. What the schema cannot see, checked by `sluice validate` and before `sluice run`: a
   * file that must be there, a module that must load, a schema that must compile. `baseDir` is
   * where the component's relative paths resolve (as {@link ComponentContext.baseDir}). Resolves
   * to every finding (none: fine); never rejects. May run user code (a module's top level).
   */
  check?(options: z.output<Options>, baseDir: string): Promise<readonly CheckFinding[]>;
}

/** A problem {@link ComponentDefinition.check} found: an `error` refuses the config, a `warning` is only said. */
export interface CheckFinding {
  readonly level: "error" | "warning";
  /** The option it is about, relative to the component (`path`); none: the component as a whole. */
  readonly key?: string;
  readonly message: string;
}

export type SourceDefinition<O extends z.ZodObject = z.ZodObject> = ComponentDefinition<O, Source>;
export type TransformDefinition<O extends z.ZodObject = z.ZodObject> = ComponentDefinition<O, Transform>;
export type SinkDefinition<O extends z.ZodObject = z.ZodObject> = ComponentDefinition<O, Sink>;
export type DeadLetterDefinition<O extends z.ZodObject = z.ZodObject> = ComponentDefinition<O, DeadLetterStore>;

/** Declares a component whose factory builds its instance at once, with its options' types inferred. */
export function defineComponent<O extends z.ZodObject, I>(def: ComponentDefinition<O, I, I>): ComponentDefinition<O, I, I> {
  return def;
}

/**
 * Declares a component whose factory loads its implementation (`import()`) before it builds the
 * instance: its options, summary and checks stay available to validate and `sluice components`
 * without loading the client library or server code behind it.
 */
export function defineLazyComponent<O extends z.ZodObject, I>(def: ComponentDefinition<O, I, Promise<I>>): ComponentDefinition<O, I, Promise<I>> {
  return def;
}
