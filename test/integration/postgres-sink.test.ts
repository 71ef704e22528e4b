/**
 * The `postgres` sink against the real PostgreSQL (issue #3): idempotency across batches and runs
 * on both insert write paths, upsert_latest with shuffled versions and the late count, bad records
 * found within a batch (and in few statements), hostile identifiers, typed columns, connection loss
 * and abort, and a CLI run file -> postgres with the bad rows in the dead-letter store.
 *
 * Each test writes its own tables (random suffix) and drops them. Skipped with a printed reason
 * when PostgreSQL is unreachable, unless SLUICE_REQUIRE_SERVICES=1, which makes that a failure.
 * The error classifier and the COPY encoding are tested without a server in test/unit/sinks/postgres/.
 */
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import pg from "pg";
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import type { RecordFailure, Sink, WriteResult } from "../../src/components/contracts.js";
import { SluiceError } from "../../src/core/errors.js";
import { silentLogger, type InternalEvent } from "../../src/core/events.js";
import { mulberry32 } from "../../src/core/random.js";
import type { JsonObject, SluiceRecord } from "../../src/core/record.js";
import { validateConfig } from "../../src/config/schema.js";
import { Metrics } from "../../src/observability/metrics.js";
import { readDeadLetters } from "../../src/sinks/dead-letter-sqlite.js";
import { definition, type PostgresSinkSettings } from "../../src/sinks/postgres/options.js";
import { createPostgresSink } from "../../src/sinks/postgres/sink.js";
import { makeRecords } from "../helpers/records.js";
import { requireService } from "../helpers/services.js";

const ROOT = resolve(import.meta.dirname, "../..");
const ENTRY = join(ROOT, "src/cli/entry.ts");
// tsx by absolute URL: `--import tsx` would resolve it from the child's cwd, a temp dir.
const TSX = pathToFileURL(createRequire(import.meta.url).resolve("tsx")).href;

const PG_URL = process.env.SLUICE_PG_URL ?? "postgres://postgres@127.0.0.1:5432/test";
const address = new URL(PG_URL);
const hasPostgres = await requireService("PostgreSQL", address.hostname, Number(address.port || 5432));

const signal = new AbortController().signal;

describe("postgres sink options", () => {
  const parse = (o: object) => definition.options.safeParse({ url: "postgres://x@h/db", table: "t", ...o });

  it("applies the defaults", () => {
    expect(parse({}).data).toEqual({ url: "postgres://x@h/db", table: "t", pool_size: 2, create_table: true, columns: {}, mode: "insert" });
  });

  it.each([
    ["an unknown key", { tabel: "x" }, "tabel"],
    ["a mapped column named like a base column", { columns: { payload: { field: "p", type: "jsonb" } } }, "columns.payload"],
    ["a column type outside the list", { columns: { n: { field: "n", type: "int4" } } }, "columns.n.type"],
    ["version_field without upsert_latest", { version_field: "v" }, "version_field"],
    ["key_column without upsert_latest", { key_column: "key" }, "key_column"],
    ["key_column that is not a column", { mode: "upsert_latest", key_column: "device" }, "key_column"],
    ["a version column clashing with version_field's", { mode: "upsert_latest", version_field: "v", columns: { version: { field: "v", type: "integer" } } }, "columns.version"],
  ])("rejects %s", (_name, o, path) => {
    const r = parse(o);
    expect(r.success).toBe(false);
    expect(r.error!.issues.flatMap((i) => [i.path.join("."), ...(i.code === "unrecognized_keys" ? i.keys : [])])).toContain(path);
  });

  it("keeps its checks inside a pipeline config, with the path of each problem", () => {
    const result = validateConfig({
      sources: { s: { type: "generator", count: 1 } },
      sinks: { pg: { type: "postgres", url: "postgres://x@h/db", table: "t", version_field: "v", columns: { key: { field: "k", type: "text" } }, concurrency: 2 } },
    });
    expect(result.issues.map((i) => i.path).sort()).toEqual(["sinks.pg.columns.key", "sinks.pg.version_field"]);
  });
});

