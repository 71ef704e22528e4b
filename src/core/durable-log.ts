/**
 * The on-disk format of the durable buffer (`durable-buffer.ts`): framed, checksummed entries in
 * append-only segment files, the `acked` progress file, and the recovery scan.
 * Everything here is stateless; the buffer owns the files.
 *
 * Layout of `<path>/`:
 * - `<16-digit seq of the first entry>.seg`: entries, each a 12-byte header
 *   `{ magic u32 LE, body length u32 LE, crc32(body) u32 LE }` and a UTF-8 body of one of two kinds,
 *   told apart by what follows `[seq,` (a string in the first, the number 2 in the second):
 *   - JSON: `[seq, source, receivedAt, [[id, key, payload, eventTime, bytes(, [code, message, location], raw)], ...]]`;
 *   - lines (version 2, written for a chunk that comes with its records' lines, see {@link Chunk.lines}):
 *     `[seq, 2, source, receivedAt, [[id, key, eventTime, bytes(, [code, message, location], raw)], ...]]`,
 *     a `\n` (JSON text has no raw newline), then each record's payload as a JSON text without a
 *     raw newline, followed by `\n`, in the rows' order: the producer's own bytes, not re-serialised.
 *   Earlier versions wrote JSON entries only and cannot read lines entries (they would quarantine them).
 * - `acked`: `<crc32 hex> {"through":N,"released":[[a,b],...],"written":W}`: entries up to N and in
 *   each range are released; every entry below W had been written (the log's index: an entry
 *   below W that is neither released nor found on start was lost). Files of earlier versions have no W.
 * - `lock`: a symlink whose target is the pid (and start time) of the process that has the log open (`dir-lock.ts`).
 * - `quarantine/<segment>-<offset>.bad`: bytes recovery cut out of a segment, or an entry that
 *   failed its check when read back. A segment whose copy failed is kept until it succeeds.
 * - `write-probe`: a scratch file, there only while writes fail (see {@link writeProbe}).
 */
import { constants as fsConstants } from "node:fs";
import fs from "node:fs/promises";
import { join } from "node:path";
import { crc32 } from "node:zlib";
import { writeFileAtomic } from "./atomic-write.js";
import type { Chunk } from "./buffer.js";
import { ERROR_CODES, SluiceError, type ErrorCode } from "./errors.js";
import { RecordEntry, type JsonObject } from "./record.js";

type Bytes = globalThis.Buffer;

/** First bytes of every entry (`d1 5c e0 01`). Byte 0x01 never occurs in UTF-8 JSON, so a body cannot fake a header. */
const MAGIC = 0x01e05cd1;
const MAGIC_BYTES = globalThis.Buffer.from([0xd1, 0x5c, 0xe0, 0x01]);
/** Bytes of an entry header. */
export const HEADER_BYTES = 12;
/** Longest body a header may claim; a longer one is corrupt, and a chunk that would need one is refused. */
export const MAX_BODY_BYTES = 1024 * 1024 * 1024;

const SEGMENT_FILE = /^(\d{16})\.seg$/;

/** File name of the segment whose first entry has `seq`. */
export function segmentName(seq: number): string {
  return `${String(seq).padStart(16, "0")}.seg`;
}

/** True for a segment file name (see {@link segmentName}). */
export function isSegmentName(name: string): boolean {
  return SEGMENT_FILE.test(name);
}

// ---------------------------------------------------------------------------------------------
// Entries

/** A chunk encoded up to its seq, which the log assigns only when it admits the entry. */
export interface EncodedChunk {
  /** The body after `[seq,`, in pieces written one after the other: a JSON entry's `"source",receivedAt,[rows]]`, or a lines entry's meta and lines. */
  readonly parts: readonly Bytes[];
  /** Bytes of `parts`. */
  readonly size: number;
  readonly records: number;
  /** Sum of the records' estimated bytes (what the memory bound counts). */
  readonly bytes: number;
}

/** What a lines entry's body has after `[seq,`: its version. */
const LINES_VERSION = "2,";
const NEWLINE = globalThis.Buffer.from("\n");

/** A record's row fields after the payload: `,eventTime,bytes` and, for unparsable input, `,[code,message,location],raw`; then `]`. */
function rowEnd(r: Chunk["records"][number]): string {
  // An absent event time is written as null, which decodes back to undefined.
  const end = `,${finiteOrNull(r.eventTime)},${r.bytes}`;
  return r.failure === undefined ? `${end}]` : `${end},${JSON.stringify([r.failure.code, r.failure.message, r.failure.location])},${JSON.stringify(r.raw ?? null)}]`;
}

