/**
 * The live dashboard in a real headless Chromium: the page renders from sluice's own files
 * (uPlot included), its numbers move while a pipeline runs, and a screenshot is kept under
 * test-artifacts/. Also: the feed is server-sent events that end with the run, and the http
 * source's port serves the same dashboard, behind its auth.
 */
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { silentLogger } from "../../src/core/events.js";
import { buildPipeline, type BuiltPipeline } from "../../src/config/build.js";
import { parseConfig } from "../../src/config/load.js";
import { startObservabilityServer, type ObservabilityServer } from "../../src/server/observability-server.js";
import { launchChromium, requireChromium } from "../helpers/chromium.js";
import { freePort, waitUntil } from "../helpers/http-pipeline.js";

const ARTIFACTS = resolve(import.meta.dirname, "../../test-artifacts");
const hasChromium = await requireChromium();
const cleanups: (() => Promise<unknown>)[] = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
});

/** Builds the pipeline `yaml` describes in a temp dir (the caller runs it). */
async function build(yaml: (dir: string) => string): Promise<BuiltPipeline> {
  const dir = await mkdtemp(join(tmpdir(), "sluice-dash-"));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  const loaded = parseConfig(yaml(dir));
  if (!loaded.ok) throw new Error(JSON.stringify(loaded.issues));
  return buildPipeline(loaded.config, { configDir: dir, cwd: dir, logger: silentLogger });
}

/** Runs `built` with the observability listener on a free port; stops it at the end of the file. */
async function serve(built: BuiltPipeline): Promise<{ base: string; done: ReturnType<BuiltPipeline["pipeline"]["run"]>; server: ObservabilityServer }> {
  const server = await startObservabilityServer("127.0.0.1:0", built.service);
  const done = built.pipeline.run();
  cleanups.push(async () => {
    built.pipeline.stop();
    await done;
    await server.close();
  });
  return { base: `http://127.0.0.1:${server.port}`, done, server };
}

/** A pipeline that runs for about a minute at 1,500 records/s, with retries and dead letters to show. */
const busy = (dir: string) => `
data_dir: ${JSON.stringify(join(dir, "data"))}
buffer: { max_records: 2000 }
sources:
  sensors: { type: generator, count: 90000, rate: 1500, seed: 7 }
sinks:
  db:
    type: sqlite
    path: ${JSON.stringify(join(dir, "out.db"))}
    batch: { max_records: 200, max_wait: 50ms }
    retry: { initial_backoff: 20ms }
    chaos: { failure_rate: 0.15, permanent_failure_rate: 0.002, latency: { min: 5ms, max: 40ms }, seed: 3 }
  archive: { type: blackhole }
`;

describe.skipIf(!hasChromium)("dashboard in headless Chromium", () => {
  it("renders every chart from sluice's own files, its numbers move while the pipeline runs; screenshot kept", async () => {
    const { base } = await serve(await build(busy));
    const { context, close } = await launchChromium();
    cleanups.push(close);
    const page = await context.newPage();
    const outside: string[] = [];
    // Air-gapped: every request the page makes goes to sluice itself.
    page.on("request", (r) => {
      if (!r.url().startsWith(base)) outside.push(r.url());
    });
    const errors: string[] = [];
    page.on("pageerror", (e) => errors.push(e.message));
    await page.goto(`${base}/`);
    const number = async (id: string) => Number(((await page.textContent(`#${id}`)) ?? "").replace(/,/g, ""));
    await waitUntil("the first snapshot on the page", async () => (await number("delivered")) > 0, 20_000);
    const first = { received: await number("received"), delivered: await number("delivered") };
    await waitUntil("the numbers to move", async () => (await number("delivered")) > first.delivered && (await number("received")) > first.received, 20_000);
    // Wait for enough points that the charts draw lines, and for a retry to show.
    await waitUntil("retries on the page", async () => Number(((await page.textContent("#sinks tbody tr:first-child td:nth-child(5)")) ?? "0").replace(/,/g, "")) > 0, 30_000);
    await page.waitForTimeout(4000);

    expect(await page.textContent("#state")).toBe("running");
    expect(await page.textContent("#ready")).toBe("ready");
    expect(await page.locator(".uplot").count()).toBe(6);
    expect(await page.locator(".uplot canvas").count()).toBe(6);
    const sinks = await page.locator("#sinks tbody tr td:first-child").allTextContents();
    expect(sinks.sort()).toEqual(["archive", "db"]);
    expect(await page.locator("#sources tbody tr td:first-child").allTextContents()).toEqual(["sensors"]);
    expect(await page.textContent("#buffer-records")).toMatch(/^[\d,]+ \/ 2,000$/);
    // The throughput legend names each source and sink.
    const legend = await page.locator("#chart-throughput .u-legend .u-label").allTextContents();
    expect(legend).toEqual(expect.arrayContaining(["in sensors", "out db", "out archive"]));
    await mkdir(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: join(ARTIFACTS, "dashboard.png"), fullPage: true });
    expect(outside).toEqual([]);
    expect(errors).toEqual([]);
  });
});

