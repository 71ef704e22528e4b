/**
 * A sink that cannot connect, through the real CLI: the PostgreSQL sink pointed at a closed port
 * (found by binding port 0 and closing it; no server needed). `/health/ready` names the sink while
 * it is down, `connect_timeout` ends the run with exit 1 and one clear line, SIGINT during the
 * connect loop exits at once instead of after `shutdown_timeout`, and the progress line says which
 * sink is down, since when and why. Through the library, with a durable buffer: that prompt stop
 * keeps every record in the log, and the next run delivers them.
 */
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import Database from "better-sqlite3";
import { pipeline, sinks, sources, type InternalEvent, type Sink } from "sluice";
import { afterAll, afterEach, beforeEach, expect, it } from "vitest";
import { main } from "../../src/cli/main.js";
import { killClis, startCli, type Cli } from "../helpers/cli.js";
import { freePort, waitUntil } from "../helpers/http-pipeline.js";

let dir: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "sluice-connect-"));
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

afterAll(() => killClis());

/** A pipeline of 100 generated records into PostgreSQL on `pgPort`, where nothing listens. */
async function config(pgPort: number, extra: { sink?: string; top?: string } = {}): Promise<string> {
  const file = join(dir, "pipeline.yaml");
  await writeFile(
    file,
    [
      `data_dir: ${join(dir, "data")}`,
      "shutdown_timeout: 30s",
      "sources:",
      "  gen: { type: generator, count: 100 }",
      "sinks:",
      `  db: { type: postgres, url: "postgres://postgres@127.0.0.1:${pgPort}/test", table: t${extra.sink ?? ""} }`,
      extra.top ?? "",
    ].join("\n"),
  );
  return file;
}

function expectNoStack(stderr: string): void {
  expect(stderr).not.toMatch(/^\s+at /m);
}

async function exitWithin(cli: Cli, ms: number): Promise<{ code: number | null; ms: number }> {
  const t0 = Date.now();
  const timeout = new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`still running after ${ms} ms:\n${cli.output()}`)), ms).unref());
  const { code } = await Promise.race([cli.exited, timeout]);
  return { code, ms: Date.now() - t0 };
}

it("connect_timeout ends the run with exit 1 and one clear line; /health/ready names the sink while it is down", async () => {
  const pgPort = await freePort();
  const obsPort = await freePort();
  const file = await config(pgPort, { sink: ", connect_timeout: 4s", top: `observability: { listen: "127.0.0.1:${obsPort}", unready_after: 1s }` });
  const started = Date.now();
  const cli = startCli(file, join(dir, "summary.json"), dir);

  let body: { status?: string; problems?: string[] } = {};
  let status = 0;
  await waitUntil(
    "/health/ready to name sink db",
    async () => {
      try {
        const res = await fetch(`http://127.0.0.1:${obsPort}/health/ready`);
        status = res.status;
        body = (await res.json()) as typeof body;
      } catch {
        return false;
      }
      return status === 503 && (body.problems?.length ?? 0) > 0;
    },
    15_000,
  );
  expect(body.status).toBe("not_ready");
  expect(body.problems).toEqual([expect.stringMatching(new RegExp(`^sink db: connecting, down \\d+(\\.\\d)? s: .*ECONNREFUSED 127\\.0\\.0\\.1:${pgPort}$`))]);

  const { code } = await exitWithin(cli, 20_000);
  expect(code, cli.output()).toBe(1);
  const stderr = cli.output();
  expect(stderr).toContain(`run failed: ERR_SINK_CONNECT: sink db could not connect within 4 s: postgres: connect ECONNREFUSED 127.0.0.1:${pgPort}`);
  // The log line names the sink and the error.
  expect(stderr).toMatch(new RegExp(`"component":"db".*ECONNREFUSED 127\\.0\\.0\\.1:${pgPort}.*"msg":"sink db cannot connect; retrying up to connect_timeout \\(4 s\\)"`));
  expectNoStack(stderr);
  // Not before the timeout, and well before shutdown_timeout (30 s) would have ended it.
  expect(Date.now() - started).toBeGreaterThanOrEqual(4000);
  expect(Date.now() - started).toBeLessThan(25_000);
});

