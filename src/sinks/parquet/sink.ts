/**
 * The `parquet` sink: a Parquet data lake in a directory, Hive-style partitions, every file
 * complete before a reader can see it. Options in `options.ts`, directories in `partitions.ts`,
 * columns and encoding in `layout.ts`; the files go through the shared segment writer.
 */
import { readdir } from "node:fs/promises";
import { join, relative, resolve } from "node:path";
import type { Clock } from "../../core/clock.js";
import { classify, SluiceError } from "../../core/errors.js";
import type { EventSink } from "../../core/events.js";
import type { SluiceRecord } from "../../core/record.js";
import { defineComponent, type RecordFailure, type Sink, type WriteResult } from "../../components/contracts.js";
import { createSegmentWriter, makeDirDurable, segmentNamePattern, wrapFsError, type SegmentWriter } from "../../components/segment-writer.js";
import { buildLayout, encodeFile, inferColumns, loadWriter, type Layout } from "./layout.js";
import { ENVELOPE_COLUMNS, parquetOptions, partitionName, type ParquetOptions } from "./options.js";
import { partitioner } from "./partitions.js";

const EXTENSION = "parquet";

/** Partition directories whose writer is kept (its sequence number known); past this the oldest is forgotten and re-read on its next use. */
const MAX_WRITERS = 1024;

/** What {@link createParquetSink} needs; the definition builds it from validated options. */
export interface ParquetSinkSettings {
  /** The lake's root directory. */
  readonly dir: string;
  readonly options: Omit<ParquetOptions, "path">;
  /** Timestamps file names and `ingested_at`. */
  readonly clock: Clock;
  /** Where a failure after a file was durable is reported (a directory sync the next write repeats). */
  readonly emit?: EventSink;
  /** Component name for those reports. */
  readonly name?: string;
}

/** The rows of one partition directory in a batch, column by column. */
interface Group {
  readonly dir: string;
  /** Index in the batch of each row. */
  readonly indexes: number[];
  /** Size estimate of each row, bytes. */
  readonly bytes: number[];
  /** One array per layout column. */
  readonly columns: unknown[][];
}

/** A file's share of a group: rows [start, end) and their row groups. */
interface FilePlan {
  readonly start: number;
  readonly end: number;
  readonly rowGroups: number[];
}

/** Cuts a group's rows into files (by rows and bytes) and each file into row groups (by bytes). */
function planFiles(bytes: readonly number[], o: Pick<ParquetOptions, "file_max_rows" | "file_max_bytes" | "row_group_bytes">): FilePlan[] {
  const plans: FilePlan[] = [];
  let start = 0;
  let fileBytes = 0;
  let groupRows = 0;
  let groupBytes = 0;
  let rowGroups: number[] = [];
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i]!;
    const rows = i - start;
    if (rows > 0 && (rows >= o.file_max_rows || fileBytes + b > o.file_max_bytes)) {
      rowGroups.push(groupRows);
      plans.push({ start, end: i, rowGroups });
      start = i;
      fileBytes = 0;
      groupRows = 0;
      groupBytes = 0;
      rowGroups = [];
    } else if (groupRows > 0 && groupBytes + b > o.row_group_bytes) {
      rowGroups.push(groupRows);
      groupRows = 0;
      groupBytes = 0;
    }
    fileBytes += b;
    groupRows++;
    groupBytes += b;
  }
  if (groupRows > 0) {
    rowGroups.push(groupRows);
    plans.push({ start, end: bytes.length, rowGroups });
  }
  return plans;
}

function rejected(record: SluiceRecord, index: number, err: unknown): RecordFailure {
  const message = `parquet sink: record ${record.id} cannot be stored: ${err instanceof Error ? err.message : String(err)}`;
  return { index, error: new SluiceError("ERR_SINK_REJECTED", message, { cause: err }) };
}

