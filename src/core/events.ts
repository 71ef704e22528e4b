/**
 * Typed internal events. The engine and components emit these, one per batch or chunk rather
 * than per record; `observability/metrics.ts` is the one module that maps them to metric names,
 * counters and logs.
 */
export type InternalEvent =
  | { type: "records_received"; source: string; count: number; bytes: number }
  /** `alreadyPresent` of `records` the sink found already stored (a redelivery its idempotent write absorbed). */
  | { type: "records_delivered"; sink: string; records: readonly { readonly receivedAt: number }[]; alreadyPresent: number; now: number }
  /** `firstRecordId` and `message`: the first of the records and its error's message, for the log. */
  | { type: "records_dead_lettered"; sink: string; code: string; count: number; firstRecordId: string; message: string }
  | { type: "records_dropped"; reason: DropReason; count: number }
  | { type: "records_retried"; sink: string; count: number; code: string; message: string; delayMs: number; firstRecordId: string }
  /** Records a sink did not apply because a record at least as new was there first (postgres `upsert_latest`). */
  | { type: "records_late"; sink: string; count: number }
  /** Records every sink is done with; `alreadyPresent` of the `delivered` were already stored in every sink. */
  | { type: "records_completed"; delivered: number; alreadyPresent: number; deadLettered: number }
  | { type: "sink_batch_written"; sink: string; seconds: number }
  | { type: "concurrency_limit"; sink: string; limit: number }
  /** A sink connected (at start, or after failing to), at its `attempt`-th try. */
  | { type: "sink_connected"; sink: string; attempt: number }
  /**
   * A sink's connect attempt failed. A retryable failure is retried with backoff until the sink
   * connects or `connectTimeoutMs` (its `connect_timeout`; undefined: none) passes; a permanent
   * one ends the run. `downSince` is when the first attempt started (clock ms).
   */
  | { type: "sink_connect_failed"; sink: string; attempt: number; downSince: number; code: string; message: string; retryable: boolean; connectTimeoutMs: number | undefined }
  /** A source with `connect` connected (at start, or again after a loss), at its `attempt`-th try since it was last up. */
  | { type: "source_connected"; source: string; attempt: number }
  /**
   * A source's connect attempt failed (`attempt` ≥ 1), or its connection was lost mid-run
   * (`attempt` 0: `run` rejected with a retryable error). Retryable: retried with backoff until it
   * connects or the pipeline stops; permanent: the run ends. `downSince`: when it went down (clock ms).
   */
  | { type: "source_connect_failed"; source: string; attempt: number; downSince: number; code: string; message: string; retryable: boolean }
  | { type: "backpressure"; source: string; seconds: number }
  /**
   * A broker source's backlog, read from its service now and then: `pending` entries delivered to
   * its consumer group (or consumer) and not yet acked, `lag` entries not yet delivered to it
   * (undefined when the service cannot tell).
   */
  | { type: "source_backlog"; source: string; pending: number; lag: number | undefined }
  /** A broker source took over `count` entries that another consumer read and never acked (it died or stalled). */
  | { type: "records_reclaimed"; source: string; count: number }
  /**
   * An ordered broker source's partition leases changed: it holds `owned` partitions now, after
   * taking `acquired` leases (at start, from a worker that died or let them go) and losing `lost`
   * (found expired or held by another worker when renewing or reading).
   */
  | { type: "source_leases"; source: string; owned: number; acquired: number; lost: number }
  /** An ingest request (http source) was answered with `status`. */
  | { type: "http_request"; source: string; status: number }
  /** An http source refused a connection: it had `max_connections` open. */
  | { type: "http_connection_refused"; source: string }
  /** A durable buffer found entries of an earlier run not yet released and queued them first. */
  | { type: "buffer_replayed"; records: number; chunks: number }
  /**
   * A durable buffer found torn, corrupt or missing entries (on open, or reading one back while
   * running), moved their bytes to quarantine and went on. `records`: for an entry read back, its
   * records, which this run counted as received and will never deliver.
   */
  | { type: "buffer_corrupt"; entries: number; bytes: number; reason: string; records?: number }
  /** A durable buffer write failed (disk full, I/O error): the buffer is not ready until a write succeeds. */
  | { type: "buffer_write_failed"; reason: string }
  /** A durable buffer write succeeded after writes had failed. */
  | { type: "buffer_write_recovered" }
  /** Reading a durable buffer entry back failed twice in a row (an I/O error); it is retried, and the buffer is not ready until a read succeeds. */
  | { type: "buffer_read_failed"; reason: string }
  /** A durable buffer read succeeded after reads had failed. */
  | { type: "buffer_read_recovered" }
  /** A dead-letter write failed and is retried (or given up, ending the run): `/health/ready` is false until one succeeds. */
  | { type: "dead_letter_write_failed"; code: string; message: string }
  /** A dead-letter write succeeded after writes had failed. */
  | { type: "dead_letter_write_recovered" }
  | { type: "component_error"; component: string; code: string; message: string }
  /** Records `sluice tap` readers did not get because they read slower than records passed (summed over readers). */
  | { type: "tap_records_dropped"; count: number }
  /** The pipeline started running, or finished (whatever its status): the run's elapsed time. */
  | { type: "pipeline_run"; phase: "started" | "done" };

/**
 * Why records were dropped on purpose. Every drop is one of these and is counted:
 * `buffer_full` (when_full: drop_newest), `filtered` (a module transform returned null).
 */
export type DropReason = "buffer_full" | "filtered";

/** Receives internal events. Must not throw and must be cheap: it runs on the hot path. */
export type EventSink = (event: InternalEvent) => void;

/**
 * What every error line carries: the component (a source, sink or stage name, or `buffer`,
 * `dead_letter`, `pipeline`), the error code, and the id of the first record concerned when the
 * error is about records (a batch that failed: its first record).
 */
export interface ErrorLogFields {
  readonly component: string;
  readonly code: string;
  readonly first_record_id?: string;
  readonly [field: string]: unknown;
}

/**
 * The logging surface components get (a subset of pino's). Library code logs only through this.
 * Error lines must say which component and which code ({@link ErrorLogFields}); repeated warn and
 * error lines with a `code` are rate-limited per component and code (observability/rate-limited-logger.ts).
 */
export interface Logger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: ErrorLogFields, msg?: string): void;
}

/** A logger that discards everything, for library users who pass none. */
export const silentLogger: Logger = {
  debug: () => {},
  info: () => {},
  warn: () => {},
  error: () => {},
};
