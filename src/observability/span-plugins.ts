/**
 * The sampler and id generator the CLI's tracer provider is given instead of the SDK's
 * `ParentBasedSampler` and `RandomIdGenerator`: the same decisions and the same kind of ids, with
 * less work per span. In a run of a few seconds most spans are made before V8 has optimized the
 * code that makes them, so what a span costs is close to how much code it runs (see
 * docs/architecture.md, "What a span costs").
 *
 * Loaded only by `tracing-sdk.ts`, inside `startTracing` (the type imports below are erased).
 */
import { randomFillSync } from "node:crypto";
import type { Attributes, Context, Link, SpanKind } from "@opentelemetry/api";
import type { IdGenerator, Sampler, SamplingResult } from "@opentelemetry/sdk-trace-node";

/** `SamplingDecision` of the API: its values, not its enum object (this module loads no package). */
const NOT_RECORD = 0;
const RECORD_AND_SAMPLED = 2;
const SAMPLED_FLAG = 1;
const INVALID_TRACE_ID = "00000000000000000000000000000000";
const INVALID_SPAN_ID = "0000000000000000";

/** What the parent-based sampler needs of the API: reading a context's span context. */
export interface SpanContextReader {
  getSpanContext(context: Context): { traceId: string; spanId: string; traceFlags: number } | undefined;
}

/**
 * The SDK's `ParentBasedSampler` with its default delegates: a span under a valid parent is sampled
 * when the parent is (remote or local alike), a root span as `root` decides, or always when `root`
 * is undefined (sample ratio 1). The parent's validity is checked by comparing with the all-zero
 * ids, not by the API's hex regular expressions: a context comes from a span of this SDK or from
 * the W3C propagator, both of which only make well-formed ids.
 */
export class ParentOrRootSampler implements Sampler {
  private static readonly sampled: SamplingResult = Object.freeze({ decision: RECORD_AND_SAMPLED });
  private static readonly dropped: SamplingResult = Object.freeze({ decision: NOT_RECORD });

  constructor(
    private readonly trace: SpanContextReader,
    private readonly root: Sampler | undefined,
  ) {}

  shouldSample(context: Context, traceId: string, spanName: string, spanKind: SpanKind, attributes: Attributes, links: Link[]): SamplingResult {
    const parent = this.trace.getSpanContext(context);
    if (parent === undefined || parent.traceId === INVALID_TRACE_ID || parent.spanId === INVALID_SPAN_ID) {
      return this.root === undefined ? ParentOrRootSampler.sampled : this.root.shouldSample(context, traceId, spanName, spanKind, attributes, links);
    }
    return (parent.traceFlags & SAMPLED_FLAG) !== 0 ? ParentOrRootSampler.sampled : ParentOrRootSampler.dropped;
  }

  toString(): string {
    return `ParentOrRoot{root=${this.root === undefined ? "AlwaysOn" : this.root.toString()}}`;
  }
}

/** Random bytes drawn at once, enough for 170 spans with new traces or 512 child spans. */
const POOL_BYTES = 4096;

/**
 * Random trace and span ids as lowercase hex, cut from a pool of random bytes that is refilled
 * when used up (`crypto.randomFillSync`, where the SDK calls `Math.random` four times per trace id
 * and writes each number into a buffer). An all-zero id (invalid in W3C trace context) is drawn
 * again.
 */
export class PooledIdGenerator implements IdGenerator {
  private readonly pool = Buffer.allocUnsafe(POOL_BYTES);
  private used = POOL_BYTES;

  generateTraceId = (): string => this.draw(16, INVALID_TRACE_ID);

  generateSpanId = (): string => this.draw(8, INVALID_SPAN_ID);

  private draw(bytes: number, invalid: string): string {
    for (;;) {
      if (this.used + bytes > POOL_BYTES) {
        randomFillSync(this.pool);
        this.used = 0;
      }
      const id = this.pool.toString("hex", this.used, this.used + bytes);
      this.used += bytes;
      if (id !== invalid) return id;
    }
  }
}
