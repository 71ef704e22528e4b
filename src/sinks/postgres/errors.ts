/**
 * What a PostgreSQL error means for the `postgres` sink, by SQLSTATE: retry the batch, find the
 * records at fault within it, or fail it whole; and whether the connection can be reused. The
 * one place where `pg`'s errors become {@link SluiceError}s.
 */
import { pg } from "./pg.js";
import { classify, SluiceError, type ErrorCode } from "../../core/errors.js";

/** What a failed statement means for the batch. */
export type ErrorScope =
  /** Worth retrying the whole batch (connection, lock, conflict with another transaction, resources). */
  | "retry"
  /** The data of one or more records: find them within the batch, commit the rest. */
  | "record"
  /** Not the data's fault and not passing (missing table, privileges, a bug): fail the batch as a whole. */
  | "batch";

const RETRYABLE_SQLSTATES = new Set(["57P01", "57P02", "57P03", "57014", "40001", "40P01", "40003", "55P03", "55006", "25006"]);
const RETRYABLE_CLASSES = new Set(["08", "53", "58"]);
/** Errors raised by one row's values or by constraints and triggers checked per row. */
const RECORD_CLASSES = new Set(["22", "23", "27", "2F", "38", "39", "44", "P0"]);
const RECORD_SQLSTATES = new Set(["21000", "54000"]);
const PERMANENT_CLASSES = new Set(["0A", "28", "3D", "3F", "42"]);

export function sqlstate(err: unknown): string | undefined {
  return err instanceof pg.DatabaseError && typeof err.code === "string" ? err.code : undefined;
}

export function scopeOf(err: unknown): ErrorScope {
  const code = sqlstate(err);
  if (code === undefined) {
    if (err instanceof SluiceError) return err.retryable ? "retry" : "batch";
    return classify(err).code === "ERR_INTERNAL" ? "batch" : "retry";
  }
  const cls = code.slice(0, 2);
  if (RETRYABLE_SQLSTATES.has(code) || RETRYABLE_CLASSES.has(cls)) return "retry";
  if (RECORD_SQLSTATES.has(code) || RECORD_CLASSES.has(cls)) return "record";
  if (PERMANENT_CLASSES.has(cls)) return "batch";
  // An SQLSTATE this table does not know: retried within the engine's limits, then dead-lettered.
  return "retry";
}

/**
 * True when the connection that raised `err` must not be reused: the socket failed, the server
 * ended the session (FATAL), or the server turned read-only (a failover: a new connection may reach
 * the new primary).
 */
export function connectionLost(err: unknown): boolean {
  if (err instanceof pg.DatabaseError) {
    return err.severity === "FATAL" || err.severity === "PANIC" || err.code?.startsWith("08") === true || err.code === "25006" || err.code?.startsWith("57P") === true;
  }
  return !(err instanceof SluiceError) && classify(err).code !== "ERR_INTERNAL";
}

/**
 * Wraps anything the `pg` driver throws as a {@link SluiceError}, by SQLSTATE:
 *
 * - retryable `transientCode`: connection loss (class 08, `ECONNRESET`, `ECONNREFUSED`, `EPIPE`,
 *   "Connection terminated"), 57P01 admin_shutdown, 57P02 crash_shutdown, 57P03
 *   cannot_connect_now, 57014 query_canceled, 40001 serialization_failure, 40P01 deadlock, 53xxx
 *   insufficient resources (53300 too_many_connections), 55P03 lock_not_available, 55006
 *   object_in_use, 25006 read_only (a failover in progress), 58xxx system errors;
 * - permanent `permanentCode`, the data's fault: class 22 (bad values), class 23 (NOT NULL, CHECK,
 *   foreign key, unique), 21000, 54000 (a value too large for an index), trigger errors (P0xxx,
 *   2Fxxx, 38xxx, 39xxx), 27000, 44000;
 * - permanent `permanentCode`, the setup's fault: class 42 (missing table or column, 42804
 *   datatype mismatch, privileges), 0A, 28, 3D, 3F.
 *
 * The message is `postgres: <PostgreSQL's message> (SQLSTATE <code>)`. An SQLSTATE not listed is
 * retryable. A SluiceError passes through; a programmer error (TypeError) becomes a permanent
 * `ERR_INTERNAL`; any other error is retryable.
 */
export function classifyPostgresError(err: unknown, transientCode: ErrorCode = "ERR_SINK_WRITE", permanentCode: ErrorCode = "ERR_SINK_REJECTED", location?: string): SluiceError {
  if (err instanceof SluiceError) return err;
  const code = sqlstate(err);
  if (code !== undefined) {
    const message = `postgres: ${(err as Error).message} (SQLSTATE ${code})`;
    const retryable = scopeOf(err) === "retry";
    return new SluiceError(retryable ? transientCode : permanentCode, message, { cause: err, retryable, location });
  }
  const base = classify(err, transientCode);
  if (base.code === "ERR_INTERNAL") return base;
  // Socket errors (ECONNRESET, ECONNREFUSED, EPIPE), "Connection terminated", pool timeouts.
  const errno = (err as NodeJS.ErrnoException | undefined)?.code;
  const message = `postgres: ${base.message}${typeof errno === "string" && !base.message.includes(errno) ? ` (${errno})` : ""}`;
  return new SluiceError(transientCode, message, { cause: err, retryable: true, location });
}

export function abortedError(signal: AbortSignal): SluiceError {
  return new SluiceError("ERR_ABORTED", "postgres sink: aborted", { cause: signal.reason });
}
