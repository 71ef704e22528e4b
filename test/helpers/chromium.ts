/**
 * Headless Chromium for the dashboard tests: Debian's `chromium` driven by playwright-core. The
 * skip rule is the services' one: without the browser a test file is skipped with the reason
 * printed, unless `SLUICE_REQUIRE_SERVICES=1` (CI, whose `.ci/run` installs it), where it fails.
 */
import { access, constants, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium, type BrowserContext } from "playwright-core";

export const CHROMIUM = "/usr/bin/chromium";

/** True when Debian's chromium is installed; otherwise skip (printing why) or, under SLUICE_REQUIRE_SERVICES=1, throw. */
export async function requireChromium(): Promise<boolean> {
  const missing = await access(CHROMIUM, constants.X_OK).then(
    () => undefined,
    (err: NodeJS.ErrnoException) => err.code ?? err.message,
  );
  if (missing === undefined) return true;
  const message = `chromium is not installed at ${CHROMIUM} (${missing}); apt-get install -y chromium`;
  if (process.env.SLUICE_REQUIRE_SERVICES === "1") throw new Error(`${message}; SLUICE_REQUIRE_SERVICES=1 makes this a failure.`);
  console.warn(`skipping the browser tests: ${message}. Set SLUICE_REQUIRE_SERVICES=1 to make this a failure.`);
  return false;
}

/** A headless browser on a fresh profile (its own `--user-data-dir`); `close` ends it and removes the profile. */
export async function launchChromium(): Promise<{ context: BrowserContext; close: () => Promise<void> }> {
  const profile = await mkdtemp(join(tmpdir(), "sluice-chromium-"));
  // A persistent context is how playwright takes a profile directory (it refuses --user-data-dir in args).
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    viewport: { width: 1400, height: 1050 },
  });
  return {
    context,
    close: async () => {
      await context.close();
      await rm(profile, { recursive: true, force: true });
    },
  };
}
