/**
 * The parquet sink without DuckDB: its options (reserved and clashing names), the batch defaults
 * it declares (YAML and library), partition values as directory names, column inference, and
 * the shared segment writer's whole-file writes.
 */
import { readdir } from "node:fs/promises";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { createSegmentWriter } from "../../../src/components/segment-writer.js";
import { sinks } from "../../../src/api/components.js";
import { parseConfig } from "../../../src/config/load.js";
import { sinkDrivingSchemaFor } from "../../../src/config/schema.js";
import { systemClock } from "../../../src/core/clock.js";
import type { SluiceRecord } from "../../../src/core/record.js";
import { inferColumns } from "../../../src/sinks/parquet/layout.js";
import { parquetOptions } from "../../../src/sinks/parquet/options.js";
import { encodePartitionValue, NULL_PARTITION, PartitionValueError } from "../../../src/sinks/parquet/partitions.js";
import { tempDir } from "../../contract/sink-contract.js";

function issues(options: Record<string, unknown>): string[] {
  const r = parquetOptions.safeParse({ path: "lake", ...options });
  return r.success ? [] : r.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`);
}

describe("parquet sink options", () => {
  it("applies the defaults", () => {
    expect(parquetOptions.parse({ path: "lake" })).toEqual({
      path: "lake",
      prefix: "part",
      partition_by: [],
      columns: {},
      infer_columns: true,
      payload: "json",
      file_max_rows: 1_000_000,
      file_max_bytes: 256 * 1024 ** 2,
      row_group_bytes: 64 * 1024 ** 2,
      compression: "snappy",
      fsync: true,
    });
  });

  it("refuses columns and partitions named like the envelope, partitions named like columns or twice, and a prefix that escapes", () => {
    expect(issues({ columns: { payload: { field: "p", type: "text" } } })).toEqual([
      'columns.payload: "payload" is a column the sink fills itself; map the field to another name',
    ]);
    expect(issues({ partition_by: [{ field: "id" }] })).toEqual(['partition_by.0.name: "id" is a column the sink fills itself']);
    expect(issues({ partition_by: [{ field: "sensor" }], columns: { sensor: { field: "sensor", type: "text" } } })).toEqual([
      'partition_by.0.name: "sensor" is also one of columns; a partition column is read from the directory names',
    ]);
    expect(issues({ partition_by: [{ date: "event_time", granularity: "hour" }, { field: "hour" }] })).toEqual(['partition_by.1.name: "hour" names two partition levels']);
    expect(issues({ partition_by: [{ field: "a-b" }] })).toEqual(['partition_by.0.name: "a-b" is not a plain identifier; give a name']);
    expect(issues({ partition_by: [{ field: "a.b" }] })).toEqual([]);
    expect(issues({ prefix: "../x" })).toHaveLength(1);
    expect(issues({ partition: [] })).toHaveLength(1);
  });
});

describe("parquet sink batch defaults", () => {
  const yaml = (batch: string) => `
sources:
  gen: { type: generator }
sinks:
  lake: { type: parquet, path: ./lake${batch} }
  other: { type: blackhole }
`;

  it("gives a parquet sink its own batch defaults in YAML; the user's keys win, other sinks keep the engine's", () => {
    const r = parseConfig(yaml(""), {});
    if (!r.ok) throw new Error(JSON.stringify(r.issues));
    expect(r.config.sinks.find((s) => s.name === "lake")!.driving.batch).toEqual({ max_records: 5000, max_bytes: 32 * 1024 ** 2, max_wait: 5000 });
    expect(r.config.sinks.find((s) => s.name === "other")!.driving.batch).toEqual({ max_records: 1000, max_bytes: 4 * 1024 ** 2, max_wait: 100 });
    const custom = parseConfig(yaml(", batch: { max_wait: 30s }"), {});
    if (!custom.ok) throw new Error(JSON.stringify(custom.issues));
    expect(custom.config.sinks.find((s) => s.name === "lake")!.driving.batch).toEqual({ max_records: 5000, max_bytes: 32 * 1024 ** 2, max_wait: 30_000 });
  });

  it("gives the library's parquet factory the same defaults", () => {
    const factory = sinks.parquet({ path: "lake" });
    expect(sinkDrivingSchemaFor(factory.batchDefaults).parse({}).batch).toEqual({ max_records: 5000, max_bytes: 32 * 1024 ** 2, max_wait: 5000 });
    expect(sinkDrivingSchemaFor(sinks.blackhole().batchDefaults).parse({}).batch.max_wait).toBe(100);
  });
});

describe("partition values", () => {
  it("encodes values as directory names readers decode, and missing or empty ones as Hive's NULL", () => {
    expect(encodePartitionValue("sensor-7", "s")).toBe("sensor-7");
    expect(encodePartitionValue("a/b c", "s")).toBe("a%2Fb%20c");
    expect(encodePartitionValue("..", "s")).toBe("%2E.");
    expect(encodePartitionValue(".hidden", "s")).toBe("%2Ehidden");
    expect(encodePartitionValue(42, "s")).toBe("42");
    expect(encodePartitionValue({ a: 1 }, "s")).toBe("%7B%22a%22%3A1%7D");
    for (const v of [undefined, null, ""]) expect(encodePartitionValue(v, "s")).toBe(NULL_PARTITION);
    expect(() => encodePartitionValue("x".repeat(201), "s")).toThrow(PartitionValueError);
  });
});

describe("column inference", () => {
  const rec = (payload: SluiceRecord["payload"]): SluiceRecord => ({ id: "x", key: undefined, payload, eventTime: undefined, receivedAt: 0, source: "t", attempts: 0 });

  it("types top-level fields from a batch, in first-seen order, leaving out nulls, excluded names and non-identifiers", () => {
    const columns = inferColumns(
      [
        rec({ id: "a", n: 1, s: "x", b: true, o: { k: 1 }, l: [1], mix: 1, nil: null, "not ok": 1, site: "a" }),
        rec({ n: 2.5, s: "y", b: false, mix: "m", late: 3, nil: null }),
      ],
      new Set(["id", "site"]),
    );
    expect(columns).toEqual({
      n: { field: "n", type: "double precision" },
      s: { field: "s", type: "text" },
      b: { field: "b", type: "boolean" },
      o: { field: "o", type: "jsonb" },
      l: { field: "l", type: "jsonb" },
      mix: { field: "mix", type: "jsonb" },
      late: { field: "late", type: "double precision" },
    });
  });
});

describe("segment writer: whole files", () => {
  let dir: string;
  let remove: () => Promise<void>;
  beforeEach(async () => ({ dir, remove } = await tempDir("sluice-segments-")));
  afterEach(() => remove());

  const writer = (sub: string) =>
    createSegmentWriter({
      dir: join(dir, sub),
      prefix: "part",
      extension: "bin",
      rotateBytes: Number.POSITIVE_INFINITY,
      rotateAfterMs: 0,
      fsync: true,
      leftovers: "remove",
      clock: systemClock,
      label: "test",
      report: (err) => {
        throw err;
      },
    });

  it("creates nested directories, writes under a final name only once complete, and refuses writes before open and after close", async () => {
    const w = writer("a/b");
    await expect(w.writeWhole(new Uint8Array([1]))).rejects.toMatchObject({ code: "ERR_INTERNAL" });
    await w.open();
    const path = await w.writeWhole(new Uint8Array([1, 2, 3]));
    expect(path).toMatch(/a\/b\/part-\d{8}T\d{9}Z-000000\.bin$/);
    expect(await readdir(join(dir, "a/b"))).toEqual([path.split("/").at(-1)]);
    await w.close();
    await expect(w.writeWhole(new Uint8Array([1]))).rejects.toMatchObject({ code: "ERR_INTERNAL" });
  });

  it("fails a write whose directory is gone with ERR_SINK_WRITE, leaving no temp file", async () => {
    const w = writer("gone");
    await w.open();
    await remove();
    await expect(w.writeWhole(new Uint8Array([1]))).rejects.toMatchObject({ code: "ERR_SINK_WRITE" });
  });
});
