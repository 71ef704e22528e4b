/**
 * The private PostgreSQL server of the fault tests (test/helpers/postgres-server.ts): its own
 * cluster on its own port, a restart that restarts it (and only it), and a stop that leaves
 * nothing behind. Skipped with a printed reason when no PostgreSQL binaries are installed.
 */
import { existsSync } from "node:fs";
import pg from "pg";
import { afterAll, describe, expect, it } from "vitest";
import { postgresServerProblem, startPostgresServer, type PostgresServer } from "../../helpers/postgres-server.js";

const problem = postgresServerProblem();
if (problem !== undefined) console.warn(`skipping the private PostgreSQL server test: ${problem}`);

async function startTime(url: string): Promise<string> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 2000 });
  client.on("error", () => undefined);
  await client.connect();
  try {
    return (await client.query<{ t: string }>("SELECT pg_postmaster_start_time()::text AS t")).rows[0]!.t;
  } finally {
    await client.end();
  }
}

describe.skipIf(problem !== undefined)("private PostgreSQL server", () => {
  let server: PostgresServer | undefined;

  afterAll(async () => {
    await server?.stop();
  });

  it("runs its own cluster on a free port, restarts it, and removes it on stop", async () => {
    server = await startPostgresServer();
    const { url, port, dir } = server;
    expect(url).toBe(`postgres://postgres@127.0.0.1:${port}/test`);
    expect(port).not.toBe(5432);
    expect(existsSync(`${dir}/data/PG_VERSION`)).toBe(true);

    const before = await startTime(url);
    await server.restart();
    expect(await startTime(url)).not.toBe(before);
    expect(await server.log()).toContain("database system is ready to accept connections");

    await server.stop();
    expect(existsSync(dir)).toBe(false);
    await expect(startTime(url)).rejects.toThrow(/ECONNREFUSED/);
    // Safe to call again (afterAll does, after a test that failed or not).
    await server.stop();
  });
});
