/**
 * The skip rule for tests that need a real service (PostgreSQL, Redis, NATS, Mosquitto): a test
 * file awaits {@link requireService} at its top level and wraps its tests in
 * `describe.skipIf(!available)`. Unreachable means skipped with the reason printed, unless
 * `SLUICE_REQUIRE_SERVICES=1` (CI), where it is a failure: CI must never pass by skipping.
 */
import { connect } from "node:net";

/** How long one TCP connect may take before the service counts as unreachable, in ms. */
const CONNECT_TIMEOUT_MS = 1500;

const checks = new Map<string, Promise<string | undefined>>();

/** Resolves to undefined when `host:port` accepts a TCP connection, else to why not. Never rejects. */
function probe(host: string, port: number): Promise<string | undefined> {
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    const done = (reason: string | undefined) => {
      socket.destroy();
      resolve(reason);
    };
    socket.setTimeout(CONNECT_TIMEOUT_MS, () => done(`no answer within ${CONNECT_TIMEOUT_MS} ms`));
    socket.once("connect", () => done(undefined));
    socket.once("error", (err: NodeJS.ErrnoException) => done(err.code ?? err.message));
  });
}

/**
 * Whether `name` is reachable at `host:port` (a TCP connect, done once per process and address).
 * Resolves true when it is. When it is not: with `SLUICE_REQUIRE_SERVICES=1` it rejects with an
 * error naming the service, address and cause (so the test file fails); otherwise it prints the
 * reason with `console.warn` and resolves false, for `describe.skipIf(!available)`.
 */
export async function requireService(name: string, host: string, port: number): Promise<boolean> {
  const address = `${host}:${port}`;
  let check = checks.get(address);
  if (check === undefined) {
    check = probe(host, port);
    checks.set(address, check);
  }
  const reason = await check;
  if (reason === undefined) return true;
  const message = `${name} is not reachable at ${address} (${reason})`;
  if (process.env.SLUICE_REQUIRE_SERVICES === "1") {
    throw new Error(`${message}; SLUICE_REQUIRE_SERVICES=1 makes this a failure. Start ${name}, or unset SLUICE_REQUIRE_SERVICES to skip these tests.`);
  }
  console.warn(`skipping ${name} tests: ${message}. Set SLUICE_REQUIRE_SERVICES=1 to make this a failure.`);
  return false;
}
