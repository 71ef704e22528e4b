/**
 * The durable buffer: a crash-safe local log behind the {@link Buffer} interface. The file
 * format lives in `durable-log.ts`; this module decides what is written when, what stays in
 * memory, and when entries are released.
 */
import type { SpanContext } from "@opentelemetry/api";
import fs, { type FileHandle } from "node:fs/promises";
import { constants as fsConstants } from "node:fs";
import { join } from "node:path";
import type { Buffer as BufferContract, BufferLimits, Chunk, PushResult } from "./buffer.js";
import { systemClock, type Clock } from "./clock.js";
import { BufferQuarantine } from "./buffer-quarantine.js";
import { acquireDirLock, type DirLock } from "./dir-lock.js";
import {
  encodeChunk,
  frameHead,
  frameSize,
  HEADER_BYTES,
  isReleased,
  isSegmentName,
  MAX_BODY_BYTES,
  readAcked,
  readFrame,
  scanSegment,
  segmentName,
  serializeAcked,
  unreleasedIn,
  writeAcked,
  writeProbe,
  type AckedState,
  type EncodedChunk,
} from "./durable-log.js";
import { Deque } from "./deque.js";
import { classify, SluiceError } from "./errors.js";
import type { EventSink, Logger } from "./events.js";
import type { AckTicket } from "./record.js";
import { Room } from "./room.js";
import { Retry, type RetryPolicy } from "./retry.js";
import { WaitingLine } from "./waiting-line.js";

type Bytes = globalThis.Buffer;

/** Options of a {@link DurableBuffer}. */
export interface DurableBufferOptions {
  /** Directory of the log; created if missing. One process at a time (a lock file guards it). */
  readonly path: string;
  /** Bound on the log: bytes (encoded size) of entries not yet released. Then `full` / waiting pushes. */
  readonly maxBytes: number;
  /** true: a group's pushes resolve once its write is on disk (O_DSYNC, as a datasync; survives power loss); false: after the write (survives a process crash). */
  readonly fsync: boolean;
  /** Bound on what the buffer holds in memory: chunks kept for pull plus chunks in flight (pulled, not released). */
  readonly memory: BufferLimits;
  readonly emit: EventSink;
  readonly logger: Logger;
  /** Target size of a segment file, bytes; default `clamp(maxBytes / 16, 64 KiB, 32 MiB)`. */
  readonly segmentBytes?: number;
  /** Clock for the coalesced `acked` writes and read retries; default the system clock. */
  readonly clock?: Clock;
}

/** How often, at most, release progress is written to `acked`, ms. */
const ACKED_INTERVAL_MS = 100;
/** While writes fail, how often a probe write checks whether they would succeed again, ms. */
const WRITE_PROBE_MS = 1000;
/** Retries of a failed read of an entry: every error, for ever (an entry on disk is not given up), 1 s doubling to 30 s. */
const READ_RETRY: RetryPolicy = { backoff: { initialMs: 1000, maxMs: 30_000, multiplier: 2, jitter: "none" }, retry: "all" };

interface Segment {
  readonly name: string;
  /** Entries in it not yet released. */
  live: number;
  /** Bytes in it: where the next append goes. */
  size: number;
  deleted: boolean;
  /** Entries' bytes in it whose quarantine copy failed and is retried: it must not be deleted before. */
  uncopied: number;
}

/**
 * `writing`: admitted, not yet on disk. `queued`: on disk, not pulled. `in_flight`: pulled, not
 * released. `released`: done (also an entry whose write failed or that proved unreadable).
 */
type EntryState = "writing" | "queued" | "in_flight" | "released";

/** One entry of the log. Small on purpose: every un-released entry has one, however large the log. */
interface LogEntry {
  readonly seq: number;
  readonly size: number;
  readonly records: number;
  readonly bytes: number;
  segment: Segment | undefined;
  offset: number;
  state: EntryState;
  /** The chunk, while the buffer keeps it in memory for pull; otherwise pull reads it from disk. */
  chunk: Chunk | undefined;
}

/** The ticket of a chunk the buffer hands out: settling all its records releases the entry. */
class EntryTicket implements AckTicket {
  seq = -1;
  readonly checkpoint = undefined;
  pending: number;
  /** The receive span's context, for a chunk kept in memory from its push; one read back from disk has none. */
  trace: SpanContext | undefined = undefined;

  constructor(
    readonly entry: LogEntry,
    readonly receivedAt: number,
    readonly records: number,
    readonly bytes: number,
    readonly onDone: (ticket: AckTicket) => void,
  ) {
    this.pending = records;
  }
}

interface Append {
  readonly entry: LogEntry;
  readonly head: Bytes;
  readonly parts: readonly Bytes[];
  readonly chunk: Chunk;
  readonly resolve: (result: PushResult) => void;
  readonly reject: (err: SluiceError) => void;
}

interface WaitingPush {
  readonly chunk: Chunk;
  readonly encoded: EncodedChunk;
}

function clamp(v: number, lo: number, hi: number): number {
  return Math.min(hi, Math.max(lo, v));
}

