/**
 * Split parts within the buffer's bound: {@link Splitter} hands a split record's parts on one at a
 * time, each counted against the buffer as it is produced, and waits for room between them.
 */
import type { SpanContext } from "@opentelemetry/api";
import type { Buffer } from "./buffer.js";
import type { EventSink } from "./events.js";
import { RecordEntry, settle, type AckTicket, type Entry, type JsonObject, type JsonValue } from "./record.js";

/** What a {@link Splitter} works with. */
export interface SplitterOptions {
  readonly buffer: Buffer;
  readonly emit: EventSink;
  /** The run's hard abort: no more parts are produced; the split record stays un-acked. */
  readonly signal: AbortSignal;
  /** Hands the records transformed so far to the sinks, emptying `out`. */
  handOn(out: Entry[]): void;
}

/**
 * Produces the parts of split records within the buffer's bound.
 *
 * Each part is counted (`Buffer.grow`) when it is produced, with its own estimated size, and
 * goes through the rest of the chain before the next one is produced. When the next part does
 * not fit, the records transformed so far are handed to the sinks and the split waits for room.
 * Parts produced between two waits form a slice with one ticket: its room comes back
 * (`Buffer.shrink`) when all its parts are done, and the split record is settled in its own ticket
 * when every slice is.
 *
 * Invariant that keeps nested splits (a part split again by a later transform) from deadlocking:
 * a split waits only while a *closed* slice is not done. A slice closes when its split waits or
 * ends; every part in it has been through the whole chain by then, and the wait first hands
 * `out` on, so what a closed slice holds is in the sinks (or settled) and finishes without the
 * chain. The parts a wait cannot count on are the ones the chain itself holds (one part per split
 * level, its chunk's records): when nothing closed is pending the part goes on past the bound,
 * so the bound is exceeded only when the chain's own holdings fill it, by one part per level.
 */
export class Splitter {
  /** Closed slices not yet done: what frees room without the chain's help. */
  private closedPending = 0;

  constructor(private readonly o: SplitterOptions) {}

  /**
   * Runs `next` over a part of `record` per payload, in order. Returns a promise only when a
   * `next` did or a part waited for room.
   */
  run(record: Entry, payloads: readonly JsonObject[], out: Entry[], next: (part: Entry) => Promise<void> | undefined): Promise<void> | undefined {
    const parts: PartMaker = {
      count: payloads.length,
      payload: (i) => payloads[i]!,
      make: (i, bytes) => new RecordEntry(`${record.id}#${i}`, record.key, payloads[i]!, record.eventTime, record.source, bytes),
    };
    return this.runParts(record, parts, out, next);
  }

  /**
   * As {@link run}, for parts made elsewhere: the parts a transform worker thread split a record
   * into, each made by `parts` (with its own id) and sized by its payload.
   */
  runParts(record: Entry, parts: PartMaker, out: Entry[], next: (part: Entry) => Promise<void> | undefined): Promise<void> | undefined {
    this.o.emit({ type: "records_received", source: record.source, count: parts.count - 1, bytes: 0 });
    return this.from(new Split(this, record, parts), 0, out, next);
  }

  private from(split: Split, first: number, out: Entry[], next: (part: Entry) => Promise<void> | undefined): Promise<void> | undefined {
    const { buffer, signal } = this.o;
    for (let i = first; i < split.parts.count; i++) {
      // Hard abort: parts not produced stay with their record, un-acked.
      if (signal.aborted) {
        split.close();
        return undefined;
      }
      const bytes = split.parts.bytes?.(i) ?? estimateBytes(split.parts.payload(i));
      if (!buffer.hasRoom(1, bytes)) {
        split.close();
        this.o.handOn(out);
        if (this.closedPending > 0) return this.waitForRoom(bytes).then(() => this.from(split, i, out, next));
      }
      buffer.grow(1, bytes);
      const pending = next(split.part(i, bytes));
      if (pending !== undefined) return pending.then(() => this.from(split, i + 1, out, next));
    }
    split.close();
    return undefined;
  }