describe.skipIf(!hasPostgres)("postgres sink (real PostgreSQL)", () => {
  let admin: pg.Pool;
  /** Quoted, qualified names to drop after each test. */
  const toDrop: string[] = [];
  const schemasToDrop: string[] = [];
  const open: Sink[] = [];
  const dirs: string[] = [];

  beforeAll(() => {
    admin = new pg.Pool({ connectionString: PG_URL, max: 3 });
    admin.on("error", () => undefined);
  });

  afterAll(async () => {
    await admin.end();
  });

  afterEach(async () => {
    for (const sink of open.splice(0)) await sink.close().catch(() => undefined);
    for (const t of toDrop.splice(0)) await admin.query(`DROP TABLE IF EXISTS ${t} CASCADE`);
    for (const s of schemasToDrop.splice(0)) await admin.query(`DROP SCHEMA IF EXISTS ${s} CASCADE`);
    await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
  });

  /** A fresh table name with a random suffix, dropped after the test. */
  function newTable(prefix = "pgsink", schema?: string): string {
    const table = `${prefix}_${randomBytes(4).toString("hex")}`;
    toDrop.push(schema === undefined ? pg.escapeIdentifier(table) : `${pg.escapeIdentifier(schema)}.${pg.escapeIdentifier(table)}`);
    return table;
  }

  const q = (table: string) => pg.escapeIdentifier(table);

  async function connect(settings: Partial<PostgresSinkSettings> & { table: string }, events: InternalEvent[] = []): Promise<Sink> {
    const sink = createPostgresSink({
      url: PG_URL,
      poolSize: 2,
      createTable: true,
      columns: {},
      mode: "insert",
      name: "pg",
      emit: (e) => events.push(e),
      ...settings,
    });
    open.push(sink);
    await sink.connect(signal);
    return sink;
  }

  async function close(sink: Sink): Promise<void> {
    open.splice(open.indexOf(sink), 1);
    await sink.close();
  }

  function failuresOf(result: WriteResult | void): readonly RecordFailure[] {
    return result?.failures ?? [];
  }

  /** The indexes a write reported already present, ascending. */
  function presentOf(result: WriteResult | void): number[] {
    return [...(result?.alreadyPresent ?? [])].sort((a, b) => a - b);
  }

  const range = (from: number, to: number) => Array.from({ length: to - from }, (_, i) => from + i);

  function record(id: string, payload: JsonObject, opts: { key?: string; eventTime?: number } = {}): SluiceRecord {
    return { id, key: opts.key, payload, eventTime: opts.eventTime, receivedAt: 0, source: "test", attempts: 0 };
  }

  const late = (events: readonly InternalEvent[]) => events.reduce((n, e) => n + (e.type === "records_late" ? e.count : 0), 0);

  describe.each(["copy_direct", "staging"] as const)("insert mode, %s write path", (insertPath) => {
    it("leaves one row per id across overlapping batches, an id twice in one batch, and a second run", async () => {
      const table = newTable();
      const records = makeRecords(300);
      const first = await connect({ table, insertPath });
      const fresh = await first.write(records.slice(0, 200), signal);
      expect([failuresOf(fresh), presentOf(fresh)]).toEqual([[], []]);
      const overlap = await first.write(records.slice(100, 300), signal);
      expect([failuresOf(overlap), presentOf(overlap)]).toEqual([[], range(0, 100)]);
      const twice = await first.write([records[5]!, records[5]!, records[250]!], signal);
      expect([failuresOf(twice), presentOf(twice)]).toEqual([[], [0, 1, 2]]);
      // An id twice in a fresh batch: the first copy is new, the second already present.
      const dup = await first.write([makeRecords(1, { start: 400 })[0]!, records[9]!, makeRecords(1, { start: 400 })[0]!], signal);
      expect([failuresOf(dup), presentOf(dup)]).toEqual([[], [1, 2]]);
      await close(first);

      // A second run redelivers everything, one record with a changed payload: the first copy stays.
      const second = await connect({ table, insertPath });
      const again = records.map((r, i) => (i === 7 ? { ...r, payload: { ...r.payload, value: -1 } } : r));
      const rerun = await second.write(again, signal);
      expect([failuresOf(rerun), presentOf(rerun)]).toEqual([[], range(0, 300)]);

      const { rows } = await admin.query(`SELECT count(*)::int AS n, count(DISTINCT id)::int AS ids FROM ${q(table)}`);
      expect(rows[0]).toEqual({ n: 301, ids: 301 });
      const seven = await admin.query(`SELECT payload, key, event_time FROM ${q(table)} WHERE id = 'r-7'`);
      expect(seven.rows[0]).toEqual({ payload: records[7]!.payload, key: records[7]!.key, event_time: new Date(records[7]!.eventTime!) });
    });

    it("commits 997 of 1,000 records and reports exactly the 3 bad ones, with SQLSTATE and message, in few statements", async () => {
      const table = newTable();
      const sink = await connect({
        table,
        insertPath,
        columns: { name: { field: "name", type: "text" }, amount: { field: "amount", type: "integer" } },
      });
      await admin.query(`ALTER TABLE ${q(table)} ALTER COLUMN name SET NOT NULL, ADD CONSTRAINT amount_not_negative CHECK (amount >= 0)`);
      const records = Array.from({ length: 1000 }, (_, i) => record(`id-${i}`, { name: `n-${i}`, amount: i }));
      records[17] = record("id-17", { name: "n-17", amount: "abc" });
      records[500] = record("id-500", { amount: 500 });
      records[999] = record("id-999", { name: "n-999", amount: -5 });

      const query = vi.spyOn(pg.Client.prototype, "query");
      let statements: number;
      let failures: readonly RecordFailure[];
      try {
        failures = failuresOf(await sink.write(records, signal));
        statements = query.mock.calls.length;
      } finally {
        query.mockRestore();
      }

      expect(failures.map((f) => f.index)).toEqual([17, 500, 999]);
      for (const f of failures) expect([f.error.code, f.error.retryable]).toEqual(["ERR_SINK_REJECTED", false]);
      expect(failures[0]!.error.message).toMatch(/invalid input syntax for type integer: "abc".*SQLSTATE 22P02/);
      expect(failures[1]!.error.message).toMatch(/null value in column "name".*SQLSTATE 23502/);
      expect(failures[2]!.error.message).toMatch(/violates check constraint "amount_not_negative".*SQLSTATE 23514/);

      const { rows } = await admin.query<{ id: string }>(`SELECT id FROM ${q(table)}`);
      expect(rows.map((r) => r.id).sort()).toEqual(records.filter((_, i) => ![17, 500, 999].includes(i)).map((r) => r.id).sort());
      // Bisecting costs about 2·log2(n) ranges per bad record, each 2-3 statements; one statement per record would be over 1,000.
      expect(statements).toBeLessThan(200);

      expect(presentOf(await sink.write([], signal))).toEqual([]);
      // Written again, the 997 are duplicates (reported already present) and the 3 still fail alone.
      const again = await sink.write(records, signal);
      expect(failuresOf(again).map((f) => f.index)).toEqual([17, 500, 999]);
      expect(presentOf(again)).toEqual(range(0, 1000).filter((i) => ![17, 500, 999].includes(i)));
      expect((await admin.query(`SELECT count(*)::int AS n FROM ${q(table)}`)).rows[0]).toEqual({ n: 997 });
    });
  });

  it("stages the batches after a duplicate id, and COPYs directly again once a staged batch is all new", async () => {
    const table = newTable();
    const sink = await connect({ table });
    const records = makeRecords(40);
    /** Which COPY statements a write sends, in order: into the table (`direct`) or into the staging table (`stage`). */
    const copies = async (batch: readonly SluiceRecord[]) => {
      const query = vi.spyOn(pg.Client.prototype, "query");
      try {
        expect(failuresOf(await sink.write(batch, signal))).toEqual([]);
        return query.mock.calls
          .map((c) => String((c[0] as { text?: string }).text ?? c[0]))
          .filter((sql) => sql.startsWith("COPY "))
          .map((sql) => (sql.startsWith(`COPY ${q(table)} `) ? "direct" : "stage"));
      } finally {
        query.mockRestore();
      }
    };
    expect(await copies(records.slice(0, 10))).toEqual(["direct"]);
    expect(await copies(records.slice(0, 10))).toEqual(["direct", "stage"]);
    expect(await copies(records.slice(5, 15))).toEqual(["stage"]);
    expect(await copies(records.slice(20, 30))).toEqual(["stage"]);
    expect(await copies(records.slice(30, 40))).toEqual(["direct"]);
    expect((await admin.query(`SELECT count(*)::int AS n FROM ${q(table)}`)).rows[0]).toEqual({ n: 35 });
  });

  it("inserts a staged batch in batch order, even when PostgreSQL's anti-join runs in several batches", async () => {
    // A large table and a large staged batch make the anti-join a hash join over more than one
    // batch (work_mem), which returns the staged rows out of order unless the INSERT sorts them: a
    // key's later version would then commit before an earlier one (seen in the ordered fleet test).
    const table = newTable();
    const sink = await connect({ table });
    const stored = makeRecords(200_000);
    for (let i = 0; i < stored.length; i += 20_000) expect(failuresOf(await sink.write(stored.slice(i, i + 20_000), signal))).toEqual([]);
    await admin.query(`ALTER TABLE ${q(table)} ADD COLUMN n bigserial`);
    const before = Number((await admin.query<{ n: string }>(`SELECT max(n) AS n FROM ${q(table)}`)).rows[0]!.n);
    // One stored id first: the direct COPY fails on it and the batch goes through staging.
    const fresh = makeRecords(20_000, { start: 200_000 });
    expect(failuresOf(await sink.write([stored[0]!, ...fresh], signal))).toEqual([]);
    const { rows } = await admin.query<{ id: string }>(`SELECT id FROM ${q(table)} WHERE n > $1 ORDER BY n`, [before]);
    const inserted = rows.map((r) => r.id);
    expect(inserted.length).toBe(fresh.length);
    expect(inserted.findIndex((id, i) => id !== fresh[i]!.id)).toBe(-1);
  });

  it("takes one write per connection, prefers large ones, and writes a joined write in one COPY with its bad records by index", async () => {
    const table = newTable();
    const sink = await connect({ table, poolSize: 1, columns: { amount: { field: "amount", type: "integer" } } });
    // The engine joins batches waiting behind a busy connection into writes up to this size.
    expect([sink.maxInFlight, sink.preferredWrite?.maxRecords]).toEqual([1, 10_000]);
    const records = Array.from({ length: 40 }, (_, i) => record(`g-${i}`, { amount: i === 24 ? "low" : i }));
    const query = vi.spyOn(pg.Client.prototype, "query");
    let result: WriteResult | void;
    let copies: string[];
    try {
      result = await sink.write(records, signal);
      copies = query.mock.calls.map((c) => String((c[0] as { text?: string }).text ?? c[0])).filter((sql) => sql.startsWith(`COPY ${q(table)} `));
    } finally {
      query.mockRestore();
    }
    // One direct COPY, whose bad record sends the write through bisection (COPYs into the staging table).
    expect(copies).toHaveLength(1);
    expect(failuresOf(result).map((f) => [f.index, f.error.code])).toEqual([[24, "ERR_SINK_REJECTED"]]);
    expect(failuresOf(result)[0]!.error.message).toContain("22P02");
    const { rows } = await admin.query<{ id: string }>(`SELECT id FROM ${q(table)} ORDER BY id`);
    expect(rows.map((r) => r.id)).toEqual(records.map((r) => r.id).filter((id) => id !== "g-24").sort());
    expect(presentOf(result)).toEqual([]);

    // Again, with new records between the old ones: the staged INSERT tells each its own.
    const more = records.flatMap((r, i) => (i % 10 === 0 ? [record(`g-new-${i}`, { amount: i }), r] : [r]));
    const again = await sink.write(more, signal);
    const at = (id: string) => more.findIndex((r) => r.id === id);
    expect(failuresOf(again).map((f) => f.index)).toEqual([at("g-24")]);
    expect(presentOf(again)).toEqual(range(0, more.length).filter((i) => !more[i]!.id.startsWith("g-new-") && more[i]!.id !== "g-24"));
  });

  it("fails only the write aborted while it waited for a connection", async () => {
    const table = newTable();
    const sink = await connect({ table, poolSize: 1 });
    const aborter = new AbortController();
    const first = sink.write(makeRecords(10), signal);
    const waiting = sink.write(makeRecords(10, { start: 10 }), aborter.signal);
    aborter.abort();
    await expect(waiting).rejects.toMatchObject({ code: "ERR_ABORTED" });
    expect(failuresOf(await first)).toEqual([]);
    expect((await admin.query(`SELECT count(*)::int AS n FROM ${q(table)}`)).rows[0]).toEqual({ n: 10 });
  });

  it("reports the record that breaks a deferred constraint, not the whole batch", async () => {
    const table = newTable();
    const sink = await connect({ table, insertPath: "copy_direct", columns: { serial: { field: "serial", type: "text" } } });
    await admin.query(`ALTER TABLE ${q(table)} ADD CONSTRAINT serial_unique UNIQUE (serial) DEFERRABLE INITIALLY DEFERRED`);
    const records = Array.from({ length: 10 }, (_, i) => record(`d-${i}`, { serial: i === 6 ? "s-2" : `s-${i}` }));
    const failures = failuresOf(await sink.write(records, signal));
    expect(failures.map((f) => [f.index, f.error.code, /SQLSTATE (\w+)/.exec(f.error.message)?.[1]])).toEqual([[6, "ERR_SINK_REJECTED", "23505"]]);
    expect((await admin.query(`SELECT count(*)::int AS n FROM ${q(table)}`)).rows[0]).toEqual({ n: 9 });
  });

  describe("upsert_latest", () => {
    const KEYS = 40;
    const VERSIONS = 25;

    /** KEYS × VERSIONS records, shuffled by `seed`; version v of a key has event time base + v s. */
    function versions(seed: number): SluiceRecord[] {
      const base = Date.UTC(2024, 4, 1);
      const all: SluiceRecord[] = [];
      for (let k = 0; k < KEYS; k++) {
        for (let v = 0; v < VERSIONS; v++) {
          const key = `device-${k}`;
          all.push(record(`${key}-v${v}`, { device: key, version: v, reading: k * 100 + v }, { key, eventTime: base + v * 1000 }));
        }
      }
      const random = mulberry32(seed);
      for (let i = all.length - 1; i > 0; i--) {
        const j = Math.floor(random() * (i + 1));
        [all[i], all[j]] = [all[j]!, all[i]!];
      }
      return all;
    }

    /** Records that arrive after a record of their key at least as new (and not themselves): the late ones. */
    function expectedLate(sequence: readonly SluiceRecord[], seen = new Map<string, { v: number; id: string }>()): number {
      let n = 0;
      for (const r of sequence) {
        const v = (r.payload as { version: number }).version;
        const best = seen.get(r.key!);
        if (best !== undefined && best.v >= v && best.id !== r.id) n++;
        if (best === undefined || v > best.v) seen.set(r.key!, { v, id: r.id });
      }
      return n;
    }

    /** Writes `records` in batches of `size`; resolves to how many the sink reported already present. */
    async function writeInBatches(sink: Sink, records: readonly SluiceRecord[], size: number): Promise<number> {
      let present = 0;
      for (let i = 0; i < records.length; i += size) {
        const result = await sink.write(records.slice(i, i + size), signal);
        expect(failuresOf(result)).toEqual([]);
        present += presentOf(result).length;
      }
      return present;
    }

    it.each([
      ["version_field", { versionField: "version" }],
      ["event time", {}],
    ])("ends at the newest version of every key with shuffled versions, counting the late ones (%s decides)", async (_name, extra) => {
      const table = newTable();
      const events: InternalEvent[] = [];
      const sink = await connect({ table, mode: "upsert_latest", ...extra }, events);
      const first = versions(11);
      const seen = new Map<string, { v: number; id: string }>();
      const lateFirst = expectedLate(first, seen);
      // Already present in the first run: exactly the late records (each id comes once).
      expect(await writeInBatches(sink, first, 100)).toBe(lateFirst);

      const check = async () => {
        const { rows } = await admin.query<{ key: string; id: string; payload: { version: number } }>(`SELECT key, id, payload FROM ${q(table)} ORDER BY key`);
        expect(rows.length).toBe(KEYS);
        for (const row of rows) {
          expect(row.id).toBe(`${row.key}-v${VERSIONS - 1}`);
          expect(row.payload.version).toBe(VERSIONS - 1);
        }
      };
      await check();
      // Guards the test itself: the shuffle makes plenty of records late, and not all.
      expect(lateFirst).toBeGreaterThan(200);
      expect(lateFirst).toBeLessThan(KEYS * VERSIONS - KEYS);
      expect(late(events)).toBe(lateFirst);

      // A second run redelivers all of it in another order: nothing changes; every record but the stored newest is late.
      await close(sink);
      const second = await connect({ table, mode: "upsert_latest", ...extra }, events);
      // Already present: every record, the stored newest of each key (a redelivery, not late) included.
      expect(await writeInBatches(second, versions(12), 250)).toBe(KEYS * VERSIONS);
      await check();
      expect(late(events) - lateFirst).toBe(KEYS * VERSIONS - KEYS);

      const metrics = new Metrics(["pg"], silentLogger);
      for (const e of events) metrics.handle(e);
      expect(await metrics.registry.metrics()).toContain(`sluice_records_late_total{sink="pg"} ${late(events)}`);
    });

    it("counts a batch's own older records as late only when they come after a newer one", async () => {
      const table = newTable();
      const events: InternalEvent[] = [];
      const sink = await connect({ table, mode: "upsert_latest", versionField: "version" }, events);
      const one = (v: number, key = "k") => record(`${key}-${v}`, { version: v }, { key });
      expect(failuresOf(await sink.write([0, 1, 2, 3, 4].map((v) => one(v)), signal))).toEqual([]);
      expect(late(events)).toBe(0);
      expect(failuresOf(await sink.write([9, 8, 7, 5].map((v) => one(v, "j")), signal))).toEqual([]);
      expect(late(events)).toBe(3);
      // The stored record again: a redelivery, not late. Equal version, another record: not newer, so late.
      // Neither changes the row: both are already present; a newer version is new.
      const again = await sink.write([one(4), record("k-4-bis", { version: 4 }, { key: "k" }), one(10, "j")], signal);
      expect([failuresOf(again), presentOf(again)]).toEqual([[], [0, 1]]);
      expect(late(events)).toBe(4);
      const { rows } = await admin.query(`SELECT key, id, version FROM ${q(table)} ORDER BY key`);
      expect(rows).toEqual([
        { key: "j", id: "j-10", version: "10" },
        { key: "k", id: "k-4", version: "4" },
      ]);
    });

    it("rejects alone the records without a key, a version, or with a version that is not a number", async () => {
      const table = newTable();
      const sink = await connect({ table, mode: "upsert_latest", versionField: "meta.version" });
      const records = [
        record("a", { meta: { version: 1 } }, { key: "a" }),
        record("no-key", { meta: { version: 1 } }),
        record("no-version", { meta: {} }, { key: "b" }),
        record("bad-version", { meta: { version: "abc" } }, { key: "c" }),
        record("d", { meta: { version: "2.5" } }, { key: "d" }),
      ];
      const failures = failuresOf(await sink.write(records, signal));
      expect(failures.map((f) => f.index)).toEqual([1, 2, 3]);
      expect(failures[0]!.error.message).toMatch(/no key/);
      expect(failures[1]!.error.message).toMatch(/version.*null/);
      expect(failures[2]!.error.message).toMatch(/SQLSTATE 22P02/);
      for (const f of failures) expect(f.error.code).toBe("ERR_SINK_REJECTED");
      const { rows } = await admin.query(`SELECT id, version FROM ${q(table)} ORDER BY id`);
      expect(rows).toEqual([
        { id: "a", version: "1" },
        { id: "d", version: "2.5" },
      ]);
    });

    it("finds a bad record among versions of one key without changing the outcome or the late count", async () => {
      const table = newTable();
      const events: InternalEvent[] = [];
      const sink = await connect({ table, mode: "upsert_latest", versionField: "v", columns: { reading: { field: "reading", type: "integer" } } }, events);
      await admin.query(`ALTER TABLE ${q(table)} ADD CONSTRAINT reading_small CHECK (reading < 100)`);
      const one = (v: number, reading = v) => record(`k-${v}`, { v, reading }, { key: "k" });
      // v1 then v3 commit; v5 is bad; v2 then comes after v3 (late), v4 is the newest good one.
      const failures = failuresOf(await sink.write([one(1), one(3), one(5, 500), one(2), one(4)], signal));
      expect(failures.map((f) => [f.index, /SQLSTATE (\w+)/.exec(f.error.message)?.[1]])).toEqual([[2, "23514"]]);
      expect((await admin.query(`SELECT id FROM ${q(table)}`)).rows).toEqual([{ id: "k-4" }]);
      expect(late(events)).toBe(1);
    });

    it("keeps one row per value of a mapped key_column", async () => {
      const table = newTable();
      const sink = await connect({
        table,
        mode: "upsert_latest",
        versionField: "rev",
        keyColumn: "device_id",
        columns: { device_id: { field: "device.id", type: "uuid" } },
      });
      const a = "6f1c1a52-0000-4000-8000-000000000001";
      const b = "6f1c1a52-0000-4000-8000-000000000002";
      const records = [
        record("1", { device: { id: a }, rev: 2 }),
        record("2", { device: { id: b }, rev: 1 }),
        record("3", { device: { id: a }, rev: 3 }),
        record("4", { device: { id: a }, rev: 1 }),
      ];
      expect(failuresOf(await sink.write(records, signal))).toEqual([]);
      const { rows } = await admin.query(`SELECT device_id, id FROM ${q(table)} ORDER BY device_id`);
      expect(rows).toEqual([
        { device_id: a, id: "3" },
        { device_id: b, id: "2" },
      ]);
    });

    it("refuses to connect to a table without a unique index on the key column, saying why", async () => {
      const table = newTable();
      await admin.query(`CREATE TABLE ${q(table)} (id text PRIMARY KEY, key text, payload jsonb, event_time timestamptz, ingested_at timestamptz DEFAULT now())`);
      const sink = createPostgresSink({ url: PG_URL, table, poolSize: 1, createTable: true, columns: {}, mode: "upsert_latest", name: "pg", emit: () => {} });
      const err = await sink.connect(signal).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(SluiceError);
      expect(err).toMatchObject({ code: "ERR_SINK_CONNECT", retryable: false });
      expect((err as Error).message).toMatch(/SQLSTATE 42P10/);
    });
  });

  it("keeps SQL-looking schema, table, column and field names as names, and SQL-looking values as data", async () => {
    const canary = newTable("canary");
    await admin.query(`CREATE TABLE ${q(canary)} (x int); INSERT INTO ${q(canary)} VALUES (1)`);
    const evil = `${canary}"; DROP TABLE ${canary}; --`;
    const schema = `s_${randomBytes(3).toString("hex")}"; DROP TABLE ${canary}; --`;
    schemasToDrop.push(pg.escapeIdentifier(schema));
    await admin.query(`CREATE SCHEMA ${pg.escapeIdentifier(schema)}`);
    const table = newTable(evil, schema);
    const column = `c'); DROP TABLE ${canary}; --`;
    const field = `f"; DROP TABLE ${canary}; --`;
    const events: InternalEvent[] = [];

    for (const mode of ["insert", "upsert_latest"] as const) {
      const sink = await connect(
        { table, schema, mode, columns: { [column]: { field, type: "text" } }, ...(mode === "upsert_latest" ? { keyColumn: column } : {}) },
        events,
      );
      const value = `'); DROP TABLE ${canary}; --`;
      const records = [record(`${mode}-1 ${evil}`, { [field]: `${value} ${mode}`, other: value }, { key: evil, eventTime: 1 })];
      expect(failuresOf(await sink.write(records, signal))).toEqual([]);
      await close(sink);
      // The upsert run needs its unique index; the insert run's table has none.
      if (mode === "insert") {
        await admin.query(`DELETE FROM ${toDrop.at(-1)!}`);
        await admin.query(`CREATE UNIQUE INDEX ON ${toDrop.at(-1)!} (${pg.escapeIdentifier(column)})`);
      }
    }

    expect((await admin.query(`SELECT x FROM ${q(canary)}`)).rows).toEqual([{ x: 1 }]);
    const found = await admin.query(`SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relname = $1`, [table]);
    expect(found.rows).toEqual([{ nspname: schema, relname: table }]);
    const { rows } = await admin.query(`SELECT id, key, ${pg.escapeIdentifier(column)} AS c, payload FROM ${toDrop.at(-1)!}`);
    expect(rows).toEqual([
      {
        id: `upsert_latest-1 ${evil}`,
        key: evil,
        c: `'); DROP TABLE ${canary}; -- upsert_latest`,
        payload: { [field]: `'); DROP TABLE ${canary}; -- upsert_latest`, other: `'); DROP TABLE ${canary}; --` },
      },
    ]);
  });

  it("fills typed columns with the right values and types", async () => {
    const table = newTable();
    const columns = {
      t_text: { field: "s", type: "text" },
      t_text_of_number: { field: "n", type: "text" },
      t_text_of_object: { field: "obj", type: "text" },
      t_int: { field: "n", type: "integer" },
      t_int_of_string: { field: "nstr", type: "integer" },
      t_bigint: { field: "big", type: "bigint" },
      t_double: { field: "d", type: "double precision" },
      t_numeric: { field: "d", type: "numeric" },
      t_bool: { field: "b", type: "boolean" },
      t_bool_of_string: { field: "bstr", type: "boolean" },
      t_ts_of_ms: { field: "ms", type: "timestamptz" },
      t_ts_of_iso: { field: "iso", type: "timestamptz" },
      t_jsonb_object: { field: "obj", type: "jsonb" },
      t_jsonb_string: { field: "s", type: "jsonb" },
      t_uuid: { field: "u", type: "uuid" },
      t_nested: { field: "deep.er.value", type: "integer" },
      t_missing: { field: "nope", type: "integer" },
      t_null: { field: "nothing", type: "text" },
    } as const;
    const sink = await connect({ table, columns });
    const s = "tab\there, new\nline, back\\slash, \\N, quote ' \" and 🚀";
    const obj = { a: [1, "x\\y\n"], b: { c: null } };
    const payload = { s, n: 42, nstr: "17", big: 9007199254740991, d: 0.1, b: true, bstr: "false", ms: 1700000000123, iso: "2024-05-06T07:08:09.123Z", obj, u: "0b7f6c2e-9d7a-4a43-9c35-6a1e52b1d2f0", deep: { er: { value: 7 } }, nothing: null };
    expect(failuresOf(await sink.write([record("one", payload)], signal))).toEqual([]);

    const { rows } = await admin.query(`SELECT ${Object.keys(columns).join(", ")} FROM ${q(table)}`);
    expect(rows[0]).toEqual({
      t_text: s,
      t_text_of_number: "42",
      t_text_of_object: JSON.stringify(obj),
      t_int: 42,
      t_int_of_string: 17,
      t_bigint: "9007199254740991",
      t_double: 0.1,
      t_numeric: "0.1",
      t_bool: true,
      t_bool_of_string: false,
      t_ts_of_ms: new Date(1700000000123),
      t_ts_of_iso: new Date("2024-05-06T07:08:09.123Z"),
      t_jsonb_object: obj,
      t_jsonb_string: s,
      t_uuid: "0b7f6c2e-9d7a-4a43-9c35-6a1e52b1d2f0",
      t_nested: 7,
      t_missing: null,
      t_null: null,
    });
    const types = await admin.query<{ column_name: string; data_type: string }>(
      "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = $1 AND column_name LIKE 't\\_%'",
      [table],
    );
    const expectedTypes = Object.fromEntries(
      Object.entries(columns).map(([name, c]) => [name, ({ timestamptz: "timestamp with time zone", jsonb: "jsonb" } as Record<string, string>)[c.type] ?? c.type]),
    );
    expect(Object.fromEntries(types.rows.map((r) => [r.column_name, r.data_type]))).toEqual(expectedTypes);
  });

  describe("connections", () => {
    /** A URL whose connections carry an application_name unique to this test, so only they are terminated. */
    function taggedUrl(): { url: string; tag: string } {
      const tag = `sluice_test_${randomBytes(4).toString("hex")}`;
      const url = new URL(PG_URL);
      url.searchParams.set("application_name", tag);
      return { url: url.toString(), tag };
    }

    /** Resolves once a backend of `tag` waits for a lock (the write is in flight). */
    async function waitForLockWait(tag: string): Promise<void> {
      for (let i = 0; i < 200; i++) {
        const { rows } = await admin.query("SELECT 1 FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'", [tag]);
        if (rows.length > 0) return;
        await new Promise((r) => setTimeout(r, 25));
      }
      throw new Error("the write never waited for the lock");
    }

    it("fails a write whose connection is terminated as retryable, discards that connection, and the next write succeeds", async () => {
      const table = newTable();
      const { url, tag } = taggedUrl();
      const sink = await connect({ table, url, poolSize: 1 });
      const locker = await admin.connect();
      try {
        await locker.query(`BEGIN; LOCK TABLE ${q(table)} IN ACCESS EXCLUSIVE MODE`);
        const write = sink.write(makeRecords(10), signal).then(
          () => undefined,
          (e: unknown) => e,
        );
        await waitForLockWait(tag);
        await admin.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1", [tag]);
        const err = await write;
        expect(err).toBeInstanceOf(SluiceError);
        expect(err).toMatchObject({ code: "ERR_SINK_WRITE", retryable: true });
        expect((err as Error).message).toMatch(/57P01|Connection terminated/);
      } finally {
        await locker.query("ROLLBACK");
        locker.release();
      }
      // A pool of one: had the dead connection gone back to the pool, this write would fail too.
      expect(failuresOf(await sink.write(makeRecords(10), signal))).toEqual([]);
      expect((await admin.query(`SELECT count(*)::int AS n FROM ${q(table)}`)).rows[0]).toEqual({ n: 10 });
    });

    it("gives up a write in flight when the signal aborts, leaving nothing half-written", async () => {
      const table = newTable();
      const { url, tag } = taggedUrl();
      const sink = await connect({ table, url, poolSize: 1 });
      const abort = new AbortController();
      const locker = await admin.connect();
      try {
        await locker.query(`BEGIN; LOCK TABLE ${q(table)} IN ACCESS EXCLUSIVE MODE`);
        const write = sink.write(makeRecords(10), abort.signal).then(
          () => undefined,
          (e: unknown) => e,
        );
        await waitForLockWait(tag);
        abort.abort();
        expect(await write).toMatchObject({ code: "ERR_ABORTED" });
      } finally {
        await locker.query("ROLLBACK");
        locker.release();
      }
      // The COPY's data went with the statement, so the backend, once the lock is released, may still
      // commit the whole batch before it reads that the client left: all of it or none, never a part.
      // A rejected write is redelivered, and ids make the redelivery leave one row.
      const { n } = (await admin.query<{ n: number }>(`SELECT count(*)::int AS n FROM ${q(table)}`)).rows[0]!;
      expect([0, 10]).toContain(n);
      expect(failuresOf(await sink.write(makeRecords(3), signal))).toEqual([]);
    });

    it("connects many sinks at once to a table that does not exist yet (a fleet started together): one creates it, none fails", async () => {
      const table = newTable();
      const sinks = Array.from({ length: 6 }, () =>
        createPostgresSink({ url: PG_URL, table, poolSize: 1, createTable: true, columns: {}, mode: "insert", name: "pg", emit: () => {} }),
      );
      open.push(...sinks);
      const outcomes = await Promise.allSettled(sinks.map((s) => s.connect(signal)));
      expect(outcomes.filter((o) => o.status === "rejected")).toEqual([]);
      for (const sink of sinks) expect(failuresOf(await sink.write(makeRecords(3), signal))).toEqual([]);
      expect((await admin.query(`SELECT count(*)::int AS n FROM ${q(table)}`)).rows[0].n).toBe(3);
    });

    it("fails connect with a retryable ERR_SINK_CONNECT when nothing listens", async () => {
      const sink = createPostgresSink({ url: "postgres://postgres@127.0.0.1:1/test", table: "t", poolSize: 1, createTable: true, columns: {}, mode: "insert", name: "pg", emit: () => {} });
      await expect(sink.connect(signal)).rejects.toMatchObject({ code: "ERR_SINK_CONNECT", retryable: true, message: expect.stringMatching(/ECONNREFUSED/) });
      await sink.close();
    });

    it("fails a batch as a whole, permanently and without bisecting, when its table is gone", async () => {
      const table = newTable();
      const sink = await connect({ table });
      await admin.query(`DROP TABLE ${q(table)}`);
      await expect(sink.write(makeRecords(5), signal)).rejects.toMatchObject({ code: "ERR_SINK_REJECTED", retryable: false, message: expect.stringMatching(/SQLSTATE 42P01/) });
    });
  });

  it("runs file -> postgres through the CLI: ${DATABASE_URL}, typed columns, bad rows in the dead-letter store, a second run adds nothing", async () => {
    const dir = await mkdtemp(join(tmpdir(), "sluice-pg-e2e-"));
    dirs.push(dir);
    const table = newTable("readings");
    // A table the team made, with constraints of its own; the sink adds to it (create_table finds it there).
    await admin.query(
      `CREATE TABLE ${q(table)} (id text PRIMARY KEY, key text, payload jsonb, event_time timestamptz, ingested_at timestamptz DEFAULT now(),
         device text NOT NULL, celsius double precision CHECK (celsius > -273.15), seq integer, taken_at timestamptz)`,
    );
    const lines: string[] = [];
    const TOTAL = 2000;
    const bad = new Map<number, string>([
      [123, "22P02"],
      [1000, "23502"],
      [1999, "23514"],
    ]);
    for (let i = 0; i < TOTAL; i++) {
      const reading: Record<string, unknown> = { id: `reading-${i}`, device: `dev-${i % 7}`, reading: { celsius: 20 + (i % 10) / 10 }, seq: i, at: Date.UTC(2024, 0, 1) + i * 1000 };
      if (i === 123) reading.seq = "abc";
      if (i === 1000) delete reading.device;
      if (i === 1999) reading.reading = { celsius: -300 };
      lines.push(JSON.stringify(reading));
    }
    await writeFile(join(dir, "readings.ndjson"), `${lines.join("\n")}\n`);
    await writeFile(
      join(dir, "pipeline.yaml"),
      `data_dir: ./data
sources:
  readings: { type: file, path: ./readings.ndjson, key_field: device, time_field: at }
sinks:
  pg:
    type: postgres
    url: \${DATABASE_URL}
    table: ${table}
    columns:
      device: { field: device, type: text }
      celsius: { field: reading.celsius, type: double precision }
      seq: { field: seq, type: integer }
      taken_at: { field: at, type: timestamptz }
    batch: { max_records: 500 }
`,
    );

    const run = async () => {
      const child = spawn(process.execPath, ["--conditions=sluice-source", "--import", TSX, ENTRY, "run", "pipeline.yaml", "--summary-json", "summary.json", "--no-progress"], {
        cwd: dir,
        env: { ...process.env, DATABASE_URL: PG_URL },
        stdio: ["ignore", "ignore", "pipe"],
      });
      let stderr = "";
      child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
      const code = await new Promise<number | null>((done) => child.on("exit", (c) => done(c)));
      expect(code, stderr).toBe(0);
      return JSON.parse(await readFile(join(dir, "summary.json"), "utf8")) as { records: Record<string, number>; sinks: Record<string, Record<string, number>> };
    };

    for (let attempt = 0; attempt < 2; attempt++) {
      // The second run starts from a fresh data_dir (removed below): the whole file again, all duplicates.
      const summary = await run();
      // The rerun stores nothing new: the summary says so instead of counting redeliveries as news.
      const split = attempt === 0 ? { new: TOTAL - 3, already_present: 0 } : { new: 0, already_present: TOTAL - 3 };
      expect(summary.records).toMatchObject({ received: TOTAL, delivered: TOTAL - 3, ...split, dead_lettered: 3, dropped: 0 });
      expect(summary.sinks.pg).toEqual({ delivered: TOTAL - 3, ...split, dead_lettered: 3 });
      const dead = readDeadLetters(join(dir, "data/dlq.db"));
      expect(dead.map((d) => [d.record_id, d.sink, d.code, /SQLSTATE (\w+)/.exec(d.message)?.[1]])).toEqual(
        [...bad].map(([i, state]) => [`reading-${i}`, "pg", "ERR_SINK_REJECTED", state]),
      );
      await rm(join(dir, "data"), { recursive: true, force: true });

      const { rows } = await admin.query(`SELECT count(*)::int AS n, count(DISTINCT id)::int AS ids, count(DISTINCT device)::int AS devices FROM ${q(table)}`);
      expect(rows[0]).toEqual({ n: TOTAL - 3, ids: TOTAL - 3, devices: 7 });
      const one = await admin.query(`SELECT key, device, celsius, seq, taken_at, event_time, payload->>'id' AS pid FROM ${q(table)} WHERE id = 'reading-42'`);
      expect(one.rows[0]).toEqual({ key: "dev-0", device: "dev-0", celsius: 20.2, seq: 42, taken_at: new Date(Date.UTC(2024, 0, 1) + 42_000), event_time: new Date(Date.UTC(2024, 0, 1) + 42_000), pid: "reading-42" });
    }
  });
  it("writes the payload as the file spelled it (a 20-digit integer stays exact) unless a transform touched it", async () => {
    const dir = await mkdtemp(join(tmpdir(), "sluice-pg-text-"));
    dirs.push(dir);
    // First a line of multi-byte characters: the file source cuts each line's text out of a run
    // parsed at once, and must cut at characters, not bytes, or the lines after it get a neighbour's.
    const lines = [
      '{"id":"uni","s":"é€𝄞"}',
      '{"id":"big","n":12345678901234567890}',
      '{"id":"tab",\t"n":1.50}',
      '{"id":"esc","s":"caf\\u00e9","n":12345678901234567890}',
      '{"id":"slash","s":"a\\\\b"}',
      '{"id":"huge","n":1e200000,"m":1e400}',
    ];
    await writeFile(join(dir, "in.ndjson"), `${lines.join("\n")}\n`);
    // Changes the payload in place and returns the same object: its text no longer says what it holds.
    await writeFile(join(dir, "touch.mjs"), "export default (p) => { p.touched = true; return p; };\n");
    const runWith = async (table: string, transforms: string) => {
      await writeFile(
        join(dir, "pipeline.yaml"),
        `data_dir: ./data-${table}\nsources:\n  in: { type: file, path: ./in.ndjson }\n${transforms}sinks:\n  pg: { type: postgres, url: "${PG_URL}", table: ${table} }\n`,
      );
      const child = spawn(process.execPath, ["--conditions=sluice-source", "--import", TSX, ENTRY, "run", "pipeline.yaml", "--no-progress"], { cwd: dir, stdio: ["ignore", "ignore", "pipe"] });
      let stderr = "";
      child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
      expect(await new Promise<number | null>((done) => child.on("exit", (c) => done(c))), stderr).toBe(0);
      const { rows } = await admin.query(`SELECT id, payload::text AS payload FROM ${q(table)} ORDER BY id`);
      return Object.fromEntries((rows as { id: string; payload: string }[]).map((r) => [r.id, r.payload]));
    };

    const plain = await runWith(newTable("as_read"), "");
    expect(plain).toEqual({
      uni: '{"s": "é€𝄞", "id": "uni"}',
      big: '{"n": 12345678901234567890, "id": "big"}',
      tab: '{"n": 1.50, "id": "tab"}',
      esc: '{"n": 12345678901234567000, "s": "café", "id": "esc"}',
      slash: '{"s": "a\\\\b", "id": "slash"}',
      // Past PostgreSQL's numeric: written as the payload holds it (JSON.parse made it Infinity: null).
      huge: '{"m": null, "n": null, "id": "huge"}',
    });
    const touched = await runWith(newTable("touched"), "transforms:\n  - { type: module, path: ./touch.mjs }\n");
    expect(touched.big).toBe('{"n": 12345678901234567000, "id": "big", "touched": true}');
    expect(touched.tab).toBe('{"n": 1.5, "id": "tab", "touched": true}');
  });
});
