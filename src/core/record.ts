import type { SpanContext } from "@opentelemetry/api";
import { SluiceError } from "./errors.js";
import { JSON_CHAR } from "./json-chars.js";

/** A JSON value as `JSON.parse` returns it. */
export type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue };

/** A JSON object: the shape of every record payload. */
export type JsonObject = { [key: string]: JsonValue };

/** Reads one payload field. */
export type FieldGetter = (payload: JsonObject) => JsonValue | undefined;

/**
 * A getter for a payload field by name or dotted path (`meta.device.id`), built once per config
 * so the per-record work is a property read (or a short walk for a path).
 */
export function fieldGetter(path: string): FieldGetter {
  const parts = path.split(".");
  if (parts.length === 1) return (p) => p[path];
  return (p) => {
    let v: JsonValue | undefined = p;
    for (const part of parts) {
      if (v === null || typeof v !== "object" || Array.isArray(v)) return undefined;
      v = v[part];
    }
    return v;
  };
}

/**
 * The unit sluice moves. The envelope is set by the engine from the source's settings
 * (`id_field`, `key_field`, `time_field`); transforms change only `payload`.
 */
export interface SluiceRecord<P = JsonObject> {
  /** Dedup key: sinks write idempotently by it. From the payload's id field, else from the source position. */
  readonly id: string;
  /** Ordering key: records with the same key reach each sink in source order. */
  readonly key: string | undefined;
  /** The user's JSON object. */
  payload: P;
  /** When the event happened (ms since epoch), from `time_field`; undefined when not configured or absent. */
  readonly eventTime: number | undefined;
  /** When sluice received the record (ms since epoch). */
  readonly receivedAt: number;
  /** Name of the source that produced the record. */
  readonly source: string;
  /**
   * The payload's JSON text as the source read it, while no transform has touched the payload, or
   * as a transform worker thread serialized the transforms' result (`workers`); undefined otherwise. A sink may write it instead of serializing `payload`: the same value,
   * though not always the same spelling (whitespace, number format, escapes).
   */
  readonly text?: string | undefined;
  /** Number of the write attempt in progress (1 on the first try, 0 before any write); with several sinks, the highest. */
  attempts: number;
}

/**
 * What a transform gets as its second argument: the envelope, frozen, never the engine's record.
 * Writing a field throws a `TypeError` in strict code (ES modules, TypeScript) and is ignored in
 * sloppy code; either way the record is unchanged. Built once per record, on its first transform
 * that takes it.
 */
export type RecordView = Readonly<Pick<SluiceRecord, "id" | "key" | "source" | "receivedAt" | "eventTime" | "attempts">>;

/** The frozen {@link RecordView} of `entry` (cached on it: its envelope never changes). */
export function recordView(entry: Entry): RecordView {
  return (entry.view ??= Object.freeze({
    id: entry.id,
    key: entry.key,
    source: entry.source,
    receivedAt: entry.receivedAt,
    eventTime: entry.eventTime,
    attempts: entry.attempts,
  }));
}

const VIEW_WRITE = /^Cannot (?:assign to read only property '(\w+)'|add property (\w+), object is not extensible)/;

/**
 * `ERR_TRANSFORM_ENVELOPE` when `err` is the `TypeError` of a write to a {@link RecordView}
 * (strict code), so the dead letter says what went wrong; `undefined` for any other error.
 */
export function envelopeWriteError(err: unknown): SluiceError | undefined {
  if (!(err instanceof TypeError)) return undefined;
  const m = VIEW_WRITE.exec(err.message);
  if (m === null) return undefined;
  return new SluiceError(
    "ERR_TRANSFORM_ENVELOPE",
    `the transform wrote the record's ${m[1] ?? m[2]}; the record a transform gets is a read-only view of the envelope (id, key, source, receivedAt, eventTime, attempts): return a changed payload, and take the id from another payload field with the source's id_field`,
    { cause: err },
  );
}

/**
 * What the engine carries per record: the envelope plus bookkeeping that sinks must not touch.
 * One object per record, so the hot path allocates nothing else.
 */
export interface Entry<P = JsonObject> extends SluiceRecord<P> {
  /** Estimated size in bytes, counted against the buffer's `max_bytes`. */
  bytes: number;
  /** The chunk this record was received in; acked when all its records are done. */
  ticket: AckTicket;
  /** Sinks that have not yet committed or dead-lettered this record. */
  pendingSinks: number;
  /** Set once any sink (or the source/transform stage) dead-lettered this record. */
  deadLettered: boolean;
  /** Set once a sink committed this record as new, not already present there (`WriteResult.alreadyPresent`). */
  storedNew: boolean;
  /** Set by a source for input it could not parse: the record goes straight to the dead-letter sink. */
  failure: SluiceError | undefined;
  /** The raw input kept for a failed record (the unparsable line). */
  raw: string | undefined;
  /** See {@link SluiceRecord.text}; the engine clears it before the transforms run. */
  text?: string | undefined;
  /** What transforms get for this record, once one asked ({@link recordView}). */
  view?: RecordView | undefined;
}

