/**
 * PostgreSQL backends killed mid-COPY (issue #3): the real CLI moves an NDJSON file of 100,000
 * records into PostgreSQL in batches of 500 while this test, at five points spread over
 * the run, polls `pg_stat_activity` and `pg_terminate_backend`s the sink's connections that are
 * executing a COPY, until at least one is killed each time. The run must finish on its own with
 * exit 0, every record in the table exactly once, and nothing dead-lettered: a terminated backend
 * (SQLSTATE 57P01, connection lost) is retryable.
 *
 * The server is the test's own (test/helpers/postgres-server.ts: initdb into a temp directory, a
 * free port), never the machine's shared one; afterAll stops it and removes its directory whatever
 * happened. Only the sink's backends are killed: its URL carries an `application_name` the kill
 * query matches (or the table name in the COPY statement). Skipped with a printed reason when no
 * PostgreSQL binaries are installed, unless SLUICE_REQUIRE_SERVICES=1, which turns that into a
 * failure.
 */
import { randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readDeadLetters } from "../../src/sinks/dead-letter-sqlite.js";
import { startCli, type Cli } from "../helpers/cli.js";
import { startPostgresServer, type PostgresServer } from "../helpers/postgres-server.js";
import { canStartServer, countRows, query, sleep } from "./postgres-harness.js";

const TOTAL = 100_000;
// Kill rounds start once this share of the records is in the table: spread over the run.
const KILL_AT = [0.1, 0.25, 0.4, 0.55, 0.7] as const;
const POLL_MS = 5;
const RUN_TIMEOUT_MS = 50_000;

describe.skipIf(!canStartServer("PostgreSQL terminate fault test"))("PostgreSQL backends terminated mid-COPY (pg_terminate_backend on a private server)", () => {
  const suffix = randomBytes(6).toString("hex");
  const table = `sluice_fault_terminate_${suffix}`;
  const applicationName = `sluice-fault-terminate-${suffix}`;
  let dir: string | undefined;
  let cli: Cli | undefined;
  let killer: pg.Client | undefined;
  let server: PostgresServer | undefined;
  let url = "";

  beforeAll(async () => {
    server = await startPostgresServer();
    url = server.url;
  });

  afterAll(async () => {
    if (cli !== undefined && cli.process.exitCode === null && cli.process.signalCode === null) cli.process.kill("SIGKILL");
    await killer?.end().catch(() => undefined);
    await server?.stop();
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  /** Terminates this run's backends that are executing a COPY; returns the statements it cut short. */
  async function killCopies(): Promise<string[]> {
    if (killer === undefined) {
      const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 2000 });
      // A broken killer connection is replaced on the next call.
      client.on("error", () => {
        if (killer === client) killer = undefined;
      });
      await client.connect();
      killer = client;
    }
    const { rows } = await killer.query<{ killed: boolean; query: string }>(
      `SELECT pg_terminate_backend(pid) AS killed, left(query, 80) AS query FROM pg_stat_activity
        WHERE query ILIKE 'COPY%' AND datname = current_database() AND state = 'active' AND pid <> pg_backend_pid()
          AND (application_name = $1 OR position($2 IN query) > 0)`,
      [applicationName, table],
    );
    return rows.filter((r) => r.killed).map((r) => r.query);
  }

  it(`delivers all ${TOTAL.toLocaleString("en-US")} records exactly once, exit 0, nothing dead-lettered`, async () => {
    dir = await mkdtemp(join(tmpdir(), "sluice-pg-terminate-"));
    const input = join(dir, "readings.ndjson");
    const lines: string[] = new Array(TOTAL);
    for (let n = 1; n <= TOTAL; n++) lines[n - 1] = `{"id":"r-${n}","seq":${n},"sensor":"sensor-${n % 20}","value":${(n % 1000) / 10}}\n`;
    await writeFile(input, lines.join(""));

    const dataDir = join(dir, "data");
    const configFile = join(dir, "pipeline.yaml");
    const summaryFile = join(dir, "summary.json");
    const sinkUrl = `${url}?application_name=${applicationName}`;
    // Batches of 500: small enough that the run lasts seconds, big enough that a COPY spends its
    // time streaming and inserting rows. (With batches of 50 nearly every kill landed during the
    // commit, which holds interrupts: the COPY succeeded and only the idle connection died after.)
    // Retries a user would allow for a flaky server.
    await writeFile(
      configFile,
      `data_dir: ${dataDir}
observability: { log_level: info }
sources:
  readings: { type: file, path: ${input} }
sinks:
  pg:
    type: postgres
    url: "${sinkUrl}"
    table: ${table}
    batch: { max_records: 500, max_wait: 20ms }
    retry: { max_attempts: 1000, max_elapsed: 60s, initial_backoff: 50ms, max_backoff: 1s }
`,
    );

    const startedAt = Date.now();
    cli = startCli(configFile, summaryFile, dir);
    const child = cli;
    const deadline = Date.now() + RUN_TIMEOUT_MS;
    const kills: { atRows: number; polls: number; statements: string[] }[] = [];
    for (const share of KILL_AT) {
      let rows: number;
      for (;;) {
        rows = await countRows(url, table);
        if (rows >= TOTAL * share) break;
        if (child.process.exitCode !== null || child.process.signalCode !== null) throw new Error(`the run ended before kill round ${kills.length + 1}:\n${child.output()}`);
        if (Date.now() > deadline) throw new Error(`the run did not reach ${TOTAL * share} rows:\n${child.output()}`);
        await sleep(50);
      }
      // Poll until a COPY of this run is caught in the act; the run must still be going.
      let polls = 0;
      for (;;) {
        if (child.process.exitCode !== null || child.process.signalCode !== null) throw new Error(`kill round ${kills.length + 1}: the run ended before a COPY could be killed:\n${child.output()}`);
        if (Date.now() > deadline) throw new Error(`kill round ${kills.length + 1}: no COPY of this run seen in pg_stat_activity`);
        polls++;
        // A failed poll (the killer's connection broke) is just a miss: the next poll reconnects.
        const statements = await killCopies().catch((): string[] => {
          killer = undefined;
          return [];
        });
        if (statements.length > 0) {
          kills.push({ atRows: rows, polls, statements });
          break;
        }
        await sleep(POLL_MS);
      }
    }
    expect(kills).toHaveLength(KILL_AT.length);

    const timer = setTimeout(() => child.process.kill("SIGKILL"), Math.max(1000, deadline - Date.now()));
    const { code, signal } = await child.exited;
    clearTimeout(timer);
    expect({ code, signal }, child.output()).toEqual({ code: 0, signal: null });

    const summary = JSON.parse(await readFile(summaryFile, "utf8")) as {
      records: { received: number; delivered: number; dead_lettered: number; dropped: number; retried: number };
      sinks: Record<string, { delivered: number; dead_lettered: number }>;
    };
    console.log(
      `postgres-terminate: killed ${kills.reduce((n, k) => n + k.statements.length, 0)} backend(s) mid-COPY in ${kills.length} rounds ` +
        `(at ${kills.map((k) => `${k.atRows} rows/${k.polls} polls`).join(", ")}), e.g. ${JSON.stringify(kills[0]!.statements[0])}; ` +
        `run ${((Date.now() - startedAt) / 1000).toFixed(1)} s, ${summary.records.retried} record attempts retried`,
    );
    // Some kill cut a write short (not only a connection between writes): the retry path ran.
    expect(summary.records.retried, "no write failed: the kills never landed inside a COPY").toBeGreaterThan(0);
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