describe("dashboard feed and assets", () => {
  it("serves the page and uPlot from sluice; the feed sends a snapshot per second and ends with the run", async () => {
    const built = await build(
      (dir) => `
data_dir: ${JSON.stringify(join(dir, "data"))}
sources:
  gen: { type: generator, count: 1000000, rate: 2000 }
sinks:
  out: { type: blackhole }
`,
    );
    const { base, done } = await serve(built);
    const page = await fetch(`${base}/`);
    expect(page.headers.get("content-type")).toBe("text/html; charset=utf-8");
    expect(await page.text()).toContain('<script src="/dashboard/uplot.js"></script>');
    const uplot = await fetch(`${base}/dashboard/uplot.js`);
    expect(uplot.status).toBe(200);
    expect(await uplot.text()).toContain("uPlot");
    expect((await fetch(`${base}/dashboard/app.js`)).status).toBe(200);
    expect((await fetch(`${base}/dashboard/nope.js`)).status).toBe(404);

    const stream = await fetch(`${base}/dashboard/events`);
    expect(stream.headers.get("content-type")).toBe("text/event-stream");
    const reader = stream.body!.getReader();
    let text = "";
    const decoder = new TextDecoder();
    const frames = () => [...text.matchAll(/^data: (\{"t".*\})$/gm)].map((m) => JSON.parse(m[1]!) as { state: string; totals: { received: number }; sources: { rate: number }[] });
    while (frames().length < 3) text += decoder.decode((await reader.read()).value);
    const [a, , c] = frames();
    expect(c!.totals.received).toBeGreaterThan(a!.totals.received);
    expect(c!.sources[0]!.rate).toBeGreaterThan(0);

    built.pipeline.stop();
    await done;
    for (;;) {
      const chunk = await reader.read();
      if (chunk.done) break;
      text += decoder.decode(chunk.value);
    }
    expect(text).toMatch(/event: end\n/);
    expect(frames().at(-1)!.state).toBe("stopped");
  });

  it("a feed open when its server closes ends with the end event (the page stops reconnecting)", async () => {
    const { base, server } = await serve(
      await build(
        (dir) => `
data_dir: ${JSON.stringify(join(dir, "data"))}
sources:
  gen: { type: generator, count: 1000000, rate: 1000 }
sinks:
  out: { type: blackhole }
`,
      ),
    );
    const stream = await fetch(`${base}/dashboard/events`);
    const reader = stream.body!.getReader();
    const decoder = new TextDecoder();
    let text = "";
    while (!text.includes("data: {")) text += decoder.decode((await reader.read()).value);
    const closed = server.close();
    for (;;) {
      const chunk = await reader.read();
      if (chunk.done) break;
      text += decoder.decode(chunk.value);
    }
    await closed;
    expect(text).toMatch(/event: end\ndata: \{\}\n\n$/);
  });

  it("the http source's port serves the same dashboard, behind its auth unless public_metrics", async () => {
    const TOKEN = "dashboard-token-0123456789";
    const port = await freePort();
    const built = await build(
      (dir) => `
data_dir: ${JSON.stringify(join(dir, "data"))}
sources:
  web: { type: http, listen: "127.0.0.1:${port}", auth: { tokens: [${TOKEN}] } }
sinks:
  out: { type: blackhole }
`,
    );
    const { base } = await serve(built);
    const ingest = `http://127.0.0.1:${port}`;
    await waitUntil("the http source to listen", () => fetch(`${ingest}/health/live`).then((r) => r.ok, () => false));
    expect((await fetch(`${ingest}/`)).status).toBe(401);
    expect((await fetch(`${ingest}/dashboard/events`)).status).toBe(401);
    const page = await fetch(`${ingest}/`, { headers: { authorization: `Bearer ${TOKEN}` } });
    expect(page.status).toBe(200);
    expect(await page.text()).toBe(await (await fetch(`${base}/`)).text());
    const stream = await fetch(`${ingest}/dashboard/events`, { headers: { authorization: `Bearer ${TOKEN}` } });
    expect(stream.headers.get("content-type")).toBe("text/event-stream");
    const first = new TextDecoder().decode((await stream.body!.getReader().read()).value);
    expect(first).toMatch(/^retry: 2000\n\n/);
    // Tap is the observability listener's only.
    expect((await fetch(`${ingest}/tap`, { headers: { authorization: `Bearer ${TOKEN}` } })).status).toBe(404);
  });
});
