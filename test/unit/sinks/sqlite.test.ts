import { join } from "node:path";
import Database from "better-sqlite3";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { Sink } from "../../../src/components/contracts.js";
import { SluiceError } from "../../../src/core/errors.js";
import { classifySqliteError, loadSqlite } from "../../../src/components/sqlite.js";
import { createSqliteSink, definition, quoteIdentifier, type SqliteSinkSettings } from "../../../src/sinks/sqlite.js";
import { sinkContext, tempDir } from "../../contract/sink-contract.js";
import { FakeClock } from "../../helpers/fake-clock.js";
import { makeRecords } from "../../helpers/records.js";

const signal = new AbortController().signal;

let dir: string;
let remove: () => Promise<void>;
let clock: FakeClock;
const closers: (() => unknown)[] = [];

beforeEach(async () => {
  ({ dir, remove } = await tempDir("sluice-sqlite-sink-"));
  clock = new FakeClock(Date.UTC(2024, 2, 3, 4, 5, 6, 7));
});

afterEach(async () => {
  for (const close of closers.splice(0).reverse()) await close();
  await remove();
});

function database(path = join(dir, "out.db")): Database.Database {
  const db = new Database(path);
  closers.push(() => db.close());
  return db;
}

async function connect(settings: Partial<SqliteSinkSettings> = {}): Promise<Sink> {
  const sink = createSqliteSink({ path: join(dir, "out.db"), table: "records", synchronous: "full", clock, ...settings });
  closers.push(() => sink.close());
  await sink.connect(signal);
  return sink;
}

function ids(db: Database.Database, table = "records"): string[] {
  return (db.prepare(`SELECT id FROM ${quoteIdentifier(table)} ORDER BY id`).all() as { id: string }[]).map((r) => r.id);
}

describe("sqlite sink: table and rows", () => {
  it("creates the table in a WAL database and stores the envelope", async () => {
    const sink = await connect();
    const [withTime, noTime] = [makeRecords(1)[0]!, { ...makeRecords(1, { start: 1, eventTime: false })[0]!, key: undefined }];
    await sink.write([withTime, noTime], signal);

    const db = database();
    expect(db.pragma("journal_mode", { simple: true })).toBe("wal");
    const columns = (db.prepare("PRAGMA table_info(records)").all() as { name: string; pk: number }[]).map((c) => [c.name, c.pk]);
    expect(columns).toEqual([
      ["id", 1],
      ["key", 0],
      ["payload", 0],
      ["event_time", 0],
      ["ingested_at", 0],
    ]);
    expect(db.prepare("SELECT * FROM records ORDER BY id").all()).toEqual([
      {
        id: "r-0",
        key: "sensor-0",
        payload: JSON.stringify(withTime.payload),
        event_time: "2023-12-31T23:59:59.000Z",
        ingested_at: "2024-03-03T04:05:06.007Z",
      },
      { id: "r-1", key: null, payload: JSON.stringify(noTime.payload), event_time: null, ingested_at: "2024-03-03T04:05:06.007Z" },
    ]);
  });

  it("keeps the first copy of an id: a redelivered record with a changed payload does not update it", async () => {
    const sink = await connect();
    const [record] = makeRecords(1);
    await sink.write([record!], signal);
    expect(await sink.write([{ ...record!, payload: { changed: true } }], signal)).toEqual({ failures: [], alreadyPresent: [0] });
    const rows = database().prepare("SELECT payload FROM records").all() as { payload: string }[];
    expect(rows.map((r) => JSON.parse(r.payload) as unknown)).toEqual([record!.payload]);
  });

  it("reports a row breaking a CHECK or NOT NULL as a failure, not as a record already present", async () => {
    database().exec("CREATE TABLE records (id TEXT PRIMARY KEY, key TEXT NOT NULL, payload TEXT CHECK (json_extract(payload, '$.value') >= 0), event_time TEXT, ingested_at TEXT)");
    const sink = await connect();
    const [good, negative, keyless] = makeRecords(3);
    const result = await sink.write([good!, { ...negative!, payload: { ...negative!.payload, value: -1 } }, { ...keyless!, key: undefined }], signal);
    expect(result?.failures?.map((f) => [f.index, f.error.code])).toEqual([
      [1, "ERR_SINK_REJECTED"],
      [2, "ERR_SINK_REJECTED"],
    ]);
    expect(result?.alreadyPresent ?? []).toEqual([]);
    expect(ids(database())).toEqual(["r-0"]);
  });

  it("treats a hostile table name as a name", async () => {
    const table = `a"; drop table x; --`;
    const db = database();
    db.exec("CREATE TABLE x (v TEXT); INSERT INTO x VALUES ('still here')");
    const sink = await connect({ table });
    await sink.write(makeRecords(3), signal);
    expect(db.prepare("SELECT v FROM x").all()).toEqual([{ v: "still here" }]);
    expect(ids(db, table)).toEqual(["r-0", "r-1", "r-2"]);
  });

  it("works with a table that already exists with the expected columns", async () => {
    const db = database();
    db.exec("CREATE TABLE records (id TEXT PRIMARY KEY, key TEXT, payload TEXT, event_time TEXT, ingested_at TEXT, extra TEXT DEFAULT 'x')");
    const sink = await connect();
    await sink.write(makeRecords(2), signal);
    expect(ids(db)).toEqual(["r-0", "r-1"]);
  });

  it("fails connect permanently when an existing table lacks the columns", async () => {
    database().exec("CREATE TABLE records (id TEXT PRIMARY KEY, body TEXT)");
    const sink = createSqliteSink({ path: join(dir, "out.db"), table: "records", synchronous: "full", clock });
    const err = await sink.connect(signal).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(SluiceError);
    expect(err).toMatchObject({ code: "ERR_SINK_CONNECT", retryable: false });
  });
});

