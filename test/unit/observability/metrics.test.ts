import { createRequire } from "node:module";
import * as prom from "prom-client";
import { describe, expect, it } from "vitest";
import { silentLogger } from "../../../src/core/events.js";
import { Metrics } from "../../../src/observability/metrics.js";

const require = createRequire(import.meta.url);

describe("metrics: prom-client's classes without its index", () => {
  it("loads the very classes prom-client exports (an upgrade that moves them fails here)", () => {
    expect(require("prom-client/lib/registry")).toBe(prom.Registry);
    expect(require("prom-client/lib/counter")).toBe(prom.Counter);
    expect(require("prom-client/lib/gauge")).toBe(prom.Gauge);
    expect(require("prom-client/lib/histogram")).toBe(prom.Histogram);
  });

  it("serves a registry of prom-client's own class, with the counters in it", async () => {
    const metrics = new Metrics(["out"], silentLogger);
    metrics.handle({ type: "records_received", source: "in", count: 3, bytes: 30 });
    expect(metrics.registry).toBeInstanceOf(prom.Registry);
    expect(await metrics.registry.metrics()).toMatch(/^sluice_records_received_total\{source="in"\} 3$/m);
  });
});
