/**
 * Issue 11, point 2: 1,500 connections each sending a 1 MiB body with a bogus HMAC signature
 * (`test/helpers/flood-client.ts`, a process of its own), against a `sluice run` child. Every
 * body but its last byte arrives at once, so no body can be checked before all of them are in:
 * the bytes held for bodies must stay within the source's budget (peak RSS under 400 MiB; the
 * code before the budget held them all), and a legitimate request (bearer token) sent while the
 * flood is under way must still be answered 202 within 5 s.
 */
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { pathToFileURL } from "node:url";
import { afterAll, expect, it } from "vitest";
import { killClis, startCli } from "../helpers/cli.js";
import { freePort, waitUntil } from "../helpers/http-pipeline.js";
import { makeTempDir } from "../helpers/source-harness.js";

const MiB = 1024 * 1024;
const CONNECTIONS = 1500;
const RSS_LIMIT_KIB = 400 * 1024;
const TOKEN = "token-0123456789abcdef";

let dir: { path: string; remove: () => Promise<void> } | undefined;

afterAll(async () => {
  killClis();
  await dir?.remove();
});

/** A field of /proc/<pid>/status in KiB (VmRSS, VmHWM). */
function procKib(pid: number, field: string): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB$`, "m").exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return Number(m?.[1] ?? 0);
}

const FLOOD_CLIENT = resolve(import.meta.dirname, "../helpers/flood-client.ts");
const TSX = pathToFileURL(createRequire(import.meta.url).resolve("tsx")).href;

it("1,500 connections of 1 MiB bodies with a bogus signature: peak RSS under 400 MiB, a legitimate request answered 202 within 5 s", async () => {
  dir = await makeTempDir("sluice-flood-");
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const config = join(dir.path, "pipeline.yaml");
  await writeFile(
    config,
    `data_dir: ${join(dir.path, "data")}
observability: { log_level: warn }
sources:
  web:
    type: http
    listen: "127.0.0.1:${port}"
    auth: { tokens: ["${TOKEN}"], hmac: { secrets: ["hmac-secret-0123456789"] } }
sinks:
  out: { type: blackhole }
`,
  );
  const cli = startCli(config, join(dir.path, "summary.json"), dir.path);
  const pid = cli.process.pid!;
  await waitUntil(
    "sluice to listen",
    () => {
      if (cli.process.exitCode !== null) throw new Error(`sluice exited: ${cli.output()}`);
      return fetch(`${base}/health/live`).then(
        (r) => r.ok,
        () => false,
      );
    },
    30_000,
  );
  const before = procKib(pid, "VmRSS");

  // Sampled as well as read from VmHWM at the end: past the limit the flood is stopped, so a
  // server without a bound fails here instead of taking the machine's memory.
  const client = spawn(process.execPath, ["--import", TSX, FLOOD_CLIENT, String(port), String(CONNECTIONS), String(MiB)], { stdio: ["ignore", "pipe", "inherit"] });
  let peak = 0;
  const sampler = setInterval(() => {
    peak = Math.max(peak, procKib(pid, "VmRSS"));
    if (peak > RSS_LIMIT_KIB) client.kill("SIGKILL");
  }, 20);
  try {
    const lines = createInterface({ input: client.stdout! })[Symbol.asyncIterator]();
    expect((await lines.next()).value).toBe("flooding");

    // The legitimate producer, once the flood is under way: retries a 503 (or a refused
    // connection) after 100 ms, as a client would.
    const started = Date.now();
    let legit = 0;
    const attempts: string[] = [];
    while (Date.now() - started < 5000) {
      legit = await fetch(`${base}/v1/events`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${TOKEN}`, "idempotency-key": "legit" },
        body: JSON.stringify({ id: "legit", ok: true }),
        signal: AbortSignal.timeout(Math.max(1, 5000 - (Date.now() - started))),
      }).then(
        async (r) => (await r.text(), r.status),
        () => 0,
      );
      attempts.push(`${Date.now() - started} ms: ${legit}`);
      if (legit === 202) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    const legitMs = Date.now() - started;

    const last = await Promise.race([lines.next(), new Promise<never>((_, reject) => setTimeout(() => reject(new Error("the flood did not finish within 30 s")), 30_000))]);
    // No line: the sampler stopped the flood (RSS past the limit); the assertions below say so.
    const counts = last.done === true ? { "stopped: RSS past the limit": CONNECTIONS } : (JSON.parse(String(last.value)) as Record<string, number>);
    const hwm = Math.max(procKib(pid, "VmHWM"), peak);
    const metrics = await fetch(`${base}/metrics`, { headers: { authorization: `Bearer ${TOKEN}` } }).then((r) => r.text());
    const answered = (status: number) => Number(new RegExp(`^sluice_http_requests_total\\{source="web",status="${status}"\\} (\\d+)$`, "m").exec(metrics)?.[1] ?? 0);
    const refused = Number(/^sluice_http_connections_refused_total\{source="web"\} (\d+)$/m.exec(metrics)?.[1] ?? 0);
    const report = `RSS before ${before >> 10} MiB, peak ${hwm >> 10} MiB; legit ${legit} (${attempts.join(", ")}); flood ${JSON.stringify(counts)}; server answered 401: ${answered(401)}, 408: ${answered(408)}, 503: ${answered(503)}, refused ${refused} connections`;
    console.log(report);

    expect(hwm, report).toBeLessThan(RSS_LIMIT_KIB);
    expect(legit, report).toBe(202);
    expect(legitMs, report).toBeLessThan(5000);
    // No flood request was taken: each got 401 (bad signature) within the budget, 503 (a part of
    // its body over it), 408 (its last byte, held back until every body was sent, came after
    // body_timeout), or its connection was refused past max_connections (1024).
    expect(counts["202"], report).toBeUndefined();
    // (A refused attempt of the legitimate client counts as a refusal too.)
    const legitRefused = attempts.filter((a) => a.endsWith(": 0")).length;
    const refusals = answered(401) + answered(408) + answered(503) + refused;
    expect(refusals, report).toBeGreaterThanOrEqual(CONNECTIONS);
    expect(refusals, report).toBeLessThanOrEqual(CONNECTIONS + legitRefused);
    expect(answered(503), report).toBeGreaterThan(0);
  } finally {
    clearInterval(sampler);
    client.kill("SIGKILL");
  }
}, 90_000);
