/**
 * The README's first hour against the code: where the demo's rows are, and how the library
 * example runs. (The library example itself is checked and run by test/integration/library-api.test.ts.)
 */
import { existsSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { describe, expect, it } from "vitest";
import { loadConfig } from "../../../src/config/load.js";

const ROOT = resolve(import.meta.dirname, "../../..");

/** The README's text from the `## <title>` heading to the next `## ` heading. */
async function section(title: string): Promise<string> {
  const readme = await readFile(join(ROOT, "README.md"), "utf8");
  const start = readme.indexOf(`\n## ${title}\n`);
  if (start < 0) throw new Error(`README.md has no "## ${title}" section`);
  const end = readme.indexOf("\n## ", start + 1);
  return readme.slice(start, end < 0 ? undefined : end);
}

describe("README: the demo", () => {
  it("queries the table and database the demo pipeline writes", async () => {
    const text = await section("The demo");
    const query = /sqlite3 (\S+) "select [^"]* from (\w+)"/.exec(text);
    expect(query, "the demo section shows a sqlite3 query of the rows").not.toBeNull();
    const loaded = await loadConfig(join(ROOT, "examples/demo/pipeline.yaml"), {});
    if (!loaded.ok) throw new Error(JSON.stringify(loaded.issues));
    const sink = loaded.config.sinks.find((s) => s.definition.type === "sqlite")!;
    expect(resolve(ROOT, query![1]!)).toBe(resolve(ROOT, String(sink.options.path)));
    expect(query![2]).toBe(sink.options.table);
    expect(text).toContain(`table \`${String(sink.options.table)}\``);
  });
});

describe("README: the library example", () => {
  it("says how to run examples/library/demo.ts", async () => {
    const text = await section("Library API");
    expect(text).toContain("`npx tsx examples/library/demo.ts`");
    expect(existsSync(join(ROOT, "examples/library/demo.ts"))).toBe(true);
  });

  it("says what build() resolves, as the builder returns it", async () => {
    const text = await section("Library API");
    expect(text).toContain("`{ pipeline, metrics, dataDir, service }`");
    expect(text).not.toMatch(/build\(\)` gives the `Pipeline`/);
  });
});
