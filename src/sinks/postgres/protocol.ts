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

/**
 * COPY data of lines [lo, hi) (COPY text lines without their newline), `seq` (the line's index)
 * prefixed when `seq` is true (the staging table's first column), framed as the wire messages that
 * follow the COPY statement: one CopyData holding every row, then CopyDone. Each line is written
 * straight into one buffer: concatenating the batch into a string first cost about as much as
 * encoding it. A fresh buffer per call: the socket may still hold the previous one.
 */
export function copyData(lines: readonly string[], lo: number, hi: number, seq: boolean): Buffer {
  let chars = 0;
  for (let i = lo; i < hi; i++) chars += lines[i]!.length;
  // A UTF-16 code unit takes at most 3 bytes in UTF-8; a seq at most 11 characters and a tab.
  const buf = Buffer.allocUnsafe(COPY_DATA_HEADER + chars * 3 + (hi - lo) * (seq ? 13 : 1) + COPY_DONE.length);
  let at = COPY_DATA_HEADER;
  for (let i = lo; i < hi; i++) {
    if (seq) {
      at += buf.write(String(i), at, "latin1");
      buf[at++] = 0x09;
    }
    at += buf.write(lines[i]!, at, "utf8");
    buf[at++] = 0x0a;
  }
  buf[0] = 0x64; // 'd': CopyData; its length counts itself, not the type byte
  buf.writeUInt32BE(at - 1, 1);
  at += COPY_DONE.copy(buf, at);
  return buf.subarray(0, at);
}

/** Runs `sql` (a COPY .. FROM STDIN) with `data` from {@link copyData}; resolves to the rows copied. */
export function copyIn(client: PoolClient, sql: string, data: Buffer): Promise<number> {
  return new Promise((resolve, reject) => {
    client.query(new CopyIn(sql, data, resolve, reject));
  });
}
