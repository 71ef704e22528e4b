/**
 * Readiness as `/health/ready` reports it: the pipeline running, and no sink failing (retrying or
 * not connecting) for longer than `observability.unready_after` without one success.
 */
import { describe, expect, it } from "vitest";
import type { ServiceProbe } from "../../../src/components/contracts.js";
import { serviceProbe } from "../../../src/config/build.js";
import { silentLogger } from "../../../src/core/events.js";
import type { Pipeline } from "../../../src/core/pipeline.js";
import { Metrics } from "../../../src/observability/metrics.js";

const UNREADY_AFTER = 30_000;

function setup(state: "running" | "draining" = "running"): { metrics: Metrics; probe: ServiceProbe; at: { now: number } } {
  const at = { now: 1_000_000 };
  const metrics = new Metrics(["db", "files"], silentLogger, () => at.now);
  const pipeline = { status: () => ({ tag: state }) } as unknown as Pipeline;
  return { metrics, probe: serviceProbe(() => pipeline, metrics, UNREADY_AFTER), at };
}

const retried = (sink: string) => ({ type: "records_retried", sink, count: 10, code: "ERR_SINK_WRITE", message: "down", delayMs: 100 }) as const;

describe("readiness", () => {
  it("is ready while running with healthy sinks; not while draining; not before the pipeline exists", () => {
    expect(setup().probe.ready()).toBe(true);
    expect(setup("draining").probe.ready()).toBe(false);
    const metrics = new Metrics(["db"], silentLogger);
    expect(serviceProbe(() => undefined, metrics, UNREADY_AFTER).ready()).toBe(false);
  });

  it("turns unready once a sink has retried for unready_after without a success, and ready again on a delivery", () => {
    const { metrics, probe, at } = setup();
    metrics.handle(retried("db"));
    at.now += UNREADY_AFTER - 1;
    metrics.handle(retried("db"));
    expect(probe.ready()).toBe(true);
    at.now += 1;
    expect(probe.ready()).toBe(false);
    expect(metrics.failingSinks(UNREADY_AFTER)).toEqual(["db"]);
    metrics.handle({ type: "records_delivered", sink: "db", records: [{ receivedAt: at.now }], now: at.now });
    expect(probe.ready()).toBe(true);
  });

  it("counts a sink that cannot connect as failing until it connects; other components' errors do not count", () => {
    const { metrics, probe, at } = setup();
    metrics.handle({ type: "component_error", component: "files", code: "ERR_SINK_CONNECT", message: "refused" });
    metrics.handle({ type: "component_error", component: "web", code: "ERR_SOURCE_READ", message: "ack failed" });
    at.now += UNREADY_AFTER;
    expect(metrics.failingSinks(UNREADY_AFTER)).toEqual(["files"]);
    expect(probe.ready()).toBe(false);
    metrics.handle({ type: "sink_connected", sink: "files" });
    expect(probe.ready()).toBe(true);
  });

  it("is not ready while the durable buffer cannot write, says why, and sets sluice_buffer_writable", async () => {
    const { metrics, probe } = setup();
    expect(await metrics.registry.metrics()).toContain("sluice_buffer_writable 1");
    metrics.handle({ type: "buffer_write_failed", reason: "ENOSPC: no space left on device, write" });
    expect(probe.ready()).toBe(false);
    expect(probe.unready()).toEqual(["buffer: cannot write: ENOSPC: no space left on device, write"]);
    expect(await metrics.registry.metrics()).toContain("sluice_buffer_writable 0");
    metrics.handle({ type: "buffer_write_recovered" });
    expect(probe.ready()).toBe(true);
    expect(probe.unready()).toEqual([]);
    expect(await metrics.registry.metrics()).toContain("sluice_buffer_writable 1");
  });

  it("says which component is not ready and why", () => {
    expect(setup("draining").probe.unready()).toEqual(["pipeline: stopping"]);
    const { metrics, probe, at } = setup();
    metrics.handle(retried("db"));
    at.now += UNREADY_AFTER;
    expect(probe.unready()).toEqual(["sink db: failing for 30 s or more without a success"]);
  });

  it("serves the metrics text with Prometheus' content type", async () => {
    const { metrics, probe } = setup();
    metrics.handle({ type: "http_request", source: "web", status: 202 });
    const m = await probe.metrics();
    expect(m.contentType).toMatch(/^text\/plain/);
    expect(m.text).toContain('sluice_http_requests_total{source="web",status="202"} 1');
  });
});
