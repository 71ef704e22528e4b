/**
 * The library API as users meet it: the README's example is examples/library/demo.ts, byte for
 * byte, and it runs; and the builder's payload types flow through `map` and `filter`.
 */
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import Database from "better-sqlite3";
import { pipeline, sinks, sources, type PipelineBuilder, type SensorReading } from "sluice";
import { afterEach, beforeEach, describe, expect, expectTypeOf, it } from "vitest";

const ROOT = resolve(import.meta.dirname, "../..");
const DEMO = join(ROOT, "examples/library/demo.ts");
// tsx by absolute URL: `--import tsx` would resolve it from the child's cwd, a temp dir.
const TSX = pathToFileURL(createRequire(import.meta.url).resolve("tsx")).href;

/** The body of the first ```ts block after the `## Library API` heading, with its final newline. */
function libraryExample(readme: string): string {
  const lines = readme.split("\n");
  const heading = lines.findIndex((l) => l.trim() === "## Library API");
  if (heading < 0) throw new Error('README.md has no "## Library API" heading');
  let open = -1;
  for (let i = heading + 1; i < lines.length; i++) {
    if (/^##\s/.test(lines[i]!)) break; // the next section: the example must be in this one
    if (lines[i] === "```ts") {
      open = i;
      break;
    }
  }
  if (open < 0) throw new Error('no ```ts block under "## Library API"');
  const close = lines.findIndex((l, i) => i > open && l === "```");
  if (close < 0) throw new Error("the ```ts block under \"## Library API\" is not closed");
  return `${lines.slice(open + 1, close).join("\n")}\n`;
}

describe("the README's library example", () => {
  it("is examples/library/demo.ts, byte for byte", async () => {
    const readmePath = join(ROOT, "README.md");
    expect(existsSync(readmePath), "README.md is missing: it must show examples/library/demo.ts under ## Library API").toBe(true);
    const readme = await readFile(readmePath, "utf8");
    expect(libraryExample(readme)).toBe(await readFile(DEMO, "utf8"));
  });

  describe("running it", () => {
    let dir: string;
    beforeEach(async () => {
      dir = await mkdtemp(join(tmpdir(), "sluice-library-"));
    });
    afterEach(async () => {
      await rm(dir, { recursive: true, force: true });
    });

    it("completes, delivering every reading into SQLite", async () => {
      const child = spawn(process.execPath, ["--conditions=sluice-source", "--import", TSX, DEMO], { cwd: dir, stdio: ["ignore", "pipe", "pipe"] });
      let stdout = "";
      let stderr = "";
      child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
      child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
      const code = await new Promise<number | null>((done) => child.on("exit", (c) => done(c)));
      expect(code, `${stdout}\n${stderr}`).toBe(0);

      // `console.log(status.tag, summary.records)` prints e.g. `completed { received: 10000, delivered: 10000, ... }`.
      expect(stdout).toMatch(/^completed \{/);
      const count = (name: string) => Number(new RegExp(`\\b${name}: (\\d+)`).exec(stdout)?.[1]);
      const [received, delivered, deadLettered, dropped] = ["received", "delivered", "dead_lettered", "dropped"].map(count);
      expect(received).toBe(10_000);
      expect(delivered! + dropped!).toBe(10_000);
      expect(deadLettered).toBe(0);

      // Relative paths in the example resolve against the working directory.
      const db = new Database(join(dir, "data/library-demo/readings.db"), { readonly: true, fileMustExist: true });
      try {
        const rows = db.prepare("SELECT count(*) AS n, count(DISTINCT id) AS ids FROM readings").get() as { n: number; ids: number };
        expect(rows).toEqual({ n: delivered, ids: delivered });
        const one = db.prepare("SELECT payload FROM readings LIMIT 1").get() as { payload: string };
        expect(JSON.parse(one.payload)).toMatchObject({ processed_at: expect.any(String), fahrenheit: expect.any(Number) });
      } finally {
        db.close();
      }
    });
  });
});

describe("payload types through the builder", () => {
  // Building is pure: nothing runs until build() or run(), so these only exercise the types.
  const base = pipeline().source("s", sources.generator({ count: 1 }), { key_field: "sensor" });

  it("starts with the source's payload type", () => {
    expectTypeOf(base).toEqualTypeOf<PipelineBuilder<SensorReading>>();
  });

  it("map changes the type, and a later filter sees the new fields", () => {
    const mapped = base.map((r) => ({ sensor: r.sensor, fahrenheit: r.value * 1.8 + 32 }));
    expectTypeOf(mapped).toEqualTypeOf<PipelineBuilder<{ sensor: string; fahrenheit: number }>>();
    const filtered = mapped.filter((r) => {
      expectTypeOf(r).toEqualTypeOf<{ sensor: string; fahrenheit: number }>();
      return r.fahrenheit < 100;
    });
    expectTypeOf(filtered).toEqualTypeOf<PipelineBuilder<{ sensor: string; fahrenheit: number }>>();
    expect(filtered).toBeDefined();
  });

  it("rejects a field the payload no longer has, or never had", () => {
    const mapped = base.map((r) => ({ celsius: r.value }));
    // @ts-expect-error `sensor` was dropped by the map
    mapped.filter((r) => r.sensor === "sensor-1");
    // @ts-expect-error a generator reading has no `temperature`
    base.filter((r) => r.temperature > 3);
    // @ts-expect-error `value` is a number
    base.map((r) => ({ upper: r.value.toUpperCase() }));
    expect(mapped).toBeDefined();
  });

  it("checks envelope fields against the source's payload", () => {
    // @ts-expect-error a generator reading has no field `region` to key by
    pipeline().source("s", sources.generator({ count: 1 }), { key_field: "region" });
    expect(true).toBe(true);
  });

  it("lets a sink declare the payloads it accepts", () => {
    const wantsCelsius = sinks.custom<{ celsius: number }>("celsius", () => {
      throw new Error("never built in a type test");
    });
    base.map((r) => ({ celsius: r.value, sensor: r.sensor })).sink("ok", wantsCelsius);
    // @ts-expect-error a SensorReading has no `celsius`
    base.sink("wrong", wantsCelsius);
    // Built-in sinks accept any payload.
    base.sink("db", sinks.blackhole());
    expect(wantsCelsius.type).toBe("celsius");
  });
});
