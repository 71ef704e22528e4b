/**
 * How the `redis_streams` source turns stream entries into records, and reads the replies of the
 * commands it sends besides XREADGROUP (XPENDING, XINFO GROUPS). Pure functions: no connection.
 */
import { SluiceError } from "../core/errors.js";
import type { Entry, JsonObject } from "../core/record.js";
import type { ServiceEnvelope, SourceHandle } from "../components/contracts.js";

/** Entry fields the `redis_streams` sink writes beside the body: they fill the record's envelope, not its payload. */
export const ENVELOPE_FIELDS = ["id", "key", "event_time"] as const;

/** What the source needs to decode an entry. */
export interface EntryFormat {
  /** The field holding the payload JSON. */
  readonly bodyKey: string;
  /** The payload field other (non-envelope) fields go under when the entry has a body. */
  readonly metadataField: string;
}

/** An entry as ioredis returns it: its id and its fields as a flat field/value list; `null` fields for an entry deleted while pending (a history read). */
export type RawEntry = [id: string, fields: string[] | null];

/** An entry of an XREADGROUP reply read as bytes (`xreadgroupBuffer`): nothing decoded that is not used. */
export type BufferEntry = [id: Buffer, fields: Buffer[] | null];

const OPEN_BRACE = 0x7b;
const CLOSE_BRACE = 0x7d;
const LF = 0x0a;
/** A `}` followed by a comma: a body that may hold more than one value once joined with others. */
const OBJECT_THEN_COMMA = /\}[ \t\r]*,/;

/** An entry's parts after one pass over its fields. */
interface EntryParts {
  body: string | undefined;
  envelope: ServiceEnvelope;
  /** Fields other than the body and the envelope's, in order; undefined when there are none. */
  others: Record<string, string> | undefined;
  /** The fields' total length, the record's size estimate for the buffer's byte bound. */
  bytes: number;
}

function split(position: string, fields: readonly string[], format: EntryFormat): EntryParts {
  let body: string | undefined;
  let id: string | undefined;
  let key: string | undefined;
  let eventTime: number | undefined;
  let others: Record<string, string> | undefined;
  let bytes = 0;
  for (let i = 0; i + 1 < fields.length; i += 2) {
    const field = fields[i]!;
    const value = fields[i + 1]!;
    bytes += field.length + value.length;
    if (field === format.bodyKey) body = value;
    else if (field === "id") id = value;
    else if (field === "key") key = value;
    else if (field === "event_time") {
      const ms = Date.parse(value);
      eventTime = Number.isNaN(ms) ? undefined : ms;
    } else (others ??= {})[field] = value;
  }
  return { body, envelope: { id: id ?? position, key, eventTime }, others, bytes };
}

/**
 * One entry of `stream` as a record (what the read loop enqueues). The payload is the JSON object
 * in the body field, with the other non-envelope fields under `metadataField` when there are any;
 * an entry without a body field is its fields (minus `id`, `key`, `event_time`) as strings. The
 * envelope is the entry's `id` field (else `<stream>:<entry id>`, stable across redeliveries and
 * workers), `key` and `event_time`. A body that is not a JSON object is dead-lettered
 * (`ERR_RECORD_MALFORMED`, located `<stream> entry <id>`).
 */
export function entryRecord(handle: SourceHandle, stream: string, entryId: string, fields: readonly string[], format: EntryFormat): Entry {
  const position = `${stream}:${entryId}`;
  const { body, envelope, others, bytes } = split(position, fields, format);
  if (body === undefined) return handle.record(others ?? {}, bytes, position, undefined, envelope);
  let payload: unknown;
  try {
    payload = JSON.parse(body);
  } catch (err) {
    const error = new SluiceError("ERR_RECORD_MALFORMED", `field ${format.bodyKey} is not JSON: ${(err as Error).message}`, { location: `${stream} entry ${entryId}` });
    return handle.malformed(body, position, error, envelope);
  }
  if (payload === null || typeof payload !== "object" || Array.isArray(payload)) {
    const error = new SluiceError("ERR_RECORD_MALFORMED", `field ${format.bodyKey} is not a JSON object`, { location: `${stream} entry ${entryId}` });
    return handle.malformed(body, position, error, envelope);
  }
  const object = payload as JsonObject;
  if (others === undefined) return handle.record(object, bytes, position, body, envelope);
  object[format.metadataField] = others;
  return handle.record(object, bytes, position, undefined, envelope);
}

/**
 * The records of one read of `stream` (entries as bytes), appended to `records`, their entry ids
 * to `ids`. When every entry holds only the body field and every body looks like one JSON object,
 * the bodies are decoded with one `toString` and parsed with one `JSON.parse` of `[body,body,...]`,
 * accepted only when it holds one object per entry and no body has a `},` of its own (then every
 * element is exactly one body: the file source's rule); otherwise, and for every other entry,
 * {@link entryRecord} decodes and parses entry by entry, which finds and reports a bad body.
 */
