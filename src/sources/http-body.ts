/**
 * Reading and decoding an ingest request body, within limits: the body limit holds while reading
 * and after gzip inflation, nesting is checked before parsing, and prototype keys are refused.
 * Every failure is an {@link HttpError} with the status and a message saying where.
 */
import type { IncomingMessage } from "node:http";
import { promisify } from "node:util";
import { gunzip } from "node:zlib";
import secureJson from "secure-json-parse";
import { parseObjectRun } from "../core/envelope.js";
import { JSON_CHAR } from "../core/json-chars.js";
import type { JsonObject } from "../core/record.js";

const gunzipAsync = promisify(gunzip);

/** A request that gets an error answer: its status, a message, and fields added to the JSON body. */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly fields: Record<string, unknown> = {},
  ) {
    super(message);
  }
}

/** How the records are laid out in the body. */
export type BodyFormat = "json" | "ndjson";

const FORMATS: Record<string, BodyFormat> = {
  "application/json": "json",
  "application/x-ndjson": "ndjson",
  "application/ndjson": "ndjson",
  "application/jsonl": "ndjson",
};

/** The body format a `Content-Type` names (parameters such as `charset` ignored); undefined when unsupported. */
export function bodyFormat(contentType: string | undefined): BodyFormat | undefined {
  if (contentType === undefined) return undefined;
  const semi = contentType.indexOf(";");
  return FORMATS[(semi < 0 ? contentType : contentType.slice(0, semi)).trim().toLowerCase()];
}

/** The content types {@link bodyFormat} accepts, for the 415 answer. */
export const ACCEPTED_TYPES = Object.keys(FORMATS);

/** How {@link readBody} reads a body. */
export interface ReadOptions {
  /** Largest body, bytes: past it, 413. */
  readonly limit: number;
  /** Called before each chunk is kept, with its size; throws an {@link HttpError} to refuse the body (the bytes held for bodies are at their bound). */
  readonly take?: (bytes: number) => void;
  /** Sees each chunk as it arrives (the signature check), before it is kept. */
  readonly onChunk?: (chunk: Buffer) => void;
  /** Longest wait for the next chunk, ms, on `setTimer`; past it, 408. */
  readonly idle?: { readonly ms: number; readonly setTimer: (ms: number, fn: () => void) => () => void };
}

/**
 * Reads the whole body, refusing with 413 as soon as it passes `limit` bytes, with what `take`
 * throws, or with 408 when no chunk comes within `idle`. A refused body is left unread: the
 * caller answers and discards the rest (`endEarly`), so the client gets to read the answer.
 */
export function readBody(req: IncomingMessage, o: ReadOptions): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let size = 0;
    let cancel = () => {};
    // A stalled body holds its bytes of the budget: without this it would hold them until
    // request_timeout, and a few stalled clients would keep every other body out.
    const arm = () => {
      cancel();
      if (o.idle) cancel = o.idle.setTimer(o.idle.ms, () => stop(new HttpError(408, `no part of the body came within ${o.idle!.ms} ms`)));
    };
    const stop = (err: HttpError) => {
      cancel();
      req.off("data", onData);
      req.off("end", onEnd);
      req.pause();
      reject(err);
    };
    const onData = (part: Buffer) => {
      arm();
      size += part.length;
      if (size > o.limit) return stop(new HttpError(413, `body larger than the limit of ${o.limit} bytes`));
      try {
        o.take?.(part.length);
      } catch (err) {
        return stop(err as HttpError);
      }
      o.onChunk?.(part);
      parts.push(part);
    };
    const onEnd = () => {
      cancel();
      resolve(parts.length === 1 ? parts[0]! : Buffer.concat(parts, size));
    };
    arm();
    req.on("data", onData);
    req.on("end", onEnd);
    req.on("error", (err) => {
      cancel();
      reject(new HttpError(400, `request aborted while reading the body: ${err.message}`));
    });
  });
}

/** How a body is encoded on the wire. */
export type BodyEncoding = "identity" | "gzip";

/** The encoding a `Content-Encoding` header names; 415 when unsupported. Checked from the headers, before the body is read. */
export function bodyEncoding(header: string | undefined): BodyEncoding {
  const e = (header ?? "identity").trim().toLowerCase();
  if (e === "identity" || e === "") return "identity";
  if (e === "gzip" || e === "x-gzip") return "gzip";
  throw new HttpError(415, `Content-Encoding ${header} is not supported; use gzip or none`);
}

/** Undoes `Content-Encoding` (identity or gzip), keeping the inflated size within `limit`. */
export async function decode(body: Buffer, encoding: BodyEncoding, limit: number): Promise<Buffer> {
  if (encoding === "identity") return body;
  try {
    return await gunzipAsync(body, { maxOutputLength: limit });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ERR_BUFFER_TOO_LARGE") {
      throw new HttpError(413, `body larger than the limit of ${limit} bytes once inflated`);
    }
    throw new HttpError(400, `body is not valid gzip: ${(err as Error).message}`);
  }
}

