/**
 * A flood of ingest requests, as a process of its own so that the test's event loop (and its
 * legitimate client) is not the one writing gigabytes: `node --import tsx flood-client.ts <port>
 * <connections> <body bytes>`. Each connection sends its headers (a bogus HMAC signature with a
 * current timestamp) and all of its body but the last byte at once; once every connection's
 * writes left the process, the last bytes go, so no body can be checked before all are in.
 * Prints `flooding` once every connection is opened, then one JSON line counting the outcomes
 * (the status answered, or the connection's error code).
 */
import { connect } from "node:net";

const [port, connections, bodyBytes] = process.argv.slice(2).map(Number) as [number, number, number];
const body = Buffer.alloc(bodyBytes, 0x20);
const head =
  `POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: ${bodyBytes}\r\n` +
  `X-Sluice-Timestamp: ${Math.floor(Date.now() / 1000)}\r\nX-Sluice-Signature: sha256=${"0".repeat(64)}\r\n\r\n`;

const sockets = Array.from({ length: connections }, () => connect(port, "127.0.0.1"));
const outcomes = sockets.map(
  (socket) =>
    new Promise<string>((resolve) => {
      let received = "";
      const status = () => /^HTTP\/1\.1 (\d{3})/.exec(received)?.[1];
      socket.on("data", (d: Buffer) => (received += d.toString("latin1", 0, Math.min(d.length, 64))));
      socket.on("error", (err: NodeJS.ErrnoException) => resolve(status() ?? err.code ?? err.message));
      socket.on("close", () => resolve(status() ?? "closed without an answer"));
    }),
);
const flushed = sockets.map(
  (socket) =>
    new Promise<void>((resolve) => {
      socket.on("error", () => resolve());
      socket.write(head);
      socket.write(body.subarray(0, bodyBytes - 1), () => resolve());
    }),
);
process.stdout.write("flooding\n");
void Promise.all(flushed).then(() => {
  for (const s of sockets) if (!s.destroyed) s.write(body.subarray(bodyBytes - 1));
});
const counts: Record<string, number> = {};
for (const o of await Promise.all(outcomes)) counts[o] = (counts[o] ?? 0) + 1;
process.stdout.write(`${JSON.stringify(counts)}\n`);
