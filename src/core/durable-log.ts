/**
 * The on-disk format of the durable buffer (`durable-buffer.ts`): framed, checksummed entries in
 * append-only segment files, the `acked` progress file, and the recovery scan.
 * Everything here is stateless; the buffer owns the files.
 *
 * Layout of `<path>/`:
 * - `<16-digit seq of the first entry>.seg`: entries, each a 12-byte header
 *   `{ magic u32 LE, body length u32 LE, crc32(body) u32 LE }` and a UTF-8 JSON body
 *   `[seq, source, receivedAt, [[id, key, payload, eventTime, bytes(, [code, message, location], raw)], ...]]`.
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
  /** The body after `[seq,`: `"source",receivedAt,[rows]]`. */
  readonly tail: Bytes;
  readonly records: number;
  /** Sum of the records' estimated bytes (what the memory bound counts). */
  readonly bytes: number;
}

/**
 * Encodes a chunk's records (one source per chunk, as {@link Chunk} says). Throws what
 * `JSON.stringify` throws for a payload that is not JSON (a BigInt, a cycle).
 */
export function encodeChunk(chunk: Chunk): EncodedChunk {
  const records = chunk.records;
  // Built as text: a payload whose JSON the source kept (`text`) is written as is, not serialized
  // again, which is most of the cost of an entry.
  let json = `[${JSON.stringify(records[0]?.source ?? "")},${chunk.ticket.receivedAt},[`;
  let bytes = 0;
  for (let i = 0; i < records.length; i++) {
    const r = records[i]!;
    bytes += r.bytes;
    const payload = r.text ?? JSON.stringify(r.payload);
    // An absent key or event time is written as null, which decodes back to undefined.
    json += `${i === 0 ? "" : ","}[${JSON.stringify(r.id)},${r.key === undefined ? "null" : JSON.stringify(r.key)},${payload},${finiteOrNull(r.eventTime)},${r.bytes}`;
    json += r.failure === undefined ? "]" : `,${JSON.stringify([r.failure.code, r.failure.message, r.failure.location])},${JSON.stringify(r.raw ?? null)}]`;
  }
  json += "]]";
  const encoded = globalThis.Buffer.from(json, "utf8");
  return { tail: encoded.subarray(1), records: records.length, bytes };
}

function finiteOrNull(n: number | undefined): string {
  return n !== undefined && Number.isFinite(n) ? String(n) : "null";
}

/** Bytes the entry of `encoded` takes in a segment when it gets `seq`. */
export function frameSize(seq: number, encoded: EncodedChunk): number {
  return HEADER_BYTES + String(seq).length + 2 + encoded.tail.length;
}

/** The header and the body's `[seq,` in one buffer; the entry is that followed by `encoded.tail`. */
export function frameHead(seq: number, encoded: EncodedChunk): Bytes {
  const prefix = `[${seq},`;
  const head = globalThis.Buffer.allocUnsafe(HEADER_BYTES + prefix.length);
  head.write(prefix, HEADER_BYTES, "latin1");
  head.writeUInt32LE(MAGIC, 0);
  head.writeUInt32LE(prefix.length + encoded.tail.length, 4);
  head.writeUInt32LE(crc32(encoded.tail, crc32(head.subarray(HEADER_BYTES))), 8);
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

function decodeRow(row: unknown, source: string): RecordEntry | undefined {
  if (!Array.isArray(row) || (row.length !== 5 && row.length !== 7)) return undefined;
  const [id, key, payload, eventTime, bytes] = row as unknown[];
  if (typeof id !== "string" || (key !== null && typeof key !== "string") || !isObject(payload)) return undefined;
  if ((eventTime !== null && typeof eventTime !== "number") || typeof bytes !== "number") return undefined;
  const entry = new RecordEntry(id, key ?? undefined, payload, eventTime ?? undefined, source, bytes);
  if (row.length === 7) {
    const failure: unknown = row[5];
    const raw: unknown = row[6];
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

function decodeBody(body: Bytes, length: number): DecodedEntry | undefined {
  let v: unknown;
  try {
    v = JSON.parse(body.toString("utf8"));
  } catch {
    return undefined;
  }
  if (!Array.isArray(v) || v.length !== 4) return undefined;
  const [seq, source, receivedAt, rows] = v as unknown[];
  if (!Number.isSafeInteger(seq) || (seq as number) < 0 || typeof source !== "string" || typeof receivedAt !== "number") return undefined;
  if (!Array.isArray(rows) || rows.length === 0) return undefined;
  const records: RecordEntry[] = new Array(rows.length);
  let bytes = 0;
  for (let i = 0; i < rows.length; i++) {
    const r = decodeRow(rows[i], source);
    if (r === undefined) return undefined;
    records[i] = r;
    bytes += r.bytes;
  }
  return { seq: seq as number, length, receivedAt, records, bytes };
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
