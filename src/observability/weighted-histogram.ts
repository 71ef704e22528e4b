/**
 * A Prometheus histogram that takes an observation with a weight, registered in a prom-client
 * registry like any metric. The end-to-end latency histogram needs it: records of one chunk share
 * `receivedAt` and records of one batch share their commit time, so a batch costs one observation
 * per chunk in it instead of one per record (per-record `observe` was a tenth of the hot path).
 */
import type { Registry } from "prom-client";

interface Series {
  readonly counts: number[];
  sum: number;
  count: number;
}

/** The value shape prom-client's registry formats. */
interface MetricValue {
  readonly value: number;
  readonly labels: Record<string, string | number>;
  readonly metricName: string;
}

/** A histogram with one label, observed as (value, weight). */
export class WeightedHistogram {
  readonly type = "histogram";
  readonly aggregator = "sum";
  private readonly series = new Map<string, Series>();

  constructor(
    readonly name: string,
    readonly help: string,
    private readonly labelName: string,
    private readonly upperBounds: readonly number[],
    registry: Registry,
  ) {
    registry.registerMetric(this as never);
  }

  /** Counts `weight` observations of `value` for label value `label`. */
  observe(label: string, value: number, weight: number): void {
    let s = this.series.get(label);
    if (s === undefined) {
      s = { counts: new Array<number>(this.upperBounds.length).fill(0), sum: 0, count: 0 };
      this.series.set(label, s);
    }
    const i = this.upperBounds.findIndex((b) => value <= b);
    if (i >= 0) s.counts[i]! += weight;
    s.sum += value * weight;
    s.count += weight;
  }

  /** What prom-client's registry calls to render the metric. */
  get(): { name: string; help: string; type: string; aggregator: string; values: MetricValue[] } {
    const values: MetricValue[] = [];
    for (const [label, s] of this.series) {
      let cumulative = 0;
      this.upperBounds.forEach((le, i) => {
        cumulative += s.counts[i]!;
        values.push({ value: cumulative, labels: { le, [this.labelName]: label }, metricName: `${this.name}_bucket` });
      });
      values.push({ value: s.count, labels: { le: "+Inf", [this.labelName]: label }, metricName: `${this.name}_bucket` });
      values.push({ value: s.sum, labels: { [this.labelName]: label }, metricName: `${this.name}_sum` });
      values.push({ value: s.count, labels: { [this.labelName]: label }, metricName: `${this.name}_count` });
    }
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values };
  }

  /** prom-client calls this on `registry.resetMetrics()`. */
  reset(): void {
    this.series.clear();
  }
}
