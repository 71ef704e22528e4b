/**
 * Writes the input of the `psql \copy` baseline: the same rows as an NDJSON bench file, in
 * PostgreSQL's COPY text format, two columns `id<TAB>payload`. `id` is the line's own `id` field
 * (what sluice's file source takes as the record id by default) and `payload` is the line itself,
 * which the jsonb column parses, so the table ends up holding the same rows whichever contender
 * wrote it. Prepared once per NDJSON file and reused (a marker records the source's size), never
 * inside a timed run.
 */
import { closeSync, existsSync, openSync, readFileSync, readSync, renameSync, statSync, writeFileSync, writeSync } from "node:fs";

// Bump when the output format changes, so old files are rewritten instead of reused.
const FORMAT_VERSION = 1;
const READ_BYTES = 4 * 1024 * 1024;
const LF = 10;

interface Marker {
  format: number;
  records: number;
  sourceBytes: number;
  bytes: number;
}

/**
 * Escapes a value for COPY's text format: backslash, and the tab / newline / carriage return
 * that would otherwise end the field or the row. JSON text never holds a raw newline or tab,
 * but an id could, and a `\` inside a JSON string must reach the server as one `\`.
 */
export function copyTextEscape(value: string): string {
  return /[\\\t\n\r]/.test(value) ? value.replace(/[\\\t\n\r]/g, (c) => (c === "\\" ? "\\\\" : c === "\t" ? "\\t" : c === "\n" ? "\\n" : "\\r")) : value;
}

function isReusable(file: string, records: number, sourceBytes: number): boolean {
  const marker = `${file}.meta.json`;
  if (!existsSync(file) || !existsSync(marker)) return false;
  try {
    const m = JSON.parse(readFileSync(marker, "utf8")) as Partial<Marker>;
    return m.format === FORMAT_VERSION && m.records === records && m.sourceBytes === sourceBytes && m.bytes === statSync(file).size;
  } catch {
    return false;
  }
}

/**
 * Makes sure the COPY text file for `ndjson` (which holds `records` lines) exists and returns its
 * path. Fails when a line has no string `id` or the line count is not `records`, so the baseline
 * can never load different rows than the other contenders.
 */
export function ensureCopyFile(ndjson: string, records: number): { file: string; generated: boolean } {
  const file = ndjson.replace(/\.ndjson$/, "") + ".copy.txt";
  const sourceBytes = statSync(ndjson).size;
  if (isReusable(file, records, sourceBytes)) return { file, generated: false };

  const tmp = `${file}.${process.pid}.tmp`;
  const input = openSync(ndjson, "r");
  const output = openSync(tmp, "w");
  const buf = Buffer.allocUnsafe(READ_BYTES);
  // Bytes after the last newline read so far: kept as bytes, so a character cut by a read is
  // decoded only once it is whole.
  let carry: Buffer = Buffer.alloc(0);
  let lines = 0;
  let bytes = 0;
  const convert = (line: string): string => {
    const parsed = JSON.parse(line) as { id?: unknown };
    if (typeof parsed.id !== "string") throw new Error(`${ndjson}: line ${lines + 1} has no string id`);
    lines++;
    return `${copyTextEscape(parsed.id)}\t${copyTextEscape(line)}\n`;
  };
  try {
    for (;;) {
      const n = readSync(input, buf, 0, READ_BYTES, null);
      if (n === 0) break;
      const chunk = carry.length > 0 ? Buffer.concat([carry, buf.subarray(0, n)]) : buf.subarray(0, n);
      const lastNl = chunk.lastIndexOf(LF);
      // Copy: `buf` is overwritten by the next read.
      carry = Buffer.from(chunk.subarray(lastNl + 1));
      if (lastNl < 0) continue;
      const out: string[] = [];
      for (const line of chunk.toString("utf8", 0, lastNl).split("\n")) if (line !== "") out.push(convert(line));
      if (out.length > 0) bytes += writeSync(output, out.join(""));
    }
    const last = carry.toString("utf8");
    if (last.trim() !== "") bytes += writeSync(output, convert(last));
  } finally {
    closeSync(input);
    closeSync(output);
  }
  if (lines !== records) throw new Error(`${ndjson}: expected ${records} lines, found ${lines}`);
  renameSync(tmp, file);
  writeFileSync(`${file}.meta.json`, `${JSON.stringify({ format: FORMAT_VERSION, records, sourceBytes, bytes } satisfies Marker)}\n`);
  return { file, generated: true };
}
