/**
 * Readiness as `/health/ready` reports it: the pipeline running, and no sink failing (retrying or
 * not connecting) for longer than `observability.unready_after` without one success; every sink
 * down right now is named, with since when and why.
 */
import { describe, expect, it } from "vitest";
import { readinessAnswer, type ServiceProbe } from "../../../src/components/contracts.js";
import { serviceProbe } from "../../../src/config/build.js";
import { silentLogger } from "../../../src/core/events.js";
import type { Pipeline } from "../../../src/core/pipeline.js";
import { Metrics } from "../../../src/observability/metrics.js";

const UNREADY_AFTER = 30_000;
const LIMITS = { records: 10_000, bytes: 64 * 1024 * 1024 };

function setup(state: "running" | "draining" = "running"): { metrics: Metrics; probe: ServiceProbe; at: { now: number } } {
  const at = { now: 1_000_000 };
  const metrics = new Metrics(["db", "files"], silentLogger, () => at.now);
  const pipeline = { status: () => ({ tag: state }) } as unknown as Pipeline;
  return { metrics, probe: serviceProbe(() => pipeline, metrics, UNREADY_AFTER, LIMITS), at };
}

const retried = (sink: string) => ({ type: "records_retried", sink, count: 10, code: "ERR_SINK_WRITE", message: "down", delayMs: 100, firstRecordId: "r-1" }) as const;

const connectFailed = (sink: string, downSince: number, message = "ECONNREFUSED 127.0.0.1:5433") =>
  ({ type: "sink_connect_failed", sink, attempt: 2, downSince, code: "ERR_SINK_CONNECT", message, retryable: true, connectTimeoutMs: undefined }) as const;

