/**
 * The tail a file checkpoint carries (a hash of the bytes just before its offset) is taken of the
 * bytes the reader handed over with the chunk when they cover it, and must be the one a read back
 * from the file gives.
 */
import { open, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { SourceHandle } from "../../../src/components/contracts.js";
import { RecordEntry, type Entry } from "../../../src/core/record.js";
import { tailAt, TAIL_MAX_BYTES } from "../../../src/sources/file/identity.js";
import { NdjsonReader } from "../../../src/sources/file/ndjson-reader.js";
import { mulberry32 } from "../../../src/core/random.js";
import { makeTempDir } from "../../helpers/source-harness.js";

let tmp: { path: string; remove: () => Promise<void> };

beforeEach(async () => {
  tmp = await makeTempDir("sluice-file-tail-");
});

afterEach(async () => {
  await tmp.remove();
});

function handle(chunkSize: number): SourceHandle {
  const entry = (): Entry => new RecordEntry("id", undefined, {}, undefined, "s", 1);
  return {
    chunkSize,
    record: entry,
    malformed: entry,
    line: entry,
    enqueue: () => Promise.resolve("accepted"),
  } as unknown as SourceHandle;
}

describe("file checkpoint tails", () => {
  it("are taken of the bytes read when they cover the tail, equal to the file's, whatever the reads and lines", async () => {
    const random = mulberry32(7);
    for (let round = 0; round < 20; round++) {
      // Lines from 2 bytes to past TAIL_MAX_BYTES, some not plain objects, some not JSON.
      const lines = Array.from({ length: 40 }, (_, i) => {
        const pad = "x".repeat(Math.floor(random() * (random() < 0.2 ? 2 * TAIL_MAX_BYTES : 200)));
        return random() < 0.1 ? `not json ${pad}` : JSON.stringify({ i, pad, s: "ü" });
      });
      const path = join(tmp.path, `in-${round}.ndjson`);
      const bytes = Buffer.from(`${lines.join("\n")}\n`, "utf8");
      await writeFile(path, bytes);
      const fh = await open(path, "r");
      try {
        let fromMemory = 0;
        let checked = 0;
        const reader = new NdjsonReader(
          handle(1 + Math.floor(random() * 5)),
          { location: path, maxLineBytes: 1 << 20, signal: new AbortController().signal },
          async (_records, offset, _line, before) => {
            expect(bytes.subarray(offset - before.length, offset).equals(before)).toBe(true);
            if (before.length >= Math.min(offset, TAIL_MAX_BYTES)) fromMemory++;
            const taken = await tailAt(fh, offset, before);
            expect(taken).toEqual(await tailAt(fh, offset));
            checked++;
            return "accepted";
          },
          0,
          0,
        );
        // Feeds of random sizes, as reads that end anywhere in a line.
        for (let at = 0; at < bytes.length; ) {
          const n = 1 + Math.floor(random() * 3000);
          expect(await reader.feed(Buffer.from(bytes.subarray(at, at + n)))).toBe(true);
          at += n;
        }
        expect(await reader.end()).toBe(true);
        expect(checked).toBeGreaterThan(0);
        expect(fromMemory).toBeGreaterThan(0);
      } finally {
        await fh.close();
      }
    }
  });
});
