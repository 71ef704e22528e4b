/**
 * Builders of test records. Deterministic: the same arguments give the same records.
 */
import type { SluiceRecord } from "../../src/core/record.js";

/** Options of {@link makeRecords}. */
export interface MakeRecordsOptions {
  /** Index of the first record (ids `r-<start>` ...); default 0. */
  readonly start?: number;
  /** Number of distinct keys (`sensor-0` ...), assigned round robin; default 4. */
  readonly keys?: number;
  /** `receivedAt` of the first record; each next one is 1 ms later. Default 2024-01-01T00:00:00Z. */
  readonly receivedAt?: number;
  /** Source name; default "test". */
  readonly source?: string;
  /** Set `eventTime` from the payload's `ts`; default true. */
  readonly eventTime?: boolean;
}

/** The payload {@link makeRecords} builds. */
export interface TestPayload {
  [key: string]: string | number;
  id: string;
  sensor: string;
  value: number;
  ts: string;
}

/**
 * `n` records with ids `r-<i>`, key = the payload's `sensor`, payload `{ id, sensor, value, ts }`,
 * source "test" and attempts 0. `eventTime` is `ts` (1 s before `receivedAt`) unless
 * `eventTime: false`.
 */
export function makeRecords(n: number, opts: MakeRecordsOptions = {}): SluiceRecord[] {
  const start = opts.start ?? 0;
  const keys = opts.keys ?? 4;
  const base = opts.receivedAt ?? Date.UTC(2024, 0, 1);
  const records: SluiceRecord[] = [];
  for (let i = start; i < start + n; i++) {
    const receivedAt = base + (i - start);
    const eventTime = receivedAt - 1000;
    const payload: TestPayload = {
      id: `r-${i}`,
      sensor: `sensor-${i % keys}`,
      value: ((i * 37) % 1000) / 10,
      ts: new Date(eventTime).toISOString(),
    };
    records.push({
      id: payload.id,
      key: payload.sensor,
      payload,
      eventTime: opts.eventTime === false ? undefined : eventTime,
      receivedAt,
      source: opts.source ?? "test",
      attempts: 0,
    });
  }
  return records;
}
