/**
 * The HTTP section's baseline (bench/http.ts): a bare `node:http` server doing the least an ingest
 * endpoint must do, with no durability. It reads each `POST /v1/events` body, parses every NDJSON
 * line with `JSON.parse` (a line that is not a JSON object answers 400), and answers
 * `202 {"accepted":N}` at once, keeping nothing. Keep-alive and timeouts are Node's defaults.
 *
 * argv[2]: `{"port":N}` (0 picks a free port). Once listening it prints `LISTENING <port>` on
 * stdout; on SIGTERM it stops listening, closes its connections and exits 0.
 */
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";

const { port } = JSON.parse(process.argv[2] ?? '{"port":0}') as { port: number };

function answer(res: ServerResponse, status: number, body: object): void {
  const json = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(json) }).end(json);
}

/** Parses every non-empty line; the count of objects, or the 1-based number of the first bad line as a negative. */
function countObjects(text: string): number {
  let n = 0;
  let line = 0;
  let start = 0;
  while (start < text.length) {
    let end = text.indexOf("\n", start);
    if (end === -1) end = text.length;
    line++;
    const chunk = text.slice(start, end);
    start = end + 1;
    if (chunk.trim() === "") continue;
    let value: unknown;
    try {
      value = JSON.parse(chunk);
    } catch {
      return -line;
    }
    if (typeof value !== "object" || value === null || Array.isArray(value)) return -line;
    n++;
  }
  return n;
}

const server = createServer((req: IncomingMessage, res: ServerResponse) => {
  if (req.method !== "POST" || req.url !== "/v1/events") {
    req.resume();
    answer(res, 404, { error: "POST /v1/events only" });
    return;
  }
  const chunks: Buffer[] = [];
  req.on("data", (chunk: Buffer) => chunks.push(chunk));
  req.on("end", () => {
    const n = countObjects(Buffer.concat(chunks).toString("utf8"));
    if (n < 0) answer(res, 400, { error: "line is not a JSON object", line: -n });
    else answer(res, 202, { accepted: n });
  });
});

server.listen(port, "127.0.0.1", () => {
  process.stdout.write(`LISTENING ${(server.address() as AddressInfo).port}\n`);
});

process.on("SIGTERM", () => {
  server.close(() => process.exit(0));
  server.closeAllConnections();
});
