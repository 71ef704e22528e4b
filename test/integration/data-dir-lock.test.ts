/**
 * The lock on `data_dir` (issue 11, point 11): two runs of one pipeline at once, through the real
 * CLI and through the library; a lock left by a process that is gone is taken over; the lock is
 * given up however a run ends.
 */
import { spawnSync } from "node:child_process";
import { existsSync, lstatSync } from "node:fs";
import { mkdir, mkdtemp, readFile, readlink, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pipeline, sinks, sources } from "sluice";
import { afterAll, afterEach, beforeEach, describe, expect, it } from "vitest";
import type { Source } from "../../src/components/contracts.js";
import { SluiceError } from "../../src/core/errors.js";
import { killClis, startCli } from "../helpers/cli.js";
import { waitUntil } from "../helpers/http-pipeline.js";

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "sluice-lock-"));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});
afterAll(() => killClis());

const lockFile = () => join(dir, "data", "pipeline.lock");
/** Whether the lock is there: it is a symlink to no file, which `existsSync` (following it) calls absent. */
const lockExists = () => lstatSync(lockFile(), { throwIfNoEntry: false }) !== undefined;

/** A generator pipeline that takes about `count / rate` seconds. */
async function writeConfig(count: number, rate: number): Promise<string> {
  const file = join(dir, "pipeline.yaml");
  await writeFile(
    file,
    `data_dir: ./data
sources:
  gen: { type: generator, count: ${count}, rate: ${rate} }
sinks:
  out: { type: blackhole }
`,
  );
  return file;
}

function deadPid(): number {
  return spawnSync(process.execPath, ["-e", ""]).pid!;
}

describe("the data_dir lock", () => {
  it("refuses a second `sluice run` of the same pipeline (exit 1, naming the data_dir and the pid); the first completes and gives the lock up", async () => {
    // 6 s: a second CLI start takes seconds under load, and must come while the first still runs.
    const config = await writeConfig(900, 150);
    const first = startCli(config, join(dir, "first.json"), dir);
    await waitUntil("the first run to take the lock", () => Promise.resolve(lockExists()), 20_000);
    expect((await readlink(lockFile())).split(" ")[0]).toBe(String(first.process.pid));

    const second = startCli(config, join(dir, "second.json"), dir);
    const refused = await second.exited;
    expect(refused.code).toBe(1);
    expect(second.output()).toContain(`data_dir ${join(dir, "data")} is in use by process ${first.process.pid}`);
    expect(existsSync(join(dir, "second.json"))).toBe(false);

    expect((await first.exited).code).toBe(0);
    const summary = JSON.parse(await readFile(join(dir, "first.json"), "utf8")) as { records: { delivered: number } };
    expect(summary.records.delivered).toBe(900);
    expect(lockExists()).toBe(false);
  });

  it("takes over a lock left by a process that is gone, with a warning", async () => {
    const config = await writeConfig(10, 1000);
    await mkdir(join(dir, "data"));
    const gone = deadPid();
    await writeFile(lockFile(), `${gone} 12345\n`);
    const run = startCli(config, join(dir, "summary.json"), dir);
    expect((await run.exited).code).toBe(0);
    expect(run.output()).toContain("data_dir: took over the lock of a process that is gone");
    expect(run.output()).toContain(`"pid":${gone}`);
    expect(lockExists()).toBe(false);
  });

  it("gives the lock up after a graceful stop (SIGTERM)", async () => {
    const config = await writeConfig(1_000_000, 100);
    const run = startCli(config, join(dir, "summary.json"), dir);
    // Logged once the run started, after the signal handlers are set.
    await waitUntil("the run to start", () => run.output().includes("SIGTERM or SIGINT stops it gracefully"), 20_000);
    expect(lockExists()).toBe(true);
    run.process.kill("SIGTERM");
    expect((await run.exited).code).toBe(0);
    expect(run.output()).toContain("stopped");
    expect(lockExists()).toBe(false);
  });

  it("refuses a second pipeline on the same data_dir in one process until the first run ends, also a failed one", async () => {
    let failNow: (() => void) | undefined;
    const failing: Source = {
      acks: "ordered",
      whenFull: "wait",
      run: () => new Promise<void>((_resolve, reject) => (failNow = () => reject(new Error("source broke")))),
      ack: () => {},
      close: async () => {},
    };
    const build = (source = sources.generator({ count: 5 })) => pipeline({ cwd: dir }).source("s", source).sink("out", sinks.blackhole()).build();

    const first = await build(sources.custom("failing", () => failing));
    const err = await build().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SluiceError);
    expect(err).toMatchObject({ code: "ERR_LOCKED", retryable: false });
    expect((err as Error).message).toContain(`data_dir ${join(dir, "data")} is in use by this process (pid ${process.pid})`);

    const run = first.pipeline.run();
    await waitUntil("the source to run", () => failNow !== undefined, 5_000);
    failNow!();
    expect((await run).tag).toBe("failed");
    expect(lockExists()).toBe(false);

    const again = await build();
    expect((await again.pipeline.run()).tag).toBe("completed");
    expect(lockExists()).toBe(false);
  });
});
