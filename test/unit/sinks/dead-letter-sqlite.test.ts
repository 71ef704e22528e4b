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
      },
    ]);
    expect(readDeadLetters(path)).toEqual(rows);
  });

  it("creates the documented table in a WAL database", async () => {
    const path = join(dir, "dlq.db");
    const store = createSqliteDeadLetterStore(path);
    await store.open();
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
      ]);
    } finally {
      db.close();
    }
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

  it("wraps an unopenable path as retryable ERR_DEAD_LETTER_WRITE", async () => {
    // A directory where the database file should be: SQLite cannot open it.
    const store = createSqliteDeadLetterStore(dir);
    await expect(store.open()).rejects.toMatchObject({ code: "ERR_DEAD_LETTER_WRITE", retryable: true });
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
