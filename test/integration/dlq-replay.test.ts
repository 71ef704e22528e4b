/**
 * `replayDeadLetters` in process, on a real SQLite store and sink: where an entry resumes (a
 * sink's entry goes straight to its sink, its payload already transformed; a transform's entry
 * goes through the transforms), and a transform that fails again.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import Database from "better-sqlite3";
import { afterEach, beforeEach, expect, it } from "vitest";
import type { DeadLetter } from "../../src/components/contracts.js";
import { parseConfig } from "../../src/config/load.js";
import { replayDeadLetters } from "../../src/config/replay.js";
import { silentLogger } from "../../src/core/events.js";
import { createSqliteDeadLetterStore } from "../../src/sinks/dead-letter-sqlite.js";
import { makeRecords } from "../helpers/records.js";

const FIXTURE = resolve(import.meta.dirname, "../fixtures/transforms/count-hops.mjs");

let dir: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "sluice-dlq-replay-"));
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

it("resumes each entry where it failed: a sink's entry skips the transforms, a transform's entry goes through them", async () => {
  const loaded = parseConfig(
    [
      `data_dir: ${join(dir, "data")}`,
      "sources:",
      "  gen: { type: generator, count: 1 }",
      "transforms:",
      `  - { type: module, path: ${FIXTURE} }`,
      "sinks:",
      `  db: { type: sqlite, path: ${join(dir, "out.db")} }`,
    ].join("\n"),
  );
  if (!loaded.ok) throw new Error(JSON.stringify(loaded.issues));
  const store = createSqliteDeadLetterStore(join(dir, "data", "dlq.db"));
  await store.open();
  const [r] = makeRecords(1);
  const now = Date.now() - 1000;
  const letter = (id: string, sink: string, payload: Record<string, unknown>): DeadLetter => ({
    record: { ...r!, id, source: "gen", payload: payload as never },
    raw: undefined,
    sink,
    code: "ERR_X",
    message: "failed",
    attempts: 1,
    firstFailureAt: now,
    lastFailureAt: now,
  });
  await store.write([
    // Failed at the sink after the transform ran once.
    letter("at-sink", "db", { id: "at-sink", hops: 1 }),
    // Failed in the transform: the payload is what the source read.
    letter("at-transform", "transform:module", { id: "at-transform" }),
    letter("fails-again", "transform:module", { id: "fails-again", fail: true }),
  ]);
  const workflow = store.workflow!;
  const progress: number[] = [];
  const result = await replayDeadLetters(loaded.config, {
    configDir: dir,
    cwd: dir,
    logger: silentLogger,
    store,
    workflow,
    entries: await workflow.select({ statuses: ["pending"] }),
    onProgress: (c) => progress.push(c.replayed + c.failedAgain),
  });
  expect(result).toMatchObject({ outcome: "completed", counts: { total: 3, replayed: 2, failedAgain: 1 }, skipped: [] });
  expect(progress.at(-1)).toBe(3);

  const db = new Database(join(dir, "out.db"), { readonly: true });
  const rows = db.prepare("SELECT id, payload FROM records ORDER BY id").all() as { id: string; payload: string }[];
  db.close();
  expect(rows.map((row) => [row.id, JSON.parse(row.payload)])).toEqual([
    ["at-sink", { id: "at-sink", hops: 1 }],
    ["at-transform", { id: "at-transform", hops: 1 }],
  ]);
  const entries = await workflow.select({});
  expect(entries.map((e) => [e.recordId, e.status])).toEqual([
    ["at-sink", "replayed"],
    ["at-transform", "replayed"],
    ["fails-again", "pending"],
  ]);
  expect(entries[2]).toMatchObject({ code: "ERR_TRANSFORM_FAILED", attempts: 1, sink: "transform:module" });
  expect(entries[2]!.message).toContain("refused fails-again");
  expect(entries[2]!.lastFailureAt!).toBeGreaterThan(now);
  // No entry was added: failures are recorded on the entries replayed.
  expect(entries).toHaveLength(3);
  await store.close();
});
