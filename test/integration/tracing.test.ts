/**
 * Tracing end to end: the real CLI with `observability.tracing` and an http source, exporting to
 * an OTLP/HTTP receiver this test runs (a node:http server taking `POST /v1/traces`, the JSON
 * encoding the exporter sends). A request's `traceparent` must parent its chunk's spans.
 */
import { randomBytes } from "node:crypto";
import { writeFile } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { afterAll, afterEach, beforeEach, expect, it } from "vitest";
import { killClis, startCli } from "../helpers/cli.js";
import { freePort, send, waitUntil } from "../helpers/http-pipeline.js";
import { makeTempDir } from "../helpers/source-harness.js";

/** An OTLP attribute value as the JSON encoding spells it (64-bit integers may come as strings). */
interface AnyValue {
  stringValue?: string;
  intValue?: number | string;
  boolValue?: boolean;
  doubleValue?: number;
}
interface KeyValue {
  key: string;
  value: AnyValue;
}
interface OtlpSpan {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  attributes?: KeyValue[];
  links?: { traceId: string; spanId: string }[];
}
interface ExportRequest {
  resourceSpans: { resource?: { attributes?: KeyValue[] }; scopeSpans: { scope?: { name: string }; spans: OtlpSpan[] }[] }[];
}

/** A span as the assertions read it: attributes as plain values. */
interface Received {
  readonly traceId: string;
  readonly spanId: string;
  readonly parentSpanId: string | undefined;
  readonly name: string;
  readonly scope: string | undefined;
  readonly service: unknown;
  readonly attributes: Record<string, unknown>;
}

function plain(v: AnyValue): unknown {
  if (v.intValue !== undefined) return Number(v.intValue);
  return v.stringValue ?? v.boolValue ?? v.doubleValue;
}

function attributes(list: readonly KeyValue[] | undefined): Record<string, unknown> {
  return Object.fromEntries((list ?? []).map((kv) => [kv.key, plain(kv.value)]));
}

/** Starts the receiver; every span of every export lands in `spans`. */
async function startReceiver(): Promise<{ server: Server; port: number; spans: Received[]; contentTypes: string[] }> {
  const spans: Received[] = [];
  const contentTypes: string[] = [];
  const server = createServer((req, res) => {
    if (req.method !== "POST" || req.url !== "/v1/traces") {
      res.writeHead(404).end();
      return;
    }
    contentTypes.push(req.headers["content-type"] ?? "");
    const parts: Buffer[] = [];
    req.on("data", (d: Buffer) => parts.push(d));
    req.on("end", () => {
      const body = JSON.parse(Buffer.concat(parts).toString("utf8")) as ExportRequest;
      for (const rs of body.resourceSpans) {
        const service = attributes(rs.resource?.attributes)["service.name"];
        for (const ss of rs.scopeSpans) {
          for (const s of ss.spans) {
            spans.push({ traceId: s.traceId, spanId: s.spanId, parentSpanId: s.parentSpanId || undefined, name: s.name, scope: ss.scope?.name, service, attributes: attributes(s.attributes) });
          }
        }
      }
      res.writeHead(200, { "content-type": "application/json" }).end("{}");
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return { server, port: (server.address() as AddressInfo).port, spans, contentTypes };
}

let dir: { path: string; remove: () => Promise<void> };
let receiver: Awaited<ReturnType<typeof startReceiver>>;

beforeEach(async () => {
  dir = await makeTempDir("sluice-tracing-");
  receiver = await startReceiver();
});
afterEach(async () => {
  await new Promise<void>((resolve) => receiver.server.close(() => resolve()));
  await dir.remove();
});
afterAll(() => killClis());

it("exports receive, transform and sink spans over OTLP/HTTP; a request's traceparent is their parent", async () => {
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const configFile = join(dir.path, "pipeline.yaml");
  const summaryFile = join(dir.path, "summary.json");
  await writeFile(
    configFile,
    `data_dir: ${join(dir.path, "data")}
observability:
  log_level: warn
  tracing: { otlp_endpoint: "http://127.0.0.1:${receiver.port}", service_name: sluice-tracing-test }
sources:
  web: { type: http, listen: "127.0.0.1:${port}" }
sinks:
  out:
    type: file
    path: ${join(dir.path, "out.ndjson")}
    batch: { max_wait: 10ms }
`,
  );
  const cli = startCli(configFile, summaryFile, dir.path);
  const alive = () => {
    if (cli.process.exitCode !== null || cli.process.signalCode !== null) throw new Error(`the CLI exited:\n${cli.output()}`);
  };
  await waitUntil(
    "the http source to be ready",
    () => {
      alive();
      return send(`${base}/health/ready`).then(
        (a) => a.status === 200,
        () => false,
      );
    },
    30_000,
  );

  const traceId = randomBytes(16).toString("hex");
  const parentId = randomBytes(8).toString("hex");
  const post = (n: number, headers: Record<string, string>) =>
    send(`${base}/v1/events`, {
      method: "POST",
      headers: { "content-type": "application/json", ...headers },
      body: JSON.stringify(Array.from({ length: n }, (_, i) => ({ i }))),
    });
  const traced = await post(3, { traceparent: `00-${traceId}-${parentId}-01` });
  expect(traced.status, traced.text).toBe(202);
  // Answered 202 once delivered: the second request's records never share a batch with the first's.
  const untraced = await post(2, {});
  expect(untraced.status, untraced.text).toBe(202);

  // The SDK exports what is left when the run ends.
  cli.process.kill("SIGTERM");
  expect(await cli.exited, cli.output()).toEqual({ code: 0, signal: null });
  const spans = receiver.spans;
  expect(receiver.contentTypes.every((t) => t.startsWith("application/json"))).toBe(true);
  expect(spans.every((s) => s.scope === "sluice" && s.service === "sluice-tracing-test")).toBe(true);

  // The request with a traceparent: one chunk, so one receive, one transform and one write span.
  const inTrace = spans.filter((s) => s.traceId === traceId);
  const byName = (list: readonly Received[], name: string) => list.filter((s) => s.name === name);
  const [receive, ...moreReceives] = byName(inTrace, "sluice.source.receive");
  expect(moreReceives).toEqual([]);
  expect(receive).toMatchObject({ parentSpanId: parentId, attributes: { "sluice.source": "web", "sluice.records": 3, "sluice.outcome": "accepted" } });
  expect(byName(inTrace, "sluice.transform")).toEqual([
    expect.objectContaining({ parentSpanId: receive!.spanId, attributes: { "sluice.records.in": 3, "sluice.records.out": 3, "sluice.records.filtered": 0, "sluice.records.dead_lettered": 0 } }),
  ]);
  expect(byName(inTrace, "sluice.sink.write")).toEqual([
    expect.objectContaining({ parentSpanId: receive!.spanId, attributes: { "sluice.sink": "out", "sluice.records": 3, "sluice.attempt": 1, "sluice.chunks": 1, "sluice.outcome": "ok" } }),
  ]);
  expect(inTrace).toHaveLength(3);

  // The request without one: a trace of its own, rooted at its receive span.
  const others = spans.filter((s) => s.traceId !== traceId);
  const [root] = byName(others, "sluice.source.receive");
  expect(root).toMatchObject({ parentSpanId: undefined, attributes: { "sluice.records": 2 } });
  expect(others.map((s) => [s.name, s.traceId, s.parentSpanId ?? null]).sort()).toEqual(
    [
      ["sluice.source.receive", root!.traceId, null],
      ["sluice.transform", root!.traceId, root!.spanId],
      ["sluice.sink.write", root!.traceId, root!.spanId],
    ].sort(),
  );
}, 60_000);
