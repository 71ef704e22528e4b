/**
 * A restart on a full disk (issue 12, point 9): sluice runs with `data_dir` and its durable buffer
 * on a small tmpfs, its sink blocked, and takes POSTs until the disk is full (ENOSPC: 503). It is
 * SIGKILLed (or stopped with SIGTERM), the rest of the disk is filled, and it is started again. It
 * must start (both locks are taken without a free byte, the dead-letter store opens once there is
 * room), answer 503 while the disk is still full, drain the backlog into
 * the sink (which frees the space), and then answer 202 again; every record that got a 202 is in
 * the sink, and no temp file is left. Skipped, saying why, where mounting a tmpfs is not permitted.
 */
import fs from "node:fs";
import fsp from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { createSqliteDeadLetterStore } from "../../src/sinks/dead-letter-sqlite.js";
import { killClis, startCli, type Cli } from "../helpers/cli.js";
import { fillDisk, mountTmpfs } from "../helpers/tmpfs.js";
import { freePort, waitUntil } from "../helpers/http-pipeline.js";

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});
afterAll(() => killClis());

/** The pipeline: http -> durable buffer (data_dir on the tmpfs) -> sqlite outside it, each write delayed by `latency`. */
function config(mountPoint: string, sinkDb: string, port: number, latency: string): string {
  return `data_dir: ${JSON.stringify(join(mountPoint, "data"))}
shutdown_timeout: 1s
buffer: { durable: {} }
sources:
  web: { type: http, listen: "127.0.0.1:${port}" }
sinks:
  out: { type: sqlite, path: ${JSON.stringify(sinkDb)}, chaos: { latency: ${latency} } }
dead_letter: { type: sqlite, path: ${JSON.stringify(join(mountPoint, "data", "dlq.db"))} }
`;
}

/** POSTs `n` records of about 200 bytes, ids from `first`; the status. */
async function post(base: string, first: number, n: number): Promise<number> {
  const body = Array.from({ length: n }, (_, i) => JSON.stringify({ id: `r${first + i}`, pad: "x".repeat(200) })).join("\n");
  const res = await fetch(`${base}/v1/events`, { method: "POST", headers: { "content-type": "application/x-ndjson" }, body });
  await res.arrayBuffer();
  return res.status;
}

async function waitLive(base: string, cli: Cli): Promise<void> {
  await waitUntil(
    "sluice to listen",
    async () => {
      if (cli.process.exitCode !== null) throw new Error(`sluice exited while starting (${cli.process.exitCode}):\n${cli.output()}`);
      return (await fetch(`${base}/health/live`).catch(() => undefined))?.status === 200;
    },
    30_000,
  );
}

function tmpFiles(dir: string): string[] {
  return (fs.readdirSync(dir, { recursive: true }) as string[]).filter((f) => f.endsWith(".tmp") || f.endsWith("write-probe"));
}

describe("a restart on a full disk", () => {
  const endings: ["SIGKILL" | "SIGTERM", string][] = [
    ["SIGKILL", "a kill"],
    ["SIGTERM", "a stop that timed out (its locks removed, the dead-letter store closed: no -shm to reuse)"],
  ];
  it.for(endings)("after %s (%s): starts, answers 503 while the disk is full, drains the backlog to free it, then takes records again", { timeout: 120_000 }, async ([signal], ctx) => {
    const dir = await fsp.mkdtemp(join(tmpdir(), "sluice-fulldisk-"));
    cleanups.push(() => fsp.rm(dir, { recursive: true, force: true }));
    const mountPoint = join(dir, "small");
    await fsp.mkdir(mountPoint);
    const unmount = mountTmpfs(mountPoint, "size=512k");
    if (unmount === undefined) return ctx.skip();
    cleanups.push(unmount);
    const sinkDb = join(dir, "out.db");
    const port = await freePort();
    const base = `http://127.0.0.1:${port}`;

    // The dead-letter store of an earlier run: run 1 finds it, writes nothing to it, and closes it
    // cleanly on a stop, which removes its -wal and -shm.
    const dlq = join(mountPoint, "data", "dlq.db");
    await fsp.mkdir(join(mountPoint, "data"));
    const store = createSqliteDeadLetterStore(dlq);
    await store.open();
    await store.close();

    // Run 1: the sink never finishes a write, so everything accepted stays in the buffer until the disk is full.
    await fsp.writeFile(join(dir, "blocked.yaml"), config(mountPoint, sinkDb, port, "1h"));
    const first = startCli(join(dir, "blocked.yaml"), join(dir, "summary1.json"), dir);
    await waitLive(base, first);
    const accepted: string[] = [];
    let next = 0;
    for (let refused = 0; refused < 3; ) {
      const status = await post(base, next, 20);
      if (status === 202) for (let i = 0; i < 20; i++) accepted.push(`r${next + i}`);
      else {
        expect(status).toBe(503);
        refused++;
      }
      next += 20;
    }
    expect(accepted.length).toBeGreaterThan(100);
    first.process.kill(signal);
    expect((await first.exited).code).toBe(signal === "SIGKILL" ? null : 1);
    if (signal === "SIGTERM") expect(fs.existsSync(`${dlq}-shm`)).toBe(false);
    fillDisk(join(mountPoint, "filler"));

    // Run 2: the sink works, after a delay that keeps the backlog (and the disk) full for a while.
    await fsp.writeFile(join(dir, "draining.yaml"), config(mountPoint, sinkDb, port, "3s"));
    const second = startCli(join(dir, "draining.yaml"), join(dir, "summary2.json"), dir);
    await waitLive(base, second);
    expect(await post(base, next, 20)).toBe(503);
    const ready = await fetch(`${base}/health/ready`);
    expect(ready.status).toBe(503);
    expect(((await ready.json()) as { problems: string[] }).problems).toContainEqual(expect.stringMatching(/^buffer: cannot write: .*ENOSPC/));

    const count = () => {
      const db = new Database(sinkDb, { readonly: true });
      try {
        return (db.prepare("SELECT count(*) AS n FROM records").get() as { n: number }).n;
      } finally {
        db.close();
      }
    };
    await waitUntil("the backlog to drain into the sink", () => count() >= accepted.length, 60_000);
    await waitUntil("ready again", async () => (await fetch(`${base}/health/ready`)).status === 200, 30_000);
    expect(await post(base, 1_000_000, 1)).toBe(202);
    await waitUntil("the new record in the sink", () => count() === accepted.length + 1, 30_000);

    const db = new Database(sinkDb, { readonly: true });
    const ids = new Set((db.prepare("SELECT id FROM records").all() as { id: string }[]).map((r) => r.id));
    db.close();
    expect(accepted.filter((id) => !ids.has(id))).toEqual([]);
    expect(tmpFiles(mountPoint)).toEqual([]);

    second.process.kill("SIGTERM");
    expect((await second.exited).code).toBe(0);
    expect(second.output()).not.toMatch(/cannot (start|lock)/);
  });
});
