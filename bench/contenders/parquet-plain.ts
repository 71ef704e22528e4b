/**
 * Baseline: a plain script writing the same rows with the same library (hyparquet-writer) and the
 * same layout as the parquet sink: read the file 1 MiB at a time, split lines, `JSON.parse`, fill column arrays,
 * and every `rowsPerFile` rows encode one file, write it under a temp name, fsync, rename, fsync
 * the directory. No engine, no checkpoints, no retries.
 */
import { closeSync, fsyncSync, openSync, readSync, renameSync, writeSync } from "node:fs";
import { join } from "node:path";
import { ByteWriter, ParquetWriter, type SchemaElement } from "hyparquet-writer";
import { fail, finish, startClock } from "./protocol.js";
import { readParquetTask } from "./parquet-protocol.js";

const task = readParquetTask();
const text = (type: "UTF8") => ({ type: "BYTE_ARRAY" as const, converted_type: type });
const time = { type: "INT64" as const, logical_type: { type: "TIMESTAMP" as const, isAdjustedToUTC: true, unit: "MILLIS" as const } };
const schema: SchemaElement[] = [
  { name: "root", num_children: 9 },
  { name: "id", ...text("UTF8"), repetition_type: "REQUIRED" },
  { name: "key", ...text("UTF8"), repetition_type: "OPTIONAL" },
  { name: "event_time", ...time, repetition_type: "OPTIONAL" },
  { name: "ingested_at", ...time, repetition_type: "REQUIRED" },
  { name: "sensor", ...text("UTF8"), repetition_type: "OPTIONAL" },
  { name: "value", type: "DOUBLE", repetition_type: "OPTIONAL" },
  { name: "unit", ...text("UTF8"), repetition_type: "OPTIONAL" },
  { name: "seq", type: "INT64", repetition_type: "OPTIONAL" },
  { name: "payload", ...text("UTF8"), repetition_type: "REQUIRED" },
];

let files = 0;
function writeFile(columns: unknown[][]): void {
  const out = new ByteWriter();
  const writer = new ParquetWriter({ writer: out, schema, codec: "SNAPPY", createdBy: "bench" });
  void writer.write({ columnData: schema.slice(1).map((e, i) => ({ name: e.name, data: columns[i] as never })), rowGroupSize: columns[0]!.length });
  void writer.finish();
  const name = `part-${String(files++).padStart(6, "0")}.parquet`;
  const tmp = join(task.lake, `.${name}.tmp`);
  const fd = openSync(tmp, "wx");
  writeSync(fd, out.getBytes());
  fsyncSync(fd);
  closeSync(fd);
  renameSync(tmp, join(task.lake, name));
  const dir = openSync(task.lake, "r");
  fsyncSync(dir);
  closeSync(dir);
}

const READ_BYTES = 1024 * 1024;
const LF = 10;
let columns: unknown[][] = schema.slice(1).map(() => []);
let count = 0;

function row(line: string): void {
  const p = JSON.parse(line) as { id: string; sensor: string; value: number; unit: string; ts: string; seq: number };
  const c = columns;
  c[0]!.push(p.id);
  c[1]!.push(null);
  c[2]!.push(BigInt(Date.parse(p.ts)));
  c[3]!.push(BigInt(Date.now()));
  c[4]!.push(p.sensor);
  c[5]!.push(p.value);
  c[6]!.push(p.unit);
  c[7]!.push(BigInt(p.seq));
  c[8]!.push(line);
  count++;
  if (c[0]!.length === task.rowsPerFile) {
    writeFile(c);
    columns = schema.slice(1).map(() => []);
  }
}

const started = startClock();
// Reads as the main bench's plain loop does: 1 MiB at a time, lines found by byte, a line cut by a read carried over.
const fd = openSync(task.file, "r");
const buf = Buffer.allocUnsafe(READ_BYTES);
// Bytes of a line cut by a read (a multi-byte character may be cut too: decode only whole lines).
let carry: Buffer | undefined;
for (;;) {
  const n = readSync(fd, buf, 0, READ_BYTES, null);
  if (n === 0) break;
  let start = 0;
  for (let nl = buf.indexOf(LF, start); nl !== -1 && nl < n; nl = buf.indexOf(LF, start)) {
    const line = carry === undefined ? buf.toString("utf8", start, nl) : Buffer.concat([carry, buf.subarray(start, nl)]).toString("utf8");
    carry = undefined;
    if (line.length > 0) row(line);
    start = nl + 1;
  }
  if (start < n) carry = carry === undefined ? Buffer.from(buf.subarray(start, n)) : Buffer.concat([carry, buf.subarray(start, n)]);
}
closeSync(fd);
if (carry !== undefined && carry.toString("utf8").trim() !== "") row(carry.toString("utf8"));
if (columns[0]!.length > 0) writeFile(columns);
if (files === 0) fail("plain: wrote no file");
finish(task, "plain", count, started);
