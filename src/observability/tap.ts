/**
 * `observability.tap`: live records for `sluice tap`. Each reader has a filter (stage,
 * component), an optional limit, and a small queue of NDJSON lines; the engine hands records
 * over synchronously and never waits. What does not fit a reader's queue (it reads slower than
 * records pass) is dropped and counted: the count goes to the reader in a notice line and to
 * `sluice_tap_dropped_records_total`. So a slow reader never slows the pipeline.
 */
import type { EventSink } from "../core/events.js";
import type { SluiceRecord } from "../core/record.js";
import type { RecordTap, TapStage } from "../core/tap.js";

/** Lines a reader may have waiting to be written to its socket before records are dropped for it. */
export const TAP_QUEUE_LINES = 500;
/** Readers at once (each costs a serialization per record it takes); past it a new one is refused. */
export const MAX_TAP_READERS = 8;

/** What a reader wants to see. */
export interface TapFilter {
  readonly stage?: TapStage;
  readonly component?: string;
  /** Records to send before the reader is done; undefined: until it disconnects. */
  readonly limit?: number;
}

/** One reader's queue. The server writes its lines out as its socket takes them. */
export class TapReader {
  private queue: string[] = [];
  /** Records dropped since the last notice. */
  private droppedSinceNotice = 0;
  private taken = 0;
  /** Called when lines were queued, for the server to write them out (at most once per engine call). */
  onLines: () => void = () => {};

  constructor(
    readonly filter: TapFilter,
    private readonly capacity: number,
  ) {}

  /** True once `limit` records were taken: nothing more comes, the server ends the stream after the queue. */
  get complete(): boolean {
    return this.filter.limit !== undefined && this.taken >= this.filter.limit;
  }

  /** Queues what fits of `records`; returns how many were dropped. */
  offer(stage: TapStage, component: string, records: readonly SluiceRecord[]): number {
    if (this.complete) return 0;
    if ((this.filter.stage !== undefined && this.filter.stage !== stage) || (this.filter.component !== undefined && this.filter.component !== component)) return 0;
    const wanted = this.filter.limit === undefined ? records.length : Math.min(records.length, this.filter.limit - this.taken);
    const fits = Math.max(0, Math.min(wanted, this.capacity - this.queue.length));
    for (let i = 0; i < fits; i++) this.queue.push(tapLine(stage, component, records[i]!));
    this.taken += fits;
    const dropped = wanted - fits;
    this.droppedSinceNotice += dropped;
    if (fits > 0 || dropped > 0) this.onLines();
    return dropped;
  }

  /** The lines to write now, a drop notice first when records were dropped since the last one. */
  drain(): string[] {
    const lines = this.queue;
    this.queue = [];
    if (this.droppedSinceNotice > 0) {
      lines.unshift(`${JSON.stringify({ notice: "dropped", records: this.droppedSinceNotice })}\n`);
      this.droppedSinceNotice = 0;
    }
    return lines;
  }
}

/** One record as `sluice tap` prints it. */
function tapLine(stage: TapStage, component: string, r: SluiceRecord): string {
  return `${JSON.stringify({ stage, component, id: r.id, key: r.key ?? null, source: r.source, received_at: new Date(r.receivedAt).toISOString(), event_time: r.eventTime === undefined ? null : new Date(r.eventTime).toISOString(), payload: r.payload })}\n`;
}

/** The tap of one pipeline: pass it as the pipeline's `tap`, and open readers from the server. */
export class Tap implements RecordTap {
  listening = false;
  private readonly readers = new Set<TapReader>();

  constructor(
    private readonly emit: EventSink,
    private readonly capacity = TAP_QUEUE_LINES,
  ) {}

  /** A new reader; undefined when {@link MAX_TAP_READERS} are open. Close it with {@link close}. */
  open(filter: TapFilter): TapReader | undefined {
    if (this.readers.size >= MAX_TAP_READERS) return undefined;
    const reader = new TapReader(filter, this.capacity);
    this.readers.add(reader);
    this.listening = true;
    return reader;
  }

  close(reader: TapReader): void {
    this.readers.delete(reader);
    this.listening = this.readers.size > 0;
  }

  observe(stage: TapStage, component: string, records: readonly SluiceRecord[]): void {
    let dropped = 0;
    for (const reader of this.readers) dropped += reader.offer(stage, component, records);
    if (dropped > 0) this.emit({ type: "tap_records_dropped", count: dropped });
  }
}