/** A string JSON.stringify would not escape: space and above, but no quote, backslash or surrogate. */
const PLAIN_STRING = /^[\u0020\u0021\u0023-\u005b\u005d-\ud7ff\ue000-\uffff]*$/;

/** `JSON.stringify(s)`; a third of its cost for the plain strings ids and keys mostly are. */
function jsonString(s: string): string {
  return PLAIN_STRING.test(s) ? `"${s}"` : JSON.stringify(s);
}

/** `[id,key` of a record's row; an absent key is written as null, which decodes back to undefined. */
function rowStart(r: Chunk["records"][number]): string {
  return `[${jsonString(r.id)},${r.key === undefined ? "null" : jsonString(r.key)}`;
}

/**
 * Encodes a chunk's records (one source per chunk, as {@link Chunk} says): a lines entry when the
 * chunk has `lines` (the payloads are those bytes, written as they came), else a JSON entry. Throws
 * what `JSON.stringify` throws for a payload that is not JSON (a BigInt, a cycle).
 */
export function encodeChunk(chunk: Chunk): EncodedChunk {
  const records = chunk.records;
  let bytes = 0;
  for (let i = 0; i < records.length; i++) bytes += records[i]!.bytes;
  const head = `${JSON.stringify(records[0]?.source ?? "")},${chunk.ticket.receivedAt},[`;
  const lines = chunk.lines;
  if (lines !== undefined) {
    let meta = `${LINES_VERSION}${head}`;
    for (let i = 0; i < records.length; i++) meta += `${i === 0 ? "" : ","}${rowStart(records[i]!)}${rowEnd(records[i]!)}`;
    const parts = [globalThis.Buffer.from(`${meta}]]\n`, "utf8"), lines];
    if (lines.length === 0 || lines[lines.length - 1] !== 0x0a) parts.push(NEWLINE);
    return { parts, size: parts.reduce((n, p) => n + p.length, 0), records: records.length, bytes };
  }
  // Built as text: a payload whose JSON the source kept (`text`) is written as is, not serialized
  // again, which is most of the cost of an entry.
  let json = `[${head}`;
  for (let i = 0; i < records.length; i++) {
    const r = records[i]!;
    json += `${i === 0 ? "" : ","}${rowStart(r)},${r.text ?? JSON.stringify(r.payload)}${rowEnd(r)}`;
  }
  json += "]]";
  const tail = globalThis.Buffer.from(json, "utf8").subarray(1);
  return { parts: [tail], size: tail.length, records: records.length, bytes };
}

function finiteOrNull(n: number | undefined): string {
  return n !== undefined && Number.isFinite(n) ? String(n) : "null";
}

/** Bytes the entry of `encoded` takes in a segment when it gets `seq`. */
export function frameSize(seq: number, encoded: EncodedChunk): number {
  return HEADER_BYTES + String(seq).length + 2 + encoded.size;
}

/** The header and the body's `[seq,` in one buffer; the entry is that followed by `encoded.parts`. */
export function frameHead(seq: number, encoded: EncodedChunk): Bytes {
  const prefix = `[${seq},`;
  const head = globalThis.Buffer.allocUnsafe(HEADER_BYTES + prefix.length);
  head.write(prefix, HEADER_BYTES, "latin1");
  head.writeUInt32LE(MAGIC, 0);
  head.writeUInt32LE(prefix.length + encoded.size, 4);
  let crc = crc32(head.subarray(HEADER_BYTES));
  for (const part of encoded.parts) crc = crc32(part, crc);
  head.writeUInt32LE(crc, 8);
  return head;
}

/** A decoded entry. */
export interface DecodedEntry {
  readonly seq: number;
  /** Bytes the entry takes in its segment, header included. */
  readonly length: number;
  readonly receivedAt: number;
  /** Fresh records, their `ticket` not yet set. */
  readonly records: RecordEntry[];
  /** Sum of the records' estimated bytes. */
  readonly bytes: number;
}

/** Why bytes at an offset are not an entry. */
export type FrameProblem = "short_header" | "bad_magic" | "bad_length" | "past_eof" | "bad_checksum" | "undecodable" | "bad_seq";

