/**
 * The dead-letter store is created at the first dead letter, not at start. A first write that
 * cannot create it (its directory blocked by a file) keeps those records un-acked and retried;
 * once the way is clear, every one of them is in the store, and the counts add up.
 */
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { deadLetters, sinks, sources } from "../../src/api/components.js";
import { pipeline } from "../../src/api/builder.js";
import { readDeadLetters } from "../../src/sinks/dead-letter-sqlite.js";

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "sluice-dlq-deferred-"));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

describe("dead-letter store created at the first dead letter", () => {
  it("a run that dead-letters nothing creates no store", async () => {
    const { summary } = await pipeline({ data_dir: join(dir, "data") })
      .source("gen", sources.generator({ count: 50 }))
      .sink("out", sinks.blackhole())
      .run();
    expect(summary.records).toMatchObject({ received: 50, delivered: 50, dead_lettered: 0 });
    expect(existsSync(join(dir, "data", "dlq.db"))).toBe(false);
  });

  it("a first write that cannot create it is retried; every record ends delivered or dead-lettered, once", async () => {
    const blocked = join(dir, "blocked");
    // A file where the store's directory should be: mkdir fails until it is removed.
    writeFileSync(blocked, "");
    const path = join(blocked, "dlq.db");
    setTimeout(() => rmSync(blocked), 500);
    let failedWrites = 0;
    const { summary } = await pipeline({ data_dir: join(dir, "data"), onEvent: (e) => void (e.type === "dead_letter_write_failed" && failedWrites++) })
      .source("gen", sources.generator({ count: 200 }))
      .map((p) => {
        if (p.seq % 10 === 3) throw new Error(`reading ${p.seq} refused`);
        return p;
      })
      .sink("out", sinks.blackhole())
      .deadLetter(deadLetters.sqlite({ path }))
      .run();
    const rows = readDeadLetters(path);
    expect(failedWrites).toBeGreaterThan(0);
    expect(summary.records).toMatchObject({ received: 200, delivered: 180, dead_lettered: 20, dropped: 0 });
    expect(rows).toHaveLength(20);
    expect(new Set(rows.map((r) => r.record_id)).size).toBe(20);
  }, 30_000);
});
