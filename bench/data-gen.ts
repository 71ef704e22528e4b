/**
 * Writes the benchmark's input: NDJSON sensor readings shaped like the `generator` source's
 * payloads (`{ id, sensor, value, unit, ts, seq }`), deterministic for a record count, into
 * `bench/data/` (gitignored). A file is reused when its marker says it was finished with the same
 * format and record count and its size still matches, so reruns skip generation.
 *
 * Standalone: `node --import tsx bench/data-gen.ts [records...]`.
 */
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, readSync, renameSync, statSync, writeFileSync, writeSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { mulberry32 } from "../src/core/random.js";


/** Where generated files live. */
export const DATA_DIR = join(dirname(fileURLToPath(import.meta.url)), "data");

// Bump when the line format changes, so old files are regenerated instead of reused.
const FORMAT_VERSION = 1;
// Same sensor count and value spread as the generator source's defaults.
const SENSORS = 10;
const SEED = 1;
// Timestamps advance 100 ms per reading from here: deterministic, and every `ts` differs.
const BASE_TIME_MS = Date.UTC(2024, 0, 1);
const STEP_MS = 100;
// Lines joined per write: big writes, bounded memory (~5 MiB of text per block).
const LINES_PER_WRITE = 50_000;

interface Marker {
  format: number;
  records: number;
  bytes: number;
}


/** The path of the file holding `records` readings. */
export function dataFile(records: number): string {
  return join(DATA_DIR, `sensors-${records}.ndjson`);
}

function markerFile(file: string): string {
  return `${file}.meta.json`;
}

/** True when `file` is a finished file of this format with `records` lines. */
function isReusable(file: string, records: number): boolean {
  const marker = markerFile(file);
  if (!existsSync(file) || !existsSync(marker)) return false;
  try {
    const m = JSON.parse(readFileSync(marker, "utf8")) as Partial<Marker>;
    return m.format === FORMAT_VERSION && m.records === records && m.bytes === statSync(file).size;
  } catch {
    return false;
  }
}

/**
 * Makes sure the file of `records` readings exists and returns its path. Writes to a temp file
 * and renames it, then writes the marker, so an interrupted run never leaves a file that looks done.
 */
export function ensureDataFile(records: number, onProgress?: (written: number) => void): { file: string; generated: boolean } {
  const file = dataFile(records);
  if (isReusable(file, records)) return { file, generated: false };
  mkdirSync(DATA_DIR, { recursive: true });
  const tmp = `${file}.${process.pid}.tmp`;
  const fd = openSync(tmp, "w");
  const random = mulberry32(SEED);
  let bytes = 0;
  try {
    const lines: string[] = [];
    for (let seq = 1; seq <= records; seq++) {
      const k = Math.floor(random() * SENSORS);
      const reading = {
        id: `gen-${seq}`,
        sensor: `sensor-${k + 1}`,
        value: Math.round((15 + (k % 10) + random() * 5) * 100) / 100,
        unit: "C",
        ts: new Date(BASE_TIME_MS + seq * STEP_MS).toISOString(),
        seq,
      };
      lines.push(JSON.stringify(reading));
      if (lines.length === LINES_PER_WRITE || seq === records) {
        const block = `${lines.join("\n")}\n`;
        bytes += writeSync(fd, block);
        lines.length = 0;
        onProgress?.(seq);
      }
    }
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, file);
  writeFileSync(markerFile(file), `${JSON.stringify({ format: FORMAT_VERSION, records, bytes } satisfies Marker)}\n`);
  return { file, generated: true };
}

/**
 * Reads `file` once, so every contender finds it in the page cache: otherwise whichever runs first
 * after a reboot (or after the cache dropped it) would also pay for the disk.
 */
export function warmPageCache(file: string): void {
  const fd = openSync(file, "r");
  const buf = Buffer.allocUnsafe(4 * 1024 * 1024);
  try {
    while (readSync(fd, buf, 0, buf.length, null) > 0);
  } finally {
    closeSync(fd);
  }
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) {
  const counts = process.argv.slice(2).map(Number);
  for (const records of counts.length > 0 ? counts : [2_000_000]) {
    if (!Number.isSafeInteger(records) || records <= 0) throw new Error(`not a record count: ${records}`);
    const { file, generated } = ensureDataFile(records);
    console.log(`${generated ? "wrote" : "reused"} ${file}`);
  }
}
