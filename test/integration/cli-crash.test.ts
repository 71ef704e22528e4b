/**
 * A crash on an error nothing caught (here a transform module's timer that throws, outside every
 * call the engine awaits): the real CLI prints one clear line (code, message, where it was thrown)
 * and exits 1; the stack goes to the log only at log_level debug.
 */
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterAll, afterEach, beforeEach, expect, it } from "vitest";
import { killClis, startCli } from "../helpers/cli.js";

const FIXTURE = resolve(import.meta.dirname, "../fixtures/transforms/throws-later.mjs");

let dir: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "sluice-crash-"));
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

afterAll(() => killClis());

async function run(logLevel: "info" | "debug"): Promise<{ code: number | null; stderr: string }> {
  const file = join(dir, "pipeline.yaml");
  await writeFile(
    file,
    [
      `data_dir: ${join(dir, "data")}`,
      "sources:",
      "  gen: { type: generator, count: 1000, rate: 100 }",
      "transforms:",
      `  - { type: module, path: ${FIXTURE} }`,
      "sinks:",
      "  out: { type: blackhole }",
      `observability: { log_level: ${logLevel} }`,
    ].join("\n"),
  );
  const cli = startCli(file, join(dir, "summary.json"), dir);
  const { code } = await cli.exited;
  return { code, stderr: cli.output() };
}

it("prints one line with the code, the message and where it was thrown, exits 1, and no stack", async () => {
  const { code, stderr } = await run("info");
  expect(code, stderr).toBe(1);
  const lines = stderr.split("\n").filter((l) => l.includes("boom"));
  expect(lines).toHaveLength(1);
  expect(lines[0]).toMatch(/^sluice crashed: ERR_INTERNAL: boom \(thrown at .*throws-later\.mjs:4:\d+\); observability\.log_level: debug logs its stack$/);
  expect(stderr).not.toMatch(/^\s+at /m);
});

it("logs the stack at log_level debug", async () => {
  const { code, stderr } = await run("debug");
  expect(code, stderr).toBe(1);
  expect(stderr).toMatch(/"level":20.*"origin":"uncaughtException".*Error: boom\\n\s+at .*throws-later\.mjs:4/);
});
