/**
 * The parquet sink's output as DuckDB reads it: counts, distinct ids, column types (typed and
 * inferred), Hive partitions, files rolled and row groups cut by size, crash leftovers removed;
 * and examples/parquet-lake run as shipped by the real CLI, twice, its query deduplicating.
 */
import { cp, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterAll, afterEach, beforeEach, describe, expect, it } from "vitest";
import type { Sink, WriteResult } from "../../src/components/contracts.js";
import type { JsonObject, SluiceRecord } from "../../src/core/record.js";
import { definition } from "../../src/sinks/parquet/sink.js";
import { sinkContext, tempDir } from "../contract/sink-contract.js";
import { killClis, runCli } from "../helpers/cli.js";
import { duckQuery, lake } from "../helpers/duckdb.js";
import { FakeClock } from "../helpers/fake-clock.js";
import { makeRecords } from "../helpers/records.js";

const EXAMPLE = resolve(import.meta.dirname, "../../examples/parquet-lake");
const signal = new AbortController().signal;

let dir: string;
let remove: () => Promise<void>;
const sinks: Sink[] = [];

beforeEach(async () => {
  ({ dir, remove } = await tempDir("sluice-parquet-"));
});

afterEach(async () => {
  for (const sink of sinks.splice(0)) await sink.close().catch(() => undefined);
  await remove();
});

afterAll(() => killClis());

async function connect(options: Record<string, unknown>, clock = new FakeClock(Date.UTC(2024, 5, 1, 12))): Promise<Sink> {
  const sink = definition.create(definition.options.parse({ path: "lake", ...options }), sinkContext(dir, clock));
  await sink.connect(signal);
  sinks.push(sink);
  return sink;
}

/** A record `r-<i>`; `eventTime` null for none. */
function record(i: number, payload: JsonObject, eventTime: number | null = Date.UTC(2024, 5, 1, i % 24)): SluiceRecord {
  return { id: `r-${i}`, key: undefined, payload, eventTime: eventTime ?? undefined, receivedAt: Date.UTC(2024, 5, 2, 10), source: "test", attempts: 0 };
}

/** DuckDB's DESCRIBE of the lake: column name -> type. */
async function types(root: string): Promise<Record<string, string>> {
  const rows = await duckQuery(`DESCRIBE SELECT * FROM ${lake(root)}`);
  return Object.fromEntries(rows.map((r) => [r.column_name as string, r.column_type as string]));
}

/** Every file name under `root`, relative. */
async function files(root: string): Promise<string[]> {
  return (await readdir(root, { recursive: true })).filter((n) => /\.parquet(\.tmp)?$/.test(n)).sort();
}

function failed(result: WriteResult | void): number[] {
  return (result?.failures ?? []).map((f) => f.index);
}

