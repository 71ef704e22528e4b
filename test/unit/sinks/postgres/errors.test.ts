/** The `postgres` sink's SQLSTATE table, without a server: `pg`'s own error class, built by hand. */
import pg from "pg";
import { describe, expect, it } from "vitest";
import { SluiceError } from "../../../../src/core/errors.js";
import { classifyPostgresError, connectionLost, scopeOf } from "../../../../src/sinks/postgres/errors.js";

function dbError(code: string, message = `failure ${code}`, severity = "ERROR"): pg.DatabaseError {
  const err = new pg.DatabaseError(message, message.length, "error");
  err.code = code;
  err.severity = severity;
  return err;
}

function errnoError(code: string): NodeJS.ErrnoException {
  return Object.assign(new Error(`connect ${code} 127.0.0.1:5432`), { code });
}

describe("classifyPostgresError", () => {
  const retryable: [string, unknown][] = [
    ["08006 connection_failure", dbError("08006")],
    ["08001 unable to connect", dbError("08001")],
    ["57P01 admin_shutdown (FATAL)", dbError("57P01", "terminating connection due to administrator command", "FATAL")],
    ["57P02 crash_shutdown", dbError("57P02")],
    ["57P03 cannot_connect_now", dbError("57P03")],
    ["40001 serialization_failure", dbError("40001")],
    ["40P01 deadlock_detected", dbError("40P01")],
    ["53300 too_many_connections", dbError("53300")],
    ["53100 disk_full", dbError("53100")],
    ["55P03 lock_not_available", dbError("55P03")],
    ["25006 read_only_sql_transaction (failover)", dbError("25006")],
    ["an SQLSTATE not in the table", dbError("XX999")],
    ["ECONNRESET", errnoError("ECONNRESET")],
    ["ECONNREFUSED", errnoError("ECONNREFUSED")],
    ["EPIPE", errnoError("EPIPE")],
    ["Connection terminated unexpectedly", new Error("Connection terminated unexpectedly")],
  ];
  it.each(retryable)("%s is a retryable ERR_SINK_WRITE", (_name, err) => {
    const e = classifyPostgresError(err, "ERR_SINK_WRITE", "ERR_SINK_REJECTED", "postgres t");
    expect([e.code, e.retryable, e.location]).toEqual(["ERR_SINK_WRITE", true, "postgres t"]);
    expect(e.cause).toBe(err);
    const code = (err as { code?: string }).code;
    if (code !== undefined) expect(e.message).toContain(code);
  });

  const permanent: [string, pg.DatabaseError][] = [
    ["22P02 invalid_text_representation", dbError("22P02", 'invalid input syntax for type integer: "abc"')],
    ["22021 bad byte (NUL)", dbError("22021")],
    ["22P05 untranslatable (\\u0000 in jsonb)", dbError("22P05")],
    ["23502 not_null_violation", dbError("23502")],
    ["23514 check_violation", dbError("23514")],
    ["23503 foreign_key_violation", dbError("23503")],
    ["23505 unique_violation (not on id)", dbError("23505")],
    ["42804 datatype_mismatch", dbError("42804")],
    ["42P01 undefined_table", dbError("42P01")],
    ["P0001 raise_exception (a trigger)", dbError("P0001")],
  ];
  it.each(permanent)("%s is a permanent ERR_SINK_REJECTED naming the SQLSTATE and PostgreSQL's message", (_name, err) => {
    const e = classifyPostgresError(err);
    expect([e.code, e.retryable]).toEqual(["ERR_SINK_REJECTED", false]);
    expect(e.message).toBe(`postgres: ${err.message} (SQLSTATE ${err.code})`);
  });

  it("keeps programmer errors permanent ERR_INTERNAL and passes SluiceErrors through", () => {
    expect(classifyPostgresError(new TypeError("x is not a function"))).toMatchObject({ code: "ERR_INTERNAL", retryable: false });
    const own = new SluiceError("ERR_ABORTED", "stop");
    expect(classifyPostgresError(own)).toBe(own);
  });

  it("uses the codes it is given (connect errors)", () => {
    expect(classifyPostgresError(dbError("57P03"), "ERR_SINK_CONNECT", "ERR_SINK_CONNECT")).toMatchObject({ code: "ERR_SINK_CONNECT", retryable: true });
    expect(classifyPostgresError(dbError("42P10"), "ERR_SINK_CONNECT", "ERR_SINK_CONNECT")).toMatchObject({ code: "ERR_SINK_CONNECT", retryable: false });
  });
});

describe("scopeOf: what a failed statement means for the batch", () => {
  it.each([
    ["22P02", "record"],
    ["23505", "record"],
    ["21000", "record"],
    ["54000", "record"],
    ["P0001", "record"],
    ["2F005", "record"],
    ["42P01", "batch"],
    ["28P01", "batch"],
    ["0A000", "batch"],
    ["40P01", "retry"],
    ["57014", "retry"],
    ["08006", "retry"],
    ["XX000", "retry"],
  ] as const)("SQLSTATE %s: %s", (code, scope) => {
    expect(scopeOf(dbError(code))).toBe(scope);
  });

  it("a socket error is retried, a programmer error and a permanent SluiceError fail the batch", () => {
    expect(scopeOf(errnoError("ECONNRESET"))).toBe("retry");
    expect(scopeOf(new TypeError("bug"))).toBe("batch");
    expect(scopeOf(new SluiceError("ERR_SINK_REJECTED", "no"))).toBe("batch");
    expect(scopeOf(new SluiceError("ERR_SINK_WRITE", "again"))).toBe("retry");
  });
});

describe("connectionLost: whether the connection may go back to the pool", () => {
  it.each([
    ["a FATAL error", dbError("57P01", "terminating", "FATAL"), true],
    ["class 08", dbError("08006"), true],
    ["25006 read-only (a failover)", dbError("25006"), true],
    ["57P03 starting up", dbError("57P03"), true],
    ["a bad value", dbError("22P02"), false],
    ["a duplicate id", dbError("23505"), false],
    ["a socket error", errnoError("EPIPE"), true],
    ["a programmer error", new TypeError("bug"), false],
    ["sluice's own error", new SluiceError("ERR_ABORTED", "stop"), false],
  ])("%s: %s", (_name, err, lost) => {
    expect(connectionLost(err)).toBe(lost);
  });
});
