/**
 * The one module that spells metric names. It turns internal events into Prometheus metrics
 * (prom-client) and into the plain counters the progress line and the run summary read, so all
 * three always agree.
 */
import { createRequire } from "node:module";
import type * as Prom from "prom-client";
import { formatSeconds } from "../core/clock.js";
import type { InternalEvent, Logger } from "../core/events.js";
import { WeightedHistogram } from "./weighted-histogram.js";

const require = createRequire(import.meta.url);

// prom-client's index also loads its default process metrics, push gateway and cluster aggregator,
// and through them @opentelemetry/api, node:http and node:cluster: about 40 ms of every start for
// code sluice never calls. These files hold the classes themselves, the very objects the index
// exports (test/unit/observability/metrics.test.ts checks that they are).
const Registry = require("prom-client/lib/registry") as typeof Prom.Registry;
const Counter = require("prom-client/lib/counter") as typeof Prom.Counter;
const Gauge = require("prom-client/lib/gauge") as typeof Prom.Gauge;
const Histogram = require("prom-client/lib/histogram") as typeof Prom.Histogram;

/**
 * Names of the metrics that other modules read back from the registry (the dashboard's live
 * snapshot): spelled here only.
 */
export const METRIC = {
  received: "sluice_records_received_total",
  delivered: "sluice_records_delivered_total",
  deadLettered: "sluice_records_dead_lettered_total",
  dropped: "sluice_records_dropped_total",
  retried: "sluice_records_retried_total",
  backpressure: "sluice_backpressure_seconds_total",
  concurrencyLimit: "sluice_sink_concurrency_limit",
  sinkUp: "sluice_sink_up",
  latency: "sluice_end_to_end_latency_seconds",
} as const;

/**
 * Counters of one sink, as the summary reports them. `delivered == new + already_present`:
 * `already_present` are the records the sink found already stored (see `WriteResult.alreadyPresent`).
 */
export interface SinkCounts {
  delivered: number;
  new: number;
  already_present: number;
  dead_lettered: number;
}

/** Everything counted so far. `received == delivered + dead_lettered + dropped + quarantined + in_flight` holds at every moment. */
export interface CountsSnapshot {
  received: number;
  delivered: number;
  /** Of `delivered`: records every sink already held (a rerun's redeliveries); the rest were stored new in at least one sink. */
  already_present: number;
  dead_lettered: number;
  dropped: number;
  retried: number;
  /** Records of an earlier run replayed from the durable buffer; counted in `received` too. */
  replayed: number;
  /** Records received and never delivered because their durable buffer entry failed its checksum when read back (quarantined). */
  quarantined: number;
  /** Durable buffer entries quarantined or found missing, on start or while running (whatever their records). */
  corrupt_entries: number;
  in_flight: number;
  buffer_records: number;
  buffer_bytes: number;
  sinks: Record<string, SinkCounts>;
}

/**
 * The run summary written by `--summary-json`, in the shape DESIGN.md fixes, plus the split of
 * `delivered` into `new` and `already_present` (per record for `records`, per sink for `sinks`).
 * `records.quarantined` is there only when a durable buffer quarantined records of this run.
 */
export interface RunSummary {
  records: { received: number; delivered: number; new: number; already_present: number; dead_lettered: number; dropped: number; retried: number; quarantined?: number };
  sinks: Record<string, SinkCounts>;
  elapsed_seconds: number;
}

/**
 * A sink that is down: `connecting` (it has not connected yet, or its connect attempts fail) or
 * `retrying` (writes fail and are retried), since when (ms) and the last error's message.
 */
/**
 * How long after a batch gave up (dead-lettered after its retries) a new failure of the same sink
 * still counts as the same outage: longer than a batch takes to fill and fail again under traffic,
 * short enough that an idle sink's old failure is forgotten.
 */
const GAVE_UP_MEMORY_MS = 10_000;

interface SinkDown {
  readonly sink: string;
  readonly state: "connecting" | "retrying";
  readonly since: number;
  readonly message: string;
}

/** The metrics of one kind of connected component (sources or sinks) that {@link Metrics} updates alike. */
interface ConnectionMetrics {
  readonly attempts: Prom.Counter;
  readonly up: Prom.Gauge;
  readonly down: { delete(name: string): boolean };
}

