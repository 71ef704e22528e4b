/**
 * `sluice tap`: live records per stage as NDJSON, off unless `observability.tap: true`, and a
 * reader that does not read its socket never slows the pipeline: its records are dropped and
 * counted (in a notice to the reader and in `sluice_tap_dropped_records_total`).
 */
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PassThrough } from "node:stream";
import { afterAll, describe, expect, it } from "vitest";
import { tapCommand } from "../../src/cli/tap-command.js";
import { buildPipeline, type BuiltPipeline } from "../../src/config/build.js";
import { parseConfig } from "../../src/config/load.js";
import { silentLogger } from "../../src/core/events.js";
import { startObservabilityServer, type ObservabilityServer } from "../../src/server/observability-server.js";
import { killClis, runCli, startSluice } from "../helpers/cli.js";
import { freePort, waitUntil } from "../helpers/http-pipeline.js";

const cleanups: (() => Promise<unknown>)[] = [];
afterAll(async () => {
  killClis();
  for (const c of cleanups.reverse()) await c();
});

/** Builds the pipeline `yaml(dir)` describes in a temp dir, with its observability listener on a free port. */
async function start(yaml: (dir: string) => string, files: Record<string, string> = {}): Promise<{ built: BuiltPipeline; server: ObservabilityServer; base: string }> {
  const dir = await mkdtemp(join(tmpdir(), "sluice-tap-"));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  for (const [name, text] of Object.entries(files)) await writeFile(join(dir, name), text);
  const loaded = parseConfig(yaml(dir));
  if (!loaded.ok) throw new Error(JSON.stringify(loaded.issues));
  const built = await buildPipeline(loaded.config, { configDir: dir, cwd: dir, logger: silentLogger });
  const server = await startObservabilityServer("127.0.0.1:0", built.service);
  cleanups.push(() => server.close());
  return { built, server, base: `http://127.0.0.1:${server.port}` };
}

/** Runs the pipeline; stops it and waits for its end when the file ends. */
function run(built: BuiltPipeline): ReturnType<BuiltPipeline["pipeline"]["run"]> {
  const done = built.pipeline.run();
  cleanups.push(async () => {
    built.pipeline.stop();
    await done;
  });
  return done;
}

/** `sluice tap` in-process: exit code, stdout lines, stderr. */
async function tap(base: string, opts: { stage?: string; component?: string; limit?: string }): Promise<{ code: number; lines: Record<string, unknown>[]; stderr: string }> {
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  let out = "";
  let err = "";
  stdout.on("data", (d: Buffer) => (out += d.toString()));
  stderr.on("data", (d: Buffer) => (err += d.toString()));
  const code = await tapCommand(base, opts, { stdout, stderr });
  return { code, lines: out.split("\n").filter((l) => l !== "").map((l) => JSON.parse(l) as Record<string, unknown>), stderr: err };
}

const metric = async (base: string, name: string) => Number(new RegExp(`^${name} (\\S+)$`, "m").exec(await (await fetch(`${base}/metrics`)).text())?.[1] ?? NaN);

