/**
 * Properties of `workers: 4` (decode and transform on worker threads, several chunks in flight):
 * under random transform failures, splits, filters, random per-record delays (so chunks finish
 * out of order across workers), a sink failing at random and a worker thread that exits, every
 * record ends exactly where it should (delivered, dead-lettered or filtered: nothing lost) and
 * the records of each key reach the sink in source order.
 */
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import fc from "fast-check";
import { afterAll, describe, expect, it } from "vitest";
import { pipeline, sinks, sources, transforms } from "../../../src/index.js";
import type { Sink } from "../../../src/components/contracts.js";
import { SluiceError } from "../../../src/core/errors.js";
import { mulberry32 } from "../../../src/core/random.js";
import type { Entry } from "../../../src/core/record.js";
import { readDeadLetters } from "../../../src/sinks/dead-letter-sqlite.js";

const FATE = resolve(import.meta.dirname, "../../fixtures/workers/fate.mjs");
const dirs: string[] = [];
afterAll(async () => {
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

type Fate = "ok" | "throw" | "filter" | "split" | "slow" | "exit";

/** A sink that keeps what it committed, in order, and fails whole writes at random (retryable). */
function flakySink(seed: number, failRate: number, committed: { id: string; key: string; seq: number; part: number }[]): Sink {
  const random = mulberry32(seed);
  return {
    maxInFlight: 8,
    async connect() {},
    async write(batch: readonly Entry[]) {
      await new Promise((r) => setTimeout(r, Math.floor(random() * 3)));
      if (random() < failRate) throw new SluiceError("ERR_SINK_WRITE", "flaky: try again");
      for (const r of batch) {
        const p = r.payload as { key: string; seq: number; part?: number };
        committed.push({ id: r.id, key: p.key, seq: p.seq, part: p.part ?? 0 });
      }
      return {};
    },
    async close() {},
  };
}

const fateArb: fc.Arbitrary<Fate> = fc.oneof(
  { weight: 12, arbitrary: fc.constant("ok" as const) },
  { weight: 2, arbitrary: fc.constant("throw" as const) },
  { weight: 2, arbitrary: fc.constant("filter" as const) },
  { weight: 2, arbitrary: fc.constant("split" as const) },
  { weight: 4, arbitrary: fc.constant("slow" as const) },
);

describe("workers: 4", () => {
  it("loses nothing and keeps each key's order, under random failures and timings", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.record({ key: fc.integer({ min: 0, max: 5 }), fate: fateArb, ms: fc.integer({ min: 0, max: 15 }) }), { minLength: 50, maxLength: 300 }),
        fc.integer({ min: 1, max: 40 }),
        fc.double({ min: 0, max: 0.3, noNaN: true }),
        fc.option(fc.nat(), { nil: undefined }),
        fc.nat(),
        async (rows, chunkSize, failRate, exitAt, seed) => {
          const fates: Fate[] = rows.map((r) => r.fate);
          // At most one record ends its worker thread: each costs a thread's start.
          if (exitAt !== undefined) fates[exitAt % rows.length] = "exit";
          const dir = await mkdtemp(join(tmpdir(), "sluice-workers-prop-"));
          dirs.push(dir);
          const input = join(dir, "in.ndjson");
          await writeFile(input, rows.map((r, seq) => `${JSON.stringify({ id: `r${seq}`, key: `k${r.key}`, seq, fate: fates[seq], ms: r.ms })}\n`).join(""));
          const committed: { id: string; key: string; seq: number; part: number }[] = [];
          const dataDir = join(dir, "data");
          const { status, summary } = await pipeline({ data_dir: dataDir, workers: 4, buffer: { chunk_size: chunkSize, max_records: 200 } })
            .source("in", sources.file<{ key: string }>({ path: input }), { key_field: "key" })
            .use(transforms.module({ path: FATE }))
            .sink("mem", sinks.custom("flaky", () => flakySink(seed, failRate, committed)), { batch: { max_records: 7, max_wait: 2 }, retry: { max_attempts: 1000, initial_backoff: 1, max_backoff: 5 } })
            .run();
          expect(status).toEqual({ tag: "completed" });

          // Each record where its fate sends it, once; nothing else.
          const delivered = new Set<string>();
          for (const c of committed) delivered.add(c.id);
          const expectedDelivered = new Set<string>();
          const expectedDead = new Map<string, string>();
          fates.forEach((f, seq) => {
            if (f === "ok" || f === "slow") expectedDelivered.add(`r${seq}`);
            else if (f === "split") expectedDelivered.add(`r${seq}#0`).add(`r${seq}#1`);
            else if (f === "throw" || f === "exit") expectedDead.set(`r${seq}`, "ERR_TRANSFORM_FAILED");
          });
          expect([...delivered].sort()).toEqual([...expectedDelivered].sort());
          const dead = readDeadLetters(join(dataDir, "dlq.db"));
          expect(new Map(dead.map((d) => [d.record_id, d.code]))).toEqual(expectedDead);
          expect(dead.every((d) => d.sink === "transform:module")).toBe(true);
          const splits = fates.filter((f) => f === "split").length;
          const filtered = fates.filter((f) => f === "filter").length;
          expect(summary.records).toMatchObject({ received: rows.length + splits, delivered: expectedDelivered.size, dead_lettered: expectedDead.size, dropped: filtered });

          // Per key, commits in source order (a retried batch may commit again, never earlier records after later ones).
          const last = new Map<string, number>();
          for (const c of committed) {
            const at = c.seq * 2 + c.part;
            const prev = last.get(c.key) ?? -1;
            expect(at, `key ${c.key}: ${c.id} after a later record`).toBeGreaterThanOrEqual(prev);
            last.set(c.key, at);
          }
        },
      ),
      // Each run starts four worker threads (from the TypeScript sources, through tsx: seconds on a busy machine).
      { numRuns: 4, endOnFailure: true },
    );
  }, 300_000);
});
