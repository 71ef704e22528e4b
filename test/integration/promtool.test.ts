/**
 * examples/observability and /metrics against Prometheus's own checker (promtool, Debian's
 * `prometheus` package): the alerting rules load and pass their unit tests, every metric the rules
 * and the Grafana dashboard name is one sluice exports, the dashboard's queries parse, and a
 * running pipeline's /metrics passes `promtool check metrics`.
 */
import { spawnSync } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { silentLogger } from "../../src/core/events.js";
import { Metrics } from "../../src/observability/metrics.js";
import { killClis, startSluice } from "../helpers/cli.js";
import { requireTool } from "../helpers/tools.js";

const ROOT = resolve(import.meta.dirname, "../..");
const EXAMPLES = join(ROOT, "examples/observability");

const available = requireTool("promtool", ["--version"], "Debian's prometheus package (apt-get install prometheus)");
afterAll(killClis);

function promtool(args: readonly string[], input?: string): { code: number | null; out: string } {
  const r = spawnSync("promtool", args, { encoding: "utf8", input, cwd: EXAMPLES });
  return { code: r.status, out: `${r.stdout}${r.stderr}` };
}

/** The series names sluice's registry exports (a histogram's as `_bucket`, `_sum`, `_count`). */
async function exportedSeries(): Promise<Set<string>> {
  const metrics = await new Metrics(["db"], silentLogger).registry.getMetricsAsJSON();
  return new Set(metrics.flatMap((m) => (String(m.type) === "histogram" ? ["_bucket", "_sum", "_count"].map((s) => `${m.name}${s}`) : [m.name])));
}

/** The PromQL of every panel of the dashboard. */
async function dashboardQueries(): Promise<string[]> {
  const dashboard = JSON.parse(await readFile(join(EXAMPLES, "grafana-dashboard.json"), "utf8")) as { panels: { targets: { expr: string }[] }[] };
  return dashboard.panels.flatMap((p) => p.targets.map((t) => t.expr));
}

const metricNames = (text: string) => [...text.matchAll(/\bsluice_\w+/g)].map((m) => m[0]);

/** A free port on loopback. */
async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((done) => server.listen(0, "127.0.0.1", done));
  const port = (server.address() as { port: number }).port;
  await new Promise<void>((done) => server.close(() => done()));
  return port;
}

describe.skipIf(!available)("examples/observability with promtool", () => {
  it("promtool check rules accepts the alerting rules", () => {
    const r = promtool(["check", "rules", "alerts.yml"]);
    expect(r.out).toContain("SUCCESS: 4 rules found");
    expect(r.code).toBe(0);
  });

  it("the alerting rules pass their unit tests (promtool test rules)", () => {
    const r = promtool(["test", "rules", "alerts.test.yml"]);
    expect(r.out).toContain("SUCCESS");
    expect(r.code).toBe(0);
  });

  it("the rules and the dashboard name only metrics sluice exports, and every dashboard query parses", async () => {
    const exported = await exportedSeries();
    const rules = await readFile(join(EXAMPLES, "alerts.yml"), "utf8");
    const queries = await dashboardQueries();
    const used = new Set([...metricNames(rules), ...queries.flatMap(metricNames)]);
    expect(used.size).toBeGreaterThan(15);
    expect([...used].filter((n) => !exported.has(n))).toEqual([]);

    // promtool parses PromQL in rule files: each query becomes a recording rule, Grafana's variables replaced.
    const dir = await mkdtemp(join(tmpdir(), "sluice-promql-"));
    try {
      const asRules = queries.map((q, i) => `      - record: sluice:dashboard_query_${i}\n        expr: ${JSON.stringify(q.replaceAll("$instance", ".*").replaceAll("$__rate_interval", "1m").replaceAll("$__range", "1h"))}`);
      const file = join(dir, "queries.yml");
      await writeFile(file, `groups:\n  - name: dashboard\n    rules:\n${asRules.join("\n")}\n`);
      const r = promtool(["check", "rules", file]);
      expect(r.out).toContain(`SUCCESS: ${queries.length} rules found`);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("a running pipeline's /metrics passes promtool check metrics", async () => {
    const dir = await mkdtemp(join(tmpdir(), "sluice-promtool-"));
    const port = await freePort();
    try {
      // Retries, dead letters, drops, latency: every family has samples while it runs.
      await writeFile(
        join(dir, "pipeline.yaml"),
        `data_dir: ./data
observability: { listen: "127.0.0.1:${port}", log_level: silent, progress: never }
sources:
  gen: { type: generator, count: 100000000, rate: 5000 }
transforms:
  - { type: module, path: ./drop-some.mjs }
sinks:
  db:
    type: sqlite
    path: ./out.db
    batch: { max_records: 100, max_wait: 10ms }
    chaos: { failure_rate: 0.2, permanent_failure_rate: 0.01, seed: 3 }
    retry: { initial_backoff: 5ms }
`,
      );
      await writeFile(join(dir, "drop-some.mjs"), "export default (p) => (p.seq % 50 === 0 ? null : p);\n");
      const cli = startSluice(["run", "pipeline.yaml"], dir);
      const families = ["sluice_records_dead_lettered_total{", "sluice_records_retried_total{", "sluice_records_dropped_total{", "sluice_end_to_end_latency_seconds_bucket{", "sluice_buffer_max_records "];
      let text = "";
      // Until every family has samples: a permanent failure may dead-letter a batch before any retry is counted.
      for (let i = 0; i < 150 && !families.every((family) => text.includes(family)); i++) {
        await new Promise((r) => setTimeout(r, 200));
        text = await fetch(`http://127.0.0.1:${port}/metrics`).then((r) => r.text(), () => "");
      }
      cli.process.kill("SIGTERM");
      await cli.exited;
      for (const family of families) expect(text).toContain(family);
      const r = promtool(["check", "metrics"], text);
      expect(r.out).toBe("");
      expect(r.code).toBe(0);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
