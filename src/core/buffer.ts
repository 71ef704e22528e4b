import { systemClock, type Clock } from "./clock.js";
import type { AckTicket, Entry } from "./record.js";
import { Room } from "./room.js";
import { WaitingLine } from "./waiting-line.js";

/** A chunk of records as one source enqueued it, with the ticket that acks it. */
export interface Chunk {
  readonly records: Entry[];
  readonly ticket: AckTicket;
  /**
   * The records' payloads exactly as their producer sent them, when a source has them as one run
   * of bytes (an NDJSON body): UTF-8, each record's JSON text on a line of its own, in order, each
   * line ending with `\n` (the last may lack it). A durable buffer writes these bytes instead of
   * serialising the records again; a memory buffer has no use for them.
   */
  readonly lines?: globalThis.Buffer;
}

/** What the buffer does when a chunk does not fit. */
export type WhenFull = "block" | "reject" | "drop_newest";

/** Bounds of a buffer. A chunk counts against both from `push` until `release`. */
export interface BufferLimits {
  /** Records in the buffer, being transformed or being written, not yet acked. */
  readonly maxRecords: number;
  /** Estimated bytes of those records. */
  readonly maxBytes: number;
}

/** Result of {@link Buffer.push}. */
export type PushResult = "accepted" | "full" | "closed";

/**
 * The bounded buffer between sources and the engine. Records stay counted from `push` until
 * `release`, so the bound holds for everything in flight, not only what waits in a queue.
 *
 * The pipeline is the only caller: sources reach it through their handle. A durable buffer
 * (`durable-buffer.ts`) implements the same interface; its `push` resolves only once the chunk is
 * on disk, and after `open` its `pull` returns the un-released chunks of the previous run first.
 */
export interface Buffer {
  /**
   * True when an accepted chunk survives a crash of the process. The engine then acks the source
   * as soon as `push` resolves `accepted`, and the buffer owns the chunk from there: every chunk
   * `pull` returns carries a ticket whose `onDone` releases it in the buffer (the records of a
   * pushed chunk are re-pointed to that ticket), and the engine never calls `release` itself.
   */
  readonly durable: boolean;
  /** Called once before the first push or pull. A durable buffer recovers its log here. */
  open(): Promise<void>;
  /**
   * Offers a chunk. With `wait`, waits for room (backpressure) and resolves `accepted`, or `closed`
   * when the buffer closes or `signal` aborts first; without `wait`, answers `full` at once when
   * it does not fit. A chunk larger than the whole bound is accepted when the buffer is empty, so
   * one oversized chunk cannot wedge a pipeline.
   */
  push(chunk: Chunk, wait: boolean, signal?: AbortSignal): Promise<PushResult>;
  /**
   * How long, in ms, a chunk of `records` records and `bytes` bytes pushed now with `wait` would
   * wait before it is accepted: 0 when it would be accepted at once; else the room it needs
   * (after every push waiting ahead of it) over the rate the buffer freed room lately;
   * `Infinity` while nothing is freed (a stalled sink). An estimate, for a `whenFull: "reject"` source deciding
   * whether its producer should wait or be told to come back later.
   */
  expectedWait(records: number, bytes: number): number;
  /**
   * How many records a source could fetch now and push without waiting: 0 while nobody may push
   * (the bound is reached, or pushes wait in line ahead), `Infinity` when records are not what
   * bounds it (an empty buffer takes any chunk; the durable log is bound by bytes) and there is
   * room. Under a byte bound, records are taken to be `recordBytes` each (the source's estimate
   * of what it will fetch), else the size of those held; an empty buffer has room for at least
   * one record. For a source's `waitForRoom`: an estimate, not a reservation.
   */
  room(recordBytes?: number): number;
  /** Resolves the next time room is freed or the buffer closes (then look at {@link room} again). */
  whenFreed(): Promise<void>;
  /** The next chunk in order; waits while empty; `undefined` once closed and empty. Single consumer. */
  pull(): Promise<Chunk | undefined>;
  /** Frees a chunk's records and bytes. Called exactly once per accepted chunk, when all its records are done. */
  release(ticket: AckTicket): void;
  /**
   * Takes no more pushes; waiting pushes resolve `closed`; `pull` drains what is queued, then
   * ends. With `keep` (a graceful stop), a durable buffer hands out nothing more (what was not
   * pulled stays on disk for the next run) and `whenEmpty` waits only for what was handed out; a
   * memory buffer drains its queue either way. Later calls may add `keep`.
   */
  close(keep?: boolean): void;
  /** Resolves when every accepted chunk has been released. */
  whenEmpty(): Promise<void>;
  /** Records and bytes counted right now (for a durable buffer: everything not yet released, on disk or in memory). */
  usage(): { records: number; bytes: number };
  /**
   * Counts `records` and `bytes` more, for parts a transform split out of a pulled record (its
   * chunk counts the one record), until {@link shrink} gives them back. While they are counted,
   * less is admitted (memory buffer: pushes wait; durable buffer: pull does).
   */
  grow(records: number, bytes: number): void;
  /** Gives back what {@link grow} counted, once those parts are done. */
  shrink(records: number, bytes: number): void;
  /** True when {@link grow} of `records` and `bytes` keeps what the buffer counts within its bound (durable buffer: its memory bound). */
  hasRoom(records: number, bytes: number): boolean;
  /** Resolves the next time the buffer gives room back (at the latest at the next {@link shrink}); ask {@link hasRoom} again then. */
  whenPartRoom(): Promise<void>;
  /** Called once at the end of a run, after `whenEmpty` or the shutdown deadline: persists progress and releases files. */
  shutdown(): Promise<void>;
}

