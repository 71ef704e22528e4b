/**
 * Private Redis and NATS servers for tests that restart them or need settings the machine's shared
 * servers do not have (a password), so they never touch the shared ones. Each runs in its own temp
 * directory on a free loopback port; `restart` kills it (SIGKILL: a crash, not a clean shutdown)
 * and starts it again on the same port and data; `stop` (call it in `afterAll`; safe after a
 * failure) kills it and removes the directory.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { writeFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { createConnection, createServer } from "node:net";
import { tmpdir, userInfo } from "node:os";
import { join } from "node:path";

/** How long a server may take to accept connections after a start, in ms. */
const START_TIMEOUT_MS = 15_000;

/** A server started by {@link startRedisServer}, {@link startNatsServer} or {@link startMosquitto}. */
export interface BrokerServer {
  /** `redis://[:password@]127.0.0.1:<port>`, `nats://127.0.0.1:<port>` or `mqtt://127.0.0.1:<port>`. */
  readonly url: string;
  readonly port: number;
  /** The temp directory holding the server's data and log. */
  readonly dir: string;
  /** SIGKILLs the server and starts it again on the same port and data; resolves once it accepts connections. */
  restart(): Promise<void>;
  /** Sends `sig` to the server: SIGSTOP makes it stop answering without closing a socket (a hung host, a partition without reset), SIGCONT resumes it. */
  signal(sig: "SIGSTOP" | "SIGCONT"): void;
  /** Kills the server (stopped or not) and removes its directory. Never rejects. */
  stop(): Promise<void>;
}

/** Why `binary` cannot be run here, or undefined when it can. */
export function serverProblem(binary: "redis-server" | "nats-server" | "mosquitto"): string | undefined {
  const found = spawnSync("sh", ["-c", `command -v ${binary}`]).status === 0;
  return found ? undefined : `no ${binary} on PATH`;
}

/**
 * Whether a test can start its private `binary`. When it cannot: with `SLUICE_REQUIRE_SERVICES=1`
 * this throws (the test file fails); otherwise it prints why and returns false, for `describe.skipIf`.
 */
export function canStartBroker(binary: "redis-server" | "nats-server" | "mosquitto", test: string): boolean {
  const problem = serverProblem(binary);
  if (problem === undefined) return true;
  if (process.env.SLUICE_REQUIRE_SERVICES === "1") throw new Error(`${problem}; SLUICE_REQUIRE_SERVICES=1 makes this a failure`);
  console.warn(`skipping the ${test}: ${problem}. Set SLUICE_REQUIRE_SERVICES=1 to make this a failure.`);
  return false;
}

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => (typeof address === "object" && address !== null ? resolve(address.port) : reject(new Error("no port"))));
    });
  });
}

/** Resolves once 127.0.0.1:`port` accepts a TCP connection; rejects after the start timeout or when `child` exits. */
async function listening(port: number, child: ChildProcess, log: () => string): Promise<void> {
  const deadline = Date.now() + START_TIMEOUT_MS;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`the server exited at start:\n${log()}`);
    const ok = await new Promise<boolean>((resolve) => {
      const socket = createConnection({ host: "127.0.0.1", port });
      socket.once("connect", () => (socket.destroy(), resolve(true)));
      socket.once("error", () => (socket.destroy(), resolve(false)));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`the server did not listen on ${port} within ${START_TIMEOUT_MS} ms:\n${log()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function startServer(binary: string, args: (port: number, dir: string) => string[], url: (port: number) => string, prefix: string): Promise<BrokerServer> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  const port = await freePort();
  let child: ChildProcess | undefined;
  let output = "";

  async function start(): Promise<void> {
    const started = spawn(binary, args(port, dir), { cwd: dir, stdio: ["ignore", "pipe", "pipe"] });
    child = started;
    started.stdout!.on("data", (d: Buffer) => (output += d.toString()));
    started.stderr!.on("data", (d: Buffer) => (output += d.toString()));
    await listening(port, started, () => output);
  }

  async function kill(): Promise<void> {
    const running = child;
    if (running === undefined || running.exitCode !== null || running.signalCode !== null) return;
    const exited = new Promise((resolve) => running.once("exit", resolve));
    running.kill("SIGKILL");
    await exited;
  }

  await start();
  return {
    url: url(port),
    port,
    dir,
    async restart() {
      await kill();
      await start();
    },
    signal(sig) {
      child?.kill(sig);
    },
    async stop() {
      await kill().catch(() => undefined);
      await rm(dir, { recursive: true, force: true }).catch(() => undefined);
    },
  };
}

/**
 * A private `redis-server` with AOF on and `appendfsync always` (a reply means the write is on
 * disk, so a SIGKILL loses nothing acknowledged), optionally with a password.
 */
export function startRedisServer(options: { password?: string } = {}): Promise<BrokerServer> {
  const auth = options.password === undefined ? [] : ["--requirepass", options.password];
  return startServer(
    "redis-server",
    (port, dir) => ["--port", String(port), "--bind", "127.0.0.1", "--dir", dir, "--appendonly", "yes", "--appendfsync", "always", "--save", "", ...auth],
    (port) => `redis://${options.password === undefined ? "" : `:${options.password}@`}127.0.0.1:${port}`,
    "sluice-redis-",
  );
}

/** A private `nats-server -js` storing its streams in its temp directory, optionally with a user and password. */
export function startNatsServer(options: { user?: string; password?: string } = {}): Promise<BrokerServer> {
  const auth = options.user === undefined ? [] : ["--user", options.user, "--pass", options.password ?? ""];
  return startServer(
    "nats-server",
    (port, dir) => ["-js", "-sd", join(dir, "jetstream"), "-a", "127.0.0.1", "-p", String(port), ...auth],
    (port) => `nats://127.0.0.1:${port}`,
    "sluice-nats-",
  );
}

/**
 * A private `mosquitto` with its own config file: persistence on in its temp directory, anonymous
 * clients allowed unless `passwordFile` (a file made by `mosquitto_passwd`) is given, and `settings`
 * added as config lines (`max_queued_messages 0`). The config is written at each start.
 */
export function startMosquitto(options: { settings?: readonly string[]; passwordFile?: string } = {}): Promise<BrokerServer> {
  return startServer(
    "mosquitto",
    (port, dir) => {
      const conf = join(dir, "mosquitto.conf");
      const auth = options.passwordFile === undefined ? ["allow_anonymous true"] : ["allow_anonymous false", `password_file ${options.passwordFile}`];
      // `user`: started as root, mosquitto would switch to the user `mosquitto`, who cannot read the temp directory.
      const lines = [`listener ${port} 127.0.0.1`, `user ${userInfo().username}`, "persistence true", `persistence_location ${dir}/`, "log_dest stderr", ...auth, ...(options.settings ?? [])];
      writeFileSync(conf, `${lines.join("\n")}\n`);
      return ["-c", conf];
    },
    (port) => `mqtt://127.0.0.1:${port}`,
    "sluice-mosquitto-",
  );
}
