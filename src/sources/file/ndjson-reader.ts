/**
 * NDJSON from bytes: the line splitter and parser the `file` source runs over a file, a named pipe
 * or stdin. Built for throughput: big reads, one decode per line (or per run of lines), no promise
 * per line; per record only `JSON.parse` and `handle.record`.
 */
import { isUtf8 } from "node:buffer";
import { Malformed, parseObjectLine, parseObjectRun } from "../../core/envelope.js";
import { classify, SluiceError } from "../../core/errors.js";
import { LineRun, type Entry } from "../../core/record.js";
import type { EnqueueOutcome, SourceHandle } from "../../components/contracts.js";

/** Bytes per read. Large reads amortize the syscall and the decode; 1 MiB measured best. */
export const READ_BYTES = 1024 * 1024;
// How much of an over-long line is kept as its dead letter's raw text.
const RAW_PREFIX_BYTES = 1024;
// Bytes of a skipped line kept to build that prefix: one more, for a `\r` to strip.
const RAW_HEAD_BYTES = RAW_PREFIX_BYTES + 1;
const LF = 10;
const CR = 13;
const OPEN_BRACE = 0x7b;
const CLOSE_BRACE = 0x7d;
const BOM = 0xfeff;

/** The raw text kept for an over-long line: its first RAW_PREFIX_BYTES bytes; `whole` when `bytes` is the entire line. */
function rawPrefix(bytes: Buffer, whole: boolean): string {
  let end = bytes.length;
  if (whole && end > 0 && bytes[end - 1] === CR) end--;
  return bytes.toString("utf8", 0, Math.min(end, RAW_PREFIX_BYTES));
}

/**
 * Where the reader hands a full chunk: returns the buffer's answer. `before`: the bytes of the
 * current read that end at `offset` (a view of the caller's read buffer, valid only until the
 * sink first awaits), or undefined when the chunk is handed over with no read in hand.
 */
export type ChunkSink = (records: Entry[], offset: number, line: number, before: Buffer | undefined) => Promise<EnqueueOutcome>;

/** Settings of an {@link NdjsonReader}. */
export interface ReaderSettings {
  /** Shown in dead letters as `<location>:<line number>`. */
  readonly location: string;
  readonly maxLineBytes: number;
  readonly signal: AbortSignal;
}

/**
 * Turns bytes into records, line by line, tracking byte offset and line number across feeds.
 * Holds at most one incomplete line (bounded by `maxLineBytes`); an over-long line is skipped
 * while it streams by and dead-lettered once its end is seen.
 *
 * Bytes are never replaced: a line that is not valid UTF-8 is dead-lettered as
 * `ERR_RECORD_MALFORMED` (as the http source answers 400 for such a body). A byte order mark at
 * offset 0 is skipped, as Windows tools write one.
 */
export class NdjsonReader {
  /** Byte offset just after the last complete line: where an incomplete line (if any) starts. */
  offset: number;
  /** Lines before `offset` (the next line's number is `line + 1`). */
  line: number;
  /** Byte offset of the next byte to feed. */
  readPos: number;
  /**
   * Put before a line's byte offset in its position (the fallback id `<source>:<position>`): the
   * file generation's token and `:`, so that an offset reused by a later generation never yields
   * an id delivered before; empty for a stream, whose position is the plain offset.
   */
  positionPrefix = "";
  private pending: Entry[] = [];
  /** Bytes of the incomplete line that starts at `offset`. */
  private carry: Buffer | undefined;
  /**
   * Set while skipping an over-long line that starts at `offset`: its first bytes (at most
   * RAW_PREFIX_BYTES + 1, so the raw text does not depend on how the input was split), and
   * whether more of the line was dropped.
   */
  private skipping: { head: Buffer; cut: boolean } | undefined;
  /** Start offsets (in the current read) of the lines gathered by {@link scanLines}; reused. */
  private readonly starts: number[] = [];

  constructor(
    private readonly handle: SourceHandle,
    private readonly settings: ReaderSettings,
    private readonly sink: ChunkSink,
    offset: number,
    line: number,
  ) {
    this.offset = offset;
    this.readPos = offset;
    this.line = line;
  }

  /** Starts over at `offset` (after truncation or rotation). Call only with no pending records. */
  reset(offset: number, line: number): void {
    this.offset = offset;
    this.readPos = offset;
    this.line = line;
    this.carry = undefined;
    this.skipping = undefined;
    this.pending = [];
  }

