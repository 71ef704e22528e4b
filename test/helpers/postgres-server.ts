/**
 * A private PostgreSQL server for tests that restart it or kill its backends, so that they never
 * touch the machine's shared server (and whatever else is using it). {@link startPostgresServer}
 * runs `initdb` into a fresh temp directory and `pg_ctl start` on a free loopback port, with the
 * Unix socket in that directory too; {@link PostgresServer.stop} (call it in `afterAll`, it is safe
 * after a failure) stops the server and removes the directory.
 *
 * The binaries come from `SLUICE_PG_BIN`, else the newest `/usr/lib/postgresql/<version>/bin`.
 * initdb and the server refuse to run as root: as root, they run as the `postgres` OS user
 * (`runuser -u postgres --`), which owns the directory. The pattern, for other services a test
 * must restart (brokers): its own data directory, a free port, stop and remove in `afterAll`.
 */
import { execFile } from "node:child_process";
import { existsSync, readdirSync } from "node:fs";
import { chown, mkdtemp, readFile, rm } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import pg from "pg";

const exec = promisify(execFile);

/** OS user that runs initdb and the server when the tests run as root. */
const SERVER_USER = "postgres";
/** How long `pg_ctl` waits for a start or stop, in s. */
const PG_CTL_WAIT_S = 60;

/** A server started by {@link startPostgresServer}. */
export interface PostgresServer {
  /** `postgres://postgres@127.0.0.1:<port>/test`: superuser, trust auth, an empty database `test`. */
  readonly url: string;
  readonly port: number;
  /** The temp directory: cluster in `data/`, log in `server.log`, socket. */
  readonly dir: string;
  /** `pg_ctl restart -m fast`, as `pg_ctlcluster restart` does: ends every connection, resolves once the server accepts new ones. */
  restart(): Promise<void>;
  /** The server's log so far, for a failure message. */
  log(): Promise<string>;
  /** Stops the server (immediate mode: nothing to keep) and removes the directory. Never rejects. */
  stop(): Promise<void>;
}

/** The directory of initdb and pg_ctl, or undefined when there is none. */
function binDir(): string | undefined {
  const given = process.env.SLUICE_PG_BIN;
  if (given !== undefined) return existsSync(join(given, "initdb")) ? given : undefined;
  const root = "/usr/lib/postgresql";
  if (!existsSync(root)) return undefined;
  const versions = readdirSync(root)
    .filter((v) => existsSync(join(root, v, "bin", "initdb")))
    .sort((a, b) => Number(b) - Number(a));
  return versions.length === 0 ? undefined : join(root, versions[0]!, "bin");
}

const asRoot = process.getuid?.() === 0;

/** Why a private server cannot be started here, or undefined when it can. */
export function postgresServerProblem(): string | undefined {
  if (binDir() === undefined) return "no PostgreSQL binaries (initdb) in SLUICE_PG_BIN or /usr/lib/postgresql/*/bin";
  if (asRoot && !existsSync("/usr/sbin/runuser") && !existsSync("/sbin/runuser")) return "running as root, and no runuser to start PostgreSQL as another user";
  return undefined;
}

/** A TCP port on 127.0.0.1 that was free a moment ago. */
async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => (typeof address === "object" && address !== null ? resolve(address.port) : reject(new Error("no port"))));
    });
  });
}

/** Runs a PostgreSQL binary, as the server user when we are root, in `cwd` (readable by that user). */
async function run(bin: string, args: string[], cwd: string): Promise<void> {
  const [file, argv] = asRoot ? ["runuser", ["-u", SERVER_USER, "--", bin, ...args]] : [bin, args];
  try {
    await exec(file, argv, { cwd });
  } catch (err) {
    const e = err as { stderr?: string; stdout?: string; message: string };
    throw new Error(`${[file, ...argv].join(" ")} failed: ${e.stderr || e.stdout || e.message}`, { cause: err });
  }
}

/**
 * Creates and starts a private server; rejects (having removed what it made) when it cannot.
 * Takes a few seconds: initdb writes a whole cluster (without fsync).
 */
export async function startPostgresServer(): Promise<PostgresServer> {
  const bin = binDir();
  if (bin === undefined) throw new Error(postgresServerProblem());
  const dir = await mkdtemp(join(tmpdir(), "sluice-pg-"));
  const data = join(dir, "data");
  const logFile = join(dir, "server.log");
  const pgCtl = join(bin, "pg_ctl");
  let port: number;

  const stop = async () => {
    await run(pgCtl, ["stop", "-D", data, "-m", "immediate", "-w", "-t", String(PG_CTL_WAIT_S)], dir).catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
  };
  try {
    if (asRoot) {
      const { stdout } = await exec("id", ["-u", SERVER_USER]);
      const { stdout: gid } = await exec("id", ["-g", SERVER_USER]);
      await chown(dir, Number(stdout.trim()), Number(gid.trim()));
    }
    await run(join(bin, "initdb"), ["-D", data, "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"], dir);
    // The port was free a moment ago; another process may take it first, so a failed start tries another.
    for (let attempt = 1; ; attempt++) {
      port = await freePort();
      const options = `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50`;
      try {
        await run(pgCtl, ["start", "-D", data, "-l", logFile, "-w", "-t", String(PG_CTL_WAIT_S), "-o", options], dir);
        break;
      } catch (err) {
        if (attempt === 3) throw err;
      }
    }
    const admin = new pg.Client({ connectionString: `postgres://postgres@127.0.0.1:${port}/postgres` });
    await admin.connect();
    try {
      await admin.query("CREATE DATABASE test");
    } finally {
      await admin.end();
    }
  } catch (err) {
    const log = await readFile(logFile, "utf8").catch(() => "");
    await stop();
    throw new Error(`cannot start a private PostgreSQL: ${(err as Error).message}${log ? `\nserver log:\n${log}` : ""}`, { cause: err });
  }

  return {
    url: `postgres://postgres@127.0.0.1:${port}/test`,
    port,
    dir,
    // -l again: without it the server would write to (and hold open) the pipe pg_ctl was given.
    restart: () => run(pgCtl, ["restart", "-D", data, "-l", logFile, "-m", "fast", "-w", "-t", String(PG_CTL_WAIT_S)], dir),
    log: () => readFile(logFile, "utf8").catch(() => ""),
    stop,
  };
}
