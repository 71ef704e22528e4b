/**
 * Loading the built-in component list must not load the broker client libraries: ioredis and
 * nats.js cost ~0.1 s of start-up each and only the broker sources and sinks need them, on connect. Checked in
 * a fresh process (vitest's own may have loaded them already). All three are CommonJS, so once
 * loaded, even through `import()`, they are in `require.cache`.
 */
import { execFileSync } from "node:child_process";
import { createRequire } from "node:module";
import { fileURLToPath, pathToFileURL } from "node:url";
import { describe, expect, it } from "vitest";

const TSX = pathToFileURL(createRequire(import.meta.url).resolve("tsx")).href;
const src = (path: string): string => pathToFileURL(fileURLToPath(new URL(`../../../src/${path}`, import.meta.url))).href;

const PROBE = `
import { createRequire } from "node:module";
const cache = createRequire(import.meta.url).cache;
const loaded = () => [...new Set(Object.keys(cache).flatMap((k) => /[\\\\/]node_modules[\\\\/](ioredis|@nats-io[\\\\/][^\\\\/]+)[\\\\/]/.exec(k)?.[1] ?? []))].sort();
await import(${JSON.stringify(src("components/builtins.ts"))});
const atStart = loaded();
const redis = await import(${JSON.stringify(src("brokers/redis.ts"))});
const nats = await import(${JSON.stringify(src("brokers/nats.ts"))});
await Promise.all([redis.loadRedis(), nats.loadNats()]);
console.log(JSON.stringify({ atStart, afterLoad: loaded() }));
`;

describe("broker client libraries", () => {
  it("are not loaded with the built-in components, only by the broker loaders", () => {
    const out = execFileSync(process.execPath, ["--import", TSX, "--input-type=module", "-e", PROBE], { encoding: "utf8" });
    const { atStart, afterLoad } = JSON.parse(out) as { atStart: string[]; afterLoad: string[] };
    expect(atStart).toEqual([]);
    // The probe sees them once they are loaded: an empty list above is not a blind check.
    expect(afterLoad).toEqual(expect.arrayContaining(["ioredis", "@nats-io/jetstream", "@nats-io/transport-node"]));
  }, 30_000);
});
