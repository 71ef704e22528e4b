/**
 * The transform worker threads (`workers`) as a pipeline uses them: a record a transform throws
 * on, a worker thread that exits, a transform that never gives its thread back, each keeps the
 * in-process semantics (the record is dead-lettered with the transform's stage, the others are
 * delivered) and loses nothing; a library closure is refused at build time with the reason.
 */
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { pipeline, sinks, sources, transforms } from "../../../src/index.js";
import type { Sink } from "../../../src/components/contracts.js";
import { SluiceError } from "../../../src/core/errors.js";
import type { Entry } from "../../../src/core/record.js";
import { readDeadLetters } from "../../../src/sinks/dead-letter-sqlite.js";

const FATE = resolve(import.meta.dirname, "../../fixtures/workers/fate.mjs");
const dirs: string[] = [];
afterAll(async () => {
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

/** A sink that keeps the ids and payloads it committed; `readsPayloads: false` when it says it reads none. */
function keeping(into: { id: string; payload: Record<string, unknown>; text: string | undefined }[], readsPayloads = true): Sink {
  return {
    maxInFlight: 1,
    ...(!readsPayloads && { readsPayloads: false as const }),
    async connect() {},
    async write(batch: readonly Entry[]) {
      for (const r of batch) into.push({ id: r.id, payload: r.payload, text: r.text });
      return {};
    },
    async close() {},
  };
}

/** Runs `fates` (one record each, ids r0...) through the fate transform on `workers` threads. */
async function runFates(fates: readonly string[], workers: number, timeout = 30_000, readsPayloads = true) {
  const dir = await mkdtemp(join(tmpdir(), "sluice-workers-"));
  dirs.push(dir);
  const input = join(dir, "in.ndjson");
  await writeFile(input, fates.map((fate, seq) => `${JSON.stringify({ id: `r${seq}`, seq, fate, ms: 1 })}\n`).join(""));
  const committed: { id: string; payload: Record<string, unknown>; text: string | undefined }[] = [];
  const dataDir = join(dir, "data");
  const { status, summary } = await pipeline({ data_dir: dataDir, workers, buffer: { chunk_size: 4 } })
    .source("in", sources.file({ path: input }))
    .use(transforms.module({ path: FATE }), { timeout })
    .sink("keep", sinks.custom("keeping", () => keeping(committed, readsPayloads)))
    .run();
  return { status, summary, committed, dead: readDeadLetters(join(dataDir, "dlq.db")) };
}

describe("workers: 2", () => {
  it("dead-letters a record its transform throws on, delivers the rest transformed, in order, with their text", async () => {
    const { status, summary, committed, dead } = await runFates(["ok", "throw", "ok", "filter", "split", "ok", "slow", "ok", "ok"], 2);
    expect(status).toEqual({ tag: "completed" });
    expect(committed.map((c) => c.id)).toEqual(["r0", "r2", "r4#0", "r4#1", "r5", "r6", "r7", "r8"]);
    expect(committed.every((c) => c.payload.on_worker === true || c.payload.part !== undefined)).toBe(true);
    // The text a sink may write is the transformed payload's JSON.
    expect(committed.map((c) => JSON.parse(c.text!) as unknown)).toEqual(committed.map((c) => c.payload));
    expect(dead.map((d) => [d.record_id, d.sink, d.code])).toEqual([["r1", "transform:module", "ERR_TRANSFORM_FAILED"]]);
    expect(JSON.parse(dead[0]!.payload!)).toMatchObject({ id: "r1", fate: "throw" });
    expect(summary.records).toMatchObject({ received: 10, delivered: 8, dead_lettered: 1, dropped: 1 });
  }, 120_000);

  it("sends no payloads back when no sink reads them: the same records, ids, dead letters and counts", async () => {
    const fates = ["ok", "throw", "ok", "filter", "split", "ok", "slow", "ok", "ok"];
    const { status, summary, committed, dead } = await runFates(fates, 2, 30_000, false);
    expect(status).toEqual({ tag: "completed" });
    expect(committed.map((c) => c.id)).toEqual(["r0", "r2", "r4#0", "r4#1", "r5", "r6", "r7", "r8"]);
    expect(committed.every((c) => Object.keys(c.payload).length === 0 && c.text === undefined)).toBe(true);
    expect(dead.map((d) => [d.record_id, d.sink, d.code])).toEqual([["r1", "transform:module", "ERR_TRANSFORM_FAILED"]]);
    // A dead letter keeps the payload the transform failed on: only delivered payloads are left behind.
    expect(JSON.parse(dead[0]!.payload!)).toMatchObject({ id: "r1", fate: "throw" });
    expect(summary.records).toMatchObject({ received: 10, delivered: 8, dead_lettered: 1, dropped: 1 });
  }, 120_000);

  it("replaces a worker thread that exits and dead-letters only the record it exited on", async () => {
    const fates = Array.from({ length: 20 }, (_, i) => (i === 9 ? "exit" : "ok"));
    const { status, summary, committed, dead } = await runFates(fates, 2);
    expect(status).toEqual({ tag: "completed" });
    expect(committed.map((c) => c.id)).toEqual(fates.flatMap((f, i) => (f === "ok" ? [`r${i}`] : [])));
    expect(dead.map((d) => [d.record_id, d.sink, d.code])).toEqual([["r9", "transform:module", "ERR_TRANSFORM_FAILED"]]);
    expect(dead[0]!.message).toContain("exited with code 3");
    expect(summary.records).toMatchObject({ received: 20, delivered: 19, dead_lettered: 1 });
  }, 120_000);

  it("terminates a worker stuck in a synchronous transform past its timeout and dead-letters that record", async () => {
    const fates = Array.from({ length: 12 }, (_, i) => (i === 6 ? "hang" : "ok"));
    const { status, committed, dead } = await runFates(fates, 2, 1000);
    expect(status).toEqual({ tag: "completed" });
    expect(committed.map((c) => c.id)).toEqual(fates.flatMap((f, i) => (f === "ok" ? [`r${i}`] : [])));
    expect(dead.map((d) => [d.record_id, d.sink, d.code])).toEqual([["r6", "transform:module", "ERR_TRANSFORM_TIMEOUT"]]);
  }, 120_000);

  it("gives malformed lines the same dead letters as the main thread does", async () => {
    const dir = await mkdtemp(join(tmpdir(), "sluice-workers-"));
    dirs.push(dir);
    const input = join(dir, "in.ndjson");
    await writeFile(input, '{"id":"a","fate":"ok"}\nnot json\n[1,2]\n{"fate":"ok"}\n');
    const committed: { id: string; payload: Record<string, unknown>; text: string | undefined }[] = [];
    const { status } = await pipeline({ data_dir: join(dir, "data"), workers: 2 })
      .source("in", sources.file({ path: input }))
      .use(transforms.module({ path: FATE }))
      .sink("keep", sinks.custom("keeping", () => keeping(committed)))
      .run();
    expect(status).toEqual({ tag: "completed" });
    // The line without an id gets its fallback id from its byte offset, as on the main thread.
    expect(committed.map((c) => c.id)).toEqual(["a", expect.stringMatching(/^in:(.+:)?38$/)]);
    const dead = readDeadLetters(join(dir, "data", "dlq.db"));
    expect(dead.map((d) => [d.sink, d.code, d.raw])).toEqual([
      ["source:in", "ERR_RECORD_MALFORMED", "not json"],
      ["source:in", "ERR_RECORD_MALFORMED", "[1,2]"],
    ]);
    expect(dead[1]!.message).toContain("not a JSON object");
  }, 120_000);

  it("refuses a library closure at build time, saying why", async () => {
    const dir = await mkdtemp(join(tmpdir(), "sluice-workers-"));
    dirs.push(dir);
    const built = pipeline({ data_dir: join(dir, "data"), workers: 2 })
      .source("in", sources.file<{ id: string }>({ path: join(dir, "none.ndjson") }))
      .map((p) => ({ ...p, seen: true }))
      .sink("null", sinks.blackhole())
      .build();
    await expect(built).rejects.toThrow(SluiceError);
    await expect(built).rejects.toMatchObject({ code: "ERR_CONFIG_INVALID", message: expect.stringContaining("transforms.map: cannot run on worker threads (workers: 2)") });
  });
});
