/**
 * The CLI's OTLP/JSON span processor against a node:http receiver this test runs: what one export
 * request holds, batching, retries of a 503, giving up, and the bounded queue.
 */
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { ROOT_CONTEXT, SpanKind, SpanStatusCode, trace, TraceFlags, type Tracer } from "@opentelemetry/api";
import { resourceFromAttributes } from "@opentelemetry/resources";
import { BasicTracerProvider } from "@opentelemetry/sdk-trace-node";
import { afterEach, describe, expect, it } from "vitest";
import { OTLP_DEFAULTS, OtlpJsonSpanProcessor, type OtlpProcessorOptions } from "../../../src/observability/otlp-span-processor.js";

interface Received {
  readonly body: ExportRequest;
  readonly contentType: string | undefined;
}
interface ExportRequest {
  resourceSpans: {
    resource: { attributes: unknown[] };
    scopeSpans: { scope: { name: string; version?: string }; spans: Record<string, unknown>[] }[];
  }[];
}

let server: Server | undefined;
let provider: BasicTracerProvider | undefined;

afterEach(async () => {
  await provider?.shutdown();
  provider = undefined;
  await new Promise<void>((resolve) => (server === undefined ? resolve() : server.close(() => resolve())));
  server = undefined;
});

/** A receiver answering each request with the next status of `statuses` (then 200), keeping every body. */
async function receiver(statuses: number[] = []): Promise<{ url: string; received: Received[]; requests: () => number }> {
  const received: Received[] = [];
  let requests = 0;
  server = createServer((req, res) => {
    const parts: Buffer[] = [];
    req.on("data", (d: Buffer) => parts.push(d));
    req.on("end", () => {
      requests++;
      const status = statuses.shift() ?? 200;
      if (status === 200) received.push({ body: JSON.parse(Buffer.concat(parts).toString("utf8")) as ExportRequest, contentType: req.headers["content-type"] });
      res.writeHead(status, { "content-type": "application/json" }).end("{}");
    });
  });
  await new Promise<void>((resolve) => server!.listen(0, "127.0.0.1", resolve));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1/traces`, received, requests: () => requests };
}

function tracerWith(options: Partial<OtlpProcessorOptions> & { url: string }): { tracer: Tracer; processor: OtlpJsonSpanProcessor; errors: string[] } {
  const errors: string[] = [];
  const processor = new OtlpJsonSpanProcessor({ ...OTLP_DEFAULTS, retryDelayMs: 10, onError: (message, detail) => errors.push(`${message} ${JSON.stringify(detail)}`), ...options });
  provider = new BasicTracerProvider({ resource: resourceFromAttributes({ "service.name": "svc" }), spanProcessors: [processor] });
  return { tracer: provider.getTracer("sluice", "1.2.3"), processor, errors };
}

const spansOf = (r: Received) => r.body.resourceSpans.flatMap((rs) => rs.scopeSpans.flatMap((ss) => ss.spans));

describe("OtlpJsonSpanProcessor", () => {
  it("sends each ended span as OTLP/JSON: ids in hex, times as nanosecond strings, typed attributes, links, status", async () => {
    const r = await receiver();
    const { tracer, processor } = tracerWith({ url: r.url });
    const parent = tracer.startSpan("parent", { root: true });
    const child = tracer.startSpan(
      "child",
      { kind: SpanKind.PRODUCER, startTime: [1_700_000_000, 5], attributes: { s: "a\"b", i: 3, d: 1.5, b: true, list: ["x", "y"], big: 2 ** 60 }, links: [{ context: parent.spanContext() }] },
      trace.setSpan(ROOT_CONTEXT, parent),
    );
    child.setStatus({ code: SpanStatusCode.ERROR, message: "it broke" });
    child.end([1_700_000_001, 123_000_000]);
    parent.end();
    await processor.forceFlush();

    expect(r.received).toHaveLength(1);
    expect(r.received[0]!.contentType).toBe("application/json");
    const [rs] = r.received[0]!.body.resourceSpans;
    expect(rs!.resource.attributes).toEqual([{ key: "service.name", value: { stringValue: "svc" } }]);
    expect(rs!.scopeSpans[0]!.scope).toEqual({ name: "sluice", version: "1.2.3" });
    const [c, p] = rs!.scopeSpans[0]!.spans;
    expect(c).toMatchObject({
      traceId: parent.spanContext().traceId,
      spanId: child.spanContext().spanId,
      parentSpanId: parent.spanContext().spanId,
      name: "child",
      kind: SpanKind.PRODUCER + 1,
      startTimeUnixNano: "1700000000000000005",
      endTimeUnixNano: "1700000001123000000",
      attributes: [
        { key: "s", value: { stringValue: 'a"b' } },
        { key: "i", value: { intValue: 3 } },
        { key: "d", value: { doubleValue: 1.5 } },
        { key: "b", value: { boolValue: true } },
        { key: "list", value: { arrayValue: { values: [{ stringValue: "x" }, { stringValue: "y" }] } } },
        // Past 2^53 a number is no exact integer: sent as a double, never as a rounded int64.
        { key: "big", value: { doubleValue: 2 ** 60 } },
      ],
      status: { code: SpanStatusCode.ERROR, message: "it broke" },
      links: [{ traceId: parent.spanContext().traceId, spanId: parent.spanContext().spanId, attributes: [], flags: TraceFlags.SAMPLED | 0x100 }],
      flags: TraceFlags.SAMPLED | 0x100,
    });
    expect(p!.startTimeUnixNano).toMatch(/^\d{19}$/);
    expect(p).toMatchObject({ name: "parent", status: { code: SpanStatusCode.UNSET }, links: [], events: [] });
    expect(p!.parentSpanId).toBeUndefined();
  });

  it("grows a batch past its first buffer, multi-byte text intact", async () => {
    const r = await receiver();
    const { tracer, processor } = tracerWith({ url: r.url });
    const long = "é€😀".repeat(40_000);
    for (let i = 0; i < 3; i++) tracer.startSpan(`s${i}`, { attributes: { long } }).end();
    await processor.forceFlush();
    const spans = r.received.flatMap(spansOf);
    expect(spans.map((s) => s.name)).toEqual(["s0", "s1", "s2"]);
    expect(spans.every((s) => (s.attributes as { value: { stringValue: string } }[])[0]!.value.stringValue === long)).toBe(true);
  });

  it("cuts batches at maxBatchSpans and sends the rest when the scheduled delay passes", async () => {
    const r = await receiver();
    const { tracer } = tracerWith({ url: r.url, maxBatchSpans: 4, scheduledDelayMs: 50 });
    for (let i = 0; i < 10; i++) tracer.startSpan(`s${i}`).end();
    await waitFor(() => r.received.length === 3);
    expect(r.received.map((x) => spansOf(x).length)).toEqual([4, 4, 2]);
    expect(r.received.flatMap(spansOf).map((s) => s.name)).toEqual(Array.from({ length: 10 }, (_, i) => `s${i}`));
  });

  it("does not send a partial batch when a request comes back: it waits for the batch to fill or the delay", async () => {
    const r = await receiver();
    const { tracer, processor } = tracerWith({ url: r.url, maxBatchSpans: 4, scheduledDelayMs: 60_000 });
    for (let i = 0; i < 5; i++) tracer.startSpan(`s${i}`).end();
    await waitFor(() => r.received.length === 1);
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(r.requests()).toBe(1);
    await processor.forceFlush();
    expect(r.received.map((x) => spansOf(x).length)).toEqual([4, 1]);
  });

  it("retries a 503, and gives a batch up (reported, not thrown) after maxAttempts", async () => {
    const r = await receiver([503, 503, 503, 503, 400]);
    const { tracer, processor, errors } = tracerWith({ url: r.url, maxAttempts: 3 });
    tracer.startSpan("lost").end();
    await processor.forceFlush();
    expect(r.requests()).toBe(3);
    expect(errors).toEqual([expect.stringContaining("HTTP 503")]);
    // 503 again, then a 400: not retried.
    tracer.startSpan("rejected").end();
    await processor.forceFlush();
    expect(r.requests()).toBe(5);
    expect(errors[1]).toContain("HTTP 400");
    tracer.startSpan("kept").end();
    await processor.forceFlush();
    expect(r.received.flatMap(spansOf).map((s) => s.name)).toEqual(["kept"]);
  });

  it("drops spans beyond maxQueuedSpans until the export thread reports some sent, and says how many", async () => {
    const r = await receiver();
    const { tracer, processor, errors } = tracerWith({ url: r.url, maxBatchSpans: 2, maxQueuedSpans: 4 });
    // Spans count until the thread reports their batch sent (the one in flight too): the first 4
    // fit, the other 5, ended before any report can come back, do not.
    for (let i = 0; i < 9; i++) tracer.startSpan(`s${i}`).end();
    await processor.forceFlush();
    expect(r.received.flatMap(spansOf).map((s) => s.name)).toEqual(["s0", "s1", "s2", "s3"]);
    expect(errors).toEqual([expect.stringMatching(/dropped.*"spans":5/)]);
    // Room again once they are sent.
    tracer.startSpan("later").end();
    await processor.forceFlush();
    expect(r.received.flatMap(spansOf).map((s) => s.name)).toContain("later");
  });

  it("gives an unreachable collector up and keeps no span", async () => {
    const r = await receiver();
    await new Promise<void>((resolve) => server!.close(() => resolve()));
    server = undefined;
    const { tracer, processor, errors } = tracerWith({ url: r.url, maxAttempts: 2 });
    tracer.startSpan("nowhere").end();
    await processor.forceFlush();
    expect(errors).toEqual([expect.stringContaining("ECONNREFUSED")]);
  });
});

async function waitFor(ok: () => boolean): Promise<void> {
  for (let i = 0; i < 200 && !ok(); i++) await new Promise((resolve) => setTimeout(resolve, 10));
  expect(ok()).toBe(true);
}
