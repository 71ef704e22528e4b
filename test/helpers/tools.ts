/**
 * The skip rule for tests that need a command-line tool (promtool, tmux), as for services: a test
 * file calls {@link requireTool} at its top level and wraps its tests in `describe.skipIf(!available)`.
 */
import { spawnSync } from "node:child_process";

/**
 * Whether `command --version`-like `args` runs. When it does not: with
 * `SLUICE_REQUIRE_SERVICES=1` it throws naming the tool and where it comes from (so the test file
 * fails: CI must never pass by skipping); otherwise it prints the reason and returns false.
 */
export function requireTool(command: string, args: readonly string[], comesFrom: string): boolean {
  const r = spawnSync(command, args, { encoding: "utf8" });
  if (r.status === 0) return true;
  const message = `${command} is not available (${r.error?.message ?? r.stderr.trim()}); it comes from ${comesFrom}`;
  if (process.env.SLUICE_REQUIRE_SERVICES === "1") throw new Error(`${message}; SLUICE_REQUIRE_SERVICES=1 makes this a failure`);
  console.warn(`skipping ${command} tests: ${message}. Set SLUICE_REQUIRE_SERVICES=1 to make this a failure.`);
  return false;
}
