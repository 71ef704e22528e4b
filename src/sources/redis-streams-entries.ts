/**
 * How the `redis_streams` source turns stream entries into records, and reads the replies of the
 * commands it sends besides XREADGROUP (XPENDING, XINFO GROUPS). Pure functions: no connection.
 */
import { parseObjectRun } from "../core/envelope.js";
import { SluiceError } from "../core/errors.js";
import { JSON_CHAR } from "../core/json-chars.js";
import type { Entry, JsonObject } from "../core/record.js";
import type { ServiceEnvelope, SourceHandle } from "../components/contracts.js";

/** What the source needs to decode an entry. */
export interface EntryFormat {
  /** The field holding the payload JSON. */
  readonly bodyKey: string;
  /** The payload field other (non-envelope) fields go under when the entry has a body. */
  readonly metadataField: string;
}

/** An entry as ioredis returns it: its id and its fields as a flat field/value list; `null` fields for an entry deleted while pending (a history read). */
export type RawEntry = [id: string, fields: string[] | null];

/** An entry as the reader reads it (`xreadgroupBuffer`: no string made for what is not used): its id and its fields as a flat field/value list; `null` fields for an entry deleted while pending. */
export type ByteEntry = [id: Buffer, fields: Buffer[] | null];

/** A read's reply as bytes: per stream (its name), its entries. */
export type ByteReply = [stream: Buffer, entries: ByteEntry[]][];

const NEWLINE = Buffer.from("\n");
const COMMA = Buffer.from(",");

/** An entry's parts after one pass over its fields. */
interface EntryParts {
  body: string | undefined;
  envelope: ServiceEnvelope;
  /** With a body: the fields other than the body and the envelope's; without one: every field. In order; undefined when there are none. */
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
  // Another producer's entry: its id, key and event_time fields are its data, not sluice's envelope.
  if (body === undefined) return { body, envelope: { id: position }, others: fields.length === 0 ? undefined : allFields(fields), bytes };
  return { body, envelope: { id: id ?? position, key, eventTime }, others, bytes };
}

/** An entry's fields as an object of strings, in order (a later duplicate wins). */
function allFields(fields: readonly string[]): Record<string, string> {
  const object: Record<string, string> = {};
  for (let i = 0; i + 1 < fields.length; i += 2) object[fields[i]!] = fields[i + 1]!;
  return object;
}

/**
 * One entry of `stream` as a record (what the read loop enqueues). With a body field (what the
 * `redis_streams` sink writes): the payload is the JSON object in it, with the other non-envelope
 * fields under `metadataField` when there are any, and the envelope is the entry's `id` field
 * (else `<stream>:<entry id>`, stable across redeliveries and workers), `key` and `event_time`.
 * Without one (another producer's entry): the payload is all its fields as strings, `id`, `key`
 * and `event_time` included (the source's `id_field` and the others apply to them as to any
 * payload), and the envelope id is `<stream>:<entry id>`. A body that is not a JSON object is
 * dead-lettered (`ERR_RECORD_MALFORMED`, located `<stream> entry <id>`).
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

/** Whether `bytes` are the UTF-8 of `name` (field names are short: a loop beats a call into C++). */
function isField(bytes: Buffer, name: Buffer): boolean {
  if (bytes.length !== name.length) return false;
  for (let i = 0; i < name.length; i++) if (bytes[i] !== name[i]) return false;
  return true;
}

/** The envelope fields an entry may carry beside its body (what the `redis_streams` sink writes), as bytes. */
const ID_FIELD = Buffer.from("id");
const KEY_FIELD = Buffer.from("key");
const TIME_FIELD = Buffer.from("event_time");

/** An entry's body and the envelope fields beside it, read from bytes as {@link split} reads them from strings. */
interface BodyParts {
  body: Buffer;
  id: string | undefined;
  key: string | undefined;
  eventTime: number | undefined;
  /** The envelope fields' share of the record's size. */
  bytes: number;
}

/**
 * The body and envelope fields of an entry whose fields are its body (`bodyKey`) once and at most
 * the envelope's `id`, `key` and `event_time`; null for an entry with any other field, or with no
 * body or two (such an entry is decoded alone).
 */
function bodyParts(fields: readonly Buffer[], bodyKey: Buffer): BodyParts | null {
  let body: Buffer | undefined;
  let id: string | undefined;
  let key: string | undefined;
  let eventTime: number | undefined;
  let bytes = 0;
  for (let i = 0; i + 1 < fields.length; i += 2) {
    const name = fields[i]!;
    if (isField(name, bodyKey)) {
      if (body !== undefined) return null;
      body = fields[i + 1]!;
      continue;
    }
    const value = fields[i + 1]!.toString();
    if (isField(name, ID_FIELD)) id = value;
    else if (isField(name, KEY_FIELD)) key = value;
    else if (isField(name, TIME_FIELD)) {
      const ms = Date.parse(value);
      eventTime = Number.isNaN(ms) ? undefined : ms;
    } else return null;
    bytes += name.length + value.length;
  }
  return body === undefined ? null : { body, id, key, eventTime, bytes };
}

