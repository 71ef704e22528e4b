/**
 * Corruption of the durable buffer (issue 11, point 8), through the real CLI: an entry that
 * changes on disk after it was written, before the run reads it back, is quarantined, counted,
 * and reported in the summary as `quarantined`, never as left for redelivery, and the next run
 * does not bring it back; a segment truncated to zero bytes is reported at the next start with
 * how many entries were lost.
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

/** The slow pipeline of these tests: every chunk lands in the log at once, the sink takes one a time. */
async function writeConfig(count: number): Promise<string> {
  const config = join(dir, "pipeline.yaml");
  await writeFile(
    config,
    `data_dir: ./data
buffer: { max_records: ${CHUNK}, chunk_size: ${CHUNK}, durable: {} }
sources:
  gen: { type: generator, count: ${count} }
sinks:
  out: { type: blackhole, concurrency: 1, batch: { max_records: ${CHUNK}, max_wait: 1ms }, chaos: { latency: 400ms } }
`,
  );
  return config;
}

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

describe("durable buffer corruption, through the CLI", () => {
  it("an entry corrupted while the pipeline runs is quarantined and counted when read back; the summary says `quarantined`, not `left for redelivery`", async () => {
    // max_records is one chunk: each is read back from disk, the last seconds after it was written.
    const config = await writeConfig(CHUNKS * CHUNK);
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
    await writeConfig(0);
    const rerun = startCli(config, join(dir, "rerun.json"), dir);
    expect((await rerun.exited).code).toBe(0);
    const again = JSON.parse(await readFile(join(dir, "rerun.json"), "utf8")) as { records: Record<string, number> };
    expect(again.records).toMatchObject({ received: 0, delivered: 0 });
    expect(rerun.output()).not.toContain("corrupt");
  });

  it("a segment truncated to zero bytes is reported at the next start with how many entries were lost", async () => {
    const config = await writeConfig(CHUNKS * CHUNK);
    const first = startCli(config, join(dir, "first.json"), dir);
    await waitUntil("every chunk to be in the log", () => entryOffsets().offsets.length === CHUNKS, 20_000);
    await waitUntil("the run to start", () => first.output().includes("SIGTERM or SIGINT stops it gracefully"), 20_000);
    // A graceful stop keeps what was not delivered in the log, and `acked` says what was written.
    first.process.kill("SIGTERM");
    expect((await first.exited).code, first.output()).toBe(0);
    const delivered = (JSON.parse(await readFile(join(dir, "first.json"), "utf8")) as { records: { delivered: number } }).records.delivered;
    const lost = CHUNKS - delivered / CHUNK;
    expect(lost).toBeGreaterThan(0);
    const { file } = entryOffsets();
    fs.truncateSync(file, 0);

    await writeConfig(0);
    const second = startCli(config, join(dir, "second.json"), dir);
    expect((await second.exited).code).toBe(0);
    const output = second.output();
    const entries = `${lost} entr${lost === 1 ? "y" : "ies"}`;
    expect(output).toContain(`is shorter than the acked index says: ${entries} not yet delivered are lost`);
    expect(output).toContain(`durable buffer: ${lost} corrupt or missing ${lost === 1 ? "entry" : "entries"}, quarantined or lost`);
  });
});