/**
 * One chunk as a source enqueued it: the unit of acking. The buffer counts its records and
 * bytes until every record in it is done, then the source's checkpoint may move past it.
 */
export interface AckTicket {
  /** Per-source sequence number, contiguous from 0; assigned once the buffer accepted (or dropped) the chunk. */
  seq: number;
  /** Opaque position handed back to the source when this chunk and all before it are done. */
  readonly checkpoint: unknown;
  /** When the chunk was enqueued (ms since epoch): the `receivedAt` of each of its records. */
  readonly receivedAt: number;
  /** Records counted against the buffer. */
  readonly records: number;
  /** Bytes counted against the buffer. */
  readonly bytes: number;
  /** Records of the chunk not yet done (delivered, dead-lettered or dropped). */
  pending: number;
  /** Called once when `pending` reaches 0. */
  readonly onDone: (ticket: AckTicket) => void;
  /** The span context of the chunk's `sluice.source.receive` span, when a tracer is installed (see `tracing.ts`). */
  readonly trace?: SpanContext | undefined;
}

/**
 * The payloads of one chunk's records as one JSON array text, as a transform worker thread sends
 * them back (`workers`): parsed all at once on the first read of any of them, and cut into each
 * one's own text only when a sink asks for `text`. A sink that reads neither (blackhole) costs
 * nothing on the main thread.
 */
export class PayloadArray {
  private values: JsonObject[] | undefined;
  /** Per element, the offset of the `,` or `]` that ends it. */
  private ends: Int32Array | undefined;

  constructor(
    readonly json: string,
    readonly count: number,
  ) {}

  payload(i: number): JsonObject {
    return (this.values ??= JSON.parse(this.json) as JsonObject[])[i]!;
  }

  text(i: number): string {
    const ends = (this.ends ??= this.elementEnds());
    return this.json.slice(i === 0 ? 1 : ends[i - 1]! + 1, ends[i]);
  }

  /** One pass over the text: commas at depth 0 outside strings end elements. */
  private elementEnds(): Int32Array {
    const json = this.json;
    const ends = new Int32Array(this.count);
    let depth = 0;
    let k = 0;
    for (let i = 1; i < json.length - 1; i++) {
      const c = json.charCodeAt(i);
      if (c === JSON_CHAR.quote) {
        // A string: skip to its closing quote, past escapes.
        for (i++; i < json.length; i++) {
          const d = json.charCodeAt(i);
          if (d === JSON_CHAR.backslash) i++;
          else if (d === JSON_CHAR.quote) break;
        }
      } else if (c === JSON_CHAR.openObject || c === JSON_CHAR.openArray) depth++;
      else if (c === JSON_CHAR.closeObject || c === JSON_CHAR.closeArray) depth--;
      else if (c === JSON_CHAR.comma && depth === 0) ends[k++] = i;
    }
    ends[k] = json.length - 1;
    return ends;
  }
}

/**
 * Undecoded JSON lines a source handed over together (`SourceHandle.lines`), to be decoded where
 * the transforms run, shared by the records made of them: one string and one array of offsets
 * per run, where each line had its own text, position string and origin object. A record's line
 * text, position and line number are derived from the run only when something asks.
 */
export class LineRun {
  /** Per line, the offset in {@link text} where it starts; found on the first cut. */
  private starts: Int32Array | undefined;

  constructor(
    /** The lines joined by `\n` (no `\r`, no byte order mark). */
    readonly text: string,
    /** Per line, its byte offset in the source: its position is `prefix` followed by it. */
    readonly offsets: readonly number[],
    /** The byte offset just after the last line (before its newline). */
    readonly end: number,
    /** Put before an offset in a position (see `SourceHandle.record`'s `positionPrefix`). */
    readonly prefix: string,
    /** The first line's number, for the location `<location>:<line>` of a line that does not decode. */
    readonly firstLine: number,
    readonly location: string,
  ) {}

  get count(): number {
    return this.offsets.length;
  }

  /** Line `i`'s size in bytes (without its newline). */
  bytes(i: number): number {
    return (i + 1 < this.offsets.length ? this.offsets[i + 1]! - 1 : this.end) - this.offsets[i]!;
  }

  /** Line `i`'s place in its source: the fallback id is `<source>:<position>`. */
  position(i: number): string | number {
    return this.prefix === "" ? this.offsets[i]! : `${this.prefix}${this.offsets[i]!}`;
  }

  /** Lines `[from, to)` joined by `\n`; the run's own text when that is all of it. */
  lines(from: number, to: number): string {
    if (from === 0 && to === this.offsets.length) return this.text;
    const starts = (this.starts ??= this.lineStarts());
    return this.text.slice(starts[from], to < starts.length ? starts[to]! - 1 : this.text.length);
  }

