import { describe, expect, it } from "vitest";
import { silentLogger } from "../../../src/core/events.js";
import { bucketQuantile, LiveStats } from "../../../src/observability/live-stats.js";
import { Metrics } from "../../../src/observability/metrics.js";

describe("bucketQuantile", () => {
  it.each([
    { q: 0.5, buckets: [{ le: 1, count: 0 }, { le: 2, count: 10 }, { le: Infinity, count: 10 }], want: 1.5 },
    { q: 0.99, buckets: [{ le: 1, count: 50 }, { le: 2, count: 100 }, { le: Infinity, count: 100 }], want: 1.98 },
    { q: 0.5, buckets: [{ le: 0.1, count: 10 }, { le: Infinity, count: 10 }], want: 0.05 },
    { q: 0.99, buckets: [{ le: 1, count: 1 }, { le: Infinity, count: 10 }], want: 1 },
    { q: 0.5, buckets: [{ le: 1, count: 0 }, { le: Infinity, count: 0 }], want: null },
  ])("q=$q over $buckets.length buckets is $want", ({ q, buckets, want }) => {
    const got = bucketQuantile(q, buckets);
    if (want === null) expect(got).toBeNull();
    else expect(got).toBeCloseTo(want, 9);
  });
});

describe("LiveStats", () => {
  it("rates, backpressure share and latency quantiles cover the interval since the previous sample", async () => {
    const at = { now: 1_000_000 };
    const metrics = new Metrics(["db"], silentLogger, () => at.now);
    const stats = new LiveStats({ metrics, readiness: () => ({ ready: true, problems: [] }), state: () => "running", limits: { records: 100, bytes: 1000 }, now: () => at.now });
    metrics.handle({ type: "pipeline_run", phase: "started" });
    metrics.handle({ type: "records_received", source: "gen", count: 100, bytes: 1000 });
    metrics.handle({ type: "records_delivered", sink: "db", records: Array.from({ length: 100 }, () => ({ receivedAt: at.now - 10_000 })), alreadyPresent: 0, now: at.now });
    at.now += 2000;
    const first = await stats.sample();
    // The first sample covers the run so far: 2 s.
    expect(first.sources).toEqual([{ name: "gen", received: 100, rate: 50, backpressure_seconds: 0, backpressure: 0 }]);
    expect(first.sinks[0]!.p50).toBeGreaterThan(5);

    metrics.handle({ type: "records_received", source: "gen", count: 300, bytes: 3000 });
    metrics.handle({ type: "backpressure", source: "gen", seconds: 0.25 });
    metrics.handle({ type: "records_retried", sink: "db", count: 20, code: "ERR_SINK_WRITE", message: "down", delayMs: 10, firstRecordId: "r-1" });
    metrics.handle({ type: "records_delivered", sink: "db", records: Array.from({ length: 200 }, () => ({ receivedAt: at.now - 20 })), alreadyPresent: 0, now: at.now });
    metrics.handle({ type: "records_dead_lettered", sink: "db", code: "ERR_X", count: 3, firstRecordId: "r-2", message: "bad" });
    at.now += 1000;
    const s = await stats.sample();
    expect(s.sources[0]).toEqual({ name: "gen", received: 400, rate: 300, backpressure_seconds: 0.25, backpressure: 0.25 });
    const db = s.sinks[0]!;
    expect(db).toMatchObject({ name: "db", rate: 200, retried: 20, retry_rate: 20, up: false, concurrency: null });
    // Only this interval's records (20 ms old), not the first hundred (10 s old).
    expect(db.p50).toBeGreaterThan(0.01);
    expect(db.p99).toBeLessThanOrEqual(0.025);
    expect(s.dead_letters).toEqual([{ sink: "db", code: "ERR_X", count: 3 }]);
    expect(s.buffer).toEqual({ records: 0, bytes: 0, max_records: 100, max_bytes: 1000 });
  });
});