  /**
   * Consumes `data` (the bytes at `readPos`), enqueueing each full chunk. The caller may reuse
   * `data` afterwards: whatever is kept is copied. Returns false when the source must stop.
   */
  async feed(data: Buffer): Promise<boolean> {
    const base = this.readPos;
    this.readPos += data.length;
    let from = 0;
    if (this.carry !== undefined || this.skipping !== undefined) {
      const nl = data.indexOf(LF);
      if (nl < 0) {
        this.hold(data, 0);
        return true;
      }
      this.finishPartial(data, nl);
      this.offset = base + nl + 1;
      if (this.pending.length >= this.handle.chunkSize && !(await this.emit(data.subarray(0, nl + 1)))) return false;
      from = nl + 1;
    }
    const pos = await this.scanLines(data, from, base);
    if (pos < 0) return false;
    this.hold(data, pos);
    return true;
  }

  /** End of input: a final line without a newline still counts. Then enqueues what is pending. */
  async end(): Promise<boolean> {
    if (this.carry !== undefined || this.skipping !== undefined) {
      this.finishPartial(Buffer.alloc(0), 0);
      this.offset = this.readPos;
    }
    return this.flush();
  }

  /** Enqueues the records pending, if any (before waiting for more input). */
  async flush(): Promise<boolean> {
    return this.pending.length === 0 || this.emit(undefined);
  }

  /**
   * The hot loop. Gathers up to a chunk's worth of complete lines; when every one of them looks
   * like a plain `{...}` object line, parses them all with one `JSON.parse` of `[line,line,...]`
   * (about a fifth cheaper per record than one parse per line), else line by line. Returns the
   * index just after the last complete line, or -1 to stop.
   */
  private async scanLines(data: Buffer, from: number, base: number): Promise<number> {
    const max = this.settings.maxLineBytes;
    const chunkSize = this.handle.chunkSize;
    const starts = this.starts;
    let p = from;
    for (;;) {
      const want = chunkSize - this.pending.length;
      let q = p;
      let n = 0;
      let plain = true;
      while (n < want) {
        const nl = data.indexOf(LF, q);
        if (nl < 0) break;
        // An empty line, a CR, padding or a line too long sends the run down the line-by-line path.
        if (nl - q > max || data[q] !== OPEN_BRACE || data[nl - 1] !== CLOSE_BRACE) plain = false;
        starts[n++] = q;
        q = nl + 1;
      }
      if (n === 0) break;
      // One check for the whole run: only a run holding invalid UTF-8 pays a check per line.
      const valid = isUtf8(data.subarray(p, q));
      if (!plain || !valid || !this.parseRun(data, p, q - 1, n, base)) this.scanEach(data, p, q, base, valid);
      p = q;
      if (this.pending.length >= chunkSize) {
        this.offset = base + p;
        if (!(await this.emit(data.subarray(0, p)))) return -1;
      }
    }
    this.offset = base + p;
    return p;
  }

  /**
   * Parses `n` lines (`data[start, end)`, each starting with `{` and ending with `}`) as one JSON
   * array ({@link parseObjectRun}); false when that cannot be trusted, and the caller parses line
   * by line. When the pipeline decodes lines itself (`handle.decodesLines`), hands the lines over
   * undecoded instead, as one {@link LineRun}.
   */
  private parseRun(data: Buffer, start: number, end: number, n: number, base: number): boolean {
    const text = data.toString("utf8", start, end);
    const handle = this.handle;
    if (handle.decodesLines === true && handle.lines !== undefined) {
      const offsets = new Array<number>(n);
      for (let i = 0; i < n; i++) offsets[i] = base + this.starts[i]!;
      handle.lines(new LineRun(text, offsets, base + end, this.positionPrefix, this.line + 1, this.settings.location), this.pending);
      this.line += n;
      return true;
    }
    const values = parseObjectRun(text, n);
    if (values !== undefined && handle.wantsText === false) {
      // Nothing reads the lines' texts: no line is cut out, no position string built.
      const starts = this.starts;
      const prefix = this.positionPrefix;
      for (let i = 0; i < n; i++) {
        const s = starts[i]!;
        const e = i + 1 < n ? starts[i + 1]! - 1 : end;
        this.line++;
        this.pending.push(handle.record(values[i]!, e - s, base + s, undefined, undefined, prefix));
      }
      return true;
    }
    if (values === undefined) return false;
    const starts = this.starts;
    // `starts` are byte offsets; the line's text is cut at the newlines of the decoded string,
    // whose offsets differ as soon as a line has a multi-byte character.
    let from = 0;
    for (let i = 0; i < n; i++) {
      const s = starts[i]!;
      const e = i + 1 < n ? starts[i + 1]! - 1 : end;
      let to = text.indexOf("\n", from);
      if (to < 0) to = text.length;
      this.line++;
      this.pending.push(handle.record(values[i]!, e - s, this.position(base + s), text.slice(from, to)));
      from = to + 1;
    }
    return true;
  }

