/**
 * The NDJSON encoding of records that the `file` and `stdout` sinks share: one JSON line per
 * record, the envelope or the payload alone.
 */
import { SluiceError } from "../core/errors.js";
import type { SluiceRecord } from "../core/record.js";
import type { RecordFailure } from "./contracts.js";

/** What a line holds: the whole record envelope, or the payload alone. */
export type NdjsonFormat = "ndjson" | "payload";

/**
 * The NDJSON line of a record, without the newline:
 * `{"id","key","event_time","received_at","source","payload"}`, times as ISO 8601, absent key and
 * event time as null. `format: "payload"` gives the payload alone. Throws for a payload JSON
 * cannot represent (a cycle, a BigInt) or an invalid time.
 *
 * JSON.stringify escapes every line break inside strings, so one record is always one line.
 */
export function ndjsonLine(record: SluiceRecord, format: NdjsonFormat = "ndjson"): string {
  if (format === "payload") return JSON.stringify(record.payload);
  return JSON.stringify({
    id: record.id,
    key: record.key ?? null,
    event_time: record.eventTime === undefined ? null : new Date(record.eventTime).toISOString(),
    received_at: new Date(record.receivedAt).toISOString(),
    source: record.source,
    payload: record.payload,
  });
}

/**
 * Encodes a batch as NDJSON. A record that cannot be encoded is left out and reported by index as
 * a permanent `ERR_SINK_REJECTED` (the message starts with `sinkName`); the others are encoded in order.
 */
export function encodeNdjson(
  records: readonly SluiceRecord[],
  format: NdjsonFormat,
  sinkName: string,
): { readonly data: string; readonly failures: RecordFailure[] } {
  const lines: string[] = [];
  const failures: RecordFailure[] = [];
  records.forEach((record, index) => {
    try {
      lines.push(ndjsonLine(record, format));
    } catch (err) {
      failures.push({
        index,
        error: new SluiceError("ERR_SINK_REJECTED", `${sinkName}: record ${record.id} cannot be encoded: ${(err as Error).message}`, {
          cause: err,
        }),
      });
    }
  });
  return { data: lines.length === 0 ? "" : `${lines.join("\n")}\n`, failures };
}
