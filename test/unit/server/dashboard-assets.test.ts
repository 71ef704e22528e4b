import { existsSync, readFileSync } from "node:fs";
import { resolve } from "node:path";
import { describe, expect, it } from "vitest";
import { DASHBOARD_FILES, dashboardAsset } from "../../../src/server/dashboard-assets.js";

const ROOT = resolve(import.meta.dirname, "../../..");

describe("dashboard assets", () => {
  it("every file resolves and is read; the page loads only files sluice serves", async () => {
    for (const [path, f] of Object.entries(DASHBOARD_FILES)) {
      expect(existsSync(f.file()), path).toBe(true);
      expect((await dashboardAsset(path)).body.length, path).toBeGreaterThan(0);
    }
    const page = (await dashboardAsset("/")).body.toString();
    const referenced = [...page.matchAll(/(?:src|href)="([^"]+)"/g)].map((m) => m[1]!);
    expect(referenced.length).toBeGreaterThan(0);
    for (const r of referenced) expect(Object.keys(DASHBOARD_FILES), r).toContain(r);
  });

  it("an installed package has them: assets/ is in the package's files, uplot a runtime dependency", () => {
    const pkg = JSON.parse(readFileSync(resolve(ROOT, "package.json"), "utf8")) as { files: string[]; dependencies: Record<string, string> };
    expect(pkg.files).toContain("assets");
    expect(pkg.dependencies).toHaveProperty("uplot");
  });
});