  /**
   * Parses the lines of `data[from, to)` one by one: the exact path, with a location for every bad
   * line. `valid`: the whole range is known to be UTF-8.
   */
  private scanEach(data: Buffer, from: number, to: number, base: number, valid: boolean): void {
    const max = this.settings.maxLineBytes;
    let p = from;
    while (p < to) {
      const nl = data.indexOf(LF, p);
      let end = nl;
      if (end > p && data[end - 1] === CR) end--;
      this.line++;
      if (end - p > max) this.overlong(data.toString("utf8", p, Math.min(end, p + RAW_PREFIX_BYTES)), base + p);
      else if (end > p) this.acceptBytes(data, p, end, base + p, valid);
      p = nl + 1;
    }
  }

  /** Completes the incomplete line held from earlier feeds with `data[0, nl)`. */
  private finishPartial(data: Buffer, nl: number): void {
    this.line++;
    if (this.skipping !== undefined) {
      const { head, cut } = this.skipping;
      const tail = data.subarray(0, nl);
      const room = RAW_HEAD_BYTES - head.length;
      const bytes = room > 0 ? Buffer.concat([head, tail.subarray(0, room)]) : head;
      this.overlong(rawPrefix(bytes, !cut && tail.length <= room), this.offset);
    } else {
      const bytes = this.carry === undefined ? data.subarray(0, nl) : Buffer.concat([this.carry, data.subarray(0, nl)]);
      let end = bytes.length;
      if (end > 0 && bytes[end - 1] === CR) end--;
      if (end > this.settings.maxLineBytes) this.overlong(rawPrefix(bytes, true), this.offset);
      else if (end > 0) this.acceptBytes(bytes, 0, end, this.offset, false);
    }
    this.carry = undefined;
    this.skipping = undefined;
  }

  /** Keeps `data[pos..]`, the start of a line whose newline has not arrived, unless it is already too long. */
  private hold(data: Buffer, pos: number): void {
    if (pos >= data.length) return;
    const rest = data.subarray(pos);
    if (this.skipping !== undefined) {
      const { head } = this.skipping;
      const room = RAW_HEAD_BYTES - head.length;
      if (room > 0) this.skipping.head = Buffer.concat([head, rest.subarray(0, room)]);
      if (rest.length > room) this.skipping.cut = true;
      return;
    }
    const held = (this.carry?.length ?? 0) + rest.length;
    // +1: a line of exactly max bytes may still be waiting for the \n of its \r\n.
    if (held > this.settings.maxLineBytes + 1) {
      const head = this.carry === undefined ? rest : Buffer.concat([this.carry, rest.subarray(0, RAW_HEAD_BYTES)]);
      this.skipping = { head: Buffer.from(head.subarray(0, RAW_HEAD_BYTES)), cut: held > RAW_HEAD_BYTES };
      this.carry = undefined;
    } else {
      // Copy: the caller reuses its read buffer.
      this.carry = this.carry === undefined ? Buffer.from(rest) : Buffer.concat([this.carry, rest]);
    }
  }

  /** Accepts the line `bytes[from, to)`, which starts at byte `start` of the input; `valid`: known to be UTF-8. */
  private acceptBytes(bytes: Buffer, from: number, to: number, start: number, valid: boolean): void {
    if (!valid && !isUtf8(bytes.subarray(from, to))) {
      // Decoding would turn the bad bytes into U+FFFD and deliver a record that is not what was
      // written. The dead letter's raw is text, so it shows them as U+FFFD (where they were); the
      // exact bytes go into the message as base64, the one place that keeps them without a change
      // to the dead-letter schema.
      const kept = bytes.subarray(from, Math.min(to, from + RAW_PREFIX_BYTES));
      const cut = to - from > RAW_PREFIX_BYTES ? `first ${RAW_PREFIX_BYTES} bytes` : "bytes";
      this.pending.push(
        this.malformedEntry(kept.toString("utf8"), start, `line is not valid UTF-8 (the line starts at byte ${start}; its ${cut} in base64: ${kept.toString("base64")})`),
      );
      return;
    }
    this.accept(bytes.toString("utf8", from, to), to - from, start);
  }