describe("sqlite sink: bad-record isolation", () => {
  it("reports the records a trigger rejects by index and commits the rest of the batch", async () => {
    const db = database();
    db.exec(`CREATE TABLE records (id TEXT PRIMARY KEY, key TEXT, payload TEXT, event_time TEXT, ingested_at TEXT);
      CREATE TABLE audit (id TEXT);
      CREATE TRIGGER audit_then_reject BEFORE INSERT ON records BEGIN
        INSERT INTO audit VALUES (NEW.id);
        SELECT RAISE(FAIL, 'bad record') WHERE json_extract(NEW.payload, '$.bad') = 1;
      END;`);
    const sink = await connect();
    const records = makeRecords(10).map((r, i) => (i === 3 || i === 7 ? { ...r, payload: { ...r.payload, bad: 1 } } : r));

    const result = await sink.write(records, signal);
    expect(result?.failures?.map((f) => f.index)).toEqual([3, 7]);
    for (const f of result!.failures!) {
      expect(f.error).toBeInstanceOf(SluiceError);
      expect(f.error).toMatchObject({ code: "ERR_SINK_REJECTED", retryable: false });
      expect(f.error.message).toContain("bad record");
    }
    const good = records.filter((_, i) => i !== 3 && i !== 7).map((r) => r.id);
    expect(ids(db)).toEqual(good.sort());
    // RAISE(FAIL) keeps the trigger's earlier work; the per-record savepoint must undo it.
    expect((db.prepare("SELECT id FROM audit ORDER BY id").all() as { id: string }[]).map((r) => r.id)).toEqual(good.sort());
  });

  it("reports a type mismatch of a STRICT table and a payload JSON cannot hold, each by index", async () => {
    const db = database();
    db.exec("CREATE TABLE records (id TEXT PRIMARY KEY, key INTEGER, payload TEXT, event_time TEXT, ingested_at TEXT) STRICT");
    const sink = await connect();
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    const records = makeRecords(4, { keys: 1 }).map((r, i) =>
      i === 1 ? { ...r, key: "not a number" } : i === 2 ? { ...r, payload: cyclic as never } : { ...r, key: String(100 + i) },
    );
    const result = await sink.write(records, signal);
    expect(result?.failures?.map((f) => [f.index, f.error.code])).toEqual([
      [1, "ERR_SINK_REJECTED"],
      [2, "ERR_SINK_REJECTED"],
    ]);
    expect(ids(db)).toEqual(["r-0", "r-3"]);
  });
});