// Drops a leading byte order mark (ignoreBOM is false), as the file source does: producers on
// Windows write one, and it is no part of the first record.
const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: false });

/** The body as text, without a leading byte order mark; 400 when it is not UTF-8. */
export function text(body: Buffer): string {
  try {
    return utf8.decode(body);
  } catch {
    throw new HttpError(400, "body is not valid UTF-8");
  }
}

/**
 * The offset (relative to `start`) of the first bracket nested deeper than `maxDepth` in
 * `s[start, end)`, or -1. A scan outside strings, run before `JSON.parse` so a deeply nested
 * body is refused without recursing through it.
 */
export function tooDeepAt(s: string, start: number, end: number, maxDepth: number): number {
  let depth = 0;
  for (let i = start; i < end; i++) {
    const c = s.charCodeAt(i);
    if (c === JSON_CHAR.quote) {
      // Jump over the string (most of a record's text) to its closing quote: the first one not
      // escaped, i.e. not preceded by an odd run of backslashes.
      let j = i;
      for (;;) {
        j = s.indexOf('"', j + 1);
        // Unterminated: not JSON, which JSON.parse reports.
        if (j < 0 || j >= end) return -1;
        let k = j - 1;
        while (s.charCodeAt(k) === JSON_CHAR.backslash) k--;
        if ((j - 1 - k) % 2 === 0) break;
      }
      i = j;
    } else if (c === JSON_CHAR.openObject || c === JSON_CHAR.openArray) {
      if (++depth > maxDepth) return i - start;
    } else if (c === JSON_CHAR.closeObject || c === JSON_CHAR.closeArray) depth--;
  }
  return -1;
}

/**
 * Counts the brackets (`{` and `[`) of consecutive ranges of a text with `indexOf`, remembering
 * the next bracket of each kind, so that a whole body costs one pass however many ranges it has.
 * A range with at most `maxDepth` brackets cannot nest deeper, and needs no {@link tooDeepAt}.
 */
class BracketCounter {
  private nextBrace: number;
  private nextBracket: number;

  constructor(private readonly s: string) {
    this.nextBrace = s.indexOf("{");
    this.nextBracket = s.indexOf("[");
  }

  /** Brackets in `[start, end)`, counting at most `limit + 1`; ranges must come in order. */
  count(start: number, end: number, limit: number): number {
    let n = 0;
    while (this.nextBrace >= 0 && this.nextBrace < start) this.nextBrace = this.s.indexOf("{", this.nextBrace + 1);
    while (this.nextBracket >= 0 && this.nextBracket < start) this.nextBracket = this.s.indexOf("[", this.nextBracket + 1);
    while (n <= limit && this.nextBrace >= 0 && this.nextBrace < end) {
      n++;
      this.nextBrace = this.s.indexOf("{", this.nextBrace + 1);
    }
    while (n <= limit && this.nextBracket >= 0 && this.nextBracket < end) {
      n++;
      this.nextBracket = this.s.indexOf("[", this.nextBracket + 1);
    }
    return n;
  }
}

/**
 * `JSON.parse`, refusing `__proto__` keys and `constructor.prototype` (keys that could reach a
 * prototype once a payload is merged into another object), with secure-json-parse.
 */
function parseSecure(s: string): unknown {
  // secure-json-parse drops a leading BOM that JSON.parse refuses: the text would be kept as the
  // record's JSON (durable log, postgres), where the BOM makes it unreadable. Refuse it as JSON.parse does.
  if (s.charCodeAt(0) === 0xfeff) throw new SyntaxError("Unexpected token '\\ufeff' (a byte order mark) at position 0");
  return secureJson.parse(s, null, { protoAction: "error", constructorAction: "error" });
}

/**
 * Whether a body may hold a `__proto__` or `constructor` key, checked once per body so that
 * clean bodies take plain `JSON.parse` per record. JSON can spell those keys only literally or
 * with `\u` escapes (`"\u005f_proto__"`), so a body with neither word and no `\u` has none.
 */
function maySpellProtoKeys(s: string): boolean {
  return s.includes("__proto__") || s.includes("constructor") || s.includes("\\u");
}