  private accept(line: string, bytes: number, start: number): void {
    // A BOM opens the input only: JSON.parse refuses it, and it is no part of the record's text.
    const text = start === 0 && line.charCodeAt(0) === BOM ? line.slice(1) : line;
    const handle = this.handle;
    if (handle.decodesLines === true && handle.lines !== undefined) {
      if (text.trim() !== "") handle.lines(new LineRun(text, [start], start + bytes, this.positionPrefix, this.line, this.settings.location), this.pending);
      return;
    }
    const value = parseObjectLine(text);
    if (value instanceof Malformed) {
      if (text.trim() === "") return; // a whitespace-only line counts as empty
      this.pending.push(this.malformedEntry(text, start, value.message));
      return;
    }
    this.pending.push(handle.record(value, bytes, this.position(start), text));
  }

  /** A line's position for its fallback id: see {@link positionPrefix}. */
  private position(start: number): string | number {
    return this.positionPrefix === "" ? start : `${this.positionPrefix}${start}`;
  }

  private overlong(rawPrefix: string, start: number): void {
    this.pending.push(this.malformedEntry(rawPrefix, start, `line exceeds max_line_bytes (${this.settings.maxLineBytes})`));
  }

  private malformedEntry(raw: string, start: number, message: string): Entry {
    const error = new SluiceError("ERR_RECORD_MALFORMED", message, {
      location: `${this.settings.location}:${this.line}`,
    });
    return this.handle.malformed(raw, this.position(start), error);
  }

  private async emit(before: Buffer | undefined): Promise<boolean> {
    // Stopping: do not hand over more; these lines stay unacked and are read again next run.
    if (this.settings.signal.aborted) return false;
    const records = this.pending;
    this.pending = [];
    const outcome = await this.sink(records, this.offset, this.line, before);
    // A `whenFull: "wait"` source is never `rejected`; `dropped` records are counted by the engine and acked.
    return outcome !== "stopping";
  }
}

/** Settings of {@link readNdjsonStream}. */
export interface NdjsonStreamSettings {
  /** Shown in dead letters as `<location>:<line number>`; e.g. `stdin`. */
  readonly location: string;
  readonly maxLineBytes: number;
}

const ABORTED = Symbol("aborted");

/**
 * The checkpoint of a chunk read from a stream (stdin, a named pipe): offsets counted from the
 * stream's start. A stream cannot be read again, so nothing saves it.
 */
export interface StreamCheckpoint {
  readonly offset: number;
  readonly line: number;
}

/**
 * Reads NDJSON from any byte stream (stdin, a named pipe, a test's `Readable.from`) until it ends
 * or `signal` aborts, enqueueing chunks with {@link StreamCheckpoint}s.
 *
 * Gotchas: on abort the stream's iterator is returned, which destroys a Node Readable. String
 * chunks are taken as UTF-8.
 */
export async function readNdjsonStream(
  input: AsyncIterable<Buffer | string>,
  handle: SourceHandle,
  signal: AbortSignal,
  settings: NdjsonStreamSettings,
): Promise<void> {
  if (signal.aborted) return;
  const reader = new NdjsonReader(
    handle,
    { ...settings, signal },
    (records, offset, line) => handle.enqueue(records, { offset, line } satisfies StreamCheckpoint),
    0,
    0,
  );
  const iterator = input[Symbol.asyncIterator]();
  let onAbort: () => void = () => {};
  const aborted = new Promise<typeof ABORTED>((resolveAbort) => {
    onAbort = () => resolveAbort(ABORTED);
    signal.addEventListener("abort", onAbort, { once: true });
  });
  try {
    for (;;) {
      const next = await Promise.race([iterator.next(), aborted]);
      if (next === ABORTED) {
        void iterator.return?.()?.catch(() => {});
        return;
      }
      if (next.done) break;
      const bytes = typeof next.value === "string" ? Buffer.from(next.value, "utf8") : next.value;
      if (!(await reader.feed(bytes))) return;
    }
    await reader.end();
  } catch (err) {
    if (signal.aborted) return;
    throw new SluiceError("ERR_SOURCE_READ", `reading ${settings.location} failed: ${classify(err).message}`, {
      cause: err,
      location: settings.location,
    });
  } finally {
    signal.removeEventListener("abort", onAbort);
  }
}