  private lineStarts(): Int32Array {
    const starts = new Int32Array(this.offsets.length);
    for (let i = 1, at = 0; i < starts.length; i++) starts[i] = at = this.text.indexOf("\n", at) + 1;
    return starts;
  }
}

/**
 * The engine's record object. A class, so every record has one shape; `receivedAt` is read from
 * the chunk's ticket, which saves a boxed number per record (a measurable share of GC work).
 *
 * The payload may be held as JSON text only, with no parsed object yet: a line not decoded yet
 * (`undecoded` set: a line of a {@link LineRun}, cut out as `text` only when read), or a record
 * that came back from a transform worker thread (its payload in the chunk's {@link PayloadArray}). It is parsed on the first read of
 * `payload`, so a sink that writes `text`, or reads neither, never pays for the parse.
 * The envelope (`id`, `key`, `eventTime`) of an undecoded line is set once it is decoded.
 */
export class RecordEntry implements Entry {
  attempts = 0;
  ticket!: AckTicket;
  pendingSinks = 0;
  deadLettered = false;
  storedNew = false;
  failure: SluiceError | undefined = undefined;
  raw: string | undefined = undefined;
  view: RecordView | undefined = undefined;
  /** Set while the record is line {@link index} of a run not decoded yet (see the class comment). */
  undecoded: LineRun | undefined = undefined;
  /** Set when the transforms' result was not kept ({@link withhold}). */
  withheld = false;
  /** The parsed payload; undefined while only text holds it. */
  private parsed: JsonObject | undefined;
  private ownText: string | undefined = undefined;
  /** Set when the payload is element `index` of a worker's {@link PayloadArray}. */
  private array: PayloadArray | undefined = undefined;
  /** The element of {@link array}, or the line of {@link undecoded}, that holds the payload. */
  index = 0;

  constructor(
    public id: string,
    public key: string | undefined,
    payload: JsonObject | undefined,
    public eventTime: number | undefined,
    readonly source: string,
    public bytes: number,
  ) {
    this.parsed = payload;
  }

  get payload(): JsonObject {
    if (this.parsed !== undefined) return this.parsed;
    return (this.parsed = this.array !== undefined ? this.array.payload(this.index) : parsePayload(this.text));
  }

  set payload(payload: JsonObject) {
    this.parsed = payload;
    this.array = undefined;
  }

  /** See {@link SluiceRecord.text}. */
  get text(): string | undefined {
    if (this.ownText === undefined) {
      if (this.array !== undefined) this.ownText = this.array.text(this.index);
      else if (this.undecoded !== undefined) this.ownText = this.undecoded.lines(this.index, this.index + 1);
    }
    return this.ownText;
  }

  set text(text: string | undefined) {
    this.ownText = text;
    if (text === undefined) this.array = undefined;
  }

  /** Makes line `index` of `run` the payload, undecoded (see the class comment). */
  holdLine(run: LineRun, index: number): void {
    this.undecoded = run;
    this.index = index;
  }

  /** Makes element `index` of `array` the payload (parsed on first read): the output of a transform worker thread. */
  holdElement(array: PayloadArray, index: number): void {
    this.hold(undefined, array);
    this.index = index;
  }

  /**
   * Keeps no payload: the transforms ran on a worker thread and no sink reads payloads
   * (`Sink.readsPayloads`), so none was sent back. `payload` then reads `{}`, `text` undefined.
   */
  withhold(): void {
    this.hold(undefined, undefined);
    this.withheld = true;
  }

  /** Makes `text` the payload (parsed on first read). */
  holdText(text: string): void {
    this.hold(text, undefined);
  }

  /** Holds the payload as `text` or as the element of `array` (or not at all), parsed on first read; it is no undecoded line any more. */
  private hold(text: string | undefined, array: PayloadArray | undefined): void {
    this.parsed = undefined;
    this.ownText = text;
    this.array = array;
    this.undecoded = undefined;
  }

  get receivedAt(): number {
    return this.ticket.receivedAt;
  }
}

/**
 * The payload `text` holds. Text that is not a JSON object (a line not decoded yet, which a
 * reader such as the tap may look at before it is) reads as an empty object.
 */
function parsePayload(text: string | undefined): JsonObject {
  if (text === undefined) return {};
  try {
    const value: unknown = JSON.parse(text);
    return typeof value === "object" && value !== null && !Array.isArray(value) ? (value as JsonObject) : {};
  } catch {
    return {};
  }
}

/** The records that hold their payload (none withheld, see {@link RecordEntry.withhold}): what a tap reader may be shown. */
export function withPayloads(records: readonly Entry[]): readonly Entry[] {
  return records.some((r) => r instanceof RecordEntry && r.withheld) ? records.filter((r) => !(r instanceof RecordEntry && r.withheld)) : records;
}

/** Marks `n` records of the ticket done and fires its completion when the last one is. */
export function settle(ticket: AckTicket, n: number): void {
  ticket.pending -= n;
  if (ticket.pending === 0) ticket.onDone(ticket);
}
