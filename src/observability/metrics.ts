/**
 * The one module that spells metric names. It turns internal events into Prometheus metrics
 * (prom-client) and into the plain counters the progress line and the run summary read, so all
 * three always agree.
 */
import { Counter, Gauge, Histogram, Registry } from "prom-client";
import type { InternalEvent, Logger } from "../core/events.js";
import { WeightedHistogram } from "./weighted-histogram.js";

/** Counters of one sink, as the summary reports them. */
export interface SinkCounts {
  delivered: number;
  dead_lettered: number;
}

/** Everything counted so far. `received == delivered + dead_lettered + dropped + in_flight` holds at every moment. */
export interface CountsSnapshot {
  received: number;
  delivered: number;
  dead_lettered: number;
  dropped: number;
  retried: number;
  /** Records of an earlier run replayed from the durable buffer; counted in `received` too. */
  replayed: number;
  in_flight: number;
  buffer_records: number;
  buffer_bytes: number;
  sinks: Record<string, SinkCounts>;
}

/** The run summary written by `--summary-json`, in the shape DESIGN.md fixes. */
export interface RunSummary {
  records: { received: number; delivered: number; dead_lettered: number; dropped: number; retried: number };
  sinks: Record<string, SinkCounts>;
  elapsed_seconds: number;
}

const LATENCY_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];
const ERROR_LOG_INTERVAL_MS = 5000;

/**
 * Metrics of one pipeline. Create it with the sink names so the summary lists every sink even when
 * it received nothing; pass {@link handle} as the pipeline's `emit`.
 */
export class Metrics {
  readonly registry = new Registry();
  private readonly counts: CountsSnapshot;
  private bufferProbe: () => { records: number; bytes: number } = () => ({ records: 0, bytes: 0 });
  private readonly lastErrorLog = new Map<string, { at: number; suppressed: number }>();

  private readonly received = new Counter({ name: "sluice_records_received_total", help: "Records received from sources.", labelNames: ["source"], registers: [this.registry] });
  private readonly delivered = new Counter({ name: "sluice_records_delivered_total", help: "Records committed by a sink.", labelNames: ["sink"], registers: [this.registry] });
  private readonly deadLettered = new Counter({ name: "sluice_records_dead_lettered_total", help: "Records written to the dead-letter sink, by the sink or stage that gave up and the error code.", labelNames: ["sink", "code"], registers: [this.registry] });
  private readonly dropped = new Counter({ name: "sluice_records_dropped_total", help: "Records dropped by an explicit policy.", labelNames: ["reason"], registers: [this.registry] });
  private readonly retried = new Counter({ name: "sluice_records_retried_total", help: "Record write attempts repeated after a retryable failure.", labelNames: ["sink"], registers: [this.registry] });
  private readonly late = new Counter({ name: "sluice_records_late_total", help: "Records committed but not applied because a record of the same key at least as new was there first (upsert_latest).", labelNames: ["sink"], registers: [this.registry] });
  private readonly backpressure = new Counter({ name: "sluice_backpressure_seconds_total", help: "Time sources spent waiting for room in the buffer.", labelNames: ["source"], registers: [this.registry] });
  private readonly batchDuration = new Histogram({ name: "sluice_sink_batch_duration_seconds", help: "Duration of one batch write attempt.", labelNames: ["sink"], buckets: LATENCY_BUCKETS, registers: [this.registry] });
  private readonly concurrencyLimit = new Gauge({ name: "sluice_sink_concurrency_limit", help: "Batches a sink may have in flight at once: its lanes, or the current adaptive limit.", labelNames: ["sink"], registers: [this.registry] });
  private readonly replayed = new Counter({ name: "sluice_buffer_replayed_records_total", help: "Records of an earlier run replayed from the durable buffer on start.", registers: [this.registry] });
  private readonly corrupt = new Counter({ name: "sluice_buffer_corrupt_entries_total", help: "Torn or corrupt durable buffer entries found on start and moved to quarantine.", labelNames: ["reason"], registers: [this.registry] });
  private readonly httpRequests = new Counter({ name: "sluice_http_requests_total", help: "Ingest requests answered by an http source, by status code.", labelNames: ["source", "status"], registers: [this.registry] });
  private readonly httpRefused = new Counter({ name: "sluice_http_connections_refused_total", help: "Connections an http source closed at once because it had max_connections open.", labelNames: ["source"], registers: [this.registry] });
  /** Since when each sink has been failing without one success (ms), for readiness. */
  private readonly failingSince = new Map<string, number>();
  private readonly latency = new WeightedHistogram("sluice_end_to_end_latency_seconds", "Time from a record's receipt to its commit by a sink.", "sink", LATENCY_BUCKETS, this.registry);

  constructor(
    sinkNames: readonly string[],
    private readonly logger: Logger,
    private readonly now: () => number = Date.now,
  ) {
    this.counts = {
      received: 0,
      delivered: 0,
      dead_lettered: 0,
      dropped: 0,
      retried: 0,
      replayed: 0,
      in_flight: 0,
      buffer_records: 0,
      buffer_bytes: 0,
      sinks: Object.fromEntries(sinkNames.map((n) => [n, { delivered: 0, dead_lettered: 0 }])),
    };
    const probe = () => this.bufferProbe();
    new Gauge({ name: "sluice_buffer_records", help: "Records held by the buffer, including those being transformed or written.", registers: [this.registry], collect() { this.set(probe().records); } });
    new Gauge({ name: "sluice_buffer_bytes", help: "Estimated bytes held by the buffer.", registers: [this.registry], collect() { this.set(probe().bytes); } });
  }

