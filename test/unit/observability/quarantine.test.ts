/**
 * Durable buffer corruption in the counters, the metric and the summary: records of an entry
 * quarantined while running are `quarantined`, not in flight (not "left for redelivery"); entries
 * found corrupt or missing at start are counted by reason.
 */
import { describe, expect, it } from "vitest";
import { summaryTable } from "../../../src/cli/run-command.js";
import { silentLogger } from "../../../src/core/events.js";
import { Metrics } from "../../../src/observability/metrics.js";

describe("quarantined records and corrupt entries", () => {
  it("keep received == delivered + dead_lettered + dropped + quarantined + in_flight, and reach the metric and the summary", async () => {
    const metrics = new Metrics(["db"], silentLogger);
    metrics.handle({ type: "buffer_replayed", records: 10, chunks: 2 });
    metrics.handle({ type: "buffer_corrupt", entries: 2, bytes: 0, reason: "missing" });
    metrics.handle({ type: "records_received", source: "web", count: 5, bytes: 50 });
    metrics.handle({ type: "records_completed", delivered: 11, alreadyPresent: 0, deadLettered: 0 });
    metrics.handle({ type: "buffer_corrupt", entries: 1, bytes: 120, reason: "bad_checksum", records: 4 });

    const s = metrics.snapshot();
    expect(s).toMatchObject({ received: 15, delivered: 11, quarantined: 4, corrupt_entries: 3, in_flight: 0 });
    const text = await metrics.registry.metrics();
    expect(text).toContain('sluice_buffer_corrupt_entries_total{reason="missing"} 2');
    expect(text).toContain('sluice_buffer_corrupt_entries_total{reason="bad_checksum"} 1');

    const summary = metrics.summary(1);
    expect(summary.records).toEqual({ received: 15, delivered: 11, new: 11, already_present: 0, dead_lettered: 0, dropped: 0, retried: 0, quarantined: 4 });
    const table = summaryTable(summary, "completed", "dlq.db", s.replayed, s.corrupt_entries);
    expect(table).toMatch(/^ {2}quarantined +4$/m);
    expect(table).toContain("durable buffer: 3 corrupt or missing entries, quarantined or lost (see the warnings)");
    expect(table).not.toContain("left for redelivery");
  });

  it("leave the summary in DESIGN.md's shape when nothing was quarantined", () => {
    const metrics = new Metrics(["db"], silentLogger);
    metrics.handle({ type: "records_received", source: "web", count: 5, bytes: 50 });
    expect(Object.keys(metrics.summary(1).records)).toEqual(["received", "delivered", "new", "already_present", "dead_lettered", "dropped", "retried"]);
    expect(summaryTable(metrics.summary(1), "stopped", "dlq.db")).toMatch(/un-acked +5 {2}\(left for redelivery\)/);
  });
});
