import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { writeFileAtomic } from "../../../src/core/atomic-write.js";

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "sluice-atomic-"));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

describe("writeFileAtomic", () => {
  it.each(["full", "data", "none"] as const)("replaces the file's content (sync %s) and leaves no temp file", async (sync) => {
    const file = join(dir, "state");
    writeFileSync(file, "old");
    await writeFileAtomic(file, "new", { tmp: `${file}.tmp`, sync, syncDir: sync === "full" });
    expect(readFileSync(file, "utf8")).toBe("new");
    expect(existsSync(`${file}.tmp`)).toBe(false);
  });

  it("keeps the old content and removes its temp file when the rename fails", async () => {
    const file = join(dir, "state");
    // A non-empty directory at the path: rename(2) refuses to replace it.
    mkdirSync(join(file, "inside"), { recursive: true });
    await expect(writeFileAtomic(file, "new", { tmp: `${file}.tmp`, sync: "none", syncDir: false })).rejects.toThrow();
    expect(existsSync(`${file}.tmp`)).toBe(false);
    expect(existsSync(join(file, "inside"))).toBe(true);
  });
});
