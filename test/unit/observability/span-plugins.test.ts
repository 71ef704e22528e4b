/**
 * The CLI's sampler and id generator: the decisions of the SDK's `ParentBasedSampler` (default
 * delegates) and W3C-valid random ids.
 */
import { ROOT_CONTEXT, SpanKind, trace, TraceFlags, type Context } from "@opentelemetry/api";
import { AlwaysOffSampler, ParentBasedSampler, SamplingDecision, TraceIdRatioBasedSampler, type Sampler } from "@opentelemetry/sdk-trace-node";
import { describe, expect, it } from "vitest";
import { ParentOrRootSampler, PooledIdGenerator } from "../../../src/observability/span-plugins.js";

const TRACE_ID = "0af7651916cd43dd8448eb211c80319c";
const SPAN_ID = "b7ad6b7169203331";

function under(traceFlags: number, isRemote: boolean, traceId = TRACE_ID, spanId = SPAN_ID): Context {
  return trace.setSpanContext(ROOT_CONTEXT, { traceId, spanId, traceFlags, isRemote });
}

const decide = (sampler: Sampler, context: Context): SamplingDecision => sampler.shouldSample(context, TRACE_ID, "s", SpanKind.INTERNAL, {}, []).decision;

describe("ParentOrRootSampler", () => {
  const contexts: [string, Context][] = [
    ["a root", ROOT_CONTEXT],
    ["a sampled local parent", under(TraceFlags.SAMPLED, false)],
    ["an unsampled local parent", under(TraceFlags.NONE, false)],
    ["a sampled remote parent", under(TraceFlags.SAMPLED, true)],
    ["an unsampled remote parent", under(TraceFlags.NONE, true)],
    ["an all-zero trace id", under(TraceFlags.SAMPLED, true, "00000000000000000000000000000000")],
    ["an all-zero span id", under(TraceFlags.NONE, true, TRACE_ID, "0000000000000000")],
  ];

  it.each(contexts)("decides as ParentBasedSampler for %s, at ratio 1 and with a root sampler", (_, context) => {
    expect(decide(new ParentOrRootSampler(trace, undefined), context)).toBe(decide(new ParentBasedSampler({ root: new TraceIdRatioBasedSampler(1) }), context));
    expect(decide(new ParentOrRootSampler(trace, new AlwaysOffSampler()), context)).toBe(decide(new ParentBasedSampler({ root: new AlwaysOffSampler() }), context));
  });

  it("keeps every root at ratio 1 and follows a ratio sampler's decision otherwise", () => {
    expect(decide(new ParentOrRootSampler(trace, undefined), ROOT_CONTEXT)).toBe(SamplingDecision.RECORD_AND_SAMPLED);
    expect(decide(new ParentOrRootSampler(trace, new TraceIdRatioBasedSampler(0)), ROOT_CONTEXT)).toBe(SamplingDecision.NOT_RECORD);
  });
});

describe("PooledIdGenerator", () => {
  it("makes lowercase hex ids of 16 and 8 bytes, distinct, across refills of its pool", () => {
    const ids = new PooledIdGenerator();
    const traces = new Set<string>();
    const spans = new Set<string>();
    // 3,000 of each: 72,000 bytes, many refills of the 4 KiB pool.
    for (let i = 0; i < 3000; i++) {
      const t = ids.generateTraceId();
      const s = ids.generateSpanId();
      expect(t).toMatch(/^[0-9a-f]{32}$/);
      expect(s).toMatch(/^[0-9a-f]{16}$/);
      expect(t).not.toBe("0".repeat(32));
      expect(s).not.toBe("0".repeat(16));
      traces.add(t);
      spans.add(s);
    }
    expect(traces.size).toBe(3000);
    expect(spans.size).toBe(3000);
  });
});