function isObject(v: unknown): v is JsonObject {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** A parsed body: its records, each record's size for the buffer's byte bound, and its JSON text when it had a line of its own. */
export interface ParsedBody {
  readonly records: JsonObject[];
  readonly bytes: number[];
  readonly texts: (string | undefined)[];
  /**
   * True when the text is exactly the records' texts, each on a line of its own from `{` to `}`,
   * `\n` after each but maybe the last: an NDJSON body with no blank line and no CR, whose bytes
   * can go to the durable log as they are (`Chunk.lines`).
   */
  readonly plain: boolean;
}

function tooMany(maxRecords: number): HttpError {
  return new HttpError(413, `more than ${maxRecords} records in one request; split it`);
}

/** One JSON object, or a JSON array of objects. */
function parseJsonBody(s: string, maxDepth: number, maxRecords: number): ParsedBody {
  const deep = tooDeepAt(s, 0, s.length, maxDepth);
  if (deep >= 0) throw new HttpError(400, `JSON nested deeper than ${maxDepth} levels at byte ${deep}`, { offset: deep });
  let value: unknown;
  try {
    value = parseSecure(s);
  } catch (err) {
    throw new HttpError(400, `body is not valid JSON: ${(err as Error).message}`);
  }
  if (isObject(value)) return { records: [value], bytes: [s.length], texts: [s], plain: false };
  if (!Array.isArray(value)) throw new HttpError(400, "body must be a JSON object or an array of objects");
  if (value.length > maxRecords) throw tooMany(maxRecords);
  const per = value.length > 0 ? Math.ceil(s.length / value.length) : 0;
  const bytes: number[] = [];
  for (let i = 0; i < value.length; i++) {
    if (!isObject(value[i])) throw new HttpError(400, `element ${i} of the array is not a JSON object`, { index: i });
    bytes.push(per);
  }
  return { records: value as JsonObject[], bytes, texts: new Array<undefined>(value.length), plain: false };
}

const BLANK = /^\s*$/;

/**
 * One JSON object per line; blank lines are skipped; errors name the line (from 1).
 *
 * The splitting is the file source's (`NdjsonReader`): consecutive lines that each start with `{`
 * and end with `}` are parsed with one `JSON.parse` of the run ({@link parseObjectRun}), about a
 * fifth cheaper per record than a parse per line; when the run does not parse as exactly one
 * object per line, its lines are parsed one by one, which finds the first bad line and its
 * message. A body that may spell a prototype key is parsed line by line with secure-json-parse.
 * Errors come in line order, as with a parse per line: a run is parsed before a later line is refused.
 */
function parseNdjsonBody(s: string, maxDepth: number, maxRecords: number): ParsedBody {
  const records: JsonObject[] = [];
  const bytes: number[] = [];
  const texts: string[] = [];
  const secure = maySpellProtoKeys(s);
  const brackets = new BracketCounter(s);
  let plain = true;
  // The pending run of plain lines: s[runStart, runEnd), its first line's number, its line count.
  let runStart = 0;
  let runEnd = 0;
  let runLine = 0;
  let run = 0;
  const flush = () => {
    if (run === 0) return;
    const values = secure ? undefined : parseObjectRun(s.slice(runStart, runEnd), run);
    const first = texts.length - run;
    if (values !== undefined) for (let i = 0; i < run; i++) records.push(values[i]!);
    else for (let i = 0; i < run; i++) records.push(parseLine(texts[first + i]!, runLine + i, secure));
    run = 0;
  };
  let line = 0;
  for (let start = 0; start < s.length; ) {
    let end = s.indexOf("\n", start);
    if (end < 0) end = s.length;
    line++;
    const stop = end > start && s.charCodeAt(end - 1) === 0x0d ? end - 1 : end;
    const lineText = s.slice(start, stop);
    if (s.charCodeAt(start) === JSON_CHAR.openObject || !BLANK.test(lineText)) {
      if (texts.length === maxRecords) {
        flush();
        throw tooMany(maxRecords);
      }
      // Most lines have a few brackets: only those with more than maxDepth need the scan.
      const deep = brackets.count(start, stop, maxDepth) > maxDepth ? tooDeepAt(s, start, stop, maxDepth) : -1;
      if (deep >= 0) {
        flush();
        throw new HttpError(400, `line ${line}: JSON nested deeper than ${maxDepth} levels at column ${deep + 1}`, { line });
      }
      // A plain line (no CR, `{` to `}`) joins the run; any other is parsed alone, after the run.
      if (stop === end && s.charCodeAt(start) === JSON_CHAR.openObject && s.charCodeAt(stop - 1) === JSON_CHAR.closeObject) {
        if (run === 0) {
          runStart = start;
          runLine = line;
        }
        runEnd = stop;
        run++;
      } else {
        plain = false;
        flush();
        records.push(parseLine(lineText, line, secure));
      }
      texts.push(lineText);
      bytes.push(stop - start);
    } else {
      plain = false;
      flush();
    }
    start = end + 1;
  }
  flush();
  return { records, bytes, texts, plain };
}

/** One line of an NDJSON body as a JSON object; 400 naming the line when it is not one. */
function parseLine(lineText: string, line: number, secure: boolean): JsonObject {
  let value: unknown;
  try {
    value = secure ? parseSecure(lineText) : JSON.parse(lineText);
  } catch (err) {
    throw new HttpError(400, `line ${line}: not valid JSON: ${(err as Error).message}`, { line });
  }
  if (!isObject(value)) throw new HttpError(400, `line ${line}: not a JSON object`, { line });
  return value;
}

/**
 * Parses the records of a body in `format`: 400 with the line (NDJSON) or element index when a
 * record is bad, 413 past `maxRecords` records.
 */
export function parseBody(s: string, format: BodyFormat, maxDepth: number, maxRecords: number): ParsedBody {
  if (BLANK.test(s)) throw new HttpError(400, "body is empty");
  return format === "json" ? parseJsonBody(s, maxDepth, maxRecords) : parseNdjsonBody(s, maxDepth, maxRecords);
}
