/**
 * Answers given before the body is read (413 over the limit, 401, 415, 503 when the body budget
 * is spent) must reach the client as answers, not as a reset connection: sluice sends the answer,
 * reads and discards the rest of the body (up to a bound), then closes. Read here by Node's
 * fetch, undici and curl, 100 times out of 100 where the issue saw 28. The server is a `sluice
 * run` child: in one process the client happened to read each answer before the reset came.
 */
import { execFile } from "node:child_process";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { request } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { killClis, startCli, type Cli } from "../helpers/cli.js";
import { freePort, waitUntil } from "../helpers/http-pipeline.js";
import { makeTempDir } from "../helpers/source-harness.js";

const TOKEN = "token-0123456789abcdef";
const MiB = 1024 * 1024;
/** Five times the 1 MiB limit, valid JSON all along (so only its size is wrong). */
const BIG = Buffer.from(`{"m":"${"x".repeat(5 * MiB - 8)}"}`);
const TRIES = 100;

const run = promisify(execFile);
let dir: { path: string; remove: () => Promise<void> };
let bigFile: string;
let cli: Cli;
let base: string;

beforeAll(async () => {
  dir = await makeTempDir("sluice-early-");
  bigFile = join(dir.path, "big.json");
  await writeFile(bigFile, BIG);
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  const config = join(dir.path, "pipeline.yaml");
  await writeFile(
    config,
    `data_dir: ${join(dir.path, "data")}
observability: { log_level: warn }
sources:
  web: { type: http, listen: "127.0.0.1:${port}", auth: { tokens: ["${TOKEN}"] } }
sinks:
  out: { type: blackhole }
`,
  );
  cli = startCli(config, join(dir.path, "summary.json"), dir.path);
  await waitUntil(
    "sluice to listen",
    () => {
      if (cli.process.exitCode !== null) throw new Error(`sluice exited: ${cli.output()}`);
      return fetch(`${base}/health/live`).then((r) => r.ok, () => false);
    },
    30_000,
  );
}, 40_000);

afterAll(async () => {
  killClis();
  await dir?.remove();
});

const headers = (h: Record<string, string> = {}) => ({ "content-type": "application/json", authorization: `Bearer ${TOKEN}`, ...h });

/** Runs `attempt` `n` times, `parallel` at a time; the outcomes (a status, or the error's code) counted. */
async function tally(n: number, parallel: number, attempt: () => Promise<number>): Promise<Record<string, number>> {
  const counts: Record<string, number> = {};
  let next = 0;
  await Promise.all(
    Array.from({ length: parallel }, async () => {
      while (next < n) {
        next++;
        const outcome = await attempt().then(String, (err: Error & { cause?: { code?: string } }) => err.cause?.code ?? err.message);
        counts[outcome] = (counts[outcome] ?? 0) + 1;
      }
    }),
  );
  return counts;
}

const fetchStatus = (init: RequestInit) => fetch(`${base}/v1/events`, { method: "POST", ...init }).then(async (r) => (await r.text(), r.status));

describe("http source: answers before the body reach the client", () => {
  it(`a 5 MiB body against the 1 MiB limit: Node's fetch reads 413, ${TRIES} of ${TRIES}`, async () => {
    expect(await tally(TRIES, 2, () => fetchStatus({ headers: headers(), body: BIG }))).toEqual({ 413: TRIES });
  });

  it(`the same with undici's request: 413, ${TRIES} of ${TRIES}`, async () => {
    const counts = await tally(TRIES, 2, async () => {
      const r = await request(`${base}/v1/events`, { method: "POST", headers: headers(), body: BIG });
      await r.body.text();
      return r.statusCode;
    });
    expect(counts).toEqual({ 413: TRIES });
  });

  /** curl POSTs the 5 MiB file with {@link headers} (`h` replacing some; an empty value, as `Expect`, removes curl's own). */
  const curl = async (h: Record<string, string> = {}) => {
    const args = Object.entries(headers(h)).flatMap(([k, v]) => ["-H", v === "" ? `${k}:` : `${k}: ${v}`]);
    const { stdout } = await run("curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", ...args, "--data-binary", `@${bigFile}`, `${base}/v1/events`]);
    return { code: Number(stdout) };
  };

  it(`the same with curl: 413, ${TRIES} of ${TRIES}, with Expect: 100-continue (curl's default: answered without asking for the body) and without (the body is sent, read and discarded)`, async () => {
    expect(await tally(TRIES, 4, async () => (await curl()).code)).toEqual({ 413: TRIES });
    expect(await tally(TRIES, 4, async () => (await curl({ expect: "" })).code)).toEqual({ 413: TRIES });
  });

  it("a chunked body (no Content-Length) found over the limit while streaming: fetch reads 413 every time", async () => {
    const stream = () =>
      new ReadableStream<Uint8Array>({
        start(c) {
          for (let at = 0; at < BIG.length; at += 256 * 1024) c.enqueue(BIG.subarray(at, at + 256 * 1024));
          c.close();
        },
      });
    const counts = await tally(20, 2, () => fetchStatus({ headers: headers(), body: stream(), duplex: "half" } as RequestInit));
    expect(counts).toEqual({ 413: 20 });
  });

  it("401 (wrong token) and 415 (wrong type) are answered from the headers and read by fetch, undici and curl every time, with a 5 MiB body in flight", async () => {
    expect(await tally(50, 2, () => fetchStatus({ headers: headers({ authorization: `Bearer ${TOKEN}-wrong` }), body: BIG }))).toEqual({ 401: 50 });
    expect(await tally(50, 2, () => fetchStatus({ headers: headers({ "content-type": "text/plain" }), body: BIG }))).toEqual({ 415: 50 });
    const undiciStatus = async (h: Record<string, string>) => {
      const r = await request(`${base}/v1/events`, { method: "POST", headers: headers(h), body: BIG });
      await r.body.text();
      return r.statusCode;
    };
    expect(await tally(20, 2, () => undiciStatus({ authorization: `Bearer ${TOKEN}-wrong` }))).toEqual({ 401: 20 });
    expect(await tally(20, 2, () => undiciStatus({ "content-type": "text/plain" }))).toEqual({ 415: 20 });
    for (const expect100 of [{}, { expect: "" }] as Record<string, string>[]) {
      expect(await tally(20, 4, async () => (await curl({ authorization: `Bearer ${TOKEN}-wrong`, ...expect100 })).code)).toEqual({ 401: 20 });
      expect(await tally(20, 4, async () => (await curl({ "content-type": "text/plain", ...expect100 })).code)).toEqual({ 415: 20 });
    }
    // curl streaming the body chunked, found over the limit as it arrives.
    expect(await tally(20, 4, async () => (await curl({ "transfer-encoding": "chunked", expect: "" })).code)).toEqual({ 413: 20 });
    // The connection still serves after all that.
    expect(await fetchStatus({ headers: headers(), body: JSON.stringify({ ok: true }) })).toBe(202);
  });
});
