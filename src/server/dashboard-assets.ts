/**
 * The dashboard's files, served by sluice itself (no CDN: it works on an air-gapped host): the
 * page, its script and style from `assets/dashboard/` of the package, and uPlot from the
 * installed `uplot` package. Read once, on the first request, and kept in memory.
 */
import { readFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

/** One file as served. */
export interface Asset {
  readonly type: string;
  readonly body: Buffer;
}

/** Paths of the assets, from `src/server/` and `dist/server/` alike (both two levels under the package root). */
const ASSETS = new URL("../../assets/dashboard/", import.meta.url);
const require = createRequire(import.meta.url);

/** URL path -> file and content type. */
export const DASHBOARD_FILES: Readonly<Record<string, { file: () => string; type: string }>> = {
  "/": { file: () => fileURLToPath(new URL("index.html", ASSETS)), type: "text/html; charset=utf-8" },
  "/dashboard/app.js": { file: () => fileURLToPath(new URL("app.js", ASSETS)), type: "text/javascript; charset=utf-8" },
  "/dashboard/app.css": { file: () => fileURLToPath(new URL("app.css", ASSETS)), type: "text/css; charset=utf-8" },
  "/dashboard/uplot.js": { file: () => require.resolve("uplot/dist/uPlot.iife.min.js"), type: "text/javascript; charset=utf-8" },
  "/dashboard/uplot.css": { file: () => require.resolve("uplot/dist/uPlot.min.css"), type: "text/css; charset=utf-8" },
};

const loaded = new Map<string, Promise<Asset>>();

/** The asset served at `path` (a key of {@link DASHBOARD_FILES}). */
export function dashboardAsset(path: string): Promise<Asset> {
  let asset = loaded.get(path);
  if (asset === undefined) {
    const f = DASHBOARD_FILES[path]!;
    asset = readFile(f.file()).then((body) => ({ type: f.type, body }));
    // A failed read (a broken install) is tried again on the next request.
    asset.catch(() => loaded.delete(path));
    loaded.set(path, asset);
  }
  return asset;
}