describe("parquet sink: columns", () => {
  it("types columns from `columns` and fills the envelope; DuckDB reads the types and every id", async () => {
    const sink = await connect({
      columns: {
        value: { field: "value", type: "double precision" },
        seq: { field: "n", type: "bigint" },
        small: { field: "n", type: "integer" },
        ok: { field: "ok", type: "boolean" },
        at: { field: "at", type: "timestamptz" },
        amount: { field: "amount", type: "numeric" },
        meta: { field: "meta", type: "jsonb" },
        uid: { field: "uid", type: "uuid" },
      },
    });
    const records = Array.from({ length: 300 }, (_, i) =>
      record(i, { value: i / 4, n: String(i), ok: i % 2 === 0 ? "yes" : false, at: "2024-06-01T10:00:00Z", amount: "12345678901234567890.5", meta: { i }, uid: "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11" }),
    );
    records.push(record(300, { n: "not a number" }));
    expect(failed(await sink.write(records, signal))).toEqual([300]);
    expect(await types(join(dir, "lake"))).toEqual({
      id: "VARCHAR",
      key: "VARCHAR",
      event_time: "TIMESTAMP WITH TIME ZONE",
      ingested_at: "TIMESTAMP WITH TIME ZONE",
      value: "DOUBLE",
      seq: "BIGINT",
      small: "INTEGER",
      ok: "BOOLEAN",
      at: "TIMESTAMP WITH TIME ZONE",
      amount: "VARCHAR",
      meta: "VARCHAR",
      uid: "UUID",
      payload: "VARCHAR",
    });
    const [row] = await duckQuery(
      `SELECT count(*)::INTEGER AS n, count(DISTINCT id)::INTEGER AS ids, sum(seq)::BIGINT::VARCHAR AS seqs, count(*) FILTER (WHERE ok)::INTEGER AS oks,
              min(epoch_ms(ingested_at))::BIGINT::VARCHAR AS ingested, any_value(amount) AS amount, any_value(uid)::VARCHAR AS uid,
              max(json_extract(meta, '$.i')::INTEGER) AS meta_i, max(json_extract(payload, '$.value')::DOUBLE) AS max_value FROM ${lake(join(dir, "lake"))}`,
    );
    expect(row).toEqual({ n: 300, ids: 300, seqs: String((299 * 300) / 2), oks: 150, ingested: String(Date.UTC(2024, 5, 1, 12)), amount: "12345678901234567890.5", uid: "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", meta_i: 299, max_value: 74.75 });
  });

  it("infers columns from the first batch, keeps that schema, and dead-letters a later value that does not fit", async () => {
    const sink = await connect({ partition_by: [{ field: "site" }] });
    const first = [
      record(0, { id: "r-0", site: "a", value: 1, label: "x", ok: true, tags: ["t"], meta: { deep: 1 }, mixed: 1, empty: null, "bad name": 1 }),
      record(1, { id: "r-1", site: "a", value: 2.5, label: "y", ok: false, tags: [], meta: {}, mixed: "one", empty: null, "bad name": 2 }),
    ];
    expect(failed(await sink.write(first, signal))).toEqual([]);
    // A later batch: a number as text converts, text where a number was inferred is refused, a new field stays in the payload.
    const later = [record(2, { site: "b", value: "42", label: 7, extra: "only in payload" }), record(3, { site: "b", value: "n/a" })];
    const result = await sink.write(later, signal);
    expect(failed(result)).toEqual([1]);
    expect(result?.failures?.[0]?.error.code).toBe("ERR_SINK_REJECTED");
    expect(result?.failures?.[0]?.error.message).toContain("value");
    const root = join(dir, "lake");
    expect(await types(root)).toEqual({
      id: "VARCHAR",
      key: "VARCHAR",
      event_time: "TIMESTAMP WITH TIME ZONE",
      ingested_at: "TIMESTAMP WITH TIME ZONE",
      value: "DOUBLE",
      label: "VARCHAR",
      ok: "BOOLEAN",
      tags: "VARCHAR",
      meta: "VARCHAR",
      mixed: "VARCHAR",
      payload: "VARCHAR",
      site: "VARCHAR",
    });
    const rows = await duckQuery(`SELECT id, site, value, label, payload->>'$.extra' AS extra FROM ${lake(root)} ORDER BY id`);
    expect(rows).toEqual([
      { id: "r-0", site: "a", value: 1, label: "x", extra: null },
      { id: "r-1", site: "a", value: 2.5, label: "y", extra: null },
      { id: "r-2", site: "b", value: 42, label: "7", extra: "only in payload" },
    ]);
  });

  it("dead-letters only a record whose event time is past a timestamp's range; the rest of its batch is stored", async () => {
    const sink = await connect({});
    const result = await sink.write([record(0, { value: 1 }), record(1, { value: 2 }, 1e19), record(2, { value: 3 }, -1e19)], signal);
    expect(failed(result)).toEqual([1, 2]);
    expect(result?.failures?.map((f) => f.error.code)).toEqual(["ERR_SINK_REJECTED", "ERR_SINK_REJECTED"]);
    expect(await duckQuery(`SELECT id FROM ${lake(join(dir, "lake"))}`)).toEqual([{ id: "r-0" }]);
  });

  it("infers no column whose name differs only in case from an envelope or partition column (query engines fold case)", async () => {
    const sink = await connect({ partition_by: [{ field: "site" }] });
    expect(failed(await sink.write([record(0, { site: "a", value: 1, ID: "x", Payload: 2, Site: "q", Event_Time: 3, Value: 4 })], signal))).toEqual([]);
    const root = join(dir, "lake");
    // Before: DuckDB read `Payload` (2) as `payload`, the JSON as `payload_1`, `ID` as `ID_1`, and `Site` took the directory's value.
    expect(await types(root)).toEqual({ id: "VARCHAR", key: "VARCHAR", event_time: "TIMESTAMP WITH TIME ZONE", ingested_at: "TIMESTAMP WITH TIME ZONE", value: "DOUBLE", payload: "VARCHAR", site: "VARCHAR" });
    expect(await duckQuery(`SELECT id, site, value, payload->>'$.Site' AS inner_site, payload->>'$.Payload' AS inner_payload FROM ${lake(root)}`)).toEqual([
      { id: "r-0", site: "a", value: 1, inner_site: "q", inner_payload: "2" },
    ]);
  });

  it("writes no payload column with payload: none, and only the envelope without columns and inference", async () => {
    const sink = await connect({ payload: "none", infer_columns: false });
    await sink.write([record(0, { value: 1 })], signal);
    expect(Object.keys(await types(join(dir, "lake")))).toEqual(["id", "key", "event_time", "ingested_at"]);
  });
});

