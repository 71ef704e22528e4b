/** What `sluice top` makes of a scrape: rows per component (stages included), totals, rates. */
import { describe, expect, it } from "vitest";
import { rowsOf, scrapeOf } from "../../../../src/cli/top/model.js";
import { parsePrometheusText } from "../../../../src/observability/prometheus-text.js";

const scrape = (at: number, received: number, delivered: number) =>
  scrapeOf(
    parsePrometheusText(`
sluice_records_received_total{source="gen"} ${received}
sluice_records_delivered_total{sink="db"} ${delivered}
sluice_records_retried_total{sink="db"} 4
sluice_records_dead_lettered_total{sink="db",code="ERR_SINK_REJECTED"} 2
sluice_records_dead_lettered_total{sink="db",code="ERR_CHAOS_PERMANENT"} 1
sluice_records_dead_lettered_total{sink="source:gen",code="ERR_RECORD_MALFORMED"} 5
sluice_records_dead_lettered_total{sink="transform:validate",code="ERR_RECORD_INVALID"} 7
sluice_records_dropped_total{reason="filtered"} 3
sluice_sink_up{sink="db"} 1
sluice_buffer_records 50
sluice_buffer_max_records 1000
sluice_buffer_bytes 2048
`),
    at,
  );

describe("sluice top's model", () => {
  it("gives a row per source, transform stage and sink, and the instance's totals", () => {
    const s = scrape(0, 100, 80);
    expect(s.components).toEqual([
      { kind: "source", name: "gen", total: 100, deadLettered: 5, retried: 0, up: undefined },
      { kind: "transform", name: "validate", total: undefined, deadLettered: 7, retried: 0, up: undefined },
      { kind: "sink", name: "db", total: 80, deadLettered: 3, retried: 4, up: true },
    ]);
    expect(s.totals).toEqual({ received: 100, delivered: 80, deadLettered: 15, dropped: 3, retried: 4 });
    expect(s.buffer).toEqual({ records: 50, bytes: 2048, maxRecords: 1000, maxBytes: undefined });
  });

  it("rates from counter deltas; none on the first scrape or after a reset (a restarted instance)", () => {
    const first = scrape(10_000, 100, 80);
    expect(rowsOf(first, undefined).map((r) => r.rate)).toEqual([undefined, undefined, undefined]);
    const second = scrape(12_000, 1100, 580);
    expect(rowsOf(second, first).map((r) => r.rate)).toEqual([500, undefined, 250]);
    const restarted = scrape(13_000, 10, 5);
    expect(rowsOf(restarted, second).map((r) => r.rate)).toEqual([undefined, undefined, undefined]);
  });
});
