/**
 * Transforms that misbehave, through the real CLI (issue 12, points 3 and 6): one whose promise
 * never settles (the run ends, the record is dead-lettered, the summary is printed; SIGTERM ends
 * an endless run within shutdown_timeout), one that calls `process.exit(0)` (exit 1, with what was
 * left un-acked), and one that rewrites every record's id (dead-lettered, never one row).
 */
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import Database from "better-sqlite3";
import { afterAll, afterEach, beforeEach, expect, it } from "vitest";
import { killClis, runCli, startCli } from "../helpers/cli.js";
import { waitUntil } from "../helpers/http-pipeline.js";

const FIXTURES = resolve(import.meta.dirname, "../fixtures/transforms");

let dir: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "sluice-transforms-"));
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

afterAll(() => killClis());

async function config(lines: readonly string[]): Promise<string> {
  const file = join(dir, "pipeline.yaml");
  await writeFile(file, [`data_dir: ${join(dir, "data")}`, ...lines].join("\n"));
  return file;
}

function deadLetters(): { record_id: string; code: string; message: string }[] {
  const db = new Database(join(dir, "data", "dlq.db"), { readonly: true });
  try {
    return db.prepare("SELECT record_id, code, message FROM dead_letters ORDER BY seq").all() as { record_id: string; code: string; message: string }[];
  } finally {
    db.close();
  }
}

async function summary(): Promise<{ records: Record<string, number> }> {
  return JSON.parse(await readFile(join(dir, "summary.json"), "utf8")) as { records: Record<string, number> };
}

it("a never-settling transform: the run ends, the record is dead-lettered with ERR_TRANSFORM_TIMEOUT, the summary is printed, exit 0", async () => {
  const file = await config([
    "sources:",
    "  gen: { type: generator, count: 5 }",
    "transforms:",
    `  - { type: module, path: ${join(FIXTURES, "never-settles.mjs")}, timeout: 1s }`,
    "sinks:",
    "  out: { type: blackhole }",
  ]);
  const cli = startCli(file, join(dir, "summary.json"), dir);
  const { code } = await cli.exited;
  const stderr = cli.output();
  expect(code, stderr).toBe(0);
  expect(stderr).toMatch(/sluice run completed/);
  expect(stderr).toMatch(/dead-lettered\s+1\b/);
  expect((await summary()).records).toMatchObject({ received: 5, delivered: 4, dead_lettered: 1 });
  expect(deadLetters()).toEqual([{ record_id: "gen-2", code: "ERR_TRANSFORM_TIMEOUT", message: expect.stringMatching(/did not settle within 1000 ms/) as unknown as string }]);
}, 30_000);

it("a never-settling transform on an endless source: SIGTERM ends the run at shutdown_timeout, exit 1, un-acked counted", async () => {
  const file = await config([
    "shutdown_timeout: 2s",
    "sources:",
    "  gen: { type: generator, rate: 200 }",
    "transforms:",
    `  - { type: module, path: ${join(FIXTURES, "never-settles.mjs")} }`,
    "sinks:",
    "  out: { type: blackhole }",
  ]);
  const cli = startCli(file, join(dir, "summary.json"), dir);
  // Logged once the run started, after the signal handlers are set.
  await waitUntil("the run to start", () => cli.output().includes("SIGTERM or SIGINT stops it gracefully"), 20_000);
  // Let the third record reach the transform that hangs on it, and more records queue behind it.
  await new Promise((r) => setTimeout(r, 500));
  const signalledAt = Date.now();
  cli.process.kill("SIGTERM");
  const { code } = await cli.exited;
  const took = Date.now() - signalledAt;
  const stderr = cli.output();
  expect(code, stderr).toBe(1);
  expect(took).toBeLessThan(10_000);
  expect(stderr).toMatch(/shutdown_timeout reached with \d+ record\(s\) un-acked/);
  expect(stderr).toMatch(/sluice run timed_out/);
  const s = (await summary()).records;
  // Only the first record can pass the hung third one; it is delivered only if its chunk came alone.
  expect(s.delivered).toBeLessThanOrEqual(1);
  expect(s.received).toBeGreaterThan(2);
  expect(s.dead_lettered).toBe(0);
}, 30_000);

it("a transform calling process.exit(0): exit 1, and a line saying what was left un-acked, with the summary", async () => {
  const file = await config([
    "sources:",
    "  gen: { type: generator, count: 10 }",
    "transforms:",
    `  - { type: module, path: ${join(FIXTURES, "exits.mjs")} }`,
    "sinks:",
    "  out: { type: blackhole }",
  ]);
  const cli = startCli(file, join(dir, "summary.json"), dir);
  const { code } = await cli.exited;
  const stderr = cli.output();
  expect(code, stderr).toBe(1);
  expect(stderr).toMatch(/sluice exited before the run ended: process\.exit\(0\) was called before the run ended .*; 10 record\(s\) left un-acked, redelivered on the next run/);
  expect(stderr).toMatch(/sluice run interrupted/);
  expect(stderr).toMatch(/un-acked\s+10\s+\(left for redelivery\)/);
  expect((await summary()).records).toMatchObject({ received: 10, delivered: 0 });
}, 30_000);

it("a transform that sets record.id on 1,000 records: all dead-lettered with ERR_TRANSFORM_ENVELOPE under their own ids, no row", async () => {
  const file = await config([
    "sources:",
    "  gen: { type: generator, count: 1000 }",
    "transforms:",
    `  - { type: module, path: ${join(FIXTURES, "sets-id.mjs")} }`,
    "sinks:",
    `  db: { type: sqlite, path: ${join(dir, "out.db")}, table: readings }`,
  ]);
  const cli = startCli(file, join(dir, "summary.json"), dir);
  const { code } = await cli.exited;
  const stderr = cli.output();
  expect(code, stderr).toBe(0);
  expect((await summary()).records).toMatchObject({ received: 1000, delivered: 0, dead_lettered: 1000 });
  const letters = deadLetters();
  expect(letters).toHaveLength(1000);
  expect(new Set(letters.map((l) => l.record_id)).size).toBe(1000);
  expect(letters.every((l) => l.code === "ERR_TRANSFORM_ENVELOPE")).toBe(true);
  const db = new Database(join(dir, "out.db"), { readonly: true });
  try {
    expect(db.prepare("SELECT count(*) AS n FROM readings").get()).toEqual({ n: 0 });
  } finally {
    db.close();
  }
}, 30_000);

it.each([
  ["an asynchronous schema", { $async: true, type: "object" }, /asynchronous schemas \(\$async\) are not supported/],
  ["a pattern RE2 cannot run", { type: "object", properties: { id: { type: "string", pattern: "^(?=a)a+$" } } }, /pattern "\^\(\?=a\)a\+\$" cannot run on a linear-time regex engine/],
])("sluice validate refuses %s as a config error (exit 2), naming the schema file", async (_what, schema, message) => {
  const schemaFile = join(dir, "schema.json");
  await writeFile(schemaFile, JSON.stringify(schema));
  const file = await config([
    "sources:",
    "  gen: { type: generator, count: 1 }",
    "transforms:",
    `  - { type: validate, schema: ${schemaFile} }`,
    "sinks:",
    "  out: { type: blackhole }",
  ]);
  const { code, stdout, stderr } = await runCli(["validate", file], { cwd: dir });
  const output = stdout + stderr;
  expect(code, output).toBe(2);
  expect(output).toContain(schemaFile);
  expect(output).toMatch(message);
}, 30_000);