/** Reads the entry at `offset` of `data`: the entry, or why there is none. `minSeq`: lowest plausible seq. */
export function readFrame(data: Bytes, offset: number, minSeq: number): DecodedEntry | FrameProblem {
  if (offset + HEADER_BYTES > data.length) return "short_header";
  if (data.readUInt32LE(offset) !== MAGIC) return "bad_magic";
  const length = data.readUInt32LE(offset + 4);
  if (length < 2 || length > MAX_BODY_BYTES) return "bad_length";
  const end = offset + HEADER_BYTES + length;
  if (end > data.length) return "past_eof";
  const body = data.subarray(offset + HEADER_BYTES, end);
  if (crc32(body) !== data.readUInt32LE(offset + 8)) return "bad_checksum";
  const decoded = decodeBody(body, HEADER_BYTES + length);
  if (decoded === undefined) return "undecodable";
  return decoded.seq < minSeq ? "bad_seq" : decoded;
}

/** Offset of the next header at or after `from` whose length fits and whose checksum holds, or -1. */
function nextFrame(data: Bytes, from: number): number {
  for (let at = data.indexOf(MAGIC_BYTES, from); at >= 0; at = data.indexOf(MAGIC_BYTES, at + 1)) {
    if (at + HEADER_BYTES > data.length) return -1;
    const length = data.readUInt32LE(at + 4);
    const end = at + HEADER_BYTES + length;
    if (length >= 2 && end <= data.length && crc32(data.subarray(at + HEADER_BYTES, end)) === data.readUInt32LE(at + 8)) return at;
  }
  return -1;
}