  /** Waits until a part of `bytes` fits, no closed slice is pending (see the class invariant), or the hard abort. */
  private async waitForRoom(bytes: number): Promise<void> {
    const { buffer, signal } = this.o;
    while (!signal.aborted && this.closedPending > 0 && !buffer.hasRoom(1, bytes)) {
      await new Promise<void>((resolve) => {
        const done = () => {
          signal.removeEventListener("abort", done);
          resolve();
        };
        signal.addEventListener("abort", done, { once: true });
        void buffer.whenPartRoom().then(done);
      });
    }
  }

  /** @internal A slice of a split was closed, with parts not all done. */
  sliceClosed(): void {
    this.closedPending++;
  }

  /** @internal A closed slice's parts are all done. */
  sliceDone(records: number, bytes: number): void {
    this.closedPending--;
    this.o.buffer.shrink(records, bytes);
  }
}

/** Makes the parts of one split record. */
export interface PartMaker {
  readonly count: number;
  /** The `index`-th part's payload, for its size (unless `bytes` tells it). */
  payload(index: number): JsonObject;
  /** The `index`-th part's size for `max_bytes`, when known without its payload. */
  bytes?(index: number): number;
  /** The `index`-th part, without its ticket. */
  make(index: number, bytes: number): RecordEntry;
}

/** One split record: its parts, the slice being filled, and how many parts are not done. */
class Split {
  private slice: Slice | undefined;
  private partsLeft: number;

  constructor(
    private readonly splitter: Splitter,
    readonly record: Entry,
    readonly parts: PartMaker,
  ) {
    this.partsLeft = parts.count;
  }

  /** The `index`-th part, in the current slice. */
  part(index: number, bytes: number): Entry {
    const r = this.record;
    this.slice ??= new Slice(this, r.ticket);
    const part = this.parts.make(index, bytes);
    part.ticket = this.slice;
    this.slice.records++;
    this.slice.bytes += bytes;
    this.slice.pending++;
    return part;
  }

  /** Closes the current slice: no part joins it any more. */
  close(): void {
    const slice = this.slice;
    if (slice === undefined) return;
    this.slice = undefined;
    this.splitter.sliceClosed();
    settle(slice, 1);
  }

  /** @internal */
  sliceDone(slice: Slice): void {
    this.splitter.sliceDone(slice.records, slice.bytes);
    this.partsLeft -= slice.records;
    if (this.partsLeft === 0) settle(this.record.ticket, 1);
  }
}

/**
 * The ticket a slice's parts share. `pending` starts at 1 and the slice's close settles that one,
 * so parts done (filtered, dead-lettered) while it still grows cannot finish it early.
 */
class Slice implements AckTicket {
  readonly seq: number;
  readonly checkpoint: unknown;
  readonly receivedAt: number;
  readonly trace: SpanContext | undefined;
  records = 0;
  bytes = 0;
  pending = 1;

  constructor(
    private readonly split: Split,
    parent: AckTicket,
  ) {
    this.seq = parent.seq;
    this.checkpoint = parent.checkpoint;
    this.receivedAt = parent.receivedAt;
    this.trace = parent.trace;
  }

  onDone(): void {
    this.split.sliceDone(this);
  }
}

/** Nodes an estimate walks before it measures the JSON text instead. */
const WALK_BUDGET = 256;

/**
 * A part's size for `max_bytes`: its JSON length, estimated by a walk of at most
 * {@link WALK_BUDGET} values (no string is built); a larger part is measured with
 * `JSON.stringify`, which costs little next to producing it. A part that cannot be serialized
 * (a cycle) counts as the budget's worth, and its sink rejects it.
 */
function estimateBytes(payload: JsonObject): number {
  let budget = WALK_BUDGET;
  const walk = (v: JsonValue): number => {
    if (--budget < 0) return 0;
    if (typeof v === "string") return v.length + 2;
    if (typeof v !== "object" || v === null) return 8;
    let n = 2;
    if (Array.isArray(v)) for (const x of v) n += walk(x) + 1;
    else for (const k in v) n += k.length + 4 + walk(v[k]!);
    return n;
  };
  const walked = walk(payload);
  if (budget >= 0) return walked;
  try {
    return JSON.stringify(payload).length;
  } catch {
    return WALK_BUDGET * 8;
  }
}
