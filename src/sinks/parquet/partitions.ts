/**
 * Hive-style partition directories: `<name>=<value>/...` per record, from its event or ingest
 * time's UTC date or from a payload field, with values percent-encoded as query engines decode them.
 */
import { fieldGetter, type SluiceRecord } from "../../core/record.js";
import { partitionName, type PartitionSpec } from "./options.js";

/** The value Hive, Spark and DuckDB read as NULL: a missing time or field. */
export const NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__";

/** A directory name of up to 255 bytes is portable; the rest is left for `<name>=`. */
const MAX_VALUE_BYTES = 200;

/** A record whose partition value cannot name a directory (too long): it cannot be stored (permanent). */
export class PartitionValueError extends Error {
  override readonly name = "PartitionValueError";
}

/**
 * A field's value as a directory name: `encodeURIComponent` (DuckDB, Spark and Hive decode it), a
 * leading `.` encoded too (no hidden directories, no `..`); null, missing and empty become
 * {@link NULL_PARTITION}; objects and arrays their JSON text.
 */
export function encodePartitionValue(v: unknown, name: string): string {
  if (v === undefined || v === null || v === "") return NULL_PARTITION;
  const text = typeof v === "string" ? v : typeof v === "object" ? JSON.stringify(v) : String(v);
  const encoded = encodeURIComponent(text).replace(/^\./, "%2E");
  if (encoded.length > MAX_VALUE_BYTES) throw new PartitionValueError(`partition ${name}: the value is longer than ${MAX_VALUE_BYTES} bytes once encoded`);
  return encoded;
}

/** `2024-06-01` and `13` of a time, in UTC; the hour unpadded, so readers type it as a number. */
function utcParts(ms: number): { day: string; hour: string } {
  const date = new Date(ms);
  return { day: date.toISOString().slice(0, 10), hour: String(date.getUTCHours()) };
}

/**
 * Builds the function giving a record's partition directory, relative to the lake's root (`""`
 * without `partition_by`), e.g. `date=2024-06-01/sensor=sensor-7`. It throws
 * {@link PartitionValueError} for a value too long for a directory name.
 */
export function partitioner(specs: readonly PartitionSpec[]): (record: SluiceRecord) => string {
  if (specs.length === 0) return () => "";
  const levels = specs.map((spec): ((r: SluiceRecord) => string) => {
    const name = partitionName(spec);
    if ("date" in spec) {
      const time = spec.date === "event_time" ? (r: SluiceRecord) => r.eventTime : (r: SluiceRecord) => r.receivedAt;
      const hourly = spec.granularity === "hour";
      return (r) => {
        const ms = time(r);
        if (ms === undefined || !Number.isFinite(ms)) return hourly ? `${name}=${NULL_PARTITION}/hour=${NULL_PARTITION}` : `${name}=${NULL_PARTITION}`;
        const { day, hour } = utcParts(ms);
        return hourly ? `${name}=${day}/hour=${hour}` : `${name}=${day}`;
      };
    }
    const get = fieldGetter(spec.field);
    return (r) => `${name}=${encodePartitionValue(get(r.payload), name)}`;
  });
  return (r) => levels.map((level) => level(r)).join("/");
}
