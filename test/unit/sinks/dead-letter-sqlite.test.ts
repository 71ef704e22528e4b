import { existsSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import Database from "better-sqlite3";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { DeadLetter } from "../../../src/components/contracts.js";
import { createSqliteDeadLetterStore, definition, readDeadLetters } from "../../../src/sinks/dead-letter-sqlite.js";
import { sinkContext, tempDir } from "../../contract/sink-contract.js";
import { FakeClock } from "../../helpers/fake-clock.js";
import { makeRecords } from "../../helpers/records.js";

let dir: string;
let remove: () => Promise<void>;

beforeEach(async () => {
  ({ dir, remove } = await tempDir("sluice-dlq-"));
});

afterEach(async () => {
  await remove();
});

function letters(): DeadLetter[] {
  const [a, b] = makeRecords(2);
  const t0 = Date.UTC(2024, 4, 5, 6, 7, 8, 9);
  return [
    {
      record: a!,
      raw: undefined,
      sink: "warehouse",
      code: "ERR_SINK_REJECTED",
      message: `constraint failed: "quotes" and 'ünïcödé' 🚀`,
      attempts: 3,
      firstFailureAt: t0,
      lastFailureAt: t0 + 1500,
    },
    {
      record: { ...b!, payload: {} },
      raw: "{not json\u0000",
      sink: "source",
      code: "ERR_RECORD_MALFORMED",
      message: "Unexpected token n",
      attempts: 0,
      firstFailureAt: t0,
      lastFailureAt: t0,
    },
  ];
}

describe("sqlite dead-letter store", () => {
  it("round-trips entries with every field, in order, across close and reopen", async () => {
    const path = join(dir, "nested", "dlq.db");
    const store = createSqliteDeadLetterStore(path);
    await store.open();
    const [first, second] = letters();
    await store.write([first!]);
    await store.write([]);
    await store.close();

    const reopened = createSqliteDeadLetterStore(path);
    await reopened.open();
    await reopened.write([second!]);
    // Readable while the store is still open (WAL).
    const rows = readDeadLetters(path);
    await reopened.close();

    expect(rows).toEqual([
      {
        seq: 1,
        record_id: "r-0",
        source: "test",
        sink: "warehouse",
        code: "ERR_SINK_REJECTED",
        message: `constraint failed: "quotes" and 'ünïcödé' 🚀`,
        attempts: 3,
        first_failure_at: "2024-05-05T06:07:08.009Z",
        last_failure_at: "2024-05-05T06:07:09.509Z",
        payload: JSON.stringify(first!.record.payload),
        raw: null,
        status: "pending",
        replayed_at: null,
        resolved_at: null,
      },
      {
        seq: 2,
        record_id: "r-1",
        source: "test",
        sink: "source",
        code: "ERR_RECORD_MALFORMED",
        message: "Unexpected token n",
        attempts: 0,
        first_failure_at: "2024-05-05T06:07:08.009Z",
        last_failure_at: "2024-05-05T06:07:08.009Z",
        payload: "{}",
        raw: "{not json\u0000",
        status: "pending",
        replayed_at: null,
        resolved_at: null,
      },
    ]);
    expect(readDeadLetters(path)).toEqual(rows);
  });

  it("creates the documented table in a WAL database at its first write, not at open", async () => {
    const path = join(dir, "dlq.db");
    const store = createSqliteDeadLetterStore(path);
    await store.open();
    // Nothing to keep yet: no file, and better-sqlite3 need not be loaded (a run that dead-letters nothing).
    expect(existsSync(path)).toBe(false);
    await store.write([]);
    expect(existsSync(path)).toBe(false);
    await store.write([letters()[0]!]);
    await store.close();
    const db = new Database(path, { readonly: true });
    try {
      expect(db.pragma("journal_mode", { simple: true })).toBe("wal");
      const columns = (db.prepare("PRAGMA table_info(dead_letters)").all() as { name: string; type: string }[]).map((c) => `${c.name} ${c.type}`);
      expect(columns).toEqual([
        "seq INTEGER",
        "record_id TEXT",
        "source TEXT",
        "sink TEXT",
        "code TEXT",
        "message TEXT",
        "attempts INTEGER",
        "first_failure_at TEXT",
        "last_failure_at TEXT",
        "payload TEXT",
        "raw TEXT",
        "status TEXT",
        "replayed_at TEXT",
        "resolved_at TEXT",
      ]);
    } finally {
      db.close();
    }
  });

  it("keeps one entry per record and sink: a rerun adds its attempts and newest error, the first failure time stays", async () => {
    const path = join(dir, "dlq.db");
    const [entry, malformed] = letters();
    const later = Date.UTC(2024, 4, 6);
    const store = createSqliteDeadLetterStore(path);
    await store.open();
    await store.write([entry!, malformed!]);
    await store.close();

    // The next run: the same record fails again in the same sink, once more in another sink, and the
    // same input is malformed again at the source stage.
    const rerun = createSqliteDeadLetterStore(path);
    await rerun.open();
    const again = { ...entry!, code: "ERR_SINK_WRITE", message: "gave up again", attempts: 2, firstFailureAt: later, lastFailureAt: later + 10 };
    await rerun.write([again, { ...entry!, sink: "archive" }, { ...malformed!, firstFailureAt: later, lastFailureAt: later }]);
    await rerun.close();

    const rows = readDeadLetters(path);
    expect(rows.map((r) => [r.seq, r.record_id, r.sink])).toEqual([
      [1, "r-0", "warehouse"],
      [2, "r-1", "source"],
      [4, "r-0", "archive"],
    ]);
    expect(rows[0]).toMatchObject({
      code: "ERR_SINK_WRITE",
      message: "gave up again",
      attempts: 5,
      first_failure_at: "2024-05-05T06:07:08.009Z",
      last_failure_at: "2024-05-06T00:00:00.010Z",
    });
    expect(rows[1]).toMatchObject({ attempts: 0, first_failure_at: "2024-05-05T06:07:08.009Z", last_failure_at: "2024-05-06T00:00:00.000Z" });
  });

  it("migrates a store of the first schema on open: the entries of one record and sink become one", async () => {
    const path = join(dir, "dlq.db");
    const old = new Database(path);
    old.exec(`CREATE TABLE dead_letters (seq INTEGER PRIMARY KEY AUTOINCREMENT, record_id TEXT, source TEXT, sink TEXT, code TEXT,
      message TEXT, attempts INTEGER, first_failure_at TEXT, last_failure_at TEXT, payload TEXT, raw TEXT)`);
    const insert = old.prepare("INSERT INTO dead_letters (record_id, source, sink, code, message, attempts, first_failure_at, last_failure_at, payload, raw) VALUES (?, 'src', ?, ?, ?, ?, ?, ?, '{}', NULL)");
    insert.run("a", "db", "ERR_SINK_WRITE", "first run", 3, "2024-01-01T00:00:00.000Z", "2024-01-01T00:00:05.000Z");
    insert.run("b", "db", "ERR_SINK_REJECTED", "only once", 1, "2024-01-01T00:00:01.000Z", "2024-01-01T00:00:01.000Z");
    insert.run("a", "db", "ERR_SINK_REJECTED", "second run", 2, "2024-01-02T00:00:00.000Z", "2024-01-02T00:00:03.000Z");
    insert.run("a", "transform:validate", "ERR_VALIDATION", "not valid", 0, "2024-01-01T00:00:00.000Z", "2024-01-01T00:00:00.000Z");
    insert.run("a", "db", "ERR_SINK_REJECTED", "third run", 1, "2024-01-03T00:00:00.000Z", "2024-01-03T00:00:00.000Z");
    old.close();

    const store = createSqliteDeadLetterStore(path);
    await store.open();
    await store.write([{ ...letters()[0]!, record: { ...letters()[0]!.record, id: "b" }, sink: "db", attempts: 4 }]);
    await store.close();
    // Opened again: already migrated, nothing changes.
    const reopened = createSqliteDeadLetterStore(path);
    await reopened.open();
    await reopened.close();

    expect(readDeadLetters(path).map(({ seq, record_id, sink, message, attempts, first_failure_at, last_failure_at }) => ({ seq, record_id, sink, message, attempts, first_failure_at, last_failure_at }))).toEqual([
      { seq: 2, record_id: "b", sink: "db", message: `constraint failed: "quotes" and 'ünïcödé' 🚀`, attempts: 5, first_failure_at: "2024-01-01T00:00:01.000Z", last_failure_at: "2024-05-05T06:07:09.509Z" },
      { seq: 4, record_id: "a", sink: "transform:validate", message: "not valid", attempts: 0, first_failure_at: "2024-01-01T00:00:00.000Z", last_failure_at: "2024-01-01T00:00:00.000Z" },
      { seq: 5, record_id: "a", sink: "db", message: "third run", attempts: 6, first_failure_at: "2024-01-01T00:00:00.000Z", last_failure_at: "2024-01-03T00:00:00.000Z" },
    ]);
  });

  it("keeps an entry whose payload JSON cannot hold, and one with an invalid time", async () => {
    const path = join(dir, "dlq.db");
    const store = createSqliteDeadLetterStore(path);
    await store.open();
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    const [entry] = letters();
    await store.write([{ ...entry!, record: { ...entry!.record, payload: cyclic as never }, firstFailureAt: Number.NaN }]);
    await store.close();
    const [row] = readDeadLetters(path);
    expect(row).toMatchObject({ record_id: "r-0", first_failure_at: null });
    expect(JSON.parse(row!.payload!)).toHaveProperty("unserializable_payload");
  });

  it("refuses a write before open with ERR_INTERNAL; returns [] for a store that was never created", async () => {
    const store = createSqliteDeadLetterStore(join(dir, "dlq.db"));
    await expect(store.write(letters())).rejects.toMatchObject({ code: "ERR_INTERNAL" });
    expect(readDeadLetters(join(dir, "missing.db"))).toEqual([]);
  });

  it("returns [] for a database file whose table is not created yet (a store being created)", () => {
    const path = join(dir, "empty.db");
    new Database(path).close();
    expect(readDeadLetters(path)).toEqual([]);
  });

  it.each([
    ["the database", "", "deleted"],
    ["its -wal", "-wal", "deleted"],
    ["its -shm", "-shm", "deleted"],
    ["the database", "", "replaced"],
  ])("refuses to report a write durable once %s was %s, until the very file is back", async (_what, suffix, how) => {
    const path = join(dir, "dlq.db");
    const store = createSqliteDeadLetterStore(path);
    await store.open();
    const [first, second] = letters();
    await store.write([first!]);
    const file = `${path}${suffix}`;
    renameSync(file, `${file}.moved`);
    if (how === "replaced") writeFileSync(file, "");
    const refused = { code: "ERR_DEAD_LETTER_WRITE", retryable: true, location: path, message: expect.stringContaining(`${file} was ${how === "deleted" ? "deleted" : "replaced by another file"}`) };
    await expect(store.write([second!])).rejects.toMatchObject(refused);
    await expect(store.write([second!])).rejects.toMatchObject(refused);
    rmSync(file, { force: true });
    renameSync(`${file}.moved`, file);
    await store.write([second!]);
    await store.close();
    expect(readDeadLetters(path).map((r) => r.record_id)).toEqual(["r-0", "r-1"]);
  });

  it("wraps an unopenable path as retryable ERR_DEAD_LETTER_WRITE", async () => {
    // A directory where the database file should be: SQLite cannot open it.
    const store = createSqliteDeadLetterStore(dir);
    await expect(store.open()).rejects.toMatchObject({ code: "ERR_DEAD_LETTER_WRITE", retryable: true });
  });
});

describe("sqlite dead-letter store: status, resolved marking and the dlq workflow", () => {
  /** The schema main had before statuses: the keyed table, no status columns. */
  function currentSchemaDatabase(path: string): void {
    const old = new Database(path);
    old.pragma("journal_mode = WAL");
    old.exec(`CREATE TABLE dead_letters (seq INTEGER PRIMARY KEY AUTOINCREMENT, record_id TEXT, source TEXT, sink TEXT, code TEXT,
      message TEXT, attempts INTEGER, first_failure_at TEXT, last_failure_at TEXT, payload TEXT, raw TEXT);
      CREATE UNIQUE INDEX dead_letters_record_sink ON dead_letters (record_id, sink);`);
    const insert = old.prepare("INSERT INTO dead_letters (record_id, source, sink, code, message, attempts, first_failure_at, last_failure_at, payload, raw) VALUES (?, 'src', ?, 'ERR_SINK_REJECTED', 'no', 2, ?, ?, '{\"v\":1}', NULL)");
    insert.run("a", "db", "2024-01-01T00:00:00.000Z", "2024-01-01T00:00:05.000Z");
    insert.run("b", "db", "2024-01-02T00:00:00.000Z", "2024-01-02T00:00:00.000Z");
    insert.run("a", "transform:validate", "2024-01-01T00:00:00.000Z", "2024-01-01T00:00:00.000Z");
    old.close();
  }

  it("migrates a database of the current schema: status columns added, every row pending and still selectable", async () => {
    const path = join(dir, "dlq.db");
    currentSchemaDatabase(path);
    const store = createSqliteDeadLetterStore(path);
    await store.open();
    const selected = await store.workflow!.select({});
    expect(selected.map((e) => [e.seq, e.recordId, e.sink, e.status, e.attempts, e.payload])).toEqual([
      [1, "a", "db", "pending", 2, '{"v":1}'],
      [2, "b", "db", "pending", 2, '{"v":1}'],
      [3, "a", "transform:validate", "pending", 2, '{"v":1}'],
    ]);
    // A rerun still updates the migrated row (the key survived) and keeps it pending.
    await store.write([{ ...letters()[0]!, record: { ...letters()[0]!.record, id: "b" }, sink: "db", attempts: 1 }]);
    await store.close();
    const reopened = createSqliteDeadLetterStore(path);
    await reopened.open();
    await reopened.close();
    const rows = readDeadLetters(path);
    expect(rows.map((r) => [r.seq, r.status, r.attempts, r.replayed_at, r.resolved_at])).toEqual([
      [1, "pending", 2, null, null],
      [2, "pending", 3, null, null],
      [3, "pending", 2, null, null],
    ]);
    const db = new Database(path, { readonly: true });
    expect(db.prepare("SELECT name FROM sqlite_master WHERE type = 'index' ORDER BY name").all()).toEqual([{ name: "dead_letters_record_sink" }, { name: "dead_letters_status" }]);
    db.close();
  });

  it("marks pending entries of a committed record resolved: that sink's and the stages', not another sink's", async () => {
    const path = join(dir, "dlq.db");
    currentSchemaDatabase(path);
    const clock = new FakeClock(Date.UTC(2025, 0, 1));
    const store = createSqliteDeadLetterStore(path, () => clock.now());
    await store.open();
    const records = makeRecords(3).map((r, i) => ({ ...r, id: ["a", "b", "zzz"][i]! }));
    // Sink "other" holds no pending entry: nothing happens.
    await store.committed!("other", records);
    await store.committed!("db", records.slice(0, 1));
    let rows = readDeadLetters(path);
    expect(rows.map((r) => [r.record_id, r.sink, r.status, r.resolved_at])).toEqual([
      ["a", "db", "resolved", "2025-01-01T00:00:00.000Z"],
      ["b", "db", "pending", null],
      ["a", "transform:validate", "resolved", "2025-01-01T00:00:00.000Z"],
    ]);
    // Written after the pending ids were loaded: known too.
    await store.write([{ ...letters()[0]!, record: records[2]!, sink: "db" }]);
    clock.advance(1000);
    await store.committed!("db", records);
    rows = readDeadLetters(path);
    expect(rows.map((r) => [r.record_id, r.status, r.resolved_at])).toEqual([
      ["a", "resolved", "2025-01-01T00:00:00.000Z"],
      ["b", "resolved", "2025-01-01T00:00:01.000Z"],
      ["a", "resolved", "2025-01-01T00:00:00.000Z"],
      ["zzz", "resolved", "2025-01-01T00:00:01.000Z"],
    ]);
    // Dead-lettered again later: pending again, its resolution forgotten.
    await store.write([{ ...letters()[0]!, record: records[1]!, sink: "db" }]);
    expect(readDeadLetters(path)[1]).toMatchObject({ record_id: "b", status: "pending", resolved_at: null });
    await store.close();
  });

  it("selects by every filter, marks replayed, records a failure again, and purges", async () => {
    const path = join(dir, "dlq.db");
    currentSchemaDatabase(path);
    const store = createSqliteDeadLetterStore(path);
    await store.open();
    const w = store.workflow!;
    const seqs = async (f: Parameters<typeof w.select>[0]) => (await w.select(f)).map((e) => e.seq);
    expect(await seqs({ sinks: ["db"], recordIds: ["a"] })).toEqual([1]);
    expect(await seqs({ since: Date.parse("2024-01-01T00:00:05.000Z") })).toEqual([1, 2]);
    expect(await seqs({ until: Date.parse("2024-01-01T00:00:05.000Z") })).toEqual([3]);
    expect(await seqs({ codes: ["ERR_OTHER"] })).toEqual([]);
    expect(await seqs({ sinks: [] })).toEqual([]);
    expect(await seqs({ limit: 2 })).toEqual([1, 2]);

    await w.markReplayed([1], Date.UTC(2025, 0, 1));
    await w.failedAgain(2, { code: "ERR_SINK_WRITE", message: "again", attempts: 3, at: Date.UTC(2025, 0, 2) });
    const [one, two] = await w.select({ recordIds: ["a", "b"], sinks: ["db"] });
    expect(one).toMatchObject({ status: "replayed", replayedAt: Date.UTC(2025, 0, 1) });
    expect(two).toMatchObject({ status: "pending", attempts: 5, code: "ERR_SINK_WRITE", message: "again", lastFailureAt: Date.UTC(2025, 0, 2), firstFailureAt: Date.parse("2024-01-02T00:00:00.000Z") });
    expect(await seqs({ statuses: ["pending"] })).toEqual([2, 3]);

    expect(await w.purge({ statuses: ["replayed", "resolved"] })).toBe(1);
    expect(await w.purge({ limit: 1 })).toBe(1);
    expect(await seqs({})).toEqual([3]);
    await store.close();
  });
});

describe("sqlite dead-letter definition", () => {
  it("defaults to <data_dir>/dlq.db and resolves a given path against ctx.baseDir", async () => {
    const ctx = sinkContext(dir, new FakeClock());
    expect(ctx.dataDir).not.toBe(ctx.baseDir);
    const byDefault = definition.create(definition.options.parse({}), ctx);
    await byDefault.open();
    await byDefault.write(letters().slice(0, 1));
    await byDefault.close();
    expect(readDeadLetters(join(dir, "data", "dlq.db"))).toHaveLength(1);

    const given = definition.create(definition.options.parse({ path: "elsewhere/dead.db" }), ctx);
    await given.open();
    await given.write(letters());
    await given.close();
    expect(readDeadLetters(join(dir, "elsewhere", "dead.db"))).toHaveLength(2);
    expect(definition.options.safeParse({ path: "x.db", table: "t" }).success).toBe(false);
  });
});
