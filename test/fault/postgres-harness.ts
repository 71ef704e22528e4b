/**
 * What the PostgreSQL fault tests share: the skip rule for their private server
 * (test/helpers/postgres-server.ts), one-shot queries that survive a server restart and a row
 * count that tolerates a missing table. The CLI child is test/helpers/cli.ts.
 */
import pg from "pg";
import { postgresServerProblem } from "../helpers/postgres-server.js";

/** Resolves after `ms` of real time. */
export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Whether a fault test can start its private server here. When it cannot: with
 * `SLUICE_REQUIRE_SERVICES=1` this throws (the test file fails); otherwise it prints why and
 * returns false, for `describe.skipIf`.
 */
export function canStartServer(test: string): boolean {
  const problem = postgresServerProblem();
  if (problem === undefined) return true;
  if (process.env.SLUICE_REQUIRE_SERVICES === "1") throw new Error(`${problem}; SLUICE_REQUIRE_SERVICES=1 makes this a failure`);
  console.warn(`skipping the ${test}: ${problem}. Set SLUICE_REQUIRE_SERVICES=1 to make this a failure.`);
  return false;
}

/** One statement on a fresh connection to `url` (the server may have restarted since the last one). */
export async function query<R extends pg.QueryResultRow>(url: string, sql: string, params: unknown[] = []): Promise<R[]> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 2000 });
  client.on("error", () => undefined);
  try {
    await client.connect();
    return (await client.query<R>(sql, params)).rows;
  } finally {
    await client.end().catch(() => undefined);
  }
}

/** Rows in `table` so far; 0 while the sink has not created it or the server is away. */
export async function countRows(url: string, table: string): Promise<number> {
  try {
    return (await query<{ n: number }>(url, `SELECT count(*)::int AS n FROM "${table}"`))[0]!.n;
  } catch {
    return 0;
  }
}
