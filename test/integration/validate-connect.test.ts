/**
 * `sluice validate` connects every source and sink, real CLI runs: a reachable PostgreSQL, one on
 * a closed port, one that accepts and never answers (the timeout), a Redis source on a closed port,
 * and `--no-connect`.
 */
import { randomBytes } from "node:crypto";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { afterAll, afterEach, beforeEach, describe, expect, it } from "vitest";
import { lockDataDir } from "../../src/config/build.js";
import { silentLogger } from "../../src/core/events.js";
import { killClis, runCli } from "../helpers/cli.js";
import { requireService } from "../helpers/services.js";

const PG_URL = process.env.SLUICE_PG_URL ?? "postgres://postgres@127.0.0.1:5432/test";
const address = new URL(PG_URL);
const hasPostgres = await requireService("PostgreSQL", address.hostname, Number(address.port || 5432));

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "sluice-validate-"));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});
afterAll(killClis);

/** A port nothing listens on: bound, then closed. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((done) => server.listen(0, "127.0.0.1", done));
  const port = (server.address() as { port: number }).port;
  await new Promise<void>((done) => server.close(() => done()));
  return port;
}

/** A server that accepts connections and never says a word. */
async function silentServer(): Promise<{ server: Server; port: number }> {
  const sockets: Socket[] = [];
  const server = createServer((s) => sockets.push(s));
  server.on("close", () => sockets.forEach((s) => s.destroy()));
  await new Promise<void>((done) => server.listen(0, "127.0.0.1", done));
  return { server, port: (server.address() as { port: number }).port };
}

async function pipelineFile(sinkUrl: string, table: string, source = "gen: { type: generator, count: 1 }"): Promise<string> {
  const file = join(dir, "pipeline.yaml");
  await writeFile(file, `data_dir: ./data\nsources:\n  ${source}\nsinks:\n  db: { type: postgres, url: "${sinkUrl}", table: ${table} }\n`);
  return file;
}

describe.skipIf(!hasPostgres)("sluice validate: connection checks", () => {
  it("reports a reachable sink ok and a source without a connection ok: exit 0", async () => {
    const table = `validate_${randomBytes(4).toString("hex")}`;
    const file = await pipelineFile(PG_URL, table);
    const client = new pg.Client({ connectionString: PG_URL });
    await client.connect();
    try {
      const r = await runCli(["validate", file], { cwd: dir });
      expect(r.stderr).toBe("");
      expect(r.code).toBe(0);
      const lines = r.stdout.trim().split("\n");
      expect(lines[0]).toBe(`${file}: valid (1 source(s), 0 transform(s), 1 sink(s))`);
      expect(lines[1]).toBe("connections:");
      expect(lines[2]).toMatch(/^ {2}source gen \(generator\) +ok \(no connection to check\)$/);
      expect(lines[3]).toMatch(/^ {2}sink {3}db \(postgres\) +ok \(connected in \d+ ms\)$/);
      // It connected as a run starts: the table is there.
      const found = await client.query<{ found: boolean }>("SELECT to_regclass($1) IS NOT NULL AS found", [table]);
      expect(found.rows[0]!.found).toBe(true);
    } finally {
      await client.query(`DROP TABLE IF EXISTS ${table}`);
      await client.end();
    }
  });

  it("reports a sink on a closed port failing with the reason: exit 1; --no-connect: exit 0", async () => {
    const port = await closedPort();
    const file = await pipelineFile(`postgres://postgres@127.0.0.1:${port}/test`, "t");
    const r = await runCli(["validate", file], { cwd: dir });
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(new RegExp(`\\n {2}sink {3}db \\(postgres\\) +failing: ERR_SINK_CONNECT: .*ECONNREFUSED 127\\.0\\.0\\.1:${port}.* \\(retryable: a run would keep trying to connect\\)\\n`));
    expect(r.stderr).toBe(`${file}: 1 of 2 connection check(s) failed\n`);

    const skipped = await runCli(["validate", "--no-connect", file], { cwd: dir });
    expect(skipped.code).toBe(0);
    expect(skipped.stdout).toBe(`${file}: valid (1 source(s), 0 transform(s), 1 sink(s))\n`);
  });

  it("reports a sink that does not answer within --timeout, and a source on a closed port: exit 1", async () => {
    const { server, port } = await silentServer();
    const redisPort = await closedPort();
    try {
      const file = await pipelineFile(`postgres://postgres@127.0.0.1:${port}/test`, "t", `q: { type: redis_streams, url: "redis://127.0.0.1:${redisPort}", stream: validate-never }`);
      const started = performance.now();
      const r = await runCli(["validate", "--timeout", "1500ms", file], { cwd: dir });
      expect(r.code).toBe(1);
      expect(r.stdout).toMatch(/\n {2}sink {3}db \(postgres\) +failing: no answer within 1\.5 s\n/);
      expect(r.stdout).toMatch(/\n {2}source q \(redis_streams\) +failing: ERR_SOURCE_CONNECT: redis stream validate-never: .+\n/);
      expect(r.stderr).toBe(`${file}: 2 of 2 connection check(s) failed\n`);
      // tsx start-up included; not the 5 s of pg's own connect timeout, nor hanging on the silent server.
      expect(performance.now() - started).toBeLessThan(15_000);
    } finally {
      server.close();
    }
  });

  it("says so and exits 1 while a run holds data_dir", async () => {
    const file = await pipelineFile(PG_URL, "t");
    await mkdir(join(dir, "data"));
    const lock = await lockDataDir(join(dir, "data"), silentLogger);
    try {
      const r = await runCli(["validate", file], { cwd: dir });
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(new RegExp(`^${file}: connections not checked: ERR_LOCKED: data_dir .* is in use by process ${process.pid}\\b.*; --no-connect checks the config only\n$`));
    } finally {
      await lock.release();
    }
  });

  it("refuses a --timeout that is not a duration (exit 2)", async () => {
    const file = await pipelineFile(PG_URL, "t");
    const r = await runCli(["validate", "--timeout", "soon", file], { cwd: dir });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("--timeout soon: not a duration");
  });
});
