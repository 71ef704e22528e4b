/**
 * The http source's bounds on what it holds, in one process (http -> memory buffer -> SQLite):
 * `max_connections` (refused connections counted), the body budget (503 + Retry-After before a
 * body is read, or as a chunked one runs past it), its share for bodies whose signature is not
 * checked yet, and the HMAC timestamp checked from the headers.
 */
import { createHmac } from "node:crypto";
import { connect, type Socket } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { definition as http } from "../../src/sources/http-options.js";
import { rawRequest, send, startHttpPipeline, waitUntil, type HttpPipeline } from "../helpers/http-pipeline.js";

const TOKEN = "token-0123456789abcdef";
const SECRET = "hmac-secret-0123456789";
const KiB = 1024;

let q: HttpPipeline | undefined;
const sockets: Socket[] = [];

afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy();
  await q?.close();
  q = undefined;
});

/** Opens a connection and sends `head` and `bodyBytes` bytes of body (and nothing more); resolves once connected. */
async function hold(port: number, head: string, bodyBytes = 0): Promise<Socket> {
  const s = connect(port, "127.0.0.1");
  s.on("error", () => {});
  sockets.push(s);
  await new Promise<void>((resolve) => s.once("connect", () => resolve()));
  s.write(head);
  if (bodyBytes > 0) s.write(Buffer.alloc(bodyBytes, 0x20));
  return s;
}

/** Everything the server sends on `s` until it closes the connection, and when it closed (ms since the epoch). */
function untilClosed(s: Socket): Promise<{ text: string; at: number }> {
  let text = "";
  s.on("data", (d: Buffer) => (text += d.toString()));
  return new Promise((resolve) => s.once("close", () => resolve({ text, at: Date.now() })));
}

const signedHead = (length: number) => postHead(length, `X-Sluice-Timestamp: ${Math.floor(Date.now() / 1000)}\r\nX-Sluice-Signature: sha256=${"0".repeat(64)}\r\n`);

/** Headers and body of a request signed with {@link SECRET}. */
function signed(body: string): { headers: Record<string, string>; body: string } {
  const ts = Math.floor(Date.now() / 1000);
  const sig = createHmac("sha256", SECRET).update(`${ts}.`).update(body).digest("hex");
  return { headers: { "content-type": "application/json", "x-sluice-timestamp": String(ts), "x-sluice-signature": `sha256=${sig}` }, body };
}

const postHead = (length: number, extra = "") => `POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${length}\r\n${extra}\r\n`;

function metric(text: string, name: string): number {
  return Number(new RegExp(`^${name} (\\d+)$`, "m").exec(text)?.[1] ?? 0);
}

describe("http source: max_connections", () => {
  it("past max_connections a new connection is closed at once and counted; the others are served", async () => {
    q = await startHttpPipeline({ source: { max_connections: 4 } });
    const open: Socket[] = [];
    // The pipeline's own readiness probe may hold one connection; fill up to the limit.
    for (let i = 0; i < 4; i++) open.push(await hold(q.port, ""));
    const extra = await hold(q.port, "GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n");
    await new Promise<void>((resolve) => extra.once("close", () => resolve()));
    for (const s of open) s.destroy();
    await waitUntil("the connections to close", async () => (await send(`${q!.base}/health/live`).then((a) => a.status, () => 0)) === 200);
    const m = await send(`${q.base}/metrics`);
    expect(metric(m.text, 'sluice_http_connections_refused_total\\{source="web"\\}')).toBeGreaterThanOrEqual(1);
  });
});