describe("readiness", () => {
  it("is ready while running with healthy sinks; not while draining; not before the pipeline exists", () => {
    expect(setup().probe.readiness()).toEqual({ ready: true, problems: [] });
    expect(setup("draining").probe.readiness().ready).toBe(false);
    const metrics = new Metrics(["db"], silentLogger);
    expect(serviceProbe(() => undefined, metrics, UNREADY_AFTER, LIMITS).readiness().ready).toBe(false);
  });

  it("turns unready at once while a source with a connection is down, names it, and ready again once it connects", () => {
    const { metrics, probe, at } = setup();
    const since = at.now;
    metrics.handle({ type: "source_connect_failed", source: "q", attempt: 1, downSince: since, code: "ERR_SOURCE_CONNECT", message: "ECONNREFUSED 127.0.0.1:6379", retryable: true });
    at.now += 12_000;
    expect(probe.readiness()).toEqual({ ready: false, problems: ["source q: connecting, down 12 s: ECONNREFUSED 127.0.0.1:6379"] });
    metrics.handle({ type: "source_connected", source: "q", attempt: 2 });
    expect(probe.readiness()).toEqual({ ready: true, problems: [] });
    metrics.handle({ type: "source_connect_failed", source: "q", attempt: 0, downSince: at.now, code: "ERR_SOURCE_CONNECT", message: "connection reset by peer", retryable: true });
    expect(probe.readiness()).toEqual({ ready: false, problems: ["source q: connecting, down 0 s: connection reset by peer"] });
  });

  it("turns unready once a sink has retried for unready_after without a success, and ready again on a delivery", () => {
    const { metrics, probe, at } = setup();
    metrics.handle(retried("db"));
    at.now += UNREADY_AFTER - 1;
    metrics.handle(retried("db"));
    // Retries alone are not named before unready_after: they show in the retried count.
    expect(probe.readiness()).toEqual({ ready: true, problems: [] });
    at.now += 1;
    expect(probe.readiness()).toEqual({ ready: false, problems: ["sink db: retrying, down 30 s: down"] });
    expect(metrics.failingSinks(UNREADY_AFTER)).toEqual(["db"]);
    metrics.handle({ type: "records_delivered", sink: "db", records: [{ receivedAt: at.now }], alreadyPresent: 0, now: at.now });
    expect(probe.readiness()).toEqual({ ready: true, problems: [] });
  });

  it("counts a sink that cannot connect as failing until it connects", () => {
    const { metrics, probe, at } = setup();
    metrics.handle(connectFailed("files", at.now));
    at.now += UNREADY_AFTER;
    expect(metrics.failingSinks(UNREADY_AFTER)).toEqual(["files"]);
    expect(probe.readiness().ready).toBe(false);
    metrics.handle({ type: "sink_connected", sink: "files", attempt: 2 });
    expect(probe.readiness().ready).toBe(true);
  });

  it("does not count a component error as a sink down: an idle pool connection dropped by a restart, with no traffic after", () => {
    const { metrics, probe, at } = setup();
    // What the postgres sink's pool emits when the server restarts while sluice is idle.
    metrics.handle({ type: "component_error", component: "db", code: "ERR_SINK_WRITE", message: "terminating connection due to administrator command" });
    metrics.handle({ type: "component_error", component: "web", code: "ERR_SOURCE_READ", message: "ack failed" });
    at.now += UNREADY_AFTER * 10;
    expect(metrics.failingSinks(UNREADY_AFTER)).toEqual([]);
    expect(probe.readiness()).toEqual({ ready: true, problems: [] });
  });

  it("clears a retrying sink when its batch ends dead-lettered, though nothing is delivered after", () => {
    const { metrics, probe, at } = setup();
    metrics.handle(retried("db"));
    at.now += 10_000;
    metrics.handle({ type: "records_dead_lettered", sink: "db", code: "ERR_SINK_WRITE", count: 10, firstRecordId: "r-1", message: "down" });
    at.now += UNREADY_AFTER * 10;
    expect(metrics.failingSinks(UNREADY_AFTER)).toEqual([]);
    expect(probe.readiness()).toEqual({ ready: true, problems: [] });
  });

  it("turns unready when every batch gives up before unready_after (retry.max_elapsed shorter), and forgets an old give-up", () => {
    const { metrics, probe, at } = setup();
    const first = at.now;
    // Batches that each retry for 8 s, then are dead-lettered; the next one fails at once.
    for (let i = 0; i < 4; i++) {
      metrics.handle(retried("db"));
      at.now += 8_000;
      metrics.handle({ type: "records_dead_lettered", sink: "db", code: "ERR_SINK_WRITE", count: 10, firstRecordId: "r-1", message: "down" });
      at.now += 100;
    }
    metrics.handle(retried("db"));
    expect(at.now - first).toBeGreaterThanOrEqual(UNREADY_AFTER);
    expect(probe.readiness()).toEqual({ ready: false, problems: ["sink db: retrying, down 32 s: down"] });
    metrics.handle({ type: "records_dead_lettered", sink: "db", code: "ERR_SINK_WRITE", count: 10, firstRecordId: "r-1", message: "down" });
    // Idle for a minute, then one failure: a new outage, not the old one.
    at.now += 60_000;
    metrics.handle(retried("db"));
    expect(probe.readiness()).toEqual({ ready: true, problems: [] });
  });

  it("keeps a connecting sink down when records it wrote earlier are dead-lettered", () => {
    const { metrics, probe, at } = setup();
    metrics.handle(connectFailed("db", at.now));
    metrics.handle({ type: "records_dead_lettered", sink: "db", code: "ERR_SINK_WRITE", count: 1, firstRecordId: "r-1", message: "down" });
    at.now += UNREADY_AFTER;
    expect(probe.readiness().ready).toBe(false);
  });

  it("names a sink that is connecting, since when (its first attempt) and why, before and after unready_after", () => {
    const { metrics, probe, at } = setup();
    const started = at.now;
    at.now += 5_000;
    metrics.handle(connectFailed("db", started));
    const early = probe.readiness();
    expect(early).toEqual({ ready: true, problems: ["sink db: connecting, down 5 s: ECONNREFUSED 127.0.0.1:5433"] });
    expect(readinessAnswer(early)).toEqual({ status: 200, body: { status: "ready", problems: early.problems } });
    at.now = started + 45_500;
    metrics.handle(connectFailed("db", started, "ECONNREFUSED 127.0.0.1:5434"));
    const late = probe.readiness();
    expect(late).toEqual({ ready: false, problems: ["sink db: connecting, down 45 s: ECONNREFUSED 127.0.0.1:5434"] });
    expect(readinessAnswer(late).status).toBe(503);
    metrics.handle({ type: "sink_connected", sink: "db", attempt: 7 });
    expect(readinessAnswer(probe.readiness())).toEqual({ status: 200, body: { status: "ready" } });
  });

  it("counts connect attempts by outcome and shows whether each sink is up", async () => {
    const { metrics } = setup();
    let text = await metrics.registry.metrics();
    expect(text).toContain('sluice_sink_up{sink="db"} 0');
    metrics.handle(connectFailed("db", 0));
    metrics.handle(connectFailed("db", 0));
    metrics.handle({ type: "sink_connected", sink: "db", attempt: 3 });
    text = await metrics.registry.metrics();
    expect(text).toContain('sluice_sink_connect_attempts_total{sink="db",outcome="failed"} 2');
    expect(text).toContain('sluice_sink_connect_attempts_total{sink="db",outcome="connected"} 1');
    expect(text).toContain('sluice_sink_up{sink="db"} 1');
    expect(text).toContain('sluice_sink_up{sink="files"} 0');
  });

  it("is not ready while the durable buffer cannot write, says why, and sets sluice_buffer_writable", async () => {
    const { metrics, probe } = setup();
    expect(await metrics.registry.metrics()).toContain("sluice_buffer_writable 1");
    metrics.handle({ type: "buffer_write_failed", reason: "ENOSPC: no space left on device, write" });
    expect(probe.readiness()).toEqual({ ready: false, problems: ["buffer: cannot write: ENOSPC: no space left on device, write"] });
    expect(await metrics.registry.metrics()).toContain("sluice_buffer_writable 0");
    metrics.handle({ type: "buffer_write_recovered" });
    expect(probe.readiness()).toEqual({ ready: true, problems: [] });
    expect(await metrics.registry.metrics()).toContain("sluice_buffer_writable 1");
  });

  it("is not ready while the durable buffer cannot read entries back, and says why", () => {
    const { metrics, probe } = setup();
    metrics.handle({ type: "buffer_read_failed", reason: "EIO: i/o error, read" });
    expect(probe.readiness()).toEqual({ ready: false, problems: ["buffer: cannot read: EIO: i/o error, read"] });
    metrics.handle({ type: "buffer_read_recovered" });
    expect(probe.readiness()).toEqual({ ready: true, problems: [] });
  });

  it("is not ready while dead letters cannot be written, says why, and sets sluice_dead_letter_writable", async () => {
    const { metrics, probe } = setup();
    expect(await metrics.registry.metrics()).toContain("sluice_dead_letter_writable 1");
    metrics.handle({ type: "dead_letter_write_failed", code: "ERR_DEAD_LETTER_WRITE", message: "dead-letter store /d/dlq.db: /d/dlq.db was deleted" });
    expect(probe.readiness()).toEqual({ ready: false, problems: ["dead_letter: cannot write: ERR_DEAD_LETTER_WRITE: dead-letter store /d/dlq.db: /d/dlq.db was deleted"] });
    expect(await metrics.registry.metrics()).toContain("sluice_dead_letter_writable 0");
    metrics.handle({ type: "dead_letter_write_recovered" });
    expect(probe.readiness()).toEqual({ ready: true, problems: [] });
    expect(await metrics.registry.metrics()).toContain("sluice_dead_letter_writable 1");
  });

  it("says which component is not ready and why", () => {
    expect(setup("draining").probe.readiness()).toEqual({ ready: false, problems: ["pipeline: stopping"] });
    const { metrics, probe, at } = setup();
    metrics.handle(retried("db"));
    at.now += UNREADY_AFTER;
    expect(probe.readiness()).toEqual({ ready: false, problems: ["sink db: retrying, down 30 s: down"] });
  });

  it("serves the metrics text with Prometheus' content type", async () => {
    const { metrics, probe } = setup();
    metrics.handle({ type: "http_request", source: "web", status: 202 });
    const m = await probe.metrics();
    expect(m.contentType).toMatch(/^text\/plain/);
    expect(m.text).toContain('sluice_http_requests_total{source="web",status="202"} 1');
  });
});
