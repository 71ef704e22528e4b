/**
 * The http source's bounds on memory and its way of ending a request early. Bodies are held only
 * within one budget of bytes shared by every request ({@link BodyBudget}); an answer given before
 * the body was read is followed by reading and discarding the rest, up to a bound
 * ({@link endEarly}), so that the client reads the answer instead of a reset connection.
 */
import type { IncomingMessage, ServerResponse } from "node:http";

/**
 * Bytes of an answered request's body read and discarded before the connection is closed anyway.
 * Closing a socket with unread bytes in it sends a reset, and a reset makes the client's kernel
 * throw away the answer it has not read yet: Node's fetch then sees EPIPE, not the 413. Reading
 * on lets the client finish sending and read the answer; the bound (and `request_timeout`) keeps
 * a client that never stops from holding the connection.
 */
export const DISCARD_LIMIT = 8 * 1024 * 1024;

/**
 * The bytes of request bodies held at once, across every request. Bodies not yet authenticated
 * (HMAC-signed, the signature computed as they arrive) may hold at most `unverifiedMax` of it,
 * so that a flood of bogus signatures leaves room for requests whose bearer token was checked
 * from the headers. Bodies of requests waiting in line for room in the buffer may hold at most
 * `queuedMax` of it, so that new requests can still be read (and answered) while they wait.
 */
export class BodyBudget {
  private used = 0;
  private usedUnverified = 0;
  private usedQueued = 0;

  constructor(
    readonly total: number,
    readonly unverifiedMax: number,
    readonly queuedMax: number,
  ) {}

  /** Takes `bytes` when they fit; false (nothing taken) when they do not. */
  take(bytes: number, unverified: boolean): boolean {
    if (this.used + bytes > this.total) return false;
    if (unverified && this.usedUnverified + bytes > this.unverifiedMax) return false;
    this.used += bytes;
    if (unverified) this.usedUnverified += bytes;
    return true;
  }

  /** Gives back bytes taken with the same `unverified`. */
  give(bytes: number, unverified: boolean): void {
    this.used -= bytes;
    if (unverified) this.usedUnverified -= bytes;
  }

  /** Counts `bytes` already taken as waiting in line, when they fit in `queuedMax`; false (nothing counted) when they do not. */
  queue(bytes: number): boolean {
    if (this.usedQueued + bytes > this.queuedMax) return false;
    this.usedQueued += bytes;
    return true;
  }

  /** Bytes counted by {@link queue} stop waiting (admitted, or given up). */
  unqueue(bytes: number): void {
    this.usedQueued -= bytes;
  }
}

/** One request's share of a {@link BodyBudget}: what it took, given back at once by {@link release}. */
export class BodyHold {
  private held = 0;
  private queued = 0;

  constructor(
    private readonly budget: BodyBudget,
    private readonly unverified: boolean,
  ) {}

  take(bytes: number): boolean {
    if (!this.budget.take(bytes, this.unverified)) return false;
    this.held += bytes;
    return true;
  }

  /** Counts what this request holds as waiting in line; false when the budget's share for waiting bodies is spent. */
  queue(): boolean {
    if (!this.budget.queue(this.held)) return false;
    this.queued = this.held;
    return true;
  }

  release(): void {
    this.budget.give(this.held, this.unverified);
    this.budget.unqueue(this.queued);
    this.held = 0;
    this.queued = 0;
  }
}

/**
 * Sends an answer to a request whose body was not (wholly) read, then reads and discards the
 * rest, up to {@link DISCARD_LIMIT} bytes, before ending the answer (with `Connection: close`,
 * so the connection closes after it). A client still waiting for `100 Continue` was never told
 * to send its body: the answer ends at once.
 */
export function endEarly(req: IncomingMessage, res: ServerResponse, status: number, headers: Record<string, string | number>, json: string, waitsForContinue: boolean): void {
  res.writeHead(status, { ...headers, connection: "close" });
  if (req.complete || req.destroyed || waitsForContinue) {
    res.end(json);
    return;
  }
  // The whole answer goes out now; only its end waits, since ending it closes the connection.
  res.write(json);
  let discarded = 0;
  const finish = () => {
    req.off("data", onData);
    if (!res.writableEnded) res.end();
  };
  const onData = (chunk: Buffer) => {
    discarded += chunk.length;
    if (discarded > DISCARD_LIMIT) finish();
  };
  req.on("data", onData);
  req.once("end", finish);
  req.once("close", finish);
  req.once("error", finish);
  req.resume();
}
