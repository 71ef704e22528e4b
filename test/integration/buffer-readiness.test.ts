/**
 * Readiness on a full disk (issue 11, point 7): while the durable buffer cannot write, both
 * `/health/ready` endpoints (the observability listener and the http source's port) answer 503
 * and say why, `sluice_buffer_writable` is 0, and both turn ready again once a write would
 * succeed. Once with ENOSPC injected into the buffer's writes (every other file writes as usual),
 * once on a real, full tmpfs (skipped, saying why, where mounting is not permitted).
 */
import fs from "node:fs";
import fsp, { type FileHandle } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it, vi } from "vitest";
import { buildPipeline } from "../../src/config/build.js";
import { loadConfig } from "../../src/config/load.js";
import { silentLogger } from "../../src/core/events.js";
import type { PipelineStatus, Pipeline } from "../../src/core/pipeline.js";
import { startObservabilityServer } from "../../src/server/observability-server.js";
import { freePort, waitUntil } from "../helpers/http-pipeline.js";
import { fillDisk, mountTmpfs } from "../helpers/tmpfs.js";

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  vi.restoreAllMocks();
  for (const c of cleanups.splice(0).reverse()) await c();
});

interface Running {
  readonly ingest: string;
  readonly observability: string;
  readonly pipeline: Pipeline;
  readonly done: Promise<PipelineStatus>;
}

/** http source -> durable buffer at `bufferPath` -> blackhole, with an observability listener; stopped after the test. */
async function start(dir: string, bufferPath: string): Promise<Running> {
  const [ingestPort, obsPort] = [await freePort(), await freePort()];
  const file = join(dir, "pipeline.yaml");
  await fsp.writeFile(
    file,
    `data_dir: ./data
buffer: { durable: { path: ${JSON.stringify(bufferPath)} } }
sources:
  web: { type: http, listen: "127.0.0.1:${ingestPort}" }
sinks:
  out: { type: blackhole }
observability: { listen: "127.0.0.1:${obsPort}" }
`,
  );
  const loaded = await loadConfig(file);
  if (!loaded.ok) throw new Error(JSON.stringify(loaded.issues));
  const built = await buildPipeline(loaded.config, { configDir: dir, cwd: dir, logger: silentLogger });
  const server = await startObservabilityServer(loaded.config.observability.listen!, built.service);
  const done = built.pipeline.run();
  cleanups.push(async () => {
    built.pipeline.stop();
    await done;
    await server.close();
  });
  const ingest = `http://127.0.0.1:${ingestPort}`;
  await waitUntil("the pipeline to be ready", async () => (await fetch(`${ingest}/health/ready`).catch(() => undefined))?.status === 200);
  return { ingest, observability: `http://127.0.0.1:${obsPort}`, pipeline: built.pipeline, done };
}

async function tmp(): Promise<string> {
  const dir = await fsp.mkdtemp(join(tmpdir(), "sluice-ready-"));
  cleanups.push(() => fsp.rm(dir, { recursive: true, force: true }));
  return dir;
}

/** POSTs one record of about `pad` bytes. */
const post = (r: Running, pad = 0) =>
  fetch(`${r.ingest}/v1/events`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ id: "a", pad: "x".repeat(pad) }) });

async function readiness(url: string): Promise<{ status: number; body: unknown }> {
  const res = await fetch(`${url}/health/ready`);
  return { status: res.status, body: await res.json() };
}

/** Both ready endpoints say the buffer cannot write, with `why` in the reason; the gauge is 0. */
async function expectNotWritable(r: Running, why: string): Promise<void> {
  for (const url of [r.ingest, r.observability]) {
    const { status, body } = await readiness(url);
    expect(status).toBe(503);
    expect(body).toEqual({ status: "not_ready", problems: [expect.stringMatching(new RegExp(`^buffer: cannot write: .*${why}`))] });
  }
  expect(await (await fetch(`${r.observability}/metrics`)).text()).toMatch(/^sluice_buffer_writable 0$/m);
}

async function expectReadyAgain(r: Running): Promise<void> {
  await waitUntil("both ready endpoints to answer 200", async () => (await readiness(r.ingest)).status === 200 && (await readiness(r.observability)).status === 200, 10_000);
  expect(await (await fetch(`${r.observability}/metrics`)).text()).toMatch(/^sluice_buffer_writable 1$/m);
  expect((await post(r)).status).toBe(202);
}

describe("readiness while the durable buffer cannot write", () => {
  it("is false on both listeners while writes fail with ENOSPC (injected), and true again once a write succeeds", async () => {
    const dir = await tmp();
    const bufferDir = join(dir, "data", "buffer");
    const r = await start(dir, bufferDir);
    expect((await post(r)).status).toBe(202);

    // ENOSPC for the buffer's files only: whatever else this process writes goes on as usual.
    const fh = await fsp.open(join(dir, "probe"), "w");
    const proto = Object.getPrototypeOf(fh) as FileHandle;
    await fh.close();
    const write = proto.write;
    const real = fs.realpathSync(bufferDir);
    vi.spyOn(proto, "write").mockImplementation(function (this: FileHandle, ...args: unknown[]) {
      if (fs.readlinkSync(`/proc/self/fd/${this.fd}`).startsWith(real)) {
        return Promise.reject(Object.assign(new Error("ENOSPC: no space left on device, write"), { code: "ENOSPC" }));
      }
      return (write as (...a: unknown[]) => Promise<unknown>).apply(this, args);
    } as FileHandle["write"]);

    expect((await post(r)).status).toBe(503);
    await expectNotWritable(r, "ENOSPC");
    // Still not ready after a probe or two: the disk is still "full".
    await new Promise((resolve) => setTimeout(resolve, 1500));
    await expectNotWritable(r, "ENOSPC");

    vi.restoreAllMocks();
    await expectReadyAgain(r);
  });

  it("is false on both listeners while a real (tmpfs) disk is full, and true again once there is room", async (ctx) => {
    const dir = await tmp();
    const mountPoint = join(dir, "small");
    await fsp.mkdir(mountPoint);
    const unmount = mountTmpfs(mountPoint, "size=512k");
    if (unmount === undefined) return ctx.skip();
    cleanups.push(unmount);
    const r = await start(dir, join(mountPoint, "buffer"));
    expect((await post(r)).status).toBe(202);

    // Fill the disk to the last byte.
    const filler = join(mountPoint, "filler");
    fillDisk(filler);

    // Larger than what is left of the segment's last page: it needs a page the disk does not have.
    expect((await post(r, 16 * 1024)).status).toBe(503);
    await expectNotWritable(r, "ENOSPC");
    await new Promise((resolve) => setTimeout(resolve, 1500));
    await expectNotWritable(r, "ENOSPC");

    // Room again: no POST comes (a load balancer would send none now), the probe finds out.
    fs.rmSync(filler);
    await expectReadyAgain(r);
    expect((await post(r, 64 * 1024)).status).toBe(202);
  });
});
