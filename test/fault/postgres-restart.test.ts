/**
 * PostgreSQL restarted under a running pipeline (issue #3): the real CLI moves an NDJSON file of
 * 100,000 records into PostgreSQL in small batches, and a quarter of the way in the server is
 * restarted (`pg_ctl restart -m fast`, what `pg_ctlcluster restart` does). With retry settings a
 * user would pick for a sink that may be down for seconds, the run must finish on its own with exit
 * 0, every record in the table exactly once, and nothing dead-lettered (a restart is retryable,
 * never a reason to give up).
 *
 * The server is the test's own (test/helpers/postgres-server.ts: initdb into a temp directory, a
 * free port), never the machine's shared one, which other work may be using; afterAll stops it and
 * removes its directory whatever happened. Skipped with a printed reason when no PostgreSQL
 * binaries are installed, unless SLUICE_REQUIRE_SERVICES=1, which turns that into a failure.
 */
import { randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readDeadLetters } from "../../src/sinks/dead-letter-sqlite.js";
import { startCli, type Cli } from "../helpers/cli.js";
import { startPostgresServer, type PostgresServer } from "../helpers/postgres-server.js";
import { canStartServer, countRows, query, sleep } from "./postgres-harness.js";

const TOTAL = 100_000;
// Restart once this share of the records is in the table: well inside the run, not at its edges.
const RESTART_AT = 0.25;
const RUN_TIMEOUT_MS = 50_000;
const SERVER_TIMEOUT_MS = 30_000;

/** Resolves once the server at `url` answers queries; throws after `timeoutMs`. */
async function waitForServer(url: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      await query(url, "SELECT 1");
      return;
    } catch (err) {
      if (Date.now() > deadline) throw new Error(`PostgreSQL did not come back within ${timeoutMs} ms`, { cause: err });
      await sleep(200);
    }
  }
}

describe.skipIf(!canStartServer("PostgreSQL restart fault test"))("PostgreSQL restarted mid-run (pg_ctl restart of a private server)", () => {
  const table = `sluice_fault_restart_${randomBytes(6).toString("hex")}`;
  let server: PostgresServer | undefined;
  let dir: string | undefined;
  let cli: Cli | undefined;

  beforeAll(async () => {
    server = await startPostgresServer();
  });

  afterAll(async () => {
    if (cli !== undefined && cli.process.exitCode === null && cli.process.signalCode === null) cli.process.kill("SIGKILL");
    await server?.stop();
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  it(`delivers all ${TOTAL.toLocaleString("en-US")} records exactly once, exit 0, nothing dead-lettered`, async () => {
    const pgServer = server!;
    const url = pgServer.url;
    dir = await mkdtemp(join(tmpdir(), "sluice-pg-restart-"));
    const input = join(dir, "readings.ndjson");
    const lines: string[] = new Array(TOTAL);
    for (let n = 1; n <= TOTAL; n++) lines[n - 1] = `{"id":"r-${n}","seq":${n},"sensor":"sensor-${n % 20}","value":${(n % 1000) / 10}}\n`;
    await writeFile(input, lines.join(""));

    const dataDir = join(dir, "data");
    const configFile = join(dir, "pipeline.yaml");
    const summaryFile = join(dir, "summary.json");
    // Small batches so the run lasts seconds; retries a user would allow for a server that may be
    // gone for a few seconds: many attempts, a minute in all, backoff capped at 1 s.
    await writeFile(
      configFile,
      `data_dir: ${dataDir}
observability: { log_level: info }
sources:
  readings: { type: file, path: ${input} }
sinks:
  pg:
    type: postgres
    url: ${url}
    table: ${table}
    batch: { max_records: 50, max_wait: 20ms }
    retry: { max_attempts: 1000, max_elapsed: 60s, initial_backoff: 50ms, max_backoff: 1s }
`,
    );

    const startedAt = Date.now();
    const before = (await query<{ t: string }>(url, "SELECT pg_postmaster_start_time()::text AS t"))[0]!.t;
    cli = startCli(configFile, summaryFile, dir);
    const child = cli;
    const deadline = Date.now() + RUN_TIMEOUT_MS;
    let rowsAtRestart: number;
    for (;;) {
      rowsAtRestart = await countRows(url, table);
      if (rowsAtRestart >= TOTAL * RESTART_AT) break;
      if (child.process.exitCode !== null || child.process.signalCode !== null) throw new Error(`the run ended before the restart:\n${child.output()}`);
      if (Date.now() > deadline) throw new Error(`the run did not reach ${TOTAL * RESTART_AT} rows:\n${child.output()}`);
      await sleep(25);
    }
    // Mid-run: records still to write, and the run still going, when the server goes down.
    expect(rowsAtRestart).toBeLessThan(TOTAL * 0.9);
    expect(child.process.exitCode, child.output()).toBeNull();
    const restartStarted = Date.now();
    await pgServer.restart();
    await waitForServer(url, SERVER_TIMEOUT_MS);
    const restartSeconds = (Date.now() - restartStarted) / 1000;
    const after = (await query<{ t: string }>(url, "SELECT pg_postmaster_start_time()::text AS t"))[0]!.t;
    expect(after, "the server was not restarted").not.toBe(before);

    const timer = setTimeout(() => child.process.kill("SIGKILL"), Math.max(1000, deadline - Date.now()));
    const { code, signal } = await child.exited;
    clearTimeout(timer);
    expect({ code, signal }, child.output()).toEqual({ code: 0, signal: null });

    const summary = JSON.parse(await readFile(summaryFile, "utf8")) as {
      records: { received: number; delivered: number; new: number; already_present: number; dead_lettered: number; dropped: number; retried: number };
      sinks: Record<string, { delivered: number; dead_lettered: number }>;
    };
    console.log(
      `postgres-restart: restart at ${rowsAtRestart} of ${TOTAL} rows took ${restartSeconds.toFixed(1)} s; run ${((Date.now() - startedAt) / 1000).toFixed(1)} s, ` +
        `${summary.records.retried} record attempts retried, ${summary.records.already_present} records already present (committed before an answer was lost)`,
    );
    // The restart failed writes in flight or due (not only idle connections): the retry path ran.
    expect(summary.records.retried, "no write failed during the restart").toBeGreaterThan(0);
    expect(summary.records).toMatchObject({ received: TOTAL, delivered: TOTAL, dead_lettered: 0, dropped: 0 });
    expect(summary.sinks.pg).toMatchObject({ delivered: TOTAL, dead_lettered: 0 });
    expect(readDeadLetters(join(dataDir, "dlq.db"))).toEqual([]);

    // Exactly once: N rows, N ids, N distinct records, each id holding its own line.
    const [counts] = await query(
      url,
      `SELECT count(*)::int AS rows, count(DISTINCT id)::int AS ids, count(DISTINCT payload->>'seq')::int AS seqs,
              min((payload->>'seq')::int) AS lo, max((payload->>'seq')::int) AS hi,
              count(*) FILTER (WHERE id IS DISTINCT FROM 'r-' || (payload->>'seq'))::int AS mismatched
         FROM "${table}"`,
    );
    expect(counts).toEqual({ rows: TOTAL, ids: TOTAL, seqs: TOTAL, lo: 1, hi: TOTAL, mismatched: 0 });
  }, 90_000);
});