/** Whether a store (the durable buffer, the dead-letter store) can write: its gauge 1 or 0, and why its latest write failed while writes fail (for readiness). */
class Writable {
  error: string | undefined;

  constructor(private readonly gauge: Prom.Gauge) {
    gauge.set(1);
  }

  failed(why: string): void {
    this.error = why;
    this.gauge.set(0);
  }

  recovered(): void {
    this.error = undefined;
    this.gauge.set(1);
  }
}

const LATENCY_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

/**
 * Metrics of one pipeline. Create it with the sink names so the summary lists every sink even when
 * it received nothing; pass {@link handle} as the pipeline's `emit`.
 */
export class Metrics {
  readonly registry = new Registry();
  private readonly counts: CountsSnapshot;
  private bufferProbe: () => { records: number; bytes: number } = () => ({ records: 0, bytes: 0 });

  private readonly received = new Counter({ name: METRIC.received, help: "Records received from sources.", labelNames: ["source"], registers: [this.registry] });
  private readonly delivered = new Counter({ name: METRIC.delivered, help: "Records committed by a sink.", labelNames: ["sink"], registers: [this.registry] });
  private readonly alreadyPresent = new Counter({ name: "sluice_records_already_present_total", help: "Records committed by a sink that it already held (redeliveries its idempotent write absorbed); counted in delivered too.", labelNames: ["sink"], registers: [this.registry] });
  private readonly deadLettered = new Counter({ name: METRIC.deadLettered, help: "Records written to the dead-letter sink, by the sink or stage that gave up and the error code.", labelNames: ["sink", "code"], registers: [this.registry] });
  private readonly dropped = new Counter({ name: METRIC.dropped, help: "Records dropped by an explicit policy.", labelNames: ["reason"], registers: [this.registry] });
  private readonly retried = new Counter({ name: METRIC.retried, help: "Record write attempts repeated after a retryable failure.", labelNames: ["sink"], registers: [this.registry] });
  private readonly late = new Counter({ name: "sluice_records_late_total", help: "Records committed but not applied because a record of the same key at least as new was there first (upsert_latest).", labelNames: ["sink"], registers: [this.registry] });
  private readonly backpressure = new Counter({ name: METRIC.backpressure, help: "Time sources spent waiting for room in the buffer.", labelNames: ["source"], registers: [this.registry] });
  private readonly batchDuration = new Histogram({ name: "sluice_sink_batch_duration_seconds", help: "Duration of one batch write attempt.", labelNames: ["sink"], buckets: LATENCY_BUCKETS, registers: [this.registry] });
  private readonly concurrencyLimit = new Gauge({ name: METRIC.concurrencyLimit, help: "Batches a sink may have in flight at once: its lanes, or the current adaptive limit.", labelNames: ["sink"], registers: [this.registry] });
  private readonly replayed = new Counter({ name: "sluice_buffer_replayed_records_total", help: "Records of an earlier run replayed from the durable buffer on start.", registers: [this.registry] });
  private readonly corrupt = new Counter({ name: "sluice_buffer_corrupt_entries_total", help: "Torn, corrupt or missing durable buffer entries, found on start or read back while running; corrupt bytes are moved to quarantine.", labelNames: ["reason"], registers: [this.registry] });
  private readonly bufferWrites = new Writable(new Gauge({ name: "sluice_buffer_writable", help: "1 while the buffer can write; 0 while the durable buffer's writes fail (disk full, I/O error) and /health/ready says not ready.", registers: [this.registry] }));
  private bufferReadError: string | undefined;
  private readonly deadLetterWrites = new Writable(new Gauge({ name: "sluice_dead_letter_writable", help: "1 while dead letters can be written; 0 while dead-letter writes fail (retried) and /health/ready says not ready.", registers: [this.registry] }));
  private readonly httpRequests = new Counter({ name: "sluice_http_requests_total", help: "Ingest requests answered by an http source, by status code.", labelNames: ["source", "status"], registers: [this.registry] });
  /** When the pipeline started and finished running (ms, on `now`), for the summary's elapsed time. */
  private run: { startedAt?: number; doneAt?: number } = {};
  private readonly connectAttempts = new Counter({ name: "sluice_sink_connect_attempts_total", help: "Attempts to connect a sink, by outcome (connected, failed).", labelNames: ["sink", "outcome"], registers: [this.registry] });
  private readonly sinkUp = new Gauge({ name: METRIC.sinkUp, help: "1 once a sink has connected, 0 while it is connecting.", labelNames: ["sink"], registers: [this.registry] });
  private readonly sourceConnectAttempts = new Counter({ name: "sluice_source_connect_attempts_total", help: "Attempts to connect a source that has a connection (at start and after a loss), by outcome (connected, failed, lost).", labelNames: ["source", "outcome"], registers: [this.registry] });
  private readonly sourcePending = new Gauge({ name: "sluice_source_pending", help: "Entries a broker source's consumer group (or consumer) was delivered and has not acked yet.", labelNames: ["source"], registers: [this.registry] });
  private readonly sourceLag = new Gauge({ name: "sluice_source_lag", help: "Entries in a broker source's stream not yet delivered to its consumer group (or consumer).", labelNames: ["source"], registers: [this.registry] });
  private readonly reclaimed = new Counter({ name: "sluice_source_reclaimed_total", help: "Entries a broker source took over from a consumer that read and never acked them (it died or stalled).", labelNames: ["source"], registers: [this.registry] });
  private readonly partitionsOwned = new Gauge({ name: "sluice_source_partitions_owned", help: "Partitions an ordered broker source holds the lease of (reads alone) now.", labelNames: ["source"], registers: [this.registry] });
  private readonly leaseTakeovers = new Counter({ name: "sluice_source_lease_takeovers_total", help: "Partition leases an ordered broker source took: at start, from a worker that died, or one that let them go.", labelNames: ["source"], registers: [this.registry] });
  private readonly leasesLost = new Counter({ name: "sluice_source_leases_lost_total", help: "Partition leases an ordered broker source found expired or taken by another worker (it was paused or cut off longer than lease_ttl).", labelNames: ["source"], registers: [this.registry] });
  private readonly sourceUp = new Gauge({ name: "sluice_source_up", help: "1 while a source with a connection is connected, 0 while it is connecting.", labelNames: ["source"], registers: [this.registry] });
  /** Sources with a connection that are down (never connected, or lost it), for readiness and the progress line. */
  private readonly sourceDown = new Map<string, { readonly since: number; readonly message: string }>();
  /** Sinks failing (retrying, or not connecting) without one success since, for readiness and the progress line. */
  private readonly down = new Map<string, SinkDown>();
  /** Sinks whose last retried batch ended dead-lettered: since when they have failed, and when that batch gave up. */
  private readonly gaveUp = new Map<string, { since: number; at: number }>();
  /** What a source's or a sink's connection attempts update, by kind (the kind is also the label's name). */
  private readonly connections: Record<"source" | "sink", ConnectionMetrics> = {
    source: { attempts: this.sourceConnectAttempts, up: this.sourceUp, down: this.sourceDown },
    sink: { attempts: this.connectAttempts, up: this.sinkUp, down: this.down },
  };
  private readonly bufferMaxRecords = new Gauge({ name: "sluice_buffer_max_records", help: "The buffer's bound in records (buffer.max_records): sluice_buffer_records / this is how full it is.", registers: [this.registry] });
  private readonly bufferMaxBytes = new Gauge({ name: "sluice_buffer_max_bytes", help: "The buffer's bound in bytes (buffer.max_bytes): sluice_buffer_bytes / this is how full it is.", registers: [this.registry] });
  private readonly tapDropped = new Counter({ name: "sluice_tap_dropped_records_total", help: "Records sluice tap readers did not get because they read slower than records passed (the pipeline never waits for them).", registers: [this.registry] });
  private readonly httpRefused = new Counter({ name: "sluice_http_connections_refused_total", help: "Connections an http source closed at once because it had max_connections open.", labelNames: ["source"], registers: [this.registry] });
  private readonly latency = new WeightedHistogram(METRIC.latency, "Time from a record's receipt to its commit by a sink.", "sink", LATENCY_BUCKETS, this.registry);