  /** Reads the buffer's fill when metrics are scraped or a snapshot is taken. */
  watchBuffer(probe: () => { records: number; bytes: number }): void {
    this.bufferProbe = probe;
  }

  /** The pipeline's event sink. Cheap: it runs once per batch, plus once per record for the latency histogram. */
  readonly handle = (event: InternalEvent): void => {
    const c = this.counts;
    switch (event.type) {
      case "records_received":
        c.received += event.count;
        this.received.inc({ source: event.source }, event.count);
        break;
      case "records_delivered": {
        const sink = c.sinks[event.sink];
        if (sink) sink.delivered += event.records.length;
        this.failingSince.delete(event.sink);
        this.delivered.inc({ sink: event.sink }, event.records.length);
        this.observeLatency(event.sink, event.records, event.now);
        break;
      }
      case "records_dead_lettered": {
        const sink = c.sinks[event.sink];
        if (sink) sink.dead_lettered += event.count;
        this.deadLettered.inc({ sink: event.sink, code: event.code }, event.count);
        break;
      }
      case "records_dropped":
        c.dropped += event.count;
        this.dropped.inc({ reason: event.reason }, event.count);
        break;
      case "records_retried":
        c.retried += event.count;
        this.markFailing(event.sink);
        this.retried.inc({ sink: event.sink }, event.count);
        this.logRateLimited(`retry:${event.sink}:${event.code}`, { sink: event.sink, code: event.code, err: event.message, records: event.count, delay_ms: event.delayMs }, "write failed; retrying");
        break;
      case "records_late":
        this.late.inc({ sink: event.sink }, event.count);
        break;
      case "records_completed":
        c.delivered += event.delivered;
        c.dead_lettered += event.deadLettered;
        break;
      case "sink_batch_written":
        this.batchDuration.observe({ sink: event.sink }, event.seconds);
        break;
      case "concurrency_limit":
        this.concurrencyLimit.set({ sink: event.sink }, event.limit);
        break;
      case "backpressure":
        this.backpressure.inc({ source: event.source }, event.seconds);
        break;
      case "http_request":
        this.httpRequests.inc({ source: event.source, status: event.status });
        break;
      case "http_connection_refused":
        this.httpRefused.inc({ source: event.source });
        break;
      case "sink_connected":
        this.failingSince.delete(event.sink);
        break;
      case "buffer_replayed":
        c.received += event.records;
        c.replayed += event.records;
        this.replayed.inc(event.records);
        this.logger.info({ records: event.records, chunks: event.chunks }, "replaying records the durable buffer kept from an earlier run");
        break;
      case "buffer_corrupt":
        this.corrupt.inc({ reason: event.reason }, event.entries);
        break;
      case "component_error":
        if (event.component in c.sinks) this.markFailing(event.component);
        this.logRateLimited(`error:${event.component}:${event.code}`, { component: event.component, code: event.code, err: event.message }, "component error");
        break;
    }
  };

  /** One weighted observation per run of records received together (one chunk), not one per record. */
  private observeLatency(sink: string, records: readonly { readonly receivedAt: number }[], now: number): void {
    let i = 0;
    while (i < records.length) {
      const at = records[i]!.receivedAt;
      let j = i + 1;
      while (j < records.length && records[j]!.receivedAt === at) j++;
      this.latency.observe(sink, (now - at) / 1000, j - i);
      i = j;
    }
  }

  /** The sinks that have been failing (retrying, or not connecting) for at least `ms` without one success. */
  failingSinks(ms: number): string[] {
    const now = this.now();
    return [...this.failingSince].filter(([, since]) => now - since >= ms).map(([sink]) => sink);
  }

  private markFailing(sink: string): void {
    if (!this.failingSince.has(sink)) this.failingSince.set(sink, this.now());
  }

  /** The counters right now. */
  snapshot(): CountsSnapshot {
    const c = this.counts;
    const buffer = this.bufferProbe();
    return {
      ...c,
      in_flight: c.received - c.delivered - c.dead_lettered - c.dropped,
      buffer_records: buffer.records,
      buffer_bytes: buffer.bytes,
      sinks: Object.fromEntries(Object.entries(c.sinks).map(([k, v]) => [k, { ...v }])),
    };
  }

  /** The run summary in DESIGN.md's shape. */
  summary(elapsedSeconds: number): RunSummary {
    const s = this.snapshot();
    return {
      records: { received: s.received, delivered: s.delivered, dead_lettered: s.dead_lettered, dropped: s.dropped, retried: s.retried },
      sinks: s.sinks,
      elapsed_seconds: Math.round(elapsedSeconds * 1000) / 1000,
    };
  }

  /** Logs at warn level at most once per interval per key, saying how many were suppressed in between. */
  private logRateLimited(key: string, obj: Record<string, unknown>, msg: string): void {
    const now = this.now();
    const last = this.lastErrorLog.get(key);
    if (last && now - last.at < ERROR_LOG_INTERVAL_MS) {
      last.suppressed++;
      return;
    }
    this.logger.warn(last?.suppressed ? { ...obj, suppressed: last.suppressed } : obj, msg);
    this.lastErrorLog.set(key, { at: now, suppressed: 0 });
  }
}
