/**
 * The one catalog of sluice errors. Every error that crosses a component boundary is a
 * {@link SluiceError} with a stable `code`; third-party errors are wrapped where they enter and
 * kept as `cause`. Tests and the dead-letter store rely on the codes, never on messages.
 */

/** Stable error codes, with whether an error of that code is worth retrying by default. */
export const ERROR_CODES = {
  /** The configuration file is missing, unparsable, or fails validation. */
  ERR_CONFIG_INVALID: { retryable: false },
  /** A sink's write failed for a reason that may pass (connection, lock, timeout). */
  ERR_SINK_WRITE: { retryable: true },
  /** A sink rejected a record for a reason that will not pass (bad data, constraint). */
  ERR_SINK_REJECTED: { retryable: false },
  /** A sink could not connect; the engine keeps trying with backoff. */
  ERR_SINK_CONNECT: { retryable: true },
  /** Failure injected by a sink's `chaos` block that a retry can clear. */
  ERR_CHAOS_TRANSIENT: { retryable: true },
  /** Failure injected by a sink's `chaos` block that no retry clears. */
  ERR_CHAOS_PERMANENT: { retryable: false },
  /** A source line or message is not valid JSON (or not a JSON object). */
  ERR_RECORD_MALFORMED: { retryable: false },
  /** A record failed a `validate` transform's JSON Schema. */
  ERR_RECORD_INVALID: { retryable: false },
  /** A `module` transform threw or returned something that is not a payload. */
  ERR_TRANSFORM_FAILED: { retryable: false },
  /** A transform's promise did not settle within its `timeout`; the record is dead-lettered, the run goes on. */
  ERR_TRANSFORM_TIMEOUT: { retryable: false },
  /** A transform split one record into more than its `max_split` records. */
  ERR_TRANSFORM_SPLIT: { retryable: false },
  /** A transform wrote to the read-only view of the envelope it gets (`id`, `key`, `source`, `receivedAt`, ...). */
  ERR_TRANSFORM_ENVELOPE: { retryable: false },
  /**
   * A source could not connect to its service, or lost its connection mid-run (a source that
   * declares `connect`); the engine reconnects with backoff. Permanent (`retryable: false`, e.g.
   * bad credentials, a missing stream with creation off) ends the run.
   */
  ERR_SOURCE_CONNECT: { retryable: true },
  /**
   * A broker delivered a record `max_deliveries` times (redis_streams) or `max_deliver` times
   * (nats_jetstream) without it being committed: a record that keeps failing or keeps crashing
   * workers. It is dead-lettered and acked, so it is not redelivered forever.
   */
  ERR_MAX_DELIVERIES: { retryable: false },
  /** A source failed while reading (file vanished, permission denied). */
  ERR_SOURCE_READ: { retryable: true },
  /** The dead-letter store could not persist an entry (or its file was deleted or replaced while open). */
  ERR_DEAD_LETTER_WRITE: { retryable: true },
  /** A source could not save its progress (a file source's checkpoint): the next run delivers those records again. */
  ERR_CHECKPOINT_WRITE: { retryable: true },
  /** The buffer is full and `when_full: reject` is configured. */
  ERR_BUFFER_FULL: { retryable: true },
  /** The durable buffer could not write or read its log (disk full, I/O error). */
  ERR_BUFFER_IO: { retryable: true },
  /** A directory a pipeline needs (its `data_dir`, the durable buffer's log) is held by another live process or pipeline. */
  ERR_LOCKED: { retryable: false },
  /** The pipeline is stopping and takes no new records. */
  ERR_STOPPING: { retryable: true },
  /** The operation was aborted (shutdown deadline reached). */
  ERR_ABORTED: { retryable: false },
  /** A bug or misuse inside sluice or user code (TypeError, RangeError). Never retried. */
  ERR_INTERNAL: { retryable: false },
} as const satisfies Record<string, { retryable: boolean }>;

/** One of the stable error codes in {@link ERROR_CODES}. */
export type ErrorCode = keyof typeof ERROR_CODES;

/** Options of a {@link SluiceError}: `retryable` overrides the code's default. */
export interface SluiceErrorOptions {
  cause?: unknown;
  retryable?: boolean;
  /** Where the error was found: a config path, `file:line`, a sink name. */
  location?: string;
}

/**
 * An error with a stable code, a retryable flag, an optional location and the original error
 * as `cause`.
 */
export class SluiceError extends Error {
  override readonly name = "SluiceError";
  readonly code: ErrorCode;
  readonly retryable: boolean;
  readonly location: string | undefined;

  constructor(code: ErrorCode, message: string, options: SluiceErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.retryable = options.retryable ?? ERROR_CODES[code].retryable;
    this.location = options.location;
  }

  /** The message, with the location in parentheses when there is one: how a config check reports it. */
  withLocation(): string {
    return this.location === undefined ? this.message : `${this.message} (${this.location})`;
  }
}

/** True for errors that come from a bug rather than the outside world. */
function isProgrammerError(err: unknown): boolean {
  return err instanceof TypeError || err instanceof RangeError || err instanceof ReferenceError || err instanceof SyntaxError;
}

/**
 * The one classifier: turns anything thrown into a {@link SluiceError}. A SluiceError passes
 * through unchanged; programmer errors become permanent `ERR_INTERNAL`; anything else gets
 * `fallback` (usually `ERR_SINK_WRITE`, retryable) with the original kept as `cause`.
 */
export function classify(err: unknown, fallback: ErrorCode = "ERR_SINK_WRITE"): SluiceError {
  if (err instanceof SluiceError) return err;
  if (isProgrammerError(err)) {
    return new SluiceError("ERR_INTERNAL", (err as Error).message, { cause: err });
  }
  const message = err instanceof Error ? err.message : String(err);
  return new SluiceError(fallback, message, { cause: err });
}
