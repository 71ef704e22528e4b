/**
 * The README's first hour against the code: where the demo's rows are, what `validate` says
 * about the README's bad config, and how the library example runs. (The library example itself is checked and run by test/integration/library-api.test.ts.)
 */
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { Writable } from "node:stream";
import { describe, expect, it } from "vitest";
import { main } from "../../../src/cli/main.js";
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

describe("README: the command line", () => {
  it("shows what validate prints for its bad.yaml, line numbers included", async () => {
    const text = await section("Command line");
    const yaml = /```yaml\n(# bad\.yaml\n[\s\S]*?)```/.exec(text)?.[1];
    const shown = /```\n\$ npx sluice validate bad\.yaml\n([\s\S]*?)```/.exec(text)?.[1];
    expect(yaml, "a yaml block starting with # bad.yaml").toBeDefined();
    expect(shown, "the output of npx sluice validate bad.yaml").toBeDefined();
    const dir = await mkdtemp(join(tmpdir(), "sluice-readme-"));
    try {
      const file = join(dir, "bad.yaml");
      await writeFile(file, yaml!);
      let stderr = "";
      const sink = new Writable({ write: (chunk: Buffer, _e, done) => ((stderr += String(chunk)), done()) });
      const code = await main(["validate", file], { stdout: sink, stderr: sink });
      expect(code).toBe(2);
      expect(stderr.replaceAll(file, "bad.yaml")).toBe(shown);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
