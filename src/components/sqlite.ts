/**
 * What the `sqlite` sink and the `sqlite` dead-letter store share: better-sqlite3 loaded on first
 * use, and the classification of its errors.
 */
import { createRequire } from "node:module";
import type Database from "better-sqlite3";
import { classify, SluiceError, type ErrorCode } from "../core/errors.js";

/** better-sqlite3's constructor, once {@link loadSqlite} has loaded it. */
export type SqliteModule = typeof Database;

const require = createRequire(import.meta.url);

/** The loaded module; undefined until {@link loadSqlite} ran. */
let loaded: SqliteModule | undefined;

/**
 * better-sqlite3 (a native addon), loaded at the first call: a pipeline without a SQLite sink, and
 * without a dead letter to keep, never loads it. Synchronous, so synchronous readers
 * (`readDeadLetters`) can use it too.
 */
export function loadSqlite(): SqliteModule {
  loaded ??= require("better-sqlite3") as SqliteModule;
  return loaded;
}

/** Whether `err` is an error of SQLite's. Before better-sqlite3 is loaded no error can be one. */
export function isSqliteError(err: unknown): err is InstanceType<Database.SqliteError> {
  return loaded !== undefined && err instanceof loaded.SqliteError;
}

const TRANSIENT = /^SQLITE_(BUSY|LOCKED|IOERR|FULL|PROTOCOL|NOMEM|INTERRUPT)/;
const PERMANENT = /^SQLITE_(CONSTRAINT|MISMATCH|TOOBIG|RANGE)/;

/**
 * Wraps a better-sqlite3 error as a {@link SluiceError}, by its (extended) SQLite code:
 * BUSY, LOCKED, IOERR, FULL (and PROTOCOL, NOMEM, INTERRUPT) are retryable `transientCode`;
 * CONSTRAINT, MISMATCH, TOOBIG, RANGE are the data's fault: permanent `permanentCode`. Any other
 * SQLite code (CORRUPT, READONLY, CANTOPEN, ERROR) gets `transientCode` with that code's default
 * retryability, so it is retried within the engine's limits. A non-SQLite error goes through the
 * one classifier (a TypeError stays a permanent ERR_INTERNAL); a SluiceError passes through.
 */
export function classifySqliteError(err: unknown, transientCode: ErrorCode = "ERR_SINK_WRITE", permanentCode: ErrorCode = "ERR_SINK_REJECTED", location?: string): SluiceError {
  if (err instanceof SluiceError) return err;
  if (isSqliteError(err)) {
    const code = err.code;
    const message = `sqlite: ${err.message} (${code})`;
    if (TRANSIENT.test(code)) return new SluiceError(transientCode, message, { cause: err, retryable: true, location });
    if (PERMANENT.test(code)) return new SluiceError(permanentCode, message, { cause: err, retryable: false, location });
    return new SluiceError(transientCode, message, { cause: err, location });
  }
  return classify(err, transientCode);
}