describe("http source: the body budget", () => {
  it("a body arriving when the bytes held are at the budget is answered 503 + Retry-After at its first part; one that fits later is taken", async () => {
    q = await startHttpPipeline({ source: { max_body: "40KiB", max_body_bytes_in_flight: "64KiB" } });
    // Two bodies of 32 KiB received (of 40 KiB declared) hold the whole budget.
    await hold(q.port, postHead(40 * KiB), 32 * KiB);
    const second = await hold(q.port, postHead(40 * KiB), 32 * KiB);
    await new Promise((r) => setTimeout(r, 100));
    const refused = await rawRequest(`${q.base}/v1/events`, { headers: { "content-type": "application/json", "content-length": 16 * KiB }, chunks: ["{"] });
    expect(refused.status, refused.text).toBe(503);
    expect(refused.headers["retry-after"]).toBe("1");
    expect(refused.body).toMatchObject({ error: "too many request bodies are being received; retry after the Retry-After delay" });
    // Only the `{` was written when the answer came: the body was not waited for.
    expect(refused.written).toBe(1);
    second.destroy();
    await new Promise((r) => setTimeout(r, 50));
    const ok = await send(`${q.base}/v1/events`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ id: "fits", pad: "x".repeat(16 * KiB) }) });
    expect(ok.status, ok.text).toBe(202);
  });

  it("a chunked body is counted as it arrives: 503 once the budget runs out mid-body", async () => {
    q = await startHttpPipeline({ source: { max_body: "32KiB", max_body_bytes_in_flight: "48KiB" } });
    await hold(q.port, postHead(32 * KiB), 24 * KiB);
    await new Promise((r) => setTimeout(r, 100));
    const a = await rawRequest(`${q.base}/v1/events`, { headers: { "content-type": "application/json" }, chunks: ['{"m":"'], fillTo: 30 * KiB, filler: Buffer.alloc(4 * KiB, 0x61) });
    expect(a.status, a.text).toBe(503);
    expect(a.headers["retry-after"]).toBe("1");
    expect(a.headers.connection).toBe("close");
  });

  it("bodies whose signature is not checked yet hold at most half the budget: a bearer-token request still gets in", async () => {
    q = await startHttpPipeline({ source: { max_body: "32KiB", max_body_bytes_in_flight: "64KiB", auth: { tokens: [TOKEN], hmac: { secrets: [SECRET] } } } });
    // 32 KiB less a byte received: the share for unverified bodies (half of 64 KiB) is all but spent.
    const held = await hold(q.port, signedHead(32 * KiB), 32 * KiB - 1);
    await new Promise((r) => setTimeout(r, 100));
    const another = await rawRequest(`${q.base}/v1/events`, { headers: { "content-type": "application/json", "content-length": 1024, "x-sluice-timestamp": String(Math.floor(Date.now() / 1000)), "x-sluice-signature": `sha256=${"0".repeat(64)}` }, chunks: ['{"pad":"xxxxxxxx'] });
    expect(another.status, another.text).toBe(503);
    const token = await send(`${q.base}/v1/events`, { method: "POST", headers: { "content-type": "application/json", authorization: `Bearer ${TOKEN}` }, body: JSON.stringify({ id: "token", pad: "x".repeat(20 * KiB) }) });
    expect(token.status, token.text).toBe(202);
    // Once the signed share is free again, a valid signature passes, computed as the body streamed in.
    held.destroy();
    await new Promise((r) => setTimeout(r, 50));
    const ok = await send(`${q.base}/v1/events`, { method: "POST", ...signed(JSON.stringify({ id: "signed" })) });
    expect(ok.status, ok.text).toBe(202);
  });

  it("the HMAC timestamp is checked from the headers: a stale one is answered 401 before the body is sent", async () => {
    q = await startHttpPipeline({ source: { auth: { hmac: { secrets: [SECRET] } } } });
    const a = await rawRequest(`${q.base}/v1/events`, {
      headers: { "content-type": "application/json", "content-length": 512 * KiB, "x-sluice-timestamp": String(Math.floor(Date.now() / 1000) - 3600), "x-sluice-signature": `sha256=${"0".repeat(64)}` },
      chunks: ["{"],
    });
    expect(a.status, a.text).toBe(401);
    expect(a.body).toMatchObject({ error: "signature timestamp outside the replay window of 300 s" });
    expect(a.written).toBe(1);
  });

  it("by default the budget is a quarter of the buffer's max_bytes, never below two bodies of max_body", async () => {
    const MiB = 1024 * KiB;
    const third = async (p: HttpPipeline) => {
      await hold(p.port, postHead(MiB), MiB - 1);
      await hold(p.port, postHead(MiB), MiB - 1);
      await new Promise((r) => setTimeout(r, 300));
      return (await send(`${p.base}/v1/events`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ pad: "x".repeat(512 * KiB) }) })).status;
    };
    // 4 MiB / 4 = 1 MiB, raised to 2 x max_body = 2 MiB: two bodies of 1 MiB (less a byte each) fill it.
    q = await startHttpPipeline({ buffer: { maxRecords: 1000, maxBytes: 4 * MiB } });
    expect(await third(q)).toBe(503);
    await q.close();
    // 16 MiB / 4 = 4 MiB: room for a third.
    q = await startHttpPipeline({ buffer: { maxRecords: 1000, maxBytes: 16 * MiB } });
    expect(await third(q)).toBe(202);
  });

  it("a declared Content-Length reserves nothing: 17 sockets declaring 1 MiB and sending nothing (no auth) do not keep out a request", async () => {
    // The default budget is 16 MiB: reserved by declared length, 16 such sockets held all of it.
    q = await startHttpPipeline();
    for (let i = 0; i < 17; i++) await hold(q.port, postHead(1024 * KiB));
    await new Promise((r) => setTimeout(r, 100));
    const ok = await send(`${q.base}/v1/events`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ id: "unauthenticated", pad: "x".repeat(512 * KiB) }) });
    expect(ok.status, ok.text).toBe(202);
  });

  it("with HMAC only, 9 sockets declaring 1 MiB under a bogus signature and sending nothing do not keep out a correctly signed request", async () => {
    // Unverified bodies may hold half of 16 MiB: reserved by declared length, 8 such sockets held it.
    q = await startHttpPipeline({ source: { auth: { hmac: { secrets: [SECRET] } } } });
    for (let i = 0; i < 9; i++) await hold(q.port, signedHead(1024 * KiB));
    await new Promise((r) => setTimeout(r, 100));
    const ok = await send(`${q.base}/v1/events`, { method: "POST", ...signed(JSON.stringify({ id: "signed", pad: "x".repeat(512 * KiB) })) });
    expect(ok.status, ok.text).toBe(202);
  });

  it("a body that stalls is answered 408 after body_timeout and its connection closed, giving its bytes back", async () => {
    q = await startHttpPipeline({ source: { max_body: "32KiB", max_body_bytes_in_flight: "32KiB", body_timeout: "300ms" } });
    const started = Date.now();
    const stalled = await hold(q.port, postHead(32 * KiB), 31 * KiB);
    const { text, at } = await untilClosed(stalled);
    expect(text).toMatch(/^HTTP\/1\.1 408 /);
    expect(text).toContain('{"error":"no part of the body came within 300 ms"}');
    expect(at - started).toBeGreaterThanOrEqual(250);
    // request_timeout (30 s) would have held the whole budget until then.
    expect(at - started).toBeLessThan(5000);
    const ok = await send(`${q.base}/v1/events`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ id: "after", pad: "x".repeat(16 * KiB) }) });
    expect(ok.status, ok.text).toBe(202);
  });

  it("max_body_bytes_in_flight below max_body is a config error", () => {
    const r = http.options.safeParse({ max_body: "1MiB", max_body_bytes_in_flight: "512KiB" });
    expect(r.success).toBe(false);
    expect(r.error?.issues[0]).toMatchObject({ path: ["max_body_bytes_in_flight"], message: expect.stringMatching(/^must be at least max_body/) });
  });
});
