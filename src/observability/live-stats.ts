/**
 * The dashboard's live snapshot: a compact JSON view of the pipeline, computed from its metrics
 * registry and counters once per feed tick. Rates, the share of time spent in backpressure and
 * the latency quantiles are over the interval since the previous sample, so the dashboard shows
 * what happens now, not the run's average (the first sample, and one after a long time without
 * an open stream, do show an average).
 */
import type { MetricObjectWithValues, MetricValueWithName } from "prom-client";
import type { Readiness } from "../components/contracts.js";
import { METRIC, type Metrics } from "./metrics.js";

/** One source in a {@link LiveSnapshot}. */
export interface LiveSource {
  readonly name: string;
  readonly received: number;
  /** Records received per second over the last interval. */
  readonly rate: number;
  /** Seconds spent waiting for room in the buffer, in total. */
  readonly backpressure_seconds: number;
  /** Share of the last interval spent waiting for room (0..1; summed over the source's waiters, so capped at 1). */
  readonly backpressure: number;
}

/** One sink in a {@link LiveSnapshot}. */
export interface LiveSink {
  readonly name: string;
  readonly delivered: number;
  /** Records committed per second over the last interval. */
  readonly rate: number;
  readonly retried: number;
  /** Records retried per second over the last interval. */
  readonly retry_rate: number;
  readonly dead_lettered: number;
  /** Batches it may have in flight now (its lanes, or the adaptive limit). */
  readonly concurrency: number | null;
  readonly up: boolean;
  /** End-to-end latency (receipt to commit) of the records committed in the last interval, seconds; null when none were. */
  readonly p50: number | null;
  readonly p99: number | null;
}

/** What the dashboard's feed sends every second. */
export interface LiveSnapshot {
  /** When it was taken, ms since the epoch. */
  readonly t: number;
  readonly state: "starting" | "running" | "stopping" | "stopped";
  readonly ready: boolean;
  readonly problems: readonly string[];
  readonly totals: { received: number; delivered: number; dead_lettered: number; dropped: number; in_flight: number };
  readonly buffer: { records: number; bytes: number; max_records: number; max_bytes: number };
  readonly sources: readonly LiveSource[];
  readonly sinks: readonly LiveSink[];
  /** Dead letters by the sink or stage that gave up and the error code, in total. */
  readonly dead_letters: readonly { sink: string; code: string; count: number }[];
  /** Records dropped by policy, by reason, in total. */
  readonly dropped: Readonly<Record<string, number>>;
}

/** What {@link LiveStats} reads besides the metrics. */
export interface LiveStatsOptions {
  readonly metrics: Metrics;
  readonly readiness: () => Readiness;
  readonly state: () => LiveSnapshot["state"];
  readonly limits: { readonly records: number; readonly bytes: number };
  readonly now?: () => number;
}

type Values = readonly MetricValueWithName<string>[];

/** `n` rounded to `digits` decimals: the snapshot stays compact. */
const round = (n: number, digits: number) => Math.round(n * 10 ** digits) / 10 ** digits;
/** A latency in seconds to the microsecond, or null. */
const micros = (s: number | null) => (s === null ? null : round(s, 6));

/** Sums a metric's values by one label. */
function byLabel(values: Values | undefined, label: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const v of values ?? []) {
    const key = String(v.labels[label] ?? "");
    out.set(key, (out.get(key) ?? 0) + v.value);
  }
  return out;
}

/**
 * The `q` quantile of observations counted in cumulative buckets `(le, count)` (ascending, the
 * last `+Inf`), interpolated linearly inside its bucket as Prometheus' `histogram_quantile`
 * does; one past the last finite bound reads as that bound.
 */
export function bucketQuantile(q: number, buckets: readonly { le: number; count: number }[]): number | null {
  const total = buckets.at(-1)?.count ?? 0;
  if (total <= 0) return null;
  const rank = q * total;
  let lower = 0;
  let below = 0;
  for (const b of buckets) {
    if (b.count >= rank) {
      if (!Number.isFinite(b.le)) return lower;
      const inBucket = b.count - below;
      return inBucket <= 0 ? b.le : lower + ((b.le - lower) * (rank - below)) / inBucket;
    }
    lower = b.le;
    below = b.count;
  }
  return lower;
}

