/**
 * The `parquet` sink's options: where files go, how they are partitioned, rolled and laid out,
 * and which columns they have.
 */
import { z } from "zod";
import { checkReservedColumns, columnsOption } from "../../components/columns.js";
import { byteSize, fileNamePrefix } from "../../components/options.js";

/** Columns every file of this sink has; neither `columns` nor a partition may use these names. */
export const ENVELOPE_COLUMNS = ["id", "key", "event_time", "ingested_at", "payload"] as const;

/** A name that is a plain identifier in every query engine, unquoted. */
const NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

const datePartition = z.strictObject({
  date: z.enum(["event_time", "ingest_time"]).describe("Which time's UTC date names the directory: the record's event time, or when sluice received it"),
  granularity: z
    .enum(["day", "hour"])
    .default("day")
    .describe("day: <name>=2024-06-01; hour: <name>=2024-06-01/hour=7 (two levels, the hour 0-23)"),
  name: z.string().regex(NAME, "must be a plain identifier").default("date").describe("Partition column name"),
});

const fieldPartition = z.strictObject({
  field: z.string().min(1).describe("Payload field whose value names the directory (dotted path allowed)"),
  name: z.string().regex(NAME, "must be a plain identifier").optional().describe("Partition column name; default: the field with dots as underscores"),
});

/** One level of `partition_by`. */
export type PartitionSpec = z.output<typeof datePartition> | z.output<typeof fieldPartition>;

/** The name of a partition level's column (the `<name>=` of its directories). */
export function partitionName(spec: PartitionSpec): string {
  return "date" in spec ? spec.name : (spec.name ?? spec.field.replace(/\./g, "_"));
}

/** The `parquet` sink's options, with their defaults. */
export const parquetOptions = z
  .strictObject({
    path: z.string().min(1).describe("Directory of the lake (files and partition directories); created on connect; relative to the working directory"),
    prefix: fileNamePrefix("part").describe("File names are <prefix>-<UTC time>-<sequence>.parquet; give each sluice writing the same path its own"),
    partition_by: z
      .array(z.union([datePartition, fieldPartition]))
      .default([])
      .describe("Hive-style directory levels, in order: { date: event_time | ingest_time, granularity, name } or { field, name }"),
    columns: columnsOption(),
    infer_columns: z
      .boolean()
      .default(true)
      .describe("Without columns: type columns from the first batch's top-level payload fields (numbers double, strings text, booleans, objects and arrays jsonb)"),
    payload: z.enum(["json", "none"]).default("json").describe("json: the whole payload as JSON text in column payload; none: no payload column"),
    file_max_rows: z.number().int().positive().default(1_000_000).describe("A file holds at most this many rows (a bigger batch is split into several files)"),
    file_max_bytes: byteSize()
      .default(256 * 1024 ** 2)
      .describe("A file holds at most about this many bytes of row data, before compression (a bigger batch is split)"),
    row_group_bytes: byteSize()
      .default(64 * 1024 ** 2)
      .describe("Row groups hold about this many bytes of row data, before compression"),
    compression: z.enum(["snappy", "none"]).default("snappy").describe("Page compression"),
    fsync: z.boolean().default(true).describe("fsync each file and its directory before the batch is acknowledged; false trades durability for speed"),
  })
  .superRefine((o, ctx) => {
    const reserved = new Set<string>(ENVELOPE_COLUMNS);
    checkReservedColumns(o.columns, reserved, ctx);
    const seen = new Set<string>();
    o.partition_by.forEach((spec, i) => {
      const names = "date" in spec && spec.granularity === "hour" ? [spec.name, "hour"] : [partitionName(spec)];
      for (const name of names) {
        if (!NAME.test(name)) ctx.addIssue({ code: "custom", path: ["partition_by", i, "name"], message: `"${name}" is not a plain identifier; give a name` });
        else if (reserved.has(name)) ctx.addIssue({ code: "custom", path: ["partition_by", i, "name"], message: `"${name}" is a column the sink fills itself` });
        else if (name in o.columns) ctx.addIssue({ code: "custom", path: ["partition_by", i, "name"], message: `"${name}" is also one of columns; a partition column is read from the directory names` });
        else if (seen.has(name)) ctx.addIssue({ code: "custom", path: ["partition_by", i, "name"], message: `"${name}" names two partition levels` });
        seen.add(name);
      }
    });
  });

/** Validated options. */
export type ParquetOptions = z.output<typeof parquetOptions>;