export function readRecords(handle: SourceHandle, stream: string, entries: readonly BufferEntry[], format: EntryFormat, records: Entry[], ids: string[]): void {
  const first = ids.length;
  for (const [id] of entries) ids.push(id.toString("latin1"));
  if (entries.length > 1 && readPlain(handle, stream, entries, format, records, ids, first)) return;
  entries.forEach(([, fields], i) => {
    records.push(entryRecord(handle, stream, ids[first + i]!, fields?.map((f) => f.toString()) ?? [], format));
  });
}

/** The fast path of {@link readRecords}; false (nothing added) when it does not apply. */
function readPlain(handle: SourceHandle, stream: string, entries: readonly BufferEntry[], format: EntryFormat, records: Entry[], ids: readonly string[], first: number): boolean {
  const key = format.bodyKey;
  let length = 0;
  for (const [, fields] of entries) {
    if (fields === null || fields.length !== 2 || fields[0]!.length !== key.length || fields[0]!.toString("latin1") !== key) return false;
    const body = fields[1]!;
    if (body.length < 2 || body[0] !== OPEN_BRACE || body[body.length - 1] !== CLOSE_BRACE) return false;
    length += body.length + 1;
  }
  const joined = Buffer.allocUnsafe(length - 1);
  let at = 0;
  for (const [, fields] of entries) {
    if (at > 0) joined[at++] = LF;
    at += fields![1]!.copy(joined, at);
  }
  const text = joined.toString("utf8");
  if (OBJECT_THEN_COMMA.test(text)) return false;
  let values: unknown[];
  try {
    values = JSON.parse(`[${text.replaceAll("\n", ",")}]`) as unknown[];
  } catch {
    return false;
  }
  if (values.length !== entries.length) return false;
  const keyBytes = key.length;
  let from = 0;
  entries.forEach(([, fields], i) => {
    let to = text.indexOf("\n", from);
    if (to < 0) to = text.length;
    const position = `${stream}:${ids[first + i]}`;
    records.push(handle.record(values[i] as JsonObject, keyBytes + fields![1]!.length, position, text.slice(from, to), { id: position, key: undefined, eventTime: undefined }));
    from = to + 1;
  });
  return true;
}

/**
 * An entry that was delivered `deliveries` times without being acked, as a dead letter
 * (`ERR_MAX_DELIVERIES`) carrying its body (or, without one, its fields as JSON).
 */
export function exhaustedRecord(handle: SourceHandle, stream: string, entryId: string, fields: readonly string[], deliveries: number, format: EntryFormat): Entry {
  const position = `${stream}:${entryId}`;
  const { body, envelope, others } = split(position, fields, format);
  const error = new SluiceError("ERR_MAX_DELIVERIES", `entry ${entryId} of ${stream} was delivered ${deliveries} times without being committed; giving up on it`, {
    location: `${stream} entry ${entryId}`,
  });
  return handle.malformed(body ?? JSON.stringify(others ?? {}), position, error, envelope);
}

/** One line of `XPENDING <stream> <group> IDLE <ms> <start> <end> <count>`. */
export interface PendingEntry {
  readonly id: string;
  readonly consumer: string;
  /** Times the entry was delivered (read or claimed with its fields) so far. */
  readonly deliveries: number;
}

/** Reads the extended form of XPENDING's reply: `[id, consumer, idle ms, deliveries]` per entry. */
export function parsePending(reply: unknown): PendingEntry[] {
  if (!Array.isArray(reply)) return [];
  return reply.map((line) => {
    const [id, consumer, , deliveries] = line as [string, string, number, number];
    return { id, consumer, deliveries: Number(deliveries) };
  });
}

/** A group's backlog in one stream, from XINFO GROUPS. */
export interface GroupBacklog {
  readonly pending: number;
  /** Entries not yet delivered to the group; undefined when the server cannot tell (before Redis 7, or after some deletions). */
  readonly lag: number | undefined;
}

/** Finds `group` in an XINFO GROUPS reply (per group a flat name/value list); undefined when the stream has no such group. */
export function parseGroupInfo(reply: unknown, group: string): GroupBacklog | undefined {
  if (!Array.isArray(reply)) return undefined;
  for (const info of reply as unknown[][]) {
    const fields = new Map<string, unknown>();
    for (let i = 0; i + 1 < info.length; i += 2) fields.set(String(info[i]), info[i + 1]);
    if (fields.get("name") !== group) continue;
    const lag = fields.get("lag");
    return { pending: Number(fields.get("pending") ?? 0), lag: typeof lag === "number" ? lag : undefined };
  }
  return undefined;
}