  constructor(
    sinkNames: readonly string[],
    private readonly logger: Logger,
    private readonly now: () => number = Date.now,
  ) {
    this.counts = {
      received: 0,
      delivered: 0,
      already_present: 0,
      dead_lettered: 0,
      dropped: 0,
      retried: 0,
      replayed: 0,
      quarantined: 0,
      corrupt_entries: 0,
      in_flight: 0,
      buffer_records: 0,
      buffer_bytes: 0,
      sinks: Object.fromEntries(sinkNames.map((n) => [n, { delivered: 0, new: 0, already_present: 0, dead_lettered: 0 }])),
    };
    for (const n of sinkNames) this.sinkUp.set({ sink: n }, 0);
    const probe = () => this.bufferProbe();
    new Gauge({ name: "sluice_buffer_records", help: "Records held by the buffer, including those being transformed or written.", registers: [this.registry], collect() { this.set(probe().records); } });
    new Gauge({ name: "sluice_buffer_bytes", help: "Estimated bytes held by the buffer.", registers: [this.registry], collect() { this.set(probe().bytes); } });
  }

  /**
   * Reads the buffer's fill when metrics are scraped or a snapshot is taken; `limits` (the
   * buffer's `max_records` and `max_bytes`) become `sluice_buffer_max_records` and
   * `sluice_buffer_max_bytes`, so a dashboard, an alert or `sluice top` can tell how full it is.
   */
  watchBuffer(probe: () => { records: number; bytes: number }, limits?: { records: number; bytes: number }): void {
    this.bufferProbe = probe;
    if (limits === undefined) return;
    this.bufferMaxRecords.set(limits.records);
    this.bufferMaxBytes.set(limits.bytes);
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
        if (sink) {
          sink.delivered += event.records.length;
          sink.new += event.records.length - event.alreadyPresent;
          sink.already_present += event.alreadyPresent;
        }
        this.down.delete(event.sink);
        this.gaveUp.delete(event.sink);
        this.delivered.inc({ sink: event.sink }, event.records.length);
        this.alreadyPresent.inc({ sink: event.sink }, event.alreadyPresent);
        this.observeLatency(event.sink, event.records, event.now);
        break;
      }
      case "records_dead_lettered": {
        const sink = c.sinks[event.sink];
        if (sink) sink.dead_lettered += event.count;
        // A batch that ended dead-lettered is no longer retried: left marked, an idle sink would stay
        // unready forever. Its down-since is kept a while, so a sink whose every batch gives up
        // (retry.max_elapsed shorter than unready_after) still turns unready.
        const retrying = this.down.get(event.sink);
        if (retrying?.state === "retrying") {
          this.down.delete(event.sink);
          this.gaveUp.set(event.sink, { since: retrying.since, at: this.now() });
        }
        this.deadLettered.inc({ sink: event.sink, code: event.code }, event.count);
        this.logger.error({ component: event.sink, code: event.code, first_record_id: event.firstRecordId, err: event.message, records: event.count }, "records dead-lettered");
        break;
      }
      case "records_dropped":
        c.dropped += event.count;
        this.dropped.inc({ reason: event.reason }, event.count);
        break;
      case "records_retried":
        c.retried += event.count;
        this.markDown(event.sink, "retrying", event.message);
        this.retried.inc({ sink: event.sink }, event.count);
        this.logger.warn({ component: event.sink, code: event.code, first_record_id: event.firstRecordId, err: event.message, records: event.count, delay_ms: event.delayMs }, "write failed; retrying");
        break;
      case "records_late":
        this.late.inc({ sink: event.sink }, event.count);
        break;
      case "records_completed":
        c.delivered += event.delivered;
        c.already_present += event.alreadyPresent;
        c.dead_lettered += event.deadLettered;
        break;
      case "sink_batch_written":
        this.batchDuration.observe({ sink: event.sink }, event.seconds);
        break;
      case "concurrency_limit":
        this.concurrencyLimit.set({ sink: event.sink }, event.limit);
        break;
      case "sink_connected":
        this.connected("sink", event.sink, event.attempt);
        break;
      case "sink_connect_failed": {
        this.down.set(event.sink, { sink: event.sink, state: "connecting", since: event.downSince, message: event.message });
        const until = !event.retryable ? "giving up" : event.connectTimeoutMs === undefined ? "retrying until it connects (no connect_timeout)" : `retrying up to connect_timeout (${formatSeconds(event.connectTimeoutMs)})`;
        this.connectFailed("sink", event.sink, "failed", event, `sink ${event.sink} cannot connect; ${until}`);
        break;
      }
      case "source_connected":
        this.connected("source", event.source, event.attempt);
        break;
      case "source_connect_failed": {
        this.sourceDown.set(event.source, { since: event.downSince, message: event.message });
        this.sourceUp.set({ source: event.source }, 0);
        const what = event.attempt === 0 ? "lost its connection" : "cannot connect";
        this.connectFailed("source", event.source, event.attempt === 0 ? "lost" : "failed", event, `source ${event.source} ${what}; ${event.retryable ? "retrying until it connects" : "giving up"}`);
        break;
      }
      case "backpressure":
        this.backpressure.inc({ source: event.source }, event.seconds);
        break;
      case "source_backlog":
      case "records_reclaimed":
      case "source_leases":
        this.consumerGroup(event);
        break;
      case "http_request":
        this.httpRequests.inc({ source: event.source, status: event.status });
        break;
      case "http_connection_refused":
        this.httpRefused.inc({ source: event.source });
        break;
      case "buffer_replayed":
        c.received += event.records;
        c.replayed += event.records;
        this.replayed.inc(event.records);
        this.logger.info({ records: event.records, chunks: event.chunks }, "replaying records the durable buffer kept from an earlier run");
        break;
      case "buffer_corrupt":
        c.corrupt_entries += event.entries;
        c.quarantined += event.records ?? 0;
        this.corrupt.inc({ reason: event.reason }, event.entries);
        break;
      case "buffer_write_failed":
        this.bufferWrites.failed(event.reason);
        break;
      case "buffer_write_recovered":
        this.bufferWrites.recovered();
        break;
      case "buffer_read_failed":
        this.bufferReadError = event.reason;
        break;
      case "buffer_read_recovered":
        this.bufferReadError = undefined;
        break;
      case "dead_letter_write_failed":
        this.deadLetterWrites.failed(`${event.code}: ${event.message}`);
        break;
      case "dead_letter_write_recovered":
        this.deadLetterWrites.recovered();
        break;
      case "component_error":
        // Logged only: a sink is down while its writes are retried or it is connecting, and only those
        // have an event that clears them. An idle pool connection dropped by a server restart is not a write failing.
        this.logger.error({ component: event.component, code: event.code, err: event.message }, "component error");
        break;
      case "tap_records_dropped":
        this.tapDropped.inc(event.count);
        break;
      case "pipeline_run":
        if (event.phase === "started") this.run = { startedAt: this.now() };
        else this.run.doneAt = this.now();
        break;
    }
  };

  /** One weighted observation per run of records received together (one chunk), not one per record. */
  /** A source or sink connected: no longer down, counted, up, and said when it took more than one attempt. */
  private connected(kind: "source" | "sink", name: string, attempt: number): void {
    const c = this.connections[kind];
    c.down.delete(name);
    c.attempts.inc({ [kind]: name, outcome: "connected" });
    c.up.set({ [kind]: name }, 1);
    if (attempt > 1) this.logger.info({ [kind]: name, attempts: attempt }, `${kind} connected`);
  }

  /** An attempt to connect a source or sink failed (`outcome`), or its connection was lost: counted, and logged as a warning while it is retried, else as an error. */
  private connectFailed(kind: "source" | "sink", name: string, outcome: "failed" | "lost", event: Extract<InternalEvent, { type: "source_connect_failed" | "sink_connect_failed" }>, message: string): void {
    this.connections[kind].attempts.inc({ [kind]: name, outcome });
    const fields = { component: name, code: event.code, err: event.message, attempt: event.attempt, down: formatSeconds(this.now() - event.downSince) };
    if (event.retryable) this.logger.warn(fields, message);
    else this.logger.error(fields, message);
  }

  /** What a broker source reports of its consumer group: entries pending and not yet delivered, entries reclaimed, partition leases held, taken and lost. */
  private consumerGroup(event: Extract<InternalEvent, { type: "source_backlog" | "records_reclaimed" | "source_leases" }>): void {
    const source = { source: event.source };
    if (event.type === "source_backlog") {
      this.sourcePending.set(source, event.pending);
      if (event.lag !== undefined) this.sourceLag.set(source, event.lag);
    } else if (event.type === "records_reclaimed") {
      this.reclaimed.inc(source, event.count);
    } else {
      this.partitionsOwned.set(source, event.owned);
      if (event.acquired > 0) this.leaseTakeovers.inc(source, event.acquired);
      if (event.lost > 0) this.leasesLost.inc(source, event.lost);
    }
  }

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
    return [...this.down.values()].filter((d) => now - d.since >= ms).map((d) => d.sink);
  }

  /** Why the durable buffer cannot write, while its writes fail; undefined while it can. */
  bufferUnwritable(): string | undefined {
    return this.bufferWrites.error;
  }

  /** Why the durable buffer cannot read entries back, while its reads keep failing; undefined while they succeed. */
  bufferUnreadable(): string | undefined {
    return this.bufferReadError;
  }

  /** Why dead letters cannot be written, while their writes fail; undefined while they can. */
  deadLetterUnwritable(): string | undefined {
    return this.deadLetterWrites.error;
  }

  /**
   * Each sink down right now, as the progress line and `/health/ready` say it:
   * `sink db: connecting, down 45 s: ECONNREFUSED 127.0.0.1:5433`. A sink still connecting is
   * listed at once (nothing else shows it); one whose writes are retried only once that has lasted
   * `retryingForMs` (`unready_after`): brief retries show in the `retried` count, and listing them
   * would make a sink with occasional failures flicker in and out.
   */
  sinksDown(retryingForMs: number): string[] {
    const now = this.now();
    return [...this.down.values()]
      .filter((d) => d.state === "connecting" || now - d.since >= retryingForMs)
      .map((d) => `sink ${d.sink}: ${d.state}, down ${formatSeconds(now - d.since)}: ${d.message}`);
  }

  /**
   * Each source with a connection that is down right now, as the progress line and
   * `/health/ready` say it: `source q: connecting, down 12 s: ECONNREFUSED 127.0.0.1:6379`. A
   * source down makes the pipeline not ready at once: nothing comes in from it.
   */
  sourcesDown(): string[] {
    const now = this.now();
    return [...this.sourceDown].map(([source, d]) => `source ${source}: connecting, down ${formatSeconds(now - d.since)}: ${d.message}`);
  }

  /**
   * Keeps the first failure's time (down since) and the latest message (why). A sink that fails
   * again within {@link GAVE_UP_MEMORY_MS} of a batch that gave up is still down since that batch's first failure.
   */
  private markDown(sink: string, state: SinkDown["state"], message: string): void {
    const now = this.now();
    const gaveUp = this.gaveUp.get(sink);
    this.gaveUp.delete(sink);
    const since = this.down.get(sink)?.since ?? (gaveUp !== undefined && now - gaveUp.at <= GAVE_UP_MEMORY_MS ? gaveUp.since : now);
    this.down.set(sink, { sink, state, since, message });
  }

  /** The counters right now. */
  snapshot(): CountsSnapshot {
    const c = this.counts;
    const buffer = this.bufferProbe();
    return {
      ...c,
      in_flight: c.received - c.delivered - c.dead_lettered - c.dropped - c.quarantined,
      buffer_records: buffer.records,
      buffer_bytes: buffer.bytes,
      sinks: Object.fromEntries(Object.entries(c.sinks).map(([k, v]) => [k, { ...v }])),
    };
  }

  /**
   * The run summary in DESIGN.md's shape. `elapsedSeconds` defaults to the pipeline's run so far
   * (from `run()` to its end, or to now while it runs; 0 before it starts).
   */
  summary(elapsedSeconds: number = this.runSeconds()): RunSummary {
    const s = this.snapshot();
    return {
      records: {
        received: s.received,
        delivered: s.delivered,
        new: s.delivered - s.already_present,
        already_present: s.already_present,
        dead_lettered: s.dead_lettered,
        dropped: s.dropped,
        retried: s.retried,
        ...(s.quarantined > 0 ? { quarantined: s.quarantined } : {}),
      },
      sinks: s.sinks,
      elapsed_seconds: Math.round(elapsedSeconds * 1000) / 1000,
    };
  }

  private runSeconds(): number {
    const { startedAt, doneAt } = this.run;
    return startedAt === undefined ? 0 : ((doneAt ?? this.now()) - startedAt) / 1000;
  }
}
