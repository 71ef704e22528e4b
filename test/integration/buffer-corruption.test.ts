/**
 * Corruption found while running (issue 11, point 8), through the real CLI: an entry of the
 * durable buffer that changes on disk after it was written, before the run reads it back, is
 * quarantined, counted, and reported in the summary as `quarantined`, never as left for
 * redelivery; the next run does not bring it back.
 */
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import fs from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, beforeEach, describe, expect, it } from "vitest";
import { killClis, startCli } from "../helpers/cli.js";
import { waitUntil } from "../helpers/http-pipeline.js";

const MAGIC = Buffer.from([0xd1, 0x5c, 0xe0, 0x01]);
const CHUNKS = 10;
const CHUNK = 4;

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "sluice-corrupt-"));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});
afterAll(() => killClis());

/** Offsets of the entries in the buffer's (one) segment. */
function entryOffsets(): { file: string; offsets: number[] } {
  const bufferDir = join(dir, "data", "buffer");
  const seg = existsSync(bufferDir) ? readdirSync(bufferDir).find((f) => f.endsWith(".seg")) : undefined;
  if (seg === undefined) return { file: "", offsets: [] };
  const file = join(bufferDir, seg);
  const data = readFileSync(file);
  const offsets: number[] = [];
  for (let at = data.indexOf(MAGIC); at >= 0; at = data.indexOf(MAGIC, at + 1)) offsets.push(at);
  return { file, offsets };
}

describe("a durable buffer entry corrupted while the pipeline runs", () => {
  it("is quarantined and counted when read back; the summary says `quarantined`, not `left for redelivery`", async () => {
    // Every chunk lands in the log at once; a slow sink takes them one at a time (max_records is
    // one chunk), each read back from disk, so the last is read back seconds after it was written.
    const config = join(dir, "pipeline.yaml");
    await writeFile(
      config,
      `data_dir: ./data
buffer: { max_records: ${CHUNK}, chunk_size: ${CHUNK}, durable: {} }
sources:
  gen: { type: generator, count: ${CHUNKS * CHUNK} }
sinks:
  out: { type: blackhole, concurrency: 1, batch: { max_records: ${CHUNK}, max_wait: 1ms }, chaos: { latency: 400ms } }
`,
    );
    const run = startCli(config, join(dir, "summary.json"), dir);
    await waitUntil("every chunk to be in the log", () => entryOffsets().offsets.length === CHUNKS, 20_000);
    const { file, offsets } = entryOffsets();
    const last = offsets[CHUNKS - 1]!;
    const fd = fs.openSync(file, "r+");
    const byte = Buffer.alloc(1);
    fs.readSync(fd, byte, 0, 1, last + 20);
    fs.writeSync(fd, Buffer.from([byte[0]! ^ 0x20]), 0, 1, last + 20);
    fs.closeSync(fd);

    const exit = await run.exited;
    const output = run.output();
    expect(exit.code, output).toBe(0);
    const summary = JSON.parse(await readFile(join(dir, "summary.json"), "utf8")) as { records: Record<string, number> };
    expect(summary.records).toMatchObject({ received: CHUNKS * CHUNK, delivered: (CHUNKS - 1) * CHUNK, quarantined: CHUNK });
    expect(output).toMatch(new RegExp(`^  quarantined +${CHUNK}$`, "m"));
    expect(output).toContain("durable buffer: 1 corrupt or missing entry, quarantined or lost");
    expect(output).not.toContain("left for redelivery");
    expect(output).toContain(`quarantined, its ${CHUNK} record(s) are not delivered`);
    expect(readdirSync(join(dir, "data", "buffer", "quarantine"))).toEqual([`${file.split("/").pop()!.slice(0, -4)}-${last}.bad`]);

    // Nothing of it is left for the next run.
    await writeFile(config, (await readFile(config, "utf8")).replace(`count: ${CHUNKS * CHUNK}`, "count: 0"));
    const rerun = startCli(config, join(dir, "rerun.json"), dir);
    expect((await rerun.exited).code).toBe(0);
    const again = JSON.parse(await readFile(join(dir, "rerun.json"), "utf8")) as { records: Record<string, number> };
    expect(again.records).toMatchObject({ received: 0, delivered: 0 });
    expect(rerun.output()).not.toContain("corrupt");
  });
});