describe("parquet sink: partitions", () => {
  it("writes Hive directories by event date, hour and field; DuckDB decodes values and reads missing ones as NULL", async () => {
    const sink = await connect({ partition_by: [{ date: "event_time", granularity: "hour" }, { field: "where.site", name: "site" }] });
    const values = ["plain", "a/b", "..", "50% off", "", "ünï"];
    const records = values.map((site, i) => record(i, { where: { site } }, Date.UTC(2024, 5, 1, 8 + (i % 2))));
    records.push(record(6, {}, null));
    expect(failed(await sink.write(records, signal))).toEqual([]);
    const root = join(dir, "lake");
    expect((await files(root)).every((f) => /^date=[^/]+\/hour=[^/]+\/site=[^/]+\/part-\d{8}T\d{9}Z-\d{6}\.parquet$/.test(f))).toBe(true);
    const rows = await duckQuery(`SELECT id, date::VARCHAR AS date, hour::INTEGER AS hour, site FROM ${lake(root)} ORDER BY id`);
    expect(rows).toEqual([
      { id: "r-0", date: "2024-06-01", hour: 8, site: "plain" },
      { id: "r-1", date: "2024-06-01", hour: 9, site: "a/b" },
      { id: "r-2", date: "2024-06-01", hour: 8, site: ".." },
      { id: "r-3", date: "2024-06-01", hour: 9, site: "50% off" },
      { id: "r-4", date: "2024-06-01", hour: 8, site: null },
      { id: "r-5", date: "2024-06-01", hour: 9, site: "ünï" },
      { id: "r-6", date: null, hour: null, site: null },
    ]);
  });

  it("partitions by ingest date, and rejects a value too long for a directory name", async () => {
    const sink = await connect({ partition_by: [{ date: "ingest_time", name: "day" }, { field: "site" }] });
    const result = await sink.write([record(0, { site: "x" }), record(1, { site: "y".repeat(300) })], signal);
    expect(failed(result)).toEqual([1]);
    expect(result?.failures?.[0]?.error.code).toBe("ERR_SINK_REJECTED");
    expect(await files(join(dir, "lake"))).toEqual([expect.stringMatching(/^day=2024-06-02\/site=x\/part-/)]);
  });
});

