/**
 * What a broker source (`redis_streams`, `nats_jetstream`) needs to fetch only what fits the
 * buffer's byte bound as well as its record bound: a running average of its records' sizes, and
 * how much room to ask {@link SourceHandle.waitForRoom} for with it.
 */
import type { Entry } from "../core/record.js";
import type { SourceHandle } from "./contracts.js";

/** How much each chunk moves the average (an exponential moving average per chunk). */
const CHUNK_WEIGHT = 0.25;

/** A running average of the size (`Entry.bytes`, what the byte bound counts) of the records a source read. */
export class RecordSizeEstimate {
  /** Bytes per record; undefined until a record was seen. */
  private mean: number | undefined;

  /** Moves the average by a chunk's records. */
  observe(records: readonly Entry[]): void {
    if (records.length === 0) return;
    let bytes = 0;
    for (const r of records) bytes += r.bytes;
    const mean = bytes / records.length;
    this.mean = this.mean === undefined ? mean : this.mean + (mean - this.mean) * CHUNK_WEIGHT;
  }

  /** Bytes per record; undefined until a record was seen. */
  get bytes(): number | undefined {
    return this.mean;
  }

  /**
   * Waits for room for up to `n` records of the average size, in records and in bytes. Asks for
   * one record until one was seen: before, nothing tells how many fit the byte bound, and what a
   * broker delivered that does not fit waits at the broker's clock (pending in a Redis group,
   * toward JetStream's `ack_wait`) while sluice is full.
   */
  room(handle: SourceHandle, n: number, signal: AbortSignal): Promise<number> {
    return handle.waitForRoom(this.mean === undefined ? 1 : n, signal, this.mean);
  }
}