function isObject(v: unknown): v is JsonObject {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/**
 * A row's record: `[id, key, payload, eventTime, bytes(, failure, raw)]` in a JSON entry; in a lines
 * entry the same without the payload, which is `line` (held as text, parsed on first read).
 */
function decodeRow(row: unknown, source: string, line?: string): RecordEntry | undefined {
  const fields = line === undefined ? 5 : 4;
  if (!Array.isArray(row) || (row.length !== fields && row.length !== fields + 2)) return undefined;
  const values = row as unknown[];
  const [id, key] = values;
  const payload = line === undefined ? values[2] : undefined;
  const eventTime = values[fields - 2];
  const bytes = values[fields - 1];
  if (typeof id !== "string" || (key !== null && typeof key !== "string") || (line === undefined && !isObject(payload))) return undefined;
  if ((eventTime !== null && typeof eventTime !== "number") || typeof bytes !== "number") return undefined;
  const entry = new RecordEntry(id, key ?? undefined, payload as JsonObject | undefined, eventTime ?? undefined, source, bytes);
  if (line !== undefined) entry.holdText(line);
  if (row.length === fields + 2) {
    const failure: unknown = values[fields];
    const raw: unknown = values[fields + 1];
    if (!Array.isArray(failure) || failure.length !== 3 || (raw !== null && typeof raw !== "string")) return undefined;
    const [code, message, location] = failure as unknown[];
    if (typeof code !== "string" || typeof message !== "string" || (location !== null && typeof location !== "string")) return undefined;
    // A code a later version dropped still marks the record as unparsable input.
    const known: ErrorCode = code in ERROR_CODES ? (code as ErrorCode) : "ERR_RECORD_MALFORMED";
    entry.failure = new SluiceError(known, message, location === null ? {} : { location });
    entry.raw = raw ?? undefined;
  }
  return entry;
}

/** A body's JSON part: the whole body of a JSON entry, up to the first `\n` of a lines entry (whose lines follow). */
function decodeBody(body: Bytes, length: number): DecodedEntry | undefined {
  // `[seq,2,` starts a lines entry; a JSON entry has a string (`"`) after `[seq,`.
  const comma = body.indexOf(0x2c);
  const linesEntry = comma > 0 && body[comma + 1] === 0x32 && body[comma + 2] === 0x2c;
  const metaEnd = linesEntry ? body.indexOf(0x0a) : body.length;
  if (metaEnd < 0) return undefined;
  let v: unknown;
  try {
    v = JSON.parse(body.toString("utf8", 0, metaEnd));
  } catch {
    return undefined;
  }
  if (!Array.isArray(v) || v.length !== (linesEntry ? 5 : 4)) return undefined;
  const [seq, source, receivedAt, rows] = linesEntry ? [v[0], v[2], v[3], v[4]] : (v as unknown[]);
  if (!Number.isSafeInteger(seq) || (seq as number) < 0 || typeof source !== "string" || typeof receivedAt !== "number") return undefined;
  if (!Array.isArray(rows) || rows.length === 0) return undefined;
  const lines = linesEntry ? splitLines(body.toString("utf8", metaEnd + 1), rows.length) : undefined;
  if (linesEntry && lines === undefined) return undefined;
  const records: RecordEntry[] = new Array(rows.length);
  let bytes = 0;
  for (let i = 0; i < rows.length; i++) {
    const r = decodeRow(rows[i], source, lines?.[i]);
    if (r === undefined) return undefined;
    records[i] = r;
    bytes += r.bytes;
  }
  return { seq: seq as number, length, receivedAt, records, bytes };
}

/**
 * A lines entry's payloads: exactly `count` lines, each ending with `\n` and each an object's text
 * (`{` to `}`; the checksum held and the writer took them from parsed lines, so this is a check
 * of shape only); undefined otherwise.
 */
function splitLines(text: string, count: number): string[] | undefined {
  const lines: string[] = new Array<string>(count);
  let start = 0;
  for (let i = 0; i < count; i++) {
    const end = text.indexOf("\n", start);
    if (end < 0 || text.charCodeAt(start) !== 0x7b || text.charCodeAt(end - 1) !== 0x7d) return undefined;
    lines[i] = text.slice(start, end);
    start = end + 1;
  }
  return start === text.length ? lines : undefined;
}

// ---------------------------------------------------------------------------------------------
// Recovery scan

/** An entry the scan found intact. */
export interface ScannedEntry {
  readonly seq: number;
  readonly offset: number;
  readonly length: number;
  readonly records: number;
  readonly bytes: number;
}

/** Bytes the scan could not read as entries. */
export interface BadRegion {
  readonly offset: number;
  readonly length: number;
  /** What was wrong at `offset`. */
  readonly problem: FrameProblem;
  /** True when no intact entry follows: a torn tail, cut off by truncating the segment. */
  readonly tail: boolean;
}

/** What {@link scanSegment} found. */
export interface SegmentScan {
  readonly entries: ScannedEntry[];
  readonly bad: BadRegion[];
  /** Where the intact part ends: the segment is truncated here when a torn tail follows. */
  readonly end: number;
}

/**
 * Reads every entry of a segment. A bad region followed by an intact entry (resync: the next
 * magic whose checksum holds) is skipped; one that runs to the end is a torn tail. Entries whose
 * seq is not above `afterSeq` or the entry before them are bad (`bad_seq`), which keeps seqs rising.
 */
export function scanSegment(data: Bytes, afterSeq: number): SegmentScan {
  const entries: ScannedEntry[] = [];
  const bad: BadRegion[] = [];
  let last = afterSeq;
  let offset = 0;
  while (offset < data.length) {
    const frame = readFrame(data, offset, last + 1);
    if (typeof frame !== "string") {
      entries.push({ seq: frame.seq, offset, length: frame.length, records: frame.records.length, bytes: frame.bytes });
      last = frame.seq;
      offset += frame.length;
      continue;
    }
    const next = nextFrame(data, offset + 1);
    if (next < 0) {
      bad.push({ offset, length: data.length - offset, problem: frame, tail: true });
      return { entries, bad, end: offset };
    }
    bad.push({ offset, length: next - offset, problem: frame, tail: false });
    offset = next;
  }
  return { entries, bad, end: data.length };
}

// ---------------------------------------------------------------------------------------------
// The acked file

/** Release progress: every entry with seq <= `through` or inside one of `released` (inclusive, rising) is released. */
export interface AckedState {
  readonly through: number;
  readonly released: readonly (readonly [number, number])[];
  /** Every entry with a lower seq had been written; absent in files of earlier versions. */
  readonly written?: number;
}

/** Whether `state` counts `seq` as released: at or below `through`, or in a released range (found by binary search). */
export function isReleased(state: AckedState, seq: number): boolean {
  if (seq <= state.through) return true;
  const ranges = state.released;
  let lo = 0;
  let hi = ranges.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const [a, b] = ranges[mid]!;
    if (seq < a) hi = mid - 1;
    else if (seq > b) lo = mid + 1;
    else return true;
  }
  return false;
}