/**
 * The in-memory buffer: a FIFO of chunks with a records-and-bytes bound and FIFO waiting
 * producers ({@link WaitingLine}). `clock` times the drain rate behind {@link expectedWait}.
 */
export class MemoryBuffer implements Buffer {
  readonly durable = false;
  private readonly queue: Chunk[] = [];
  private head = 0;
  private readonly line: WaitingLine<Chunk>;
  private records = 0;
  private bytes = 0;
  private closed = false;
  private puller: ((chunk: Chunk | undefined) => void) | undefined;
  private emptyWaiters: (() => void)[] = [];
  private readonly bound: Room;

  constructor(
    private readonly limits: BufferLimits,
    clock: Clock = systemClock,
  ) {
    this.bound = new Room(limits);
    this.line = new WaitingLine<Chunk>(
      {
        fits: (chunk) => this.fits(chunk),
        admit: (chunk) => {
          this.admit(chunk);
          return "accepted";
        },
        closed: () => "closed",
        left: () => this.checkEmpty(),
      },
      () => clock.now(),
    );
  }

  open(): Promise<void> {
    return Promise.resolve();
  }

  shutdown(): Promise<void> {
    return Promise.resolve();
  }

  push(chunk: Chunk, wait: boolean, signal?: AbortSignal): Promise<PushResult> {
    if (this.closed || signal?.aborted) return Promise.resolve("closed");
    // FIFO fairness: a chunk may only jump in when nobody waits ahead of it.
    if (this.line.length === 0 && this.fits(chunk)) {
      this.admit(chunk);
      return Promise.resolve("accepted");
    }
    if (!wait) return Promise.resolve("full");
    return this.line.join(chunk, chunk.ticket.records, chunk.ticket.bytes, signal);
  }

  expectedWait(records: number, bytes: number): number {
    if (this.line.length === 0 && this.fitsSize(records, bytes)) return 0;
    const heldAndAhead = { records: this.records + this.line.records, bytes: this.bytes + this.line.bytes };
    // Never more than everything held and ahead: a chunk larger than the bound fits an empty buffer.
    return this.line.expectedWait(
      Math.min(heldAndAhead.records, heldAndAhead.records + records - this.limits.maxRecords),
      Math.min(heldAndAhead.bytes, heldAndAhead.bytes + bytes - this.limits.maxBytes),
    );
  }