it("SIGINT while the sink has never connected exits at once, not after shutdown_timeout, with the records left un-acked", async () => {
  const pgPort = await freePort();
  const cli = startCli(await config(pgPort), join(dir, "summary.json"), dir);
  await waitUntil("a failed connect attempt", () => cli.output().includes("sink db cannot connect"), 15_000);
  cli.process.kill("SIGINT");
  const { code, ms } = await exitWithin(cli, 10_000);
  expect(ms).toBeLessThan(5000);
  expect(code, cli.output()).toBe(1);
  const stderr = cli.output();
  expect(stderr).toMatch(new RegExp(`run failed: ERR_SINK_CONNECT: stopped before sink db connected \\(down \\d+(\\.\\d)? s: postgres: connect ECONNREFUSED 127\\.0\\.0\\.1:${pgPort}\\)`));
  expect(stderr).toMatch(/un-acked\s+100\s+\(left for redelivery\)/);
  expectNoStack(stderr);
});

it("the progress line says which sink is down, since when and why", async () => {
  const pgPort = await freePort();
  const file = await config(pgPort, { sink: ", connect_timeout: 2500ms", top: "observability: { log_level: silent }" });
  const chunks: string[] = [];
  const stderr = Object.assign(
    new Writable({
      write(chunk: Buffer | string, _encoding, done) {
        chunks.push(String(chunk));
        done();
      },
    }),
    { isTTY: false },
  );
  const code = await main(["run", file, "--progress"], { stdout: new Writable({ write: (_c, _e, done) => done() }), stderr });
  expect(code).toBe(1);
  const out = chunks.join("");
  expect(out).toMatch(new RegExp(`received 100 .* \\| sink db: connecting, down \\d(\\.\\d)? s: postgres: connect ECONNREFUSED 127\\.0\\.0\\.1:${pgPort}`));
  expect(out).toContain("run failed: ERR_SINK_CONNECT: sink db could not connect within 2.5 s");
});

it("with a durable buffer, a stop while the sink has never connected is prompt and clean, and the next run delivers every record", async () => {
  const refusing: Sink = {
    maxInFlight: 1,
    connect: async () => {
      throw Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:5433"), { code: "ECONNREFUSED" });
    },
    write: async () => {},
    close: async () => {},
  };
  const events: InternalEvent[] = [];
  const settings = { cwd: dir, buffer: { durable: {} }, shutdown_timeout: 30_000 };
  const gen = () => sources.generator({ count: 200, seed: 1 });
  const first = await pipeline({ ...settings, onEvent: (e) => events.push(e) })
    .source("gen", gen())
    .sink("db", sinks.custom("refusing", () => refusing), { retry: { initial_backoff: 10, max_backoff: 50 } })
    .build();
  const run1 = first.pipeline.run();
  await waitUntil("every record on disk and a failed connect", () => first.metrics.snapshot().received === 200 && events.some((e) => e.type === "sink_connect_failed"));
  const stoppedAt = Date.now();
  first.pipeline.stop();
  expect(await run1).toEqual({ tag: "stopped" });
  expect(Date.now() - stoppedAt).toBeLessThan(5000);

  const db = join(dir, "out.db");
  const second = await pipeline(settings)
    .source("gen", sources.generator({ count: 0 }))
    .sink("db", sinks.sqlite({ path: db }))
    .build();
  expect(await second.pipeline.run()).toEqual({ tag: "completed" });
  expect(second.metrics.snapshot().replayed).toBe(200);
  const conn = new Database(db, { readonly: true });
  try {
    expect((conn.prepare("SELECT count(*) AS n FROM records").get() as { n: number }).n).toBe(200);
  } finally {
    conn.close();
  }
});
