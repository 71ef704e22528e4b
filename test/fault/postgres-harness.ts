/**
 * What the PostgreSQL fault tests share: one-shot queries that survive a server restart, a row
 * count that tolerates a missing table, and the CLI as a child process.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createRequire } from "node:module";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import pg from "pg";

const ROOT = resolve(import.meta.dirname, "../..");
const ENTRY = join(ROOT, "src/cli/entry.ts");
// tsx by absolute URL: `--import tsx` would resolve it from the child's cwd, a temp dir.
const TSX = pathToFileURL(createRequire(import.meta.url).resolve("tsx")).href;

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
export interface Cli {
  readonly process: ChildProcess;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Everything it wrote on stderr so far. */
  readonly output: () => string;
}

/** Starts `sluice run <configFile> --summary-json <summaryFile>` on the sources, in `cwd`. */
export function startCli(configFile: string, summaryFile: string, cwd: string): Cli {
  const child = spawn(process.execPath, ["--conditions=sluice-source", "--import", TSX, ENTRY, "run", configFile, "--summary-json", summaryFile, "--no-progress"], {
    cwd,
    stdio: ["ignore", "ignore", "pipe"],
  });
  let stderr = "";
  child.stderr!.on("data", (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((done) => child.on("exit", (code, signal) => done({ code, signal })));
  return { process: child, exited, output: () => stderr };
}