/** Takes {@link LiveSnapshot}s; keeps the previous sample for the per-interval figures. */
export class LiveStats {
  private readonly now: () => number;
  private previous: { at: number; received: Map<string, number>; delivered: Map<string, number>; retried: Map<string, number>; backpressure: Map<string, number>; latency: Map<string, Map<number, number>> } | undefined;

  constructor(private readonly o: LiveStatsOptions) {
    this.now = o.now ?? Date.now;
  }

  /** The pipeline now, with rates over the time since the previous call (the first: since the run started). */
  async sample(): Promise<LiveSnapshot> {
    const at = this.now();
    const json = (await this.o.metrics.registry.getMetricsAsJSON()) as MetricObjectWithValues<MetricValueWithName<string>>[];
    const metric = (name: string): Values | undefined => json.find((m) => m.name === name)?.values;
    const counts = this.o.metrics.snapshot();
    const received = byLabel(metric(METRIC.received), "source");
    const delivered = byLabel(metric(METRIC.delivered), "sink");
    const retried = byLabel(metric(METRIC.retried), "sink");
    const backpressure = byLabel(metric(METRIC.backpressure), "source");
    const concurrency = byLabel(metric(METRIC.concurrencyLimit), "sink");
    const up = byLabel(metric(METRIC.sinkUp), "sink");
    const latency = new Map<string, Map<number, number>>();
    for (const v of metric(METRIC.latency) ?? []) {
      if (v.metricName !== `${METRIC.latency}_bucket`) continue;
      const sink = String(v.labels.sink);
      const le = v.labels.le === "+Inf" ? Number.POSITIVE_INFINITY : Number(v.labels.le);
      let series = latency.get(sink);
      if (series === undefined) latency.set(sink, (series = new Map()));
      series.set(le, v.value);
    }
    const prev = this.previous;
    // The first sample (no stream was open before) covers the run so far.
    const seconds = prev === undefined ? this.o.metrics.summary().elapsed_seconds : (at - prev.at) / 1000;
    const rate = (now: number, before: number | undefined) => (seconds > 0 ? round(Math.max(0, now - (before ?? 0)) / seconds, 1) : 0);
    const readiness = this.o.readiness();

    const sources: LiveSource[] = [...received.keys()].sort().map((name) => ({
      name,
      received: received.get(name) ?? 0,
      rate: rate(received.get(name) ?? 0, prev?.received.get(name)),
      backpressure_seconds: round(backpressure.get(name) ?? 0, 3),
      backpressure: seconds > 0 ? round(Math.min(1, Math.max(0, (backpressure.get(name) ?? 0) - (prev?.backpressure.get(name) ?? 0)) / seconds), 3) : 0,
    }));
    const sinks: LiveSink[] = Object.entries(counts.sinks).map(([name, c]) => {
      const buckets = [...(latency.get(name) ?? new Map<number, number>())]
        .sort((a, b) => a[0] - b[0])
        .map(([le, count]) => ({ le, count: count - (prev?.latency.get(name)?.get(le) ?? 0) }));
      return {
        name,
        delivered: c.delivered,
        rate: rate(delivered.get(name) ?? 0, prev?.delivered.get(name)),
        retried: retried.get(name) ?? 0,
        retry_rate: rate(retried.get(name) ?? 0, prev?.retried.get(name)),
        dead_lettered: c.dead_lettered,
        concurrency: concurrency.get(name) ?? null,
        up: up.get(name) === 1,
        p50: micros(bucketQuantile(0.5, buckets)),
        p99: micros(bucketQuantile(0.99, buckets)),
      };
    });
    const deadLetters = (metric(METRIC.deadLettered) ?? []).map((v) => ({ sink: String(v.labels.sink), code: String(v.labels.code), count: v.value }));
    this.previous = { at, received, delivered, retried, backpressure, latency };
    return {
      t: at,
      state: this.o.state(),
      ready: readiness.ready,
      problems: readiness.problems,
      totals: { received: counts.received, delivered: counts.delivered, dead_lettered: counts.dead_lettered, dropped: counts.dropped, in_flight: counts.in_flight },
      buffer: { records: counts.buffer_records, bytes: counts.buffer_bytes, max_records: this.o.limits.records, max_bytes: this.o.limits.bytes },
      sources,
      sinks,
      dead_letters: deadLetters,
      dropped: Object.fromEntries(byLabel(metric(METRIC.dropped), "reason")),
    };
  }
}
