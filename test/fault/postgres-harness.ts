/**
 * What the PostgreSQL fault tests share: one-shot queries that survive a server restart and a
 * row count that tolerates a missing table. The CLI child is test/helpers/cli.ts.
 */
import pg from "pg";

/** The database the fault tests use; `SLUICE_PG_URL` overrides it. */
export const PG_URL = process.env.SLUICE_PG_URL ?? "postgres://postgres@127.0.0.1:5432/test";

/** Resolves after `ms` of real time. */
export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** One statement on a fresh connection (the server may have restarted since the last one). */
export async function query<R extends pg.QueryResultRow>(sql: string, params: unknown[] = []): Promise<R[]> {
  const client = new pg.Client({ connectionString: PG_URL, connectionTimeoutMillis: 2000 });
  client.on("error", () => undefined);
  try {
    await client.connect();
    return (await client.query<R>(sql, params)).rows;
  } finally {
    await client.end().catch(() => undefined);
  }
}

/** Rows in `table` so far; 0 while the sink has not created it or the server is away. */
export async function countRows(table: string): Promise<number> {
  try {
    return (await query<{ n: number }>(`SELECT count(*)::int AS n FROM "${table}"`))[0]!.n;
  } catch {
    return 0;
  }
}

/** A `sluice run` child process. */