/**
 * The records of one read of `stream` (XREADGROUP as bytes), in entry order, appended to
 * `records`; returns the entries' ids. Each record is what {@link entryRecord} makes of its entry.
 * When every entry holds its body (`bodyKey`, as `bodyKeyBytes`) and at most the envelope's `id`,
 * `key` and `event_time` fields, and every body looks like one object (`{`..`}`, no line break),
 * the bodies are decoded from UTF-8 at once and parsed with one `JSON.parse` of `[body,...]`
 * ({@link parseObjectRun}, guarded so that a body that is not an object on its own can never hide
 * inside a neighbour); the ids are decoded at once too. Otherwise, or when that parse fails, entry
 * by entry: a bad body is found alone.
 */
export function readRecords(handle: SourceHandle, stream: string, entries: readonly ByteEntry[], format: EntryFormat, bodyKeyBytes: Buffer, records: Entry[]): string[] {
  const n = entries.length;
  if (n === 0) return [];
  const idParts: Buffer[] = [];
  const texts: Buffer[] = [];
  /** Per entry, its envelope fields when it has any beside the body. */
  const envelopes: (BodyParts | undefined)[] = [];
  let plain = true;
  for (const [id, fields] of entries) {
    idParts.push(id, COMMA);
    if (!plain) continue;
    // The body alone (most producers) without a call; with the envelope's fields beside it (the sink's entries) through bodyParts.
    const parts = fields === null || fields.length === 2 ? undefined : bodyParts(fields, bodyKeyBytes);
    const body = fields?.length === 2 ? (isField(fields[0]!, bodyKeyBytes) ? fields[1] : undefined) : parts?.body;
    if (body === undefined || body.length < 2 || body[0] !== JSON_CHAR.openObject || body[body.length - 1] !== JSON_CHAR.closeObject) plain = false;
    else {
      texts.push(body, NEWLINE);
      envelopes.push(parts ?? undefined);
    }
  }
  idParts.pop();
  const ids = Buffer.concat(idParts).toString("latin1").split(",");
  if (plain) {
    texts.pop();
    const text = Buffer.concat(texts).toString();
    const bodies = text.split("\n");
    const payloads = bodies.length === n ? parseObjectRun(text, n) : undefined;
    if (payloads !== undefined) {
      const keyLength = format.bodyKey.length;
      for (let i = 0; i < n; i++) {
        const position = `${stream}:${ids[i]}`;
        const body = bodies[i]!;
        const e = envelopes[i];
        const bytes = keyLength + body.length + (e?.bytes ?? 0);
        records.push(handle.record(payloads[i]!, bytes, position, body, e === undefined ? { id: position } : { id: e.id ?? position, key: e.key, eventTime: e.eventTime }));
      }
      return ids;
    }
  }
  for (let i = 0; i < n; i++) {
    const fields = entries[i]![1];
    records.push(entryRecord(handle, stream, ids[i]!, fields === null ? [] : fields.map(String), format));
  }
  return ids;
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

/** Finds `group` in an XINFO GROUPS reply (per group a flat name/value list), with its last delivered entry id; undefined when the stream has no such group. */
export function parseGroupInfo(reply: unknown, group: string): (GroupBacklog & { readonly delivered: string }) | undefined {
  if (!Array.isArray(reply)) return undefined;
  for (const info of reply as unknown[][]) {
    const fields = new Map<string, unknown>();
    for (let i = 0; i + 1 < info.length; i += 2) fields.set(String(info[i]), info[i + 1]);
    if (fields.get("name") !== group) continue;
    const lag = fields.get("lag");
    return { pending: Number(fields.get("pending") ?? 0), lag: typeof lag === "number" ? lag : undefined, delivered: String(fields.get("last-delivered-id") ?? "0-0") };
  }
  return undefined;
}

/** Orders two entry ids ("<ms>-<seq>", or "<ms>"): negative when `a` comes first, 0 when equal. */
export function compareIds(a: string, b: string): number {
  const [am = "0", as = "0"] = a.split("-");
  const [bm = "0", bs = "0"] = b.split("-");
  const ms = BigInt(am) - BigInt(bm);
  const seq = ms === 0n ? BigInt(as) - BigInt(bs) : ms;
  return seq === 0n ? 0 : seq < 0n ? -1 : 1;
}
