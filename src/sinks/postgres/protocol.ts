/**
 * The COPY-in sub-protocol as the `postgres` sink speaks it: rows framed as CopyData + CopyDone,
 * sent together with the COPY statement in one write (see {@link CopyIn}).
 */
import type { Connection, PoolClient, Submittable } from "pg";

/** Bytes before a CopyData message's content: the type byte and the length. */
const COPY_DATA_HEADER = 5;
/** The CopyDone message: `c` and its length, 4. */
const COPY_DONE = Buffer.from([0x63, 0, 0, 0, 4]);

/**
 * A `COPY .. FROM STDIN` of data already framed as CopyData + CopyDone, for `pg`'s
 * `client.query(submittable)`. It sends the statement and the data in one write instead of waiting
 * for the server's CopyInResponse (what pg-copy-streams does): that saves a round trip per batch,
 * which on a busy event loop cost more than the COPY of a 1,000-row batch itself. Safe by the
 * protocol: when the statement fails before copy-in starts (no table), or the COPY fails midway (a
 * duplicate id, a bad value), the server reports the error once and drops the CopyData and CopyDone
 * that follow; nothing else is sent on the connection until `pg` saw ReadyForQuery. Gotcha: the
 * data is on its way with the statement, so an abort (which ends the connection) cannot stop a COPY
 * waiting on a lock from committing the whole batch once the lock is released; the rejected write
 * is then redelivered, and the ids keep one row each.
 */
export class CopyIn implements Submittable {
  private rows = 0;

  constructor(
    /** The statement (named as `pg`'s own queries name it). */
    readonly text: string,
    private readonly data: Buffer,
    private readonly resolve: (rows: number) => void,
    private readonly reject: (err: unknown) => void,
  ) {}

  submit(connection: Connection): void {
    const socket = connection.stream;
    // One write (writev) for the statement and its data.
    socket.cork();
    connection.query(this.text);
    if (socket.writable) socket.write(this.data);
    socket.uncork();
  }

  /** `pg` replaces this with its timeout hook when query_timeout is set; called on every outcome. */
  callback(): void {}

  handleCopyInResponse(): void {}

  handleCommandComplete(msg: { text?: string }): void {
    const m = /^COPY (\d+)/.exec(msg.text ?? "");
    if (m !== null) this.rows = Number(m[1]);
  }

  /** After CommandComplete: the COPY, and with it its transaction when none was open, is done. */
  handleReadyForQuery(): void {
    this.callback();
    this.resolve(this.rows);
  }

  /** An ErrorResponse (then `pg` expects no ReadyForQuery call here), or the connection failed. */
  handleError(err: unknown): void {
    this.callback();
    this.reject(err);
  }
}

/** Bytes a new {@link CopyRows} reserves per row it expects; it grows when rows are longer. */
const ROW_BYTES_GUESS = 256;
const TAB = 0x09;
const NEWLINE = 0x0a;
/** Fields up to this many characters are copied by a loop here: cheaper than a call into `Buffer#write`. */
const SHORT_FIELD = 16;

/**
 * The rows of one write as COPY text, encoded to UTF-8 field by field as they are added, into one
 * buffer outside the JavaScript heap: no row is ever a string of its own (a row's text used to be
 * joined from its fields, then copied once more to be encoded), and nothing of it stays on the heap
 * until the commit. The buffer starts after room for the CopyData header, so {@link message}
 * frames the rows in place; {@link staged} copies a range with each row's index in front, for the
 * staging table.
 */
export class CopyRows {
  private buf: Buffer;
  private at = COPY_DATA_HEADER;
  /** Where each row ends (after its newline). */
  private readonly ends: number[] = [];

  constructor(expectedRows: number) {
    this.buf = Buffer.allocUnsafe(COPY_DATA_HEADER + Math.max(1, expectedRows) * ROW_BYTES_GUESS + COPY_DONE.length);
  }

  /** Rows added. */
  get length(): number {
    return this.ends.length;
  }

  /** Adds one row: its fields, each already COPY text (escaped), joined by tabs, then the newline. */
  add(fields: readonly string[]): void {
    let chars = fields.length;
    for (const f of fields) chars += f.length;
    // A UTF-16 code unit takes at most 3 bytes in UTF-8; then room for CopyDone.
    const need = this.at + chars * 3 + COPY_DONE.length;
    if (need > this.buf.length) {
      const bigger = Buffer.allocUnsafe(Math.max(need, this.buf.length * 2));
      this.buf.copy(bigger, 0, 0, this.at);
      this.buf = bigger;
    }
    const buf = this.buf;
    let at = this.at;
    for (let i = 0; i < fields.length; i++) {
      if (i > 0) buf[at++] = TAB;
      const f = fields[i]!;
      at = f.length <= SHORT_FIELD ? writeShort(buf, f, at) : at + buf.write(f, at);
    }
    buf[at++] = NEWLINE;
    this.at = at;
    this.ends.push(at);
  }

  /**
   * Every row framed as the messages that follow a COPY statement: one CopyData, then CopyDone.
   * The rows are not copied; add no row after this (the socket may still be sending the buffer).
   */
  message(): Buffer {
    const buf = this.buf;
    buf[0] = 0x64; // 'd': CopyData; its length counts itself, not the type byte
    buf.writeUInt32BE(this.at - 1, 1);
    COPY_DONE.copy(buf, this.at);
    return buf.subarray(0, this.at + COPY_DONE.length);
  }

  /**
   * Rows [lo, hi) with their index and a tab in front (the staging table's `seq`), framed as
   * {@link message} frames them, in a new buffer.
   */
  staged(lo: number, hi: number): Buffer {
    const from = lo === 0 ? COPY_DATA_HEADER : this.ends[lo - 1]!;
    const to = hi === 0 ? COPY_DATA_HEADER : this.ends[hi - 1]!;
    // A seq is at most 10 digits, then a tab.
    const out = Buffer.allocUnsafe(COPY_DATA_HEADER + (to - from) + (hi - lo) * 11 + COPY_DONE.length);
    let at = COPY_DATA_HEADER;
    let start = from;
    for (let i = lo; i < hi; i++) {
      at = writeIndex(out, i, at);
      out[at++] = TAB;
      const end = this.ends[i]!;
      at += this.buf.copy(out, at, start, end);
      start = end;
    }
    out[0] = 0x64;
    out.writeUInt32BE(at - 1, 1);
    at += COPY_DONE.copy(out, at);
    return out.subarray(0, at);
  }
}

/** Writes `n` (a non-negative integer) at `at` in decimal digits; returns where it ends. */
function writeIndex(buf: Buffer, n: number, at: number): number {
  let digits = 1;
  for (let rest = n; rest >= 10; rest = Math.floor(rest / 10)) digits++;
  for (let i = at + digits - 1; i >= at; i--) {
    buf[i] = 0x30 + (n % 10);
    n = Math.floor(n / 10);
  }
  return at + digits;
}

/** Writes `s` at `at` as UTF-8 (a loop for ASCII, `Buffer#write` from the first other character on); returns where it ends. */
function writeShort(buf: Buffer, s: string, at: number): number {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0x80) return at + buf.write(s.slice(i), at);
    buf[at++] = c;
  }
  return at;
}

/** Runs `sql` (a COPY .. FROM STDIN) with `data` from {@link CopyRows}; resolves to the rows copied. */
export function copyIn(client: PoolClient, sql: string, data: Buffer): Promise<number> {
  return new Promise((resolve, reject) => {
    client.query(new CopyIn(sql, data, resolve, reject));
  });
}
