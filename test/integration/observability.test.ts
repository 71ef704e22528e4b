import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { pipeline, sinks, sources } from "sluice";
import { startObservabilityServer } from "../../src/server/observability-server.js";

const dirs: string[] = [];
afterEach(async () => {
  await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});

describe("observability server", () => {
  it("serves every DESIGN.md metric with its labels, and live/ready health", async () => {
    const dir = await mkdtemp(join(tmpdir(), "sluice-obs-"));
    dirs.push(dir);
    const { pipeline: p, metrics, service } = await pipeline({ data_dir: dir, buffer: { max_records: 200 } })
      .source("gen", sources.generator({ count: 1000, seed: 3 }))
      .map((r) => (r.seq % 100 === 0 ? null : r) as typeof r)
      .sink("db", sinks.sqlite({ path: join(dir, "out.db") }), { batch: { max_records: 50 }, chaos: { failure_rate: 0.3, permanent_failure_rate: 0.01, seed: 5 }, retry: { initial_backoff: 1 } })
      .build();
    const server = await startObservabilityServer("127.0.0.1:0", service);
    const base = `http://127.0.0.1:${server.port}`;
    try {
      const before = await fetch(`${base}/health/ready`);
      expect(before.status).toBe(503); // not running yet
      expect(await before.json()).toEqual({ status: "not_ready", problems: ["pipeline: starting"] });
      const run = p.run();
      expect((await fetch(`${base}/health/live`)).status).toBe(200);
      const status = await run;
      expect(status.tag).toBe("completed");

      const text = await (await fetch(`${base}/metrics`)).text();
      const s = metrics.snapshot();
      expect(text).toContain(`sluice_records_received_total{source="gen"} 1000`);
      expect(text).toContain(`sluice_records_delivered_total{sink="db"} ${s.sinks.db!.delivered}`);
      expect(text).toMatch(new RegExp(`sluice_records_dead_lettered_total\\{sink="db",code="ERR_CHAOS_PERMANENT"\\} ${s.sinks.db!.dead_lettered}`));
      expect(text).toContain(`sluice_records_dropped_total{reason="filtered"} 10`);
      expect(text).toMatch(/sluice_records_retried_total\{sink="db"\} [1-9]\d*/);
      expect(text).toContain("sluice_buffer_records 0");
      expect(text).toContain("sluice_buffer_bytes 0");
      expect(text).toContain("sluice_buffer_writable 1");
      expect(text).toMatch(/sluice_backpressure_seconds_total\{source="gen"\} [\d.e-]+/);
      expect(text).toMatch(/sluice_sink_batch_duration_seconds_count\{sink="db"\} [1-9]\d*/);
      expect(text).toContain(`sluice_end_to_end_latency_seconds_count{sink="db"} ${s.sinks.db!.delivered}`);
      expect(text).toMatch(/sluice_end_to_end_latency_seconds_bucket\{le="\+Inf",sink="db"\} \d+/);
      expect(s.received).toBe(s.delivered + s.dead_lettered + s.dropped);
      expect((await fetch(`${base}/health/ready`)).status).toBe(503); // done: no longer ready
      expect((await fetch(`${base}/nope`)).status).toBe(404);
    } finally {
      await server.close();
    }
  });
});