describe("sqlite sink: errors", () => {
  it("fails a write with retryable ERR_SINK_WRITE while another connection holds the lock, and succeeds after", async () => {
    const sink = await connect({ busyTimeoutMs: 0 });
    const other = database();
    other.exec("BEGIN IMMEDIATE");
    const err = await sink.write(makeRecords(2), signal).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(SluiceError);
    expect(err).toMatchObject({ code: "ERR_SINK_WRITE", retryable: true });
    other.exec("ROLLBACK");
    expect(await sink.write(makeRecords(2), signal)).toEqual({});
    expect(ids(other)).toEqual(["r-0", "r-1"]);
  });

  it.each([
    ["SQLITE_BUSY", "ERR_SINK_WRITE", true],
    ["SQLITE_BUSY_SNAPSHOT", "ERR_SINK_WRITE", true],
    ["SQLITE_LOCKED", "ERR_SINK_WRITE", true],
    ["SQLITE_IOERR_FSYNC", "ERR_SINK_WRITE", true],
    ["SQLITE_FULL", "ERR_SINK_WRITE", true],
    ["SQLITE_CONSTRAINT_CHECK", "ERR_SINK_REJECTED", false],
    ["SQLITE_CONSTRAINT_NOTNULL", "ERR_SINK_REJECTED", false],
    ["SQLITE_MISMATCH", "ERR_SINK_REJECTED", false],
    ["SQLITE_TOOBIG", "ERR_SINK_REJECTED", false],
    ["SQLITE_CORRUPT", "ERR_SINK_WRITE", true],
  ] as const)("classifies %s as %s (retryable %s)", (sqliteCode, code, retryable) => {
    // The module the sink loads: an error is SQLite's only when it is of that module's class.
    const cause = new (loadSqlite().SqliteError)("boom", sqliteCode);
    const err = classifySqliteError(cause);
    expect(err).toMatchObject({ code, retryable });
    expect(err.cause).toBe(cause);
    expect(err.message).toContain(sqliteCode);
  });

  it("passes SluiceErrors through and makes programmer errors permanent ERR_INTERNAL", () => {
    const own = new SluiceError("ERR_SINK_REJECTED", "x");
    expect(classifySqliteError(own)).toBe(own);
    expect(classifySqliteError(new TypeError("bad bind"))).toMatchObject({ code: "ERR_INTERNAL", retryable: false });
  });

  it("refuses to write before connect and after an abort", async () => {
    const sink = createSqliteSink({ path: join(dir, "out.db"), table: "records", synchronous: "full", clock });
    await expect(sink.write(makeRecords(1), signal)).rejects.toMatchObject({ code: "ERR_INTERNAL" });
    await sink.connect(signal);
    closers.push(() => sink.close());
    const aborted = AbortSignal.abort();
    await expect(sink.write(makeRecords(1), aborted)).rejects.toMatchObject({ code: "ERR_ABORTED" });
  });
});

describe("sqlite sink definition", () => {
  it("applies defaults, rejects unknown keys, and resolves the path against ctx.baseDir", async () => {
    expect(definition.options.parse({ path: "db/out.db" })).toEqual({
      path: "db/out.db",
      table: "records",
      journal_mode: "wal",
      synchronous: "full",
    });
    expect(definition.options.safeParse({ path: "x.db", journal_mode: "delete" }).success).toBe(false);
    expect(definition.options.safeParse({ path: "x.db", tabel: "t" }).success).toBe(false);
    expect(definition.options.safeParse({}).success).toBe(false);

    const sink = definition.create(definition.options.parse({ path: "db/out.db", synchronous: "normal" }), sinkContext(dir, clock));
    closers.push(() => sink.close());
    expect(sink.maxInFlight).toBe(1);
    await sink.connect(signal);
    await sink.write(makeRecords(1), signal);
    expect(ids(database(join(dir, "db/out.db")))).toEqual(["r-0"]);
  });
});