/** How many seqs in `[from, to)` `state` does not count as released. */
export function unreleasedIn(state: AckedState, from: number, to: number): number {
  const start = Math.max(from, state.through + 1);
  let n = Math.max(0, to - start);
  for (const [a, b] of state.released) n -= Math.max(0, Math.min(b + 1, to) - Math.max(a, start));
  return n;
}

/** What {@link readAcked} found. */
export type AckedRead = { tag: "missing" } | { tag: "ok"; state: AckedState } | { tag: "corrupt"; detail: string; data: Bytes };

function isAckedState(v: unknown): v is AckedState {
  if (!isObject(v) || !Number.isSafeInteger(v.through) || (v.through as number) < -1 || !Array.isArray(v.released)) return false;
  let prev = v.through as number;
  for (const r of v.released) {
    if (!Array.isArray(r) || r.length !== 2 || !Number.isSafeInteger(r[0]) || !Number.isSafeInteger(r[1])) return false;
    const [a, b] = r as [number, number];
    if (a <= prev || b < a) return false;
    prev = b;
  }
  return v.written === undefined || (Number.isSafeInteger(v.written) && (v.written as number) >= 0);
}

/** The acked file's content for `state`: a checksum, a space, the JSON. */
export function serializeAcked(state: AckedState): string {
  const json = JSON.stringify({ through: state.through, released: state.released, written: state.written });
  return `${crc32(json).toString(16).padStart(8, "0")} ${json}\n`;
}

/** Reads `<dir>/acked`; a file that is unreadable, fails its checksum or is not a valid state is `corrupt`. */
export async function readAcked(dir: string): Promise<AckedRead> {
  let data: Bytes;
  try {
    data = await fs.readFile(join(dir, "acked"));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return { tag: "missing" };
    return { tag: "corrupt", detail: `unreadable: ${(err as Error).message}`, data: globalThis.Buffer.alloc(0) };
  }
  const text = data.toString("utf8");
  const match = /^([0-9a-f]{8}) (.*)\n$/s.exec(text);
  if (match === null) return { tag: "corrupt", detail: "not in the acked format", data };
  if (parseInt(match[1]!, 16) !== crc32(match[2]!)) return { tag: "corrupt", detail: "checksum mismatch", data };
  let v: unknown;
  try {
    v = JSON.parse(match[2]!);
  } catch {
    return { tag: "corrupt", detail: "undecodable", data };
  }
  return isAckedState(v) ? { tag: "ok", state: v } : { tag: "corrupt", detail: "not a valid release state", data };
}

/**
 * Replaces `<dir>/acked` with `text` atomically (write a temp file, rename over). A write that
 * fails (a full disk) removes its temp file: left there, it would hold on to the space it got.
 */
export async function writeAcked(dir: string, text: string, fsync: boolean): Promise<void> {
  await writeFileAtomic(join(dir, "acked"), text, { tmp: join(dir, "acked.tmp"), sync: fsync ? "data" : "none", syncDir: false });
}

/**
 * Copies bad bytes to `<dir>/quarantine/<name>.bad`; returns the file's path, and whether that
 * file already held these very bytes (quarantined by an earlier run: an entry found bad when read
 * back stays in its segment, which the next start scans while other entries keep it).
 */
export async function quarantine(dir: string, name: string, data: Bytes): Promise<{ file: string; already: boolean }> {
  const qdir = join(dir, "quarantine");
  await fs.mkdir(qdir, { recursive: true });
  const file = join(qdir, `${name}.bad`);
  const before = await fs.readFile(file).catch(() => undefined);
  if (before?.equals(data)) return { file, already: true };
  await fs.writeFile(file, data);
  return { file, already: false };
}

/**
 * Writes `size` bytes to `<dir>/write-probe` the way segments are written (`O_DSYNC` with
 * `fsync`), then removes it: true when the write succeeded. Never throws.
 */
export async function writeProbe(dir: string, size: number, fsync: boolean): Promise<boolean> {
  const file = join(dir, "write-probe");
  let ok = true;
  try {
    const fh = await fs.open(file, fsync ? fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_TRUNC | fsConstants.O_DSYNC : "w");
    try {
      for (let done = 0; done < size; ) {
        const { bytesWritten } = await fh.write(globalThis.Buffer.alloc(size - done), 0, size - done, done);
        if (bytesWritten === 0) throw new Error("write made no progress");
        done += bytesWritten;
      }
    } finally {
      await fh.close();
    }
  } catch {
    ok = false;
  }
  await fs.rm(file, { force: true }).catch(() => {});
  return ok;
}