function ioError(message: string, err: unknown): SluiceError {
  return new SluiceError("ERR_BUFFER_IO", `${message}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
}

/**
 * A crash-safe buffer: every accepted chunk is an entry in checksummed, append-only segment
 * files under `path` (format in `durable-log.ts`), and stays there until every record of it is
 * done. Use it when a record acknowledged to its producer must survive SIGKILL.
 *
 * - `push` answers `accepted` only once the entry is written (and, with `fsync`, on disk: the
 *   segment is opened O_DSYNC). Appends that arrive while a write is in progress share the next
 *   write (group commit). Results come in call order. A failed write rejects its group with `ERR_BUFFER_IO`;
 *   later pushes try again on a fresh segment.
 * - `maxBytes` bounds the encoded bytes of un-released entries; `memory` bounds what is held in
 *   memory (chunks kept for pull plus chunks in flight). A chunk that does not fit in memory is
 *   re-read from disk at pull, and pull hands out a chunk only while what is in flight fits.
 * - Ownership (`durable`): pulled chunks carry a buffer-owned ticket (`seq -1`, no checkpoint);
 *   settling all its records releases the entry. A pushed chunk kept in memory has its records
 *   re-pointed to that ticket; one read back from disk comes with fresh records.
 * - `open` recovers the log: entries not released by the previous run are pulled first; torn or
 *   corrupt bytes are quarantined, reported (`buffer_corrupt`) and skipped, never fatal; entries
 *   `acked` says were written but no segment holds are reported lost. An entry that fails its
 *   check when pull reads it back is quarantined and reported with its records, and released; a
 *   segment whose quarantine copy failed (disk full) is kept until a retried copy succeeds. Entries
 *   of a segment that is gone are reported lost (`missing`); a read failing with an I/O error is
 *   retried for ever, reported from its second failure (`buffer_read_failed`: not ready).
 * - A failed write is reported (`buffer_write_failed`); until a write succeeds again
 *   (`buffer_write_recovered`), a probe write every second checks whether one would.
 *
 * Gotchas: release progress reaches `acked` at most every 100 ms and at `shutdown`, so a crash
 * may redeliver entries released just before it (at-least-once; sinks dedupe by id). A segment is
 * deleted only once all its entries are released and `acked` says so, so one stuck entry keeps its
 * whole segment on disk. Besides the chunks it holds, the buffer keeps about 100 bytes per un-released entry.
 */
export class DurableBuffer implements BufferContract {
  readonly durable = true;
  private readonly dir: string;
  private readonly maxBytes: number;
  private readonly fsync: boolean;
  private readonly memory: BufferLimits;
  private readonly emit: EventSink;
  private readonly logger: Logger;
  private readonly clock: Clock;
  private readonly segmentBytes: number;

  private phase: "new" | "open" | "shut" = "new";
  private lock: DirLock | undefined;
  private closed = false;
  /** Closed by a graceful stop: what was not pulled stays in the log for the next run. */
  private keep = false;
  private nextSeq = 0;

  /**
   * Every entry not yet released (being written, queued or in flight), by seq: the seqs between
   * them are what `acked` records as released. Released entries leave it lazily.
   */
  private order = new Deque<LogEntry>();
  private releasedInOrder = 0;
  /** Entries on disk not pulled yet, by seq. */
  private readonly unpulled = new Deque<LogEntry>();
  /** Entries of `unpulled` whose chunk is kept in memory, by seq. */
  private readonly kept = new Deque<LogEntry>();

  /** Every entry with a lower seq is on disk (or failed to write, and is released): what `acked` says as `written`. */
  private writtenBelow = 0;
  /** Segments all of whose entries are released, deleted once `acked` says so (else a crash could make them look lost). */
  private releasable: Segment[] = [];
  private liveEntries = 0;
  private logRecords = 0;
  private logBytes = 0;
  private inFlightRecords = 0;
  private inFlightBytes = 0;
  private heldRecords = 0;
  private heldBytes = 0;

  private readonly line: WaitingLine<WaitingPush>;
  private readonly quarantine: BufferQuarantine;
  private appends: Append[] = [];
  private writer: Promise<void> | undefined;
  private current: { segment: Segment; fh: FileHandle } | undefined;
  private reader: { segment: Segment; fh: FileHandle } | undefined;
  /** Settles after the latest admitted push settles: non-accepted answers wait for it to keep call order. */
  private tail: Promise<unknown> = Promise.resolve();
  private puller: (() => void) | undefined;
  /** Ends the wait before retrying a failed read, when a stop or shutdown comes during it. */
  private stopReadRetry: (() => void) | undefined;
  private emptyWaiters: (() => void)[] = [];
  private readonly bound: Room;

  /** Set while writes fail (disk full, I/O error): bytes of the write that failed. */
  private failedWriteBytes: number | undefined;
  private cancelProbe: (() => void) | undefined;
  private cancelAckedTimer: (() => void) | undefined;
  private ackedWrite: Promise<void> = Promise.resolve();
  private ackedWritten = "";
  private readonly background = new Set<Promise<void>>();
  private readonly onTicketDone = (ticket: AckTicket) => this.release(ticket);

  constructor(o: DurableBufferOptions) {
    this.dir = o.path;
    this.maxBytes = o.maxBytes;
    this.fsync = o.fsync;
    this.memory = o.memory;
    this.bound = new Room(o.memory);
    this.emit = o.emit;
    this.logger = o.logger;
    this.clock = o.clock ?? systemClock;
    this.quarantine = new BufferQuarantine({ dir: o.path, emit: o.emit, logger: o.logger, clock: this.clock });
    this.segmentBytes = o.segmentBytes ?? clamp(Math.floor(o.maxBytes / 16), 64 * 1024, 32 * 1024 * 1024);
    this.line = new WaitingLine<WaitingPush>(
      {
        fits: (w) => this.fits(w.encoded),
        admit: (w) => this.admit(w.chunk, w.encoded),
        closed: () => this.answer("closed"),
        left: () => this.checkEmpty(),
      },
      () => this.clock.now(),
    );
  }

  /**
   * Takes the lock and recovers the log: reads `acked`, scans every segment, quarantines torn or
   * corrupt bytes, and queues the entries not yet released for pull. Rejects with `ERR_LOCKED`
   * when the directory is locked by a live process, `ERR_BUFFER_IO` when it cannot be read;
   * corruption never rejects. Needs no free space (a full disk is what a crashed buffer may leave):
   * the lock is taken without it, leftover temp files are removed, and a quarantine copy that does
   * not fit keeps the file it came from; appends then fail until deliveries free room.
   */
  async open(): Promise<void> {
    if (this.phase !== "new") throw new SluiceError("ERR_INTERNAL", "DurableBuffer.open() is called once");
    try {
      await fs.mkdir(this.dir, { recursive: true });
    } catch (err) {
      throw ioError(`durable buffer: cannot create ${this.dir}`, err);
    }
    let lock: DirLock;
    try {
      lock = await acquireDirLock(join(this.dir, "lock"), `durable buffer ${this.dir}`);
    } catch (err) {
      throw err instanceof SluiceError ? err : ioError(`durable buffer: cannot lock ${this.dir}`, err);
    }
    if (lock.staleFrom !== undefined) this.logger.warn({ path: this.dir, pid: lock.staleFrom }, "durable buffer: took over the lock of a process that is gone");
    let ackedCorrupt: boolean;
    try {
      ackedCorrupt = await this.recover();
    } catch (err) {
      await lock.release().catch(() => {});
      throw err instanceof SluiceError ? err : ioError(`durable buffer: cannot recover ${this.dir}`, err);
    }
    this.lock = lock;
    this.phase = "open";
    if (ackedCorrupt) this.scheduleAckedWrite();
  }

  push(chunk: Chunk, wait: boolean, signal?: AbortSignal): Promise<PushResult> {
    if (this.phase === "new") return Promise.reject(new SluiceError("ERR_INTERNAL", "DurableBuffer.push() before open()"));
    if (this.closed || signal?.aborted) return this.answer("closed");
    if (chunk.records.length === 0) return Promise.reject(new SluiceError("ERR_INTERNAL", "DurableBuffer.push() of an empty chunk"));
    let encoded: EncodedChunk;
    try {
      encoded = encodeChunk(chunk);
    } catch (err) {
      return Promise.reject(classify(err, "ERR_INTERNAL"));
    }
    if (frameSize(this.nextSeq, encoded) - HEADER_BYTES > MAX_BODY_BYTES) {
      return Promise.reject(new SluiceError("ERR_BUFFER_IO", `chunk of ${encoded.size} bytes is larger than a log entry may be`, { retryable: false }));
    }
    // FIFO fairness: a chunk may only jump in when nobody waits ahead of it.
    if (this.line.length === 0 && this.fits(encoded)) return this.admit(chunk, encoded);
    if (!wait) return this.answer("full");
    return this.line.join({ chunk, encoded }, encoded.records, frameSize(this.nextSeq, encoded), signal);
  }

  /**
   * See {@link BufferContract.expectedWait}. Only the log's byte bound makes a push wait. The
   * entry's encoded size is estimated from `bytes` (the records' estimated size: records go in
   * as their JSON text) and a header; each record's envelope adds a little more.
   */
  expectedWait(_records: number, bytes: number): number {
    const need = HEADER_BYTES + bytes;
    if (this.line.length === 0 && (this.liveEntries === 0 || this.logBytes + need <= this.maxBytes)) return 0;
    const heldAndAhead = this.logBytes + this.line.bytes;
    // Never more than everything held and ahead: an entry larger than the bound fits an empty log.
    return this.line.expectedWait(0, Math.min(heldAndAhead, heldAndAhead + need - this.maxBytes));
  }

  /**
   * See {@link BufferContract.room}: the log is bound by bytes, so without `recordBytes` there is
   * room for any number of records while it is under its bound and nobody waits; with it, for as
   * many records of that size as the bytes left hold (an empty log takes any entry).
   */
  room(recordBytes?: number): number {
    if (this.closed || this.phase !== "open" || this.line.length > 0) return 0;
    if (this.liveEntries === 0) return Number.POSITIVE_INFINITY;
    if (recordBytes === undefined || recordBytes <= 0) return this.logBytes < this.maxBytes ? Number.POSITIVE_INFINITY : 0;
    return Math.max(0, Math.floor((this.maxBytes - this.logBytes) / recordBytes));
  }

  whenFreed(): Promise<void> {
    return this.closed ? Promise.resolve() : this.line.whenFreed();
  }

  async pull(): Promise<Chunk | undefined> {
    if (this.phase === "new") throw new SluiceError("ERR_INTERNAL", "DurableBuffer.pull() before open()");
    for (;;) {
      if (this.phase === "shut" || this.keep) return undefined;
      const entry = this.unpulled.peek();
      if (entry === undefined) {
        if (this.closed && this.writer === undefined) return undefined;
      } else if (this.inFlightRecords === 0 || this.fitsInFlight(entry)) {
        const chunk = await this.take(entry);
        if (chunk !== undefined) return chunk;
        continue;
      }
      await new Promise<void>((resolve) => (this.puller = resolve));
    }
  }

  /**
   * Releases the entry of a ticket this buffer handed out; the same as that ticket's `onDone`,
   * which is how the engine releases entries. Releasing twice is a no-op.
   */
  release(ticket: AckTicket): void {
    if (!(ticket instanceof EntryTicket)) throw new SluiceError("ERR_INTERNAL", "DurableBuffer.release() of a ticket it did not hand out");
    const entry = ticket.entry;
    // A ticket of a chunk evicted from memory before pull, or settled twice, must not release anything.
    if (entry.state !== "in_flight") return;
    this.retire(entry);
  }

  close(keep = false): void {
    if (keep && !this.keep) {
      this.keep = true;
      this.stopReadRetry?.();
      this.wakePuller();
      this.checkEmpty();
    }
    if (this.closed) return;
    this.closed = true;
    this.line.close();
    this.wakePuller();
    this.checkEmpty();
  }

  whenEmpty(): Promise<void> {
    if (this.isEmpty()) return Promise.resolve();
    return new Promise((resolve) => this.emptyWaiters.push(resolve));
  }

  /** Records and encoded bytes of every entry not yet released (on disk, being written, or in flight). */
  usage(): { records: number; bytes: number } {
    return { records: this.logRecords, bytes: this.logBytes };
  }

  /**
   * Split parts count as in flight (held in memory, not in the log): pull waits while they fill
   * `memory`. {@link usage} does not show them, as they are not in the log.
   */
  grow(records: number, bytes: number): void {
    this.inFlightRecords += records;
    this.inFlightBytes += bytes;
    this.heldRecords += records;
    this.heldBytes += bytes;
  }

  shrink(records: number, bytes: number): void {
    this.inFlightRecords -= records;
    this.inFlightBytes -= bytes;
    this.heldRecords -= records;
    this.heldBytes -= bytes;
    this.wakePuller();
    this.bound.freed();
  }

  /** Against `memory`, like pull. Entries released do not wake {@link whenPartRoom}: shrinks do, which is all a split waits for. */
  hasRoom(records: number, bytes: number): boolean {
    return this.bound.fits(this.inFlightRecords, this.inFlightBytes, records, bytes);
  }

  whenPartRoom(): Promise<void> {
    return this.bound.whenFreed();
  }

  /**
   * What the buffer holds in memory: chunks kept for pull and chunks in flight. Stays within
   * `memory` (but for one chunk larger than it). For diagnostics and tests.
   */
  memoryUsage(): { records: number; bytes: number; keptChunks: number } {
    return { records: this.heldRecords, bytes: this.heldBytes, keptChunks: this.kept.length };
  }

  /**
   * Ends the run: takes no more pushes, finishes the writes in progress, persists release
   * progress, closes files and removes the lock. Entries not released are replayed by the next
   * `open`. Safe to call more than once.
   */
  async shutdown(): Promise<void> {
    if (this.phase !== "open") return;
    this.close();
    await this.writer;
    // From here on, late releases only update counters: the files may belong to the next process soon.
    this.phase = "shut";
    this.stopReadRetry?.();
    this.quarantine.stop();
    this.wakePuller();
    this.cancelAckedTimer?.();
    this.cancelAckedTimer = undefined;
    this.cancelProbe?.();
    this.cancelProbe = undefined;
    await this.persistAcked().catch((err: unknown) => this.logger.warn({ path: this.dir, err: String(err) }, "durable buffer: could not write the acked file"));
    const last = this.current?.segment;
    for (const handle of [this.current, this.reader]) await handle?.fh.close().catch(() => {});
    this.current = undefined;
    this.reader = undefined;
    if (last !== undefined && last.live === 0 && last.uncopied === 0) await fs.rm(join(this.dir, last.name), { force: true }).catch(() => {});
    await Promise.all(this.background);
    const lock = this.lock;
    this.lock = undefined;
    await lock?.release().catch((err: unknown) => this.logger.warn({ path: this.dir, err: String(err) }, "durable buffer: could not remove the lock file"));
  }

  // -------------------------------------------------------------------------------------------
  // Recovery

  /** Recovers the log's state from disk; true when `acked` was corrupt (and wants rewriting). */
  private async recover(): Promise<boolean> {
    const acked = await readAcked(this.dir);
    let state: AckedState = { through: -1, released: [] };
    if (acked.tag === "ok") state = acked.state;
    if (acked.tag === "corrupt") {
      // Replaying everything still on disk is safe: redelivery is allowed, loss is not.
      await this.quarantine.report("acked", 0, acked.data, "acked_unreadable", `acked file ${acked.detail}; replaying every entry still in the log`);
    }

    const names = (await fs.readdir(this.dir)).filter(isSegmentName).sort();
    const firstSeqs = names.map((name) => Number(name.slice(0, -4)));
    // Without an index (no acked file yet, or one of an earlier version) what was written is unknown.
    const written = state.written ?? -1;
    this.quarantine.reportMissing(unreleasedIn(state, 0, Math.min(firstSeqs[0] ?? written, written)), "before the first segment: a segment file is gone");
    let lastSeq = -1;
    let replayRecords = 0;
    let replayChunks = 0;
    for (const [i, name] of names.entries()) {
      const file = join(this.dir, name);
      const data = await fs.readFile(file);
      const scan = scanSegment(data, lastSeq);
      const base = name.slice(0, -4);
      // A bad range whose copy failed keeps the file as it is, for the next start to copy again.
      let uncopied = 0;
      for (const bad of scan.bad) {
        const reason = bad.tail ? "torn_tail" : bad.problem;
        const detail = bad.tail ? `torn tail (${bad.problem}) cut off` : `corrupt entry (${bad.problem}) skipped`;
        if (!(await this.quarantine.report(`${base}-${bad.offset}`, bad.offset, data.subarray(bad.offset, bad.offset + bad.length), reason, `${name}: ${detail}`))) uncopied++;
      }
      if (scan.end < data.length && uncopied === 0) {
        await fs.truncate(file, scan.end).catch((err: unknown) => this.logger.warn({ file, err: String(err) }, "durable buffer: could not truncate a torn tail"));
      }
      const segment: Segment = { name, live: 0, size: scan.end, deleted: false, uncopied };
      // The seqs this segment was written with: up to the next segment's first, and below `written`.
      const end = Math.min(firstSeqs[i + 1] ?? written, written);
      let found = scan.bad.length;
      for (const s of scan.entries) {
        lastSeq = s.seq;
        if (isReleased(state, s.seq)) continue;
        if (s.seq < end) found++;
        const entry: LogEntry = { seq: s.seq, size: s.length, records: s.records, bytes: s.bytes, segment, offset: s.offset, state: "queued", chunk: undefined };
        this.order.push(entry);
        segment.live++;
        this.liveEntries++;
        this.logRecords += s.records;
        this.logBytes += s.length;
        this.unpulled.push(entry);
        replayRecords += s.records;
        replayChunks++;
      }
      this.quarantine.reportMissing(unreleasedIn(state, firstSeqs[i]!, end) - found, `${name} (${data.length} bytes) is shorter than the acked index says`);
      if (segment.live === 0 && uncopied === 0) await fs.rm(file, { force: true });
    }
    const lastRange = state.released[state.released.length - 1];
    // Never below `written`: a seq the index knows must not name a new entry.
    this.nextSeq = Math.max(lastSeq, state.through, lastRange === undefined ? -1 : lastRange[1], written - 1) + 1;
    this.writtenBelow = this.nextSeq;
    if (replayChunks > 0) this.emit({ type: "buffer_replayed", records: replayRecords, chunks: replayChunks });
    // Stale leftovers of an acked write or a write probe cut short by a crash: on a full disk,
    // their space is some of what the restart needs.
    await fs.rm(join(this.dir, "acked.tmp"), { force: true });
    await fs.rm(join(this.dir, "write-probe"), { force: true });
    return acked.tag === "corrupt";
  }

  // -------------------------------------------------------------------------------------------
  // Appending

  private fits(encoded: EncodedChunk): boolean {
    return this.liveEntries === 0 || this.logBytes + frameSize(this.nextSeq, encoded) <= this.maxBytes;
  }

  /** Answers a push that was not accepted, after every push admitted before it, so answers keep call order. */
  private answer(result: "full" | "closed"): Promise<PushResult> {
    return this.tail.then(() => result);
  }

  private admit(chunk: Chunk, encoded: EncodedChunk): Promise<PushResult> {
    const seq = this.nextSeq++;
    const head = frameHead(seq, encoded);
    const entry: LogEntry = {
      seq,
      size: head.length + encoded.size,
      records: encoded.records,
      bytes: encoded.bytes,
      segment: undefined,
      offset: 0,
      state: "writing",
      chunk: undefined,
    };
    this.order.push(entry);
    this.liveEntries++;
    this.logRecords += entry.records;
    this.logBytes += entry.size;
    const result = new Promise<PushResult>((resolve, reject) => {
      this.appends.push({ entry, head, parts: encoded.parts, chunk, resolve, reject });
    });
    this.tail = result.catch(() => {});
    this.writer ??= this.writeLoop();
    return result;
  }

  /** Writes queued appends, a group at a time, until none is left. Never rejects. */
  private async writeLoop(): Promise<void> {
    while (this.appends.length > 0) {
      let n = 0;
      let bytes = 0;
      // A group stays near one segment's size, so a backlog is not written as one huge buffer.
      while (n < this.appends.length && (n === 0 || bytes < this.segmentBytes)) bytes += this.appends[n++]!.entry.size;
      const group = this.appends.splice(0, n);
      try {
        await this.writeGroup(group, bytes);
        this.writable();
        this.commit(group);
      } catch (err) {
        await this.failGroup(group, bytes, err);
      }
    }
    this.writer = undefined;
    this.wakePuller();
  }

  private async writeGroup(group: Append[], bytes: number): Promise<void> {
    if (this.current !== undefined && this.current.segment.size >= this.segmentBytes) {
      const { segment, fh } = this.current;
      this.current = undefined;
      // The segment's data is on disk already: a failed close loses nothing.
      await fh.close().catch(() => {});
      if (segment.live === 0) this.releasable.push(segment);
    }
    this.current ??= await this.createSegment(group[0]!.entry.seq);
    const { segment, fh } = this.current;
    const parts: Bytes[] = [];
    for (const a of group) parts.push(a.head, ...a.parts);
    const data = globalThis.Buffer.concat(parts, bytes);
    for (let done = 0; done < bytes; ) {
      const { bytesWritten } = await fh.write(data, done, bytes - done, segment.size + done);
      if (bytesWritten === 0) throw new Error("write made no progress");
      done += bytesWritten;
    }
    // Where the platform has no O_DSYNC (Windows), the write is made durable by a datasync.
    if (this.fsync && fsConstants.O_DSYNC === undefined) await fh.datasync();
    let offset = segment.size;
    for (const a of group) {
      a.entry.segment = segment;
      a.entry.offset = offset;
      offset += a.entry.size;
    }
    segment.live += group.length;
    segment.size = offset;
  }

  private async createSegment(firstSeq: number): Promise<{ segment: Segment; fh: FileHandle }> {
    const name = segmentName(firstSeq);
    // With fsync, O_DSYNC: each write returns once its data is on disk, as write + fdatasync
    // would, in one trip to libuv's threads instead of two (measured: a group's commit from 5.4 to
    // 3.8 ms under the HTTP bench's load, where each trip also waits for the busy event loop).
    const fh = await fs.open(join(this.dir, name), this.fsync ? fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_DSYNC : "wx");
    const segment: Segment = { name, live: 0, size: 0, deleted: false, uncopied: 0 };
    try {
      // A new file's directory entry is durable only once the directory is synced.
      if (this.fsync) {
        const dir = await fs.open(this.dir, "r");
        try {
          await dir.sync();
        } finally {
          await dir.close();
        }
      }
    } catch (err) {
      await fh.close().catch(() => {});
      this.deleteSegment(segment);
      throw err;
    }
    return { segment, fh };
  }

  private commit(group: Append[]): void {
    for (const a of group) {
      const entry = a.entry;
      entry.state = "queued";
      if (this.heldRecords + entry.records <= this.memory.maxRecords && this.heldBytes + entry.bytes <= this.memory.maxBytes) {
        const ticket = new EntryTicket(entry, a.chunk.ticket.receivedAt, entry.records, entry.bytes, this.onTicketDone);
        ticket.trace = a.chunk.ticket.trace;
        for (const r of a.chunk.records) r.ticket = ticket;
        entry.chunk = { records: a.chunk.records, ticket };
        this.heldRecords += entry.records;
        this.heldBytes += entry.bytes;
        this.kept.push(entry);
      }
      this.unpulled.push(entry);
      a.resolve("accepted");
    }
    this.writtenBelow = group[group.length - 1]!.entry.seq + 1;
    // `acked` is the log's index too: it follows the writes, not only the releases.
    this.scheduleAckedWrite();
    this.wakePuller();
  }

  private async failGroup(group: Append[], bytes: number, err: unknown): Promise<void> {
    const error = ioError(`durable buffer: could not append to ${this.dir}`, err);
    this.logger.error({ component: "buffer", code: error.code, first_record_id: group[0]?.chunk.records[0]?.id, path: this.dir, err: error.message, chunks: group.length }, "durable buffer: write failed; the pushes of this group are rejected");
    this.notWritable(bytes, err);
    // What reached the file (or the disk) of a failed write is unknown: cut the segment back
    // to its last good entry and write on in a new one.
    const current = this.current;
    this.current = undefined;
    if (current !== undefined) {
      await current.fh.truncate(current.segment.size).catch(() => {});
      await current.fh.close().catch(() => {});
      if (current.segment.live === 0) this.releasable.push(current.segment);
    }
    for (const a of group) {
      this.retire(a.entry);
      a.reject(error);
    }
  }

  // -------------------------------------------------------------------------------------------
  // Writability: what readiness reports

  /**
   * A write failed: report it (`/health/ready` turns false) and, until a write succeeds, probe
   * now and then. Without the probe, a load balancer that stops sending traffic on the report
   * would also stop the pushes whose writes could tell that the disk has room again.
   */
  private notWritable(bytes: number, err: unknown): void {
    this.emit({ type: "buffer_write_failed", reason: err instanceof Error ? err.message : String(err) });
    const first = this.failedWriteBytes === undefined;
    this.failedWriteBytes = bytes;
    if (first) this.scheduleProbe();
  }

  /** A write succeeded: report it if writes had been failing. */
  private writable(): void {
    if (this.failedWriteBytes === undefined) return;
    this.failedWriteBytes = undefined;
    this.cancelProbe?.();
    this.cancelProbe = undefined;
    this.emit({ type: "buffer_write_recovered" });
    this.logger.info({ path: this.dir }, "durable buffer: writes succeed again");
  }

  private scheduleProbe(): void {
    if (this.phase === "shut") return;
    this.cancelProbe = this.clock.setTimer(WRITE_PROBE_MS, () => {
      this.cancelProbe = undefined;
      this.runInBackground(() => this.probeWrite(), "write probe failed");
    });
  }

  /** Would the write that failed succeed now? The same number of bytes (at most a segment's worth) tells. */
  private async probeWrite(): Promise<void> {
    const bytes = this.failedWriteBytes;
    if (bytes === undefined || this.phase === "shut") return;
    if (await writeProbe(this.dir, Math.min(bytes, this.segmentBytes), this.fsync)) this.writable();
    else if (this.failedWriteBytes !== undefined) this.scheduleProbe();
  }

  // -------------------------------------------------------------------------------------------
  // Pulling and releasing

  private fitsInFlight(entry: LogEntry): boolean {
    return this.bound.fits(this.inFlightRecords, this.inFlightBytes, entry.records, entry.bytes);
  }

  /** Moves the head of `unpulled` in flight and returns its chunk; undefined when it proved unreadable or on shutdown. */
  private async take(entry: LogEntry): Promise<Chunk | undefined> {
    this.unpulled.shift();
    entry.state = "in_flight";
    this.inFlightRecords += entry.records;
    this.inFlightBytes += entry.bytes;
    if (entry.chunk !== undefined) {
      this.kept.shift();
      const chunk = entry.chunk;
      entry.chunk = undefined;
      return chunk;
    }
    // Make room for the chunk read from disk by dropping the latest kept chunks: they are read back later.
    while (this.heldRecords > 0 && (this.heldRecords + entry.records > this.memory.maxRecords || this.heldBytes + entry.bytes > this.memory.maxBytes)) {
      const evicted = this.kept.pop();
      if (evicted === undefined) break;
      evicted.chunk = undefined;
      this.heldRecords -= evicted.records;
      this.heldBytes -= evicted.bytes;
    }
    this.heldRecords += entry.records;
    this.heldBytes += entry.bytes;
    // A graceful stop or shutdown cuts a wait short: pull must end, not retry for ever.
    const stop = new AbortController();
    this.stopReadRetry = () => stop.abort();
    const retries = new Retry(READ_RETRY, { clock: this.clock, random: Math.random, signal: stop.signal });
    let failures = 0;
    for (;;) {
      retries.begin();
      let data: Bytes;
      try {
        data = await this.readEntry(entry);
      } catch (err) {
        if (this.pullEnded()) return this.giveBack(entry);
        if ((err as NodeJS.ErrnoException).code === "ENOENT") {
          this.stopReadRetry = undefined;
          return this.loseUnread(entry);
        }
        // An I/O error may pass (too many open files); the entry is not given up, but a second failure in a row makes the buffer unready.
        failures++;
        if (failures > 1) this.emit({ type: "buffer_read_failed", reason: err instanceof Error ? err.message : String(err) });
        const decision = retries.decide(classify(err, "ERR_BUFFER_IO"));
        const wait = decision.tag === "retry" ? decision.delayMs : 0;
        this.logger.error({ component: "buffer", code: "ERR_BUFFER_IO", path: this.dir, seq: entry.seq, err: String(err), retryInMs: wait }, "durable buffer: could not read an entry; retrying");
        await retries.wait(wait);
        if (this.pullEnded()) return this.giveBack(entry);
        continue;
      }
      this.stopReadRetry = undefined;
      if (failures > 1) this.emit({ type: "buffer_read_recovered" });
      const frame = readFrame(data, 0, entry.seq);
      if (typeof frame !== "string" && frame.seq === entry.seq) {
        const ticket = new EntryTicket(entry, frame.receivedAt, entry.records, entry.bytes, this.onTicketDone);
        for (const r of frame.records) r.ticket = ticket;
        return { records: frame.records, ticket };
      }
      const problem = typeof frame === "string" ? frame : "bad_seq";
      const segment = entry.segment!;
      const name = `${segment.name.slice(0, -4)}-${entry.offset}`;
      const detail = `${segment.name}: entry ${entry.seq} changed on disk since it was written or checked (${problem}); quarantined, its ${entry.records} record(s) are not delivered`;
      if (!(await this.quarantine.report(name, entry.offset, data, problem, detail, entry.records))) {
        // Kept on disk until the copy succeeds: deleting the segment now would lose the only evidence.
        segment.uncopied++;
        this.quarantine.retry(name, data, () => {
          if (--segment.uncopied === 0 && segment.live === 0 && segment !== this.current?.segment) this.releasable.push(segment);
          this.scheduleAckedWrite();
        });
      }
      this.retire(entry);
      return undefined;
    }
  }

  /**
   * The segment of `entry` is gone (deleted by hand): it and the entries after it in that segment
   * still to be read are lost. Reported, and pull goes on instead of retrying for ever.
   */
  private loseUnread(entry: LogEntry): undefined {
    const segment = entry.segment!;
    const lost = [entry];
    for (let next = this.unpulled.peek(); next?.segment === segment && next.chunk === undefined; next = this.unpulled.peek()) lost.push(this.unpulled.shift()!);
    const records = lost.reduce((n, e) => n + e.records, 0);
    this.quarantine.reportMissing(lost.length, `${segment.name} is gone`, records);
    for (const e of lost) this.retire(e);
    return undefined;
  }

  /** True once pull hands out nothing more: after a graceful stop or shutdown. */
  private pullEnded(): boolean {
    return this.phase === "shut" || this.keep;
  }

  /** Undoes `take` for an entry whose read was abandoned by a stop: it stays un-released on disk, for the next run. */
  private giveBack(entry: LogEntry): undefined {
    entry.state = "queued";
    this.inFlightRecords -= entry.records;
    this.inFlightBytes -= entry.bytes;
    this.heldRecords -= entry.records;
    this.heldBytes -= entry.bytes;
    this.checkEmpty();
    return undefined;
  }

  private async readEntry(entry: LogEntry): Promise<Bytes> {
    const segment = entry.segment!;
    if (this.reader?.segment !== segment) {
      const previous = this.reader;
      this.reader = undefined;
      await previous?.fh.close();
      this.reader = { segment, fh: await fs.open(join(this.dir, segment.name), "r") };
    }
    const data = globalThis.Buffer.allocUnsafe(entry.size);
    const { bytesRead } = await this.reader.fh.read(data, 0, entry.size, entry.offset);
    return bytesRead === entry.size ? data : data.subarray(0, bytesRead);
  }

  /** An entry is done: released, failed to write, or unreadable. */
  private retire(entry: LogEntry): void {
    const was = entry.state;
    entry.state = "released";
    this.liveEntries--;
    this.logRecords -= entry.records;
    this.logBytes -= entry.size;
    if (was === "in_flight") {
      this.inFlightRecords -= entry.records;
      this.inFlightBytes -= entry.bytes;
      this.heldRecords -= entry.records;
      this.heldBytes -= entry.bytes;
    }
    const segment = entry.segment;
    if (segment !== undefined && --segment.live === 0 && segment.uncopied === 0 && segment !== this.current?.segment) this.releasable.push(segment);
    this.releasedInOrder++;
    this.trimOrder();
    this.scheduleAckedWrite();
    this.line.freed(entry.records, entry.size);
    this.line.admit();
    this.line.wakeFreed();
    this.wakePuller();
    this.checkEmpty();
  }

  private deleteSegment(segment: Segment): void {
    // Once the lock is given up, the files may be the next process's.
    if (segment.deleted || this.lock === undefined) return;
    segment.deleted = true;
    const reader = this.reader?.segment === segment ? this.reader : undefined;
    if (reader !== undefined) this.reader = undefined;
    this.runInBackground(async () => {
      await reader?.fh.close();
      await fs.rm(join(this.dir, segment.name), { force: true });
    }, "could not delete a released segment");
  }

  private runInBackground(task: () => Promise<void>, failure: string): void {
    const p = task()
      .catch((err: unknown) => this.logger.warn({ path: this.dir, err: String(err) }, `durable buffer: ${failure}`))
      .finally(() => this.background.delete(p));
    this.background.add(p);
  }

  private wakePuller(): void {
    const puller = this.puller;
    this.puller = undefined;
    puller?.();
  }

  /** Every entry released; after a graceful stop, every entry handed out by pull. */
  private isEmpty(): boolean {
    if (this.line.length !== 0) return false;
    return this.keep ? this.inFlightRecords === 0 : this.liveEntries === 0;
  }

  private checkEmpty(): void {
    if (!this.isEmpty()) return;
    const waiters = this.emptyWaiters;
    this.emptyWaiters = [];
    for (const w of waiters) w();
  }

  // -------------------------------------------------------------------------------------------
  // Release progress

  /** Drops released entries from `order`: at once from its head, and by a rebuild once they are most of it (one stuck entry must not make it grow without end). */
  private trimOrder(): void {
    for (let e = this.order.peek(); e !== undefined && e.state === "released"; e = this.order.peek()) {
      this.order.shift();
      this.releasedInOrder--;
    }
    if (this.releasedInOrder > 1024 && this.releasedInOrder * 2 > this.order.length) {
      const live = new Deque<LogEntry>();
      for (const e of this.order) if (e.state !== "released") live.push(e);
      this.order = live;
      this.releasedInOrder = 0;
    }
  }

  private scheduleAckedWrite(): void {
    if (this.cancelAckedTimer !== undefined || this.phase === "shut") return;
    this.cancelAckedTimer = this.clock.setTimer(ACKED_INTERVAL_MS, () => {
      this.cancelAckedTimer = undefined;
      this.runInBackground(() => this.persistAcked(), "could not write the acked file");
    });
  }

  /** Writes the release progress if it changed since the last write; one write at a time. */
  private persistAcked(): Promise<void> {
    const write = this.ackedWrite.then(async () => {
      // Every seq assigned so far and not in `order` is released (or was never written).
      let through: number | undefined;
      let prev = -1;
      const released: [number, number][] = [];
      for (const e of this.order) {
        if (e.state === "released") continue;
        if (through === undefined) through = e.seq - 1;
        else if (e.seq > prev + 1) released.push([prev + 1, e.seq - 1]);
        prev = e.seq;
      }
      if (through === undefined) through = this.nextSeq - 1;
      else if (prev < this.nextSeq - 1) released.push([prev + 1, this.nextSeq - 1]);
      const text = serializeAcked({ through, released, written: this.writtenBelow });
      const covered = this.releasable;
      this.releasable = [];
      try {
        if (text !== this.ackedWritten) {
          await writeAcked(this.dir, text, this.fsync);
          this.ackedWritten = text;
        }
      } finally {
        // After a failed write too: on a full disk, deleting them is what makes room for the next
        // one. A crash before that may report their entries as lost, though they were delivered.
        for (const segment of covered) this.deleteSegment(segment);
      }
    });
    this.ackedWrite = write.catch(() => {});
    return write;
  }
}