  room(recordBytes?: number): number {
    if (this.closed || this.line.length > 0) return 0;
    const known = recordBytes !== undefined && recordBytes > 0;
    if (this.records === 0 && !known) return Number.POSITIVE_INFINITY;
    // Under the byte bound too: the source's estimate, else the records held, tell the size of the next ones.
    const byteRoom = Math.floor(known ? (this.limits.maxBytes - this.bytes) / recordBytes : ((this.limits.maxBytes - this.bytes) * this.records) / this.bytes);
    // An empty buffer takes any chunk: one record larger than the whole bound must not wait forever.
    if (this.records === 0) return Math.max(1, byteRoom);
    return Math.max(0, Math.min(this.limits.maxRecords - this.records, byteRoom));
  }

  whenFreed(): Promise<void> {
    return this.closed ? Promise.resolve() : this.line.whenFreed();
  }

  pull(): Promise<Chunk | undefined> {
    if (this.head < this.queue.length) return Promise.resolve(this.take());
    if (this.closed) return Promise.resolve(undefined);
    return new Promise((resolve) => {
      this.puller = resolve;
    });
  }

  release(ticket: AckTicket): void {
    this.records -= ticket.records;
    this.bytes -= ticket.bytes;
    this.freed(ticket.records, ticket.bytes);
  }

  grow(records: number, bytes: number): void {
    this.records += records;
    this.bytes += bytes;
  }

  shrink(records: number, bytes: number): void {
    this.records -= records;
    this.bytes -= bytes;
    this.freed(records, bytes);
  }

  hasRoom(records: number, bytes: number): boolean {
    return this.bound.fits(this.records, this.bytes, records, bytes);
  }

  whenPartRoom(): Promise<void> {
    return this.bound.whenFreed();
  }

  private freed(records: number, bytes: number): void {
    this.line.freed(records, bytes);
    this.line.admit();
    this.line.wakeFreed();
    this.bound.freed();
    this.checkEmpty();
  }

  close(_keep?: boolean): void {
    if (this.closed) return;
    this.closed = true;
    this.line.close();
    if (this.puller && this.head >= this.queue.length) {
      const puller = this.puller;
      this.puller = undefined;
      puller(undefined);
    }
  }

  whenEmpty(): Promise<void> {
    if (this.records === 0 && this.line.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.emptyWaiters.push(resolve));
  }

  usage(): { records: number; bytes: number } {
    return { records: this.records, bytes: this.bytes };
  }

  private fits(chunk: Chunk): boolean {
    return this.fitsSize(chunk.ticket.records, chunk.ticket.bytes);
  }

  private fitsSize(records: number, bytes: number): boolean {
    return this.records === 0 || this.bound.fits(this.records, this.bytes, records, bytes);
  }

  private checkEmpty(): void {
    if (this.records !== 0 || this.line.length !== 0) return;
    const waiters = this.emptyWaiters;
    this.emptyWaiters = [];
    for (const w of waiters) w();
  }

  private admit(chunk: Chunk): void {
    this.records += chunk.ticket.records;
    this.bytes += chunk.ticket.bytes;
    if (this.puller) {
      const puller = this.puller;
      this.puller = undefined;
      puller(chunk);
      return;
    }
    this.queue.push(chunk);
  }

  private take(): Chunk {
    const chunk = this.queue[this.head]!;
    this.queue[this.head] = undefined as unknown as Chunk;
    this.head++;
    // Compact now and then so a long run does not keep a growing array of holes.
    if (this.head > 1024 && this.head * 2 > this.queue.length) {
      this.queue.splice(0, this.head);
      this.head = 0;
    }
    return chunk;
  }
}
