/**
 * The engine with a durable buffer, through the library API: a source is acked once its records
 * are on disk (not when the sink commits), a graceful stop leaves the backlog in the log instead of
 * draining it, and the next run replays it first, each record once.
 */
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pipeline, sinks, sources } from "sluice";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { definition as sqlite } from "../../src/sinks/sqlite.js";
import { GatedSink, waitUntil } from "../helpers/http-pipeline.js";
import { testContext } from "../helpers/source-harness.js";

const TOTAL = 3000;

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "sluice-durable-"));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function checkpointLine(): Promise<number> {
  const file = join(dir, "data", "checkpoints", "lines.json");
  if (!existsSync(file)) return 0;
  return (JSON.parse(await readFile(file, "utf8")) as { line: number }).line;
}

function build(sink: GatedSink) {
  return pipeline({ cwd: dir, buffer: { max_records: 500, durable: {} }, shutdown_timeout: 10_000 })
    .source("lines", sources.file({ path: join(dir, "in.ndjson"), checkpoint_interval: 10 }))
    .sink("db", sinks.custom("gated", () => sink), { batch: { max_records: 100, max_wait: 5 } })
    .build();
}

function sqliteSink(): GatedSink {
  return new GatedSink(sqlite.create(sqlite.options.parse({ path: join(dir, "out.db") }), testContext({ name: "db", dataDir: dir, baseDir: dir })));
}

describe("a pipeline on a durable buffer", () => {
  it("acks the source at durability, keeps the backlog on a graceful stop, and replays it on the next run", async () => {
    const lines = Array.from({ length: TOTAL }, (_, i) => `{"id":"r-${i}","n":${i}}`);
    await writeFile(join(dir, "in.ndjson"), `${lines.join("\n")}\n`);

    // Run 1: the sink holds every write. The file source's checkpoint still reaches the end of the
    // file, because its records are on disk: durability, not delivery, is what acks it.
    const stalled = sqliteSink();
    const first = await build(stalled);
    const run1 = first.pipeline.run();
    await waitUntil("the checkpoint covers the whole file", async () => (await checkpointLine()) === TOTAL);
    expect(stalled.committed).toEqual([]);
    expect(first.pipeline.bufferUsage().records).toBe(TOTAL);

    // A graceful stop abandons only what was handed to the sink; the rest stays in the log.
    first.pipeline.stop();
    stalled.release();
    const status1 = await run1;
    expect(status1.tag).toBe("stopped");
    const deliveredFirst = new Set(stalled.committed);
    expect(deliveredFirst.size).toBeLessThan(TOTAL);

    // Run 2: nothing new in the file, so everything the sink gets is replayed from the log.
    const open = sqliteSink();
    open.release();
    const second = await build(open);
    const status2 = await second.pipeline.run();
    expect(status2.tag).toBe("completed");
    const snapshot = second.metrics.snapshot();
    expect(snapshot.replayed).toBe(TOTAL - deliveredFirst.size);
    expect(snapshot.received).toBe(snapshot.replayed);
    expect(snapshot.delivered).toBe(snapshot.replayed);
    expect(second.pipeline.bufferUsage()).toEqual({ records: 0, bytes: 0 });

    // Across both runs every record was committed once, and none twice.
    const all = [...stalled.committed, ...open.committed];
    expect(new Set(all).size).toBe(TOTAL);
    expect(all.length).toBe(TOTAL);
  });

  it("replays lines with multi-byte characters intact: the log keeps each line's own JSON text", async () => {
    // Lines that the file source parses as one run: the text it keeps per line must be cut at
    // character, not byte, offsets, or the log gets another line's bytes and replay cannot read it.
    const n = 600;
    const lines = Array.from({ length: n }, (_, i) => `{"id":"u-${i}","t":"${"é€𝄞".repeat(1 + (i % 3))}"}`);
    await writeFile(join(dir, "in.ndjson"), `${lines.join("\n")}\n`);
    const stalled = sqliteSink();
    const first = await build(stalled);
    const run1 = first.pipeline.run();
    await waitUntil("the checkpoint covers the whole file", async () => (await checkpointLine()) === n);
    first.pipeline.stop();
    stalled.release();
    expect((await run1).tag).toBe("stopped");

    const open = sqliteSink();
    open.release();
    const second = await build(open);
    expect((await second.pipeline.run()).tag).toBe("completed");
    expect(second.metrics.snapshot().replayed).toBe(n - new Set(stalled.committed).size);
    expect(new Set([...stalled.committed, ...open.committed]).size).toBe(n);
  });
});
