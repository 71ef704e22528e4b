/** The Prometheus text format reader `sluice top` uses. */
import { describe, expect, it } from "vitest";
import { parsePrometheusText } from "../../../src/observability/prometheus-text.js";

describe("parsePrometheusText", () => {
  it("reads samples with labels, escapes, special values and timestamps; skips comments", () => {
    const text = [
      "# HELP sluice_records_received_total Records received from sources.",
      "# TYPE sluice_records_received_total counter",
      'sluice_records_received_total{source="gen"} 1000',
      "sluice_buffer_records 12",
      'weird{a="x\\"y",b="back\\\\slash",c="line\\nbreak", d = "spaced" } 1.5e3 1700000000000',
      'h_bucket{le="+Inf",sink="db"} +Inf',
      "nan_metric NaN",
      "neg -Inf",
      "",
    ].join("\n");
    expect(parsePrometheusText(text)).toEqual([
      { name: "sluice_records_received_total", labels: { source: "gen" }, value: 1000 },
      { name: "sluice_buffer_records", labels: {}, value: 12 },
      { name: "weird", labels: { a: 'x"y', b: "back\\slash", c: "line\nbreak", d: "spaced" }, value: 1500 },
      { name: "h_bucket", labels: { le: "+Inf", sink: "db" }, value: Number.POSITIVE_INFINITY },
      { name: "nan_metric", labels: {}, value: Number.NaN },
      { name: "neg", labels: {}, value: Number.NEGATIVE_INFINITY },
    ]);
  });

  it("names the line that is not a sample", () => {
    expect(() => parsePrometheusText("ok 1\n<html>oops</html>\n")).toThrow(/^line 2: no metric name: <html>/);
    expect(() => parsePrometheusText('a{b="c} 1')).toThrow(/^line 1: unterminated label value/);
    expect(() => parsePrometheusText("a{b=c} 1")).toThrow(/expected a quoted value for label b/);
    expect(() => parsePrometheusText("a x")).toThrow(/not a sample value: "x"/);
  });
});