describe("parquet sink: files and row groups", () => {
  it("splits a batch into files by rows and by bytes, and row groups by bytes", async () => {
    const root = join(dir, "lake");
    const byRows = await connect({ path: "lake/rows", file_max_rows: 1000, row_group_bytes: "8KiB" });
    await byRows.write(makeRecords(2500), signal);
    expect(await files(join(root, "rows"))).toHaveLength(3);
    const groups = await duckQuery(
      `SELECT file_name, count(DISTINCT row_group_id)::INTEGER AS groups, sum(row_group_num_rows)::INTEGER / count(DISTINCT column_id)::INTEGER AS rows
       FROM parquet_metadata('${join(root, "rows")}/*.parquet') GROUP BY file_name ORDER BY rows DESC`,
    );
    expect(groups.map((g) => g.rows)).toEqual([1000, 1000, 500]);
    // ~100 bytes of row data per record (the payload's text, id, times): 8 KiB row groups hold about 80 rows.
    for (const g of groups) expect(g.groups as number).toBeGreaterThan(5);

    const byBytes = await connect({ path: "lake/bytes", file_max_bytes: "64KiB" });
    await byBytes.write(makeRecords(1000), signal);
    const n = (await files(join(root, "bytes"))).length;
    expect(n).toBeGreaterThan(2);
    const [all] = await duckQuery(`SELECT count(*)::INTEGER AS n, count(DISTINCT id)::INTEGER AS ids FROM ${lake(join(root, "bytes"))}`);
    expect(all).toEqual({ n: 1000, ids: 1000 });
  });

  it("removes temp files a crashed run left (root and partitions), keeps other files, continues the sequence", async () => {
    const root = join(dir, "lake");
    await mkdir(join(root, "site=a"), { recursive: true });
    await writeFile(join(root, ".part-20240101T000000000Z-000041.parquet.tmp"), "PAR1 torn");
    await writeFile(join(root, "site=a", ".part-20240101T000000000Z-000007.parquet.tmp"), "PAR1");
    await writeFile(join(root, "site=a", "part-20240101T000000000Z-000006.parquet"), "not read here");
    await writeFile(join(root, "site=a", "notes.txt"), "keep me");
    const sink = await connect({ partition_by: [{ field: "site" }] });
    expect(await readdir(join(root, "site=a"))).toEqual(expect.arrayContaining(["notes.txt", "part-20240101T000000000Z-000006.parquet"]));
    expect((await files(root)).filter((f) => f.endsWith(".tmp"))).toEqual([]);
    await sink.write([record(0, { site: "a" })], signal);
    // The new file's sequence continues after the highest name in its directory (6 or the removed 7).
    expect((await readdir(join(root, "site=a"))).filter((f) => f.startsWith("part-2024060")).map((f) => f.slice(-14))).toEqual(["000008.parquet"]);
    expect(await readFile(join(root, "site=a", "notes.txt"), "utf8")).toBe("keep me");
  });
});

describe("examples/parquet-lake, as shipped", () => {
  it("runs with the CLI; query.sql counts each reading once, also after a rerun delivered every record again", async () => {
    const work = await mkdtemp(join(tmpdir(), "sluice-parquet-example-"));
    try {
      await cp(EXAMPLE, work, { recursive: true, filter: (src) => !/[/\\](lake|data)$/.test(src) });
      const first = await runCli(["run", "pipeline.yaml", "--summary-json", "summary.json"], { cwd: work });
      expect(first.code, first.stderr).toBe(0);
      const query = await readFile(join(work, "query.sql"), "utf8");
      // DuckDB resolves query.sql's relative path `lake/...` against file_search_path, as the duckdb CLI run in the example's directory does.
      const run = () => duckQuery(`SET file_search_path = '${work}';\n${query}`);
      const perPartition = await run();
      expect(perPartition).toHaveLength(15);
      expect(perPartition.reduce((n, r) => n + Number(r.readings), 0)).toBe(1200);
      expect(new Set(perPartition.map((r) => r.date))).toEqual(new Set(["2024-06-01", "2024-06-02", "2024-06-03"]));
      expect(perPartition.reduce((n, r) => n + Number(r.not_ok), 0)).toBe(24);

      // Lose the checkpoint: the rerun delivers every reading again, into new files.
      await rm(join(work, "data", "checkpoints"), { recursive: true });
      const second = await runCli(["run", "pipeline.yaml"], { cwd: work });
      expect(second.code, second.stderr).toBe(0);
      const [raw] = await duckQuery(`SELECT count(*)::INTEGER AS n, count(DISTINCT id)::INTEGER AS ids FROM ${lake(join(work, "lake"))}`);
      expect(raw).toEqual({ n: 2400, ids: 1200 });
      expect(await run()).toEqual(perPartition);
    } finally {
      await rm(work, { recursive: true, force: true });
    }
    // Two CLI runs.
  }, 120_000);
});