describe("sluice tap", () => {
  it("is off by default: /tap answers 404 and the command says how to turn it on", async () => {
    const { base } = await start((dir) => `
data_dir: ${JSON.stringify(join(dir, "data"))}
sources: { gen: { type: generator, count: 10 } }
sinks: { out: { type: blackhole } }
`);
    expect((await fetch(`${base}/tap`)).status).toBe(404);
    const t = await tap(base, {});
    expect(t.code).toBe(1);
    expect(t.stderr).toMatch(/answered 404: no \/tap there: .*observability\.tap: true/);
  });

  it("prints each stage's records: as read, as they leave the transforms, as committed; --limit ends it", async () => {
    const { built, base } = await start(
      (dir) => `
data_dir: ${JSON.stringify(join(dir, "data"))}
sources: { gen: { type: generator, count: 1000000, rate: 2000, seed: 4 } }
transforms: [{ type: module, path: ./double.mjs }]
sinks: { db: { type: sqlite, path: ${JSON.stringify(join(dir, "out.db"))} } }
observability: { tap: true }
`,
      { "double.mjs": "export default (p) => ({ ...p, doubled: p.value * 2 });\n" },
    );
    run(built);
    const [source, transform, sink] = await Promise.all([tap(base, { stage: "source", limit: "5" }), tap(base, { stage: "transform", limit: "5" }), tap(base, { stage: "sink", component: "db", limit: "5" })]);
    for (const t of [source, transform, sink]) {
      expect(t.code).toBe(0);
      expect(t.lines).toHaveLength(5);
    }
    for (const l of source.lines) {
      expect(l).toMatchObject({ stage: "source", component: "gen", source: "gen", id: expect.any(String), received_at: expect.stringMatching(/^\d{4}-/) });
      expect(l.payload).toMatchObject({ sensor: expect.any(String), value: expect.any(Number) });
      expect(l.payload).not.toHaveProperty("doubled");
    }
    for (const l of [...transform.lines, ...sink.lines]) {
      const p = l.payload as { value: number; doubled: number };
      expect(p.doubled).toBe(p.value * 2);
    }
    expect(transform.lines.every((l) => l.stage === "transform" && l.component === "module")).toBe(true);
    expect(sink.lines.every((l) => l.stage === "sink" && l.component === "db")).toBe(true);
    // Without a stage, every stage; a component names one of them.
    const any = await tap(base, { limit: "1500" });
    expect(new Set(any.lines.map((l) => l.stage))).toEqual(new Set(["source", "transform", "sink"]));
    expect((await tap(base, { component: "gen", limit: "3" })).lines.map((l) => l.stage)).toEqual(["source", "source", "source"]);
    expect((await fetch(`${base}/tap?stage=bogus`)).status).toBe(400);
    expect((await tap(base, { stage: "bogus" })).code).toBe(2);
  });

  it("a reader that does not read its socket does not hold the pipeline: it completes, the reader's records are dropped and counted", async () => {
    const COUNT = 300_000;
    const { built, base, server } = await start((dir) => `
data_dir: ${JSON.stringify(join(dir, "data"))}
sources: { gen: { type: generator, count: ${COUNT}, payload_bytes: 200 } }
sinks: { out: { type: blackhole } }
observability: { tap: true }
`);
    // A reader that takes the answer's headers and then stops reading.
    const socket = connect(server.port, "127.0.0.1");
    socket.setNoDelay(true);
    let received = "";
    await new Promise<void>((resolve) => {
      socket.once("data", (d: Buffer) => {
        received += d.toString();
        socket.pause();
        resolve();
      });
      socket.write("GET /tap?stage=source HTTP/1.1\r\nHost: x\r\n\r\n");
    });
    expect(received).toMatch(/^HTTP\/1\.1 200 /);

    const status = await run(built);
    expect(status.tag).toBe("completed");
    const snapshot = built.metrics.snapshot();
    expect(snapshot.delivered).toBe(COUNT);
    const dropped = await metric(base, "sluice_tap_dropped_records_total");
    // Far more than one queue's worth: the socket's buffers hold a few MB at most.
    expect(dropped).toBeGreaterThan(COUNT / 2);

    // Reading again, the reader gets what was queued and a notice of what it missed: every
    // record it asked for is either a line or counted in a notice.
    const lines = () => received.split("\n").filter((l) => l.startsWith("{"));
    const accounted = () => lines().reduce((n, l) => n + (l.startsWith('{"notice"') ? (JSON.parse(l) as { records: number }).records : 1), 0);
    socket.on("data", (d: Buffer) => (received += d.toString()));
    socket.resume();
    await waitUntil("every record to be a line or in a drop notice", () => accounted() === COUNT, 20_000);
    expect(lines().filter((l) => l.startsWith('{"notice":"dropped"')).length).toBeGreaterThan(0);
    socket.destroy();
  });

  it("as processes: `sluice run` with tap on, `sluice tap --limit` prints its records and exits 0; Ctrl-C ends an open tap with 0", async () => {
    const dir = await mkdtemp(join(tmpdir(), "sluice-tap-cli-"));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    const port = await freePort();
    await writeFile(
      join(dir, "pipeline.yaml"),
      `data_dir: ./data
sources: { gen: { type: generator, count: 10000000, rate: 1000 } }
sinks: { out: { type: blackhole } }
observability: { listen: "127.0.0.1:${port}", tap: true }
`,
    );
    const run = startSluice(["run", "pipeline.yaml", "--no-progress"], dir);
    const base = `http://127.0.0.1:${port}`;
    await waitUntil("the observability listener", () => fetch(`${base}/health/ready`).then((r) => r.ok, () => false), 30_000);

    const limited = await runCli(["tap", base, "--stage", "sink", "--limit", "3"]);
    expect(limited.code, limited.stderr).toBe(0);
    const lines = limited.stdout.split("\n").filter((l) => l !== "");
    expect(lines).toHaveLength(3);
    for (const l of lines) expect(JSON.parse(l)).toMatchObject({ stage: "sink", component: "out", source: "gen" });

    const open = startSluice(["tap", base, "--component", "gen"], dir);
    await waitUntil("the open tap to print", () => open.output().includes('"stage":"source"'), 30_000);
    open.process.kill("SIGINT");
    expect((await open.exited).code).toBe(0);

    run.process.kill("SIGTERM");
    expect((await run.exited).code).toBe(0);
  });
});