/**
 * Builds a parquet sink (what the `parquet` definition's factory returns).
 *
 * Each write turns its batch into files: one or more per partition directory it touches (split by
 * `file_max_rows` and `file_max_bytes`, row groups by `row_group_bytes`), each written under a
 * hidden temp name, synced, renamed to `<prefix>-<time>-<seq>.parquet` and its directory synced
 * (new partition directories' parents too); the write resolves only then. A file is never
 * appended to: a batch is acknowledged only once its files are complete and durable, so a reader
 * never sees a partial file, and the age of the newest data is bounded by `batch.max_wait`.
 *
 * At-least-once: a record redelivered (a retried write, a source re-read after a crash) lands in
 * another file; every row carries `id`, so readers deduplicate by it. A file that fails to write
 * fails only its own records (retryable, by index); the batch's other files stay.
 *
 * Connect walks the lake and removes temp files a crashed run left (never acknowledged: their
 * records come again). Gotchas: one sink per path and prefix (a second one would take the first
 * one's temp files for leftovers); the schema is fixed by `columns` or by the first batch after
 * each start, so files of different runs may differ in inferred columns (read with `union_by_name`).
 */
export function createParquetSink(settings: ParquetSinkSettings): Sink {
  const { dir: root, options: o, clock } = settings;
  const partitionOf = partitioner(o.partition_by);
  const partitionColumns = o.partition_by.flatMap((spec) => ("date" in spec && spec.granularity === "hour" ? [spec.name, "hour"] : [partitionName(spec)]));
  // A field named like a partition column stays in the payload: readers take that name from the directories.
  const excluded = new Set<string>([...ENVELOPE_COLUMNS, ...partitionColumns]);
  const segmentName = segmentNamePattern(o.prefix, EXTENSION);
  const writers = new Map<string, SegmentWriter>();
  let layout: Layout | undefined;
  let module: Awaited<ReturnType<typeof loadWriter>> | undefined;
  let closed = false;

  function report(err: unknown): void {
    const error = classify(err);
    settings.emit?.({ type: "component_error", component: settings.name ?? "parquet", code: error.code, message: error.message });
  }

  /** The opened writer of a partition directory (relative to the root). */
  async function writerFor(rel: string): Promise<SegmentWriter> {
    let writer = writers.get(rel);
    if (writer === undefined) {
      if (writers.size >= MAX_WRITERS) writers.delete(writers.keys().next().value!);
      writer = createSegmentWriter({
        dir: rel === "" ? root : join(root, rel),
        prefix: o.prefix,
        extension: EXTENSION,
        rotateBytes: Number.POSITIVE_INFINITY,
        rotateAfterMs: 0,
        fsync: o.fsync,
        leftovers: "remove",
        clock,
        label: "parquet sink",
        report,
      });
      writers.set(rel, writer);
    }
    try {
      await writer.open();
    } catch (err) {
      writers.delete(rel);
      // A partition directory that cannot be made fails its rows' write, not the connection.
      throw err instanceof SluiceError && err.code === "ERR_SINK_CONNECT" ? wrapFsError(err.cause, "parquet sink", "cannot prepare", rel) : err;
    }
    return writer;
  }

  /** Removes the temp files a crashed run left anywhere under the root (each directory's writer does it when opened). */
  async function recover(): Promise<void> {
    const dirs = new Set<string>();
    for (const entry of await readdir(root, { recursive: true, withFileTypes: true })) {
      if (entry.isFile() && entry.name.startsWith(".") && segmentName.exec(entry.name)?.[3] !== undefined) dirs.add(relative(root, entry.parentPath));
    }
    for (const rel of dirs) await writerFor(rel);
  }

  function group(records: readonly SluiceRecord[], current: Layout, failures: RecordFailure[]): Map<string, Group> {
    const groups = new Map<string, Group>();
    const width = current.names.length;
    const row: unknown[] = new Array(width);
    const ingestedAt = BigInt(clock.now());
    records.forEach((record, index) => {
      let dir: string;
      let bytes: number;
      try {
        dir = partitionOf(record);
        bytes = current.fill(record, ingestedAt, row);
      } catch (err) {
        failures.push(rejected(record, index, err));
        return;
      }
      let g = groups.get(dir);
      if (g === undefined) {
        g = { dir, indexes: [], bytes: [], columns: Array.from({ length: width }, () => []) };
        groups.set(dir, g);
      }
      g.indexes.push(index);
      g.bytes.push(bytes);
      for (let c = 0; c < width; c++) g.columns[c]!.push(row[c]);
    });
    return groups;
  }

  return {
    maxInFlight: 1,
    // A backlog of batches becomes fewer, larger files (up to one file's bounds), not a file per batch.
    preferredWrite: { maxRecords: o.file_max_rows, maxBytes: o.file_max_bytes },

    async connect() {
      try {
        await makeDirDurable(root, o.fsync);
        module ??= await loadWriter();
        await recover();
      } catch (err) {
        if (err instanceof SluiceError && err.code === "ERR_SINK_CONNECT") throw err;
        const error = wrapFsError(err, "parquet sink", "cannot prepare", root);
        throw new SluiceError("ERR_SINK_CONNECT", error.message, { cause: err, location: root });
      }
    },

    async write(records: readonly SluiceRecord[], signal: AbortSignal): Promise<WriteResult | void> {
      if (module === undefined || closed) throw new SluiceError("ERR_INTERNAL", `parquet sink: write ${closed ? "after close" : "before connect"}`);
      if (signal.aborted) throw new SluiceError("ERR_ABORTED", "parquet sink: aborted before writing", { cause: signal.reason });
      if (records.length === 0) return {};
      layout ??= buildLayout(Object.keys(o.columns).length > 0 || !o.infer_columns ? o.columns : inferColumns(records, excluded), o.payload);
      const failures: RecordFailure[] = [];
      const groups = group(records, layout, failures);
      let written = 0;
      let lastError: SluiceError | undefined;
      for (const g of groups.values()) {
        for (const plan of planFiles(g.bytes, o)) {
          const whole = plan.start === 0 && plan.end === g.indexes.length;
          const columns = whole ? g.columns : g.columns.map((c) => c.slice(plan.start, plan.end));
          try {
            const data = encodeFile(module, layout, columns, { compression: o.compression, rowGroups: plan.rowGroups });
            await (await writerFor(g.dir)).writeWhole(data);
            written += plan.end - plan.start;
          } catch (err) {
            lastError = classify(err, "ERR_SINK_WRITE");
            for (let i = plan.start; i < plan.end; i++) failures.push({ index: g.indexes[i]!, error: lastError });
          }
        }
      }
      // Nothing of the batch is stored: one failure of the whole batch (retried as a batch).
      if (written === 0 && lastError !== undefined) throw lastError;
      return failures.length > 0 ? { failures } : {};
    },

    async close() {
      closed = true;
      for (const writer of writers.values()) await writer.close();
      writers.clear();
    },
  };
}

/**
 * The `parquet` sink: Parquet files under `path`, Hive-style partitions (`partition_by`), each
 * file written under a temp name and renamed once complete and durable; a batch is acknowledged
 * only then. At-least-once: a redelivered record can appear in two files (dedupe by `id`). Batches
 * default to larger and slower than the engine's (5,000 records, 32 MiB, 5 s), since every batch
 * becomes at least one file.
 */
export const definition = defineComponent<typeof parquetOptions, Sink>({
  type: "parquet",
  summary: "Writes records as Parquet files into a directory with Hive-style partitions (a data lake; at-least-once)",
  options: parquetOptions,
  batchDefaults: { max_records: 5000, max_bytes: 32 * 1024 ** 2, max_wait: 5000 },
  create(opts, ctx) {
    const { path, ...options } = opts;
    return createParquetSink({ dir: resolve(ctx.baseDir, path), options, clock: ctx.clock, emit: ctx.emit, name: ctx.name });
  },
});
