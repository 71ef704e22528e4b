import { ProxyTracer, trace } from "@opentelemetry/api";
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor, type ReadableSpan } from "@opentelemetry/sdk-trace-node";
import { afterEach, describe, expect, it, vi } from "vitest";
import type { Transform } from "../../../src/components/contracts.js";
import type { JsonObject } from "../../../src/core/record.js";
import { ATTR, SPAN } from "../../../src/core/tracing.js";
import { makePipeline, malformed, MemorySink, type MemoryInput } from "../../helpers/memory.js";

/** 10 inputs: `r-0`..`r-8` payloads and one unparsable line (the 4th). */
function inputs(): MemoryInput[] {
  const out: MemoryInput[] = Array.from({ length: 9 }, (_, i): JsonObject => ({ id: `r-${i}`, v: i }));
  out.splice(3, 0, malformed("{not json"));
  return out;
}

/** Drops records whose `v` is 5. */
const dropFive: Transform = { apply: (p) => (p.v === 5 ? null : p) };

afterEach(() => {
  trace.disable();
  vi.restoreAllMocks();
});

describe("tracing", () => {
  it("makes no span, not even a no-op one, when no SDK is installed", async () => {
    const startSpan = vi.spyOn(ProxyTracer.prototype, "startSpan");
    const startActiveSpan = vi.spyOn(ProxyTracer.prototype, "startActiveSpan");
    const tp = makePipeline({ inputs: inputs(), chunkSize: 4, transforms: [{ stage: "transform:module", transform: dropFive }], sinks: [new MemorySink({ schedule: ["retryable"] })] });
    expect(await tp.run()).toEqual({ tag: "completed" });
    expect(tp.sink.committed.size).toBe(8);
    expect(startSpan).not.toHaveBeenCalled();
    expect(startActiveSpan).not.toHaveBeenCalled();
  });

  it("with an SDK installed: a receive and a transform span per chunk, a write span per batch attempt, never per record", async () => {
    const exporter = new InMemorySpanExporter();
    trace.setGlobalTracerProvider(new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] }));
    // 10 inputs in chunks of 4: 4 + 4 + 2. Batches of up to 5 records: one holds records of two chunks.
    const tp = makePipeline({
      inputs: inputs(),
      chunkSize: 4,
      batch: { maxRecords: 5 },
      transforms: [{ stage: "transform:module", transform: dropFive }],
      sinks: [new MemorySink({ schedule: ["retryable"] })],
    });
    expect(await tp.run()).toEqual({ tag: "completed" });
    const spans = exporter.getFinishedSpans();
    const named = (name: string) => spans.filter((s) => s.name === name);

    const receives = named(SPAN.receive);
    expect(receives.map((s) => s.attributes[ATTR.records])).toEqual([4, 4, 2]);
    expect(receives.every((s) => s.attributes[ATTR.source] === "src" && s.attributes[ATTR.outcome] === "accepted" && s.parentSpanContext === undefined)).toBe(true);

    const transforms = named(SPAN.transform);
    expect(transforms).toHaveLength(3);
    transforms.forEach((t, i) => expect(t.parentSpanContext?.spanId).toBe(receives[i]!.spanContext().spanId));
    const counts = transforms.map((t) => [t.attributes[ATTR.recordsIn], t.attributes[ATTR.recordsOut], t.attributes[ATTR.filtered], t.attributes[ATTR.deadLettered]]);
    // Chunk 1 holds the malformed line; chunk 2 holds r-5, which the transform drops.
    expect(counts).toEqual([
      [4, 3, 0, 1],
      [4, 3, 1, 0],
      [2, 2, 0, 0],
    ]);

    const writes = named(SPAN.sinkWrite);
    expect(writes.map((w) => [w.attributes[ATTR.records], w.attributes[ATTR.attempt], w.attributes[ATTR.outcome]])).toEqual([
      [5, 1, "retry"],
      [5, 2, "ok"],
      [3, 1, "ok"],
    ]);
    expect(writes[0]!.attributes[ATTR.errorCode]).toBeTypeOf("string");
    expect(writes.every((w) => w.attributes[ATTR.sink] === "sink")).toBe(true);
    // The first batch holds records of chunks 1 and 2: a root span linked to both receive spans.
    const linked = (w: ReadableSpan) => w.links.map((l) => l.context.spanId);
    expect(writes[0]!.parentSpanContext).toBeUndefined();
    expect(linked(writes[0]!)).toEqual([receives[0]!.spanContext().spanId, receives[1]!.spanContext().spanId]);
    expect(linked(writes[1]!)).toEqual(linked(writes[0]!));
    // The last batch holds r-6 (chunk 2), r-7 and r-8 (chunk 3).
    expect(linked(writes[2]!)).toEqual([receives[1]!.spanContext().spanId, receives[2]!.spanContext().spanId]);

    // Per chunk and per batch: 3 + 3 + 3 spans for 10 records.
    expect(spans).toHaveLength(9);
  });
});
