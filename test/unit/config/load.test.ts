/**
 * Config loading: defaults, strict validation with paths and line numbers, hints, `${ENV}`
 * interpolation, YAML errors, and that every error in a file is reported at once.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { DEAD_LETTER_STORES, SINKS, SOURCES, TRANSFORMS } from "../../../src/components/builtins.js";
import { DEFAULTS } from "../../../src/config/defaults.js";
import { formatIssues, loadConfig, MAX_ALIAS_EXPANSIONS, parseConfig, type LocatedIssue } from "../../../src/config/load.js";
import type { PipelineConfig } from "../../../src/config/schema.js";

const MINIMAL = `
sources:
  gen: { type: generator }
sinks:
  out: { type: blackhole }
`;

function valid(text: string, env: NodeJS.ProcessEnv = {}): PipelineConfig {
  const r = parseConfig(text, env);
  if (!r.ok) throw new Error(`expected a valid config, got:\n${formatIssues("test.yaml", r.issues)}`);
  return r.config;
}

function invalid(text: string, env: NodeJS.ProcessEnv = {}): LocatedIssue[] {
  const r = parseConfig(text, env);
  if (r.ok) throw new Error("expected config issues, the config was valid");
  return r.issues;
}

/** The one issue at `path`; fails when there is none or more than one. */
function issueAt(issues: readonly LocatedIssue[], path: string): LocatedIssue {
  const found = issues.filter((i) => i.path === path);
  if (found.length !== 1) throw new Error(`expected one issue at ${path}, got:\n${formatIssues("test.yaml", issues)}`);
  return found[0]!;
}

/** 1-based line of the first line of `text` that contains `needle`. */
function lineOf(text: string, needle: string): number {
  const i = text.split("\n").findIndex((l) => l.includes(needle));
  if (i < 0) throw new Error(`${needle} not in text`);
  return i + 1;
}

/**
 * A config with every level that takes keys; `@<slot>` lines are replaced by a key (at that
 * line's indentation) or dropped.
 */
const TEMPLATE = `data_dir: ./data
buffer:
  max_records: 100
  @buffer
sources:
  gen:
    type: generator
    count: 10
    @source
sinks:
  db:
    type: sqlite
    path: ./out.db
    @sink
    batch:
      max_records: 10
      @batch
    retry:
      max_attempts: 3
      @retry
    chaos:
      failure_rate: 0.1
      @chaos
transforms:
  - type: module
    path: ./enrich.mjs
    @transform
dead_letter:
  type: sqlite
  @dead_letter
@top
`;

function render(fill: Record<string, string>): string {
  return TEMPLATE.split("\n")
    .flatMap((line) => {
      const m = /^(\s*)@(\w+)$/.exec(line);
      if (!m) return [line];
      const value = fill[m[2]!];
      return value === undefined ? [] : [`${m[1]}${value}`];
    })
    .join("\n");
}

describe("parseConfig: defaults", () => {
  it("gives a minimal config every default", () => {
    const c = valid(MINIMAL);
    expect(c.dataDir).toBe("./data");
    expect(c.shutdownTimeoutMs).toBe(30_000);
    expect(c.buffer).toEqual({ max_records: 10_000, max_bytes: 64 * 1024 * 1024, when_full: "block", chunk_size: 1000 });
    expect(c.transforms).toEqual([]);
    expect(c.observability).toEqual({ log_level: "info", progress: "auto", unready_after: 30_000, tap: false });

    expect(c.sources).toHaveLength(1);
    const src = c.sources[0]!;
    expect(src.name).toBe("gen");
    expect(src.definition.type).toBe("generator");
    expect(src.idField).toBe("id");
    expect(src.keyField).toBeUndefined();
    expect(src.timeField).toBeUndefined();
    // The generator's own defaults; `count` and `rate` stay absent (endless, unpaced).
    expect(src.options).toEqual({ keys: 10, seed: 1, payload_bytes: 0 });

    expect(c.sinks).toHaveLength(1);
    const sink = c.sinks[0]!;
    expect(sink.name).toBe("out");
    expect(sink.definition.type).toBe("blackhole");
    expect(sink.driving).toEqual({
      concurrency: 4,
      batch: { max_records: 1000, max_bytes: 4 * 1024 * 1024, max_wait: 100 },
      retry: { max_attempts: 5, max_elapsed: 60_000, initial_backoff: 100, max_backoff: 10_000, multiplier: 2 },
      chaos: undefined,
    });

    expect(c.deadLetter.definition.type).toBe("sqlite");
    expect(c.deadLetter.options).toEqual({});
    expect(c.deadLetter.retry).toEqual({ max_elapsed: DEFAULTS.dead_letter.retry.max_elapsed_ms });
  });

  it("takes how long dead-letter writes may fail from dead_letter.retry.max_elapsed, and nothing else there", () => {
    const c = valid(`${MINIMAL}dead_letter: { type: sqlite, path: ./d.db, retry: { max_elapsed: 5s } }\n`);
    expect(c.deadLetter.options).toEqual({ path: "./d.db" });
    expect(c.deadLetter.retry).toEqual({ max_elapsed: 5000 });
    expect(invalid(`${MINIMAL}dead_letter: { type: sqlite, retry: { max_attempts: 3 } }\n`).map((i) => i.path)).toEqual(["dead_letter.retry.max_attempts"]);
  });

  it("takes its defaults from the one defaults file", () => {
    const c = valid(MINIMAL);
    expect(c.dataDir).toBe(DEFAULTS.data_dir);
    expect(c.shutdownTimeoutMs).toBe(DEFAULTS.shutdown_timeout_ms);
    expect(c.buffer).toEqual(DEFAULTS.buffer);
    const d = c.sinks[0]!.driving;
    expect(d.concurrency).toBe(DEFAULTS.sink.concurrency);
    expect(d.batch).toEqual({ max_records: DEFAULTS.sink.batch.max_records, max_bytes: DEFAULTS.sink.batch.max_bytes, max_wait: DEFAULTS.sink.batch.max_wait_ms });
    expect(d.retry).toEqual({
      max_attempts: DEFAULTS.sink.retry.max_attempts,
      max_elapsed: DEFAULTS.sink.retry.max_elapsed_ms,
      initial_backoff: DEFAULTS.sink.retry.initial_backoff_ms,
      max_backoff: DEFAULTS.sink.retry.max_backoff_ms,
      multiplier: DEFAULTS.sink.retry.multiplier,
    });
    expect(c.observability.log_level).toBe(DEFAULTS.observability.log_level);
  });

  it("takes observability.tracing with its defaults, and checks it", () => {
    const c = valid(`${MINIMAL}observability: { tracing: { otlp_endpoint: "http://127.0.0.1:4318" } }\n`);
    expect(c.observability.tracing).toEqual({ otlp_endpoint: "http://127.0.0.1:4318", sample_ratio: 1, service_name: "sluice" });
    expect(valid(MINIMAL).observability.tracing).toBeUndefined();
    const issues = invalid(`${MINIMAL}observability: { tracing: { otlp_endpoint: "grpc://collector:4317", sample_ratio: 1.5, endpoint: x } }\n`);
    expect(issues.map((i) => i.path).sort()).toEqual(["observability.tracing.endpoint", "observability.tracing.otlp_endpoint", "observability.tracing.sample_ratio"].sort());
  });

  it("gives a sink's chaos block its defaults once it is present", () => {
    const c = valid(`${MINIMAL}    chaos: { failure_rate: 0.5 }\n`.replace("out: { type: blackhole }\n", "out:\n    type: blackhole\n"));
    expect(c.sinks[0]!.driving.chaos).toEqual({ failure_rate: 0.5, permanent_failure_rate: 0, latency: { min: 0, max: 0 } });
  });

  it("accepts the demo's full config", async () => {
    const r = await loadConfig("examples/demo/pipeline.yaml", {});
    expect(r.ok ? [] : r.issues).toEqual([]);
  });
});

describe("parseConfig: unknown keys", () => {
  const levels: { slot: string; path: string; allowed: string[] }[] = [
    { slot: "top", path: "zzz_extra", allowed: ["data_dir", "buffer", "sources", "sinks", "dead_letter"] },
    { slot: "buffer", path: "buffer.zzz_extra", allowed: ["max_records", "max_bytes", "when_full"] },
    { slot: "source", path: "sources.gen.zzz_extra", allowed: ["type", "id_field", "count", "rate"] },
    { slot: "sink", path: "sinks.db.zzz_extra", allowed: ["type", "concurrency", "batch", "retry", "chaos", "path", "table"] },
    { slot: "batch", path: "sinks.db.batch.zzz_extra", allowed: ["max_records", "max_bytes", "max_wait"] },
    { slot: "retry", path: "sinks.db.retry.zzz_extra", allowed: ["max_attempts", "max_elapsed", "initial_backoff", "max_backoff", "multiplier"] },
    { slot: "chaos", path: "sinks.db.chaos.zzz_extra", allowed: ["failure_rate", "permanent_failure_rate", "latency", "seed"] },
    { slot: "transform", path: "transforms[0].zzz_extra", allowed: ["type", "path"] },
    { slot: "dead_letter", path: "dead_letter.zzz_extra", allowed: ["type", "path"] },
  ];

  it("the template is valid without the extra keys", () => {
    expect(valid(render({})).sinks[0]!.driving.chaos?.failure_rate).toBe(0.1);
  });

  it.each(levels)("rejects an unknown key in $slot with its path, line and the allowed keys", ({ slot, path, allowed }) => {
    const text = render({ [slot]: "zzz_extra: 1" });
    const issues = invalid(text);
    expect(issues).toHaveLength(1);
    const issue = issueAt(issues, path);
    expect(issue.message).toContain('unknown key "zzz_extra"');
    for (const key of allowed) expect(issue.message).toContain(key);
    expect(issue.line).toBe(lineOf(text, "zzz_extra:"));
    expect(issue.column).toBeGreaterThanOrEqual(1);
  });

  it("names the key to use for a renamed key", () => {
    const cases: { slot: string; key: string; path: string; hint: string }[] = [
      { slot: "sink", key: "retries: 3", path: "sinks.db.retries", hint: '"retry.max_attempts"' },
      { slot: "sink", key: "max_retries: 3", path: "sinks.db.max_retries", hint: '"retry.max_attempts"' },
      { slot: "sink", key: "batch_size: 50", path: "sinks.db.batch_size", hint: '"batch.max_records"' },
      { slot: "top", key: "dlq: {}", path: "dlq", hint: '"dead_letter"' },
      { slot: "top", key: "processors: []", path: "processors", hint: '"transforms"' },
      { slot: "buffer", key: "when-full: block", path: "buffer.when-full", hint: '"when_full"' },
    ];
    for (const c of cases) {
      const text = render({ [c.slot]: c.key });
      const issue = issueAt(invalid(text), c.path);
      expect(issue.message, c.path).toMatch(/it is called/);
      expect(issue.message, c.path).toContain(c.hint);
      expect(issue.line, c.path).toBe(lineOf(text, c.key));
    }
  });

  it("suggests the closest key for a misspelling", () => {
    const cases: { slot: string; key: string; path: string; meant: string }[] = [
      { slot: "buffer", key: "max_recods: 5", path: "buffer.max_recods", meant: "max_records" },
      { slot: "batch", key: "max_recods: 5", path: "sinks.db.batch.max_recods", meant: "max_records" },
      { slot: "retry", key: "max_atempts: 5", path: "sinks.db.retry.max_atempts", meant: "max_attempts" },
      { slot: "chaos", key: "failure_rat: 0.2", path: "sinks.db.chaos.failure_rat", meant: "failure_rate" },
      { slot: "source", key: "cont: 5", path: "sources.gen.cont", meant: "count" },
      { slot: "top", key: "data_dri: x", path: "data_dri", meant: "data_dir" },
    ];
    for (const c of cases) {
      const issue = issueAt(invalid(render({ [c.slot]: c.key })), c.path);
      expect(issue.message, c.path).toContain(`did you mean "${c.meant}"?`);
    }
  });

  it("suggests the closest of several near keys, not the first one listed", () => {
    // `mx` is one edit from `max` and two from `min`; `min` is listed first.
    const issue = issueAt(invalid(render({ chaos: "latency: { min: 1ms, mx: 3ms }" })), "sinks.db.chaos.latency.mx");
    expect(issue.message).toContain('did you mean "max"?');
  });

  it("points at the right line when a component's name contains a dot", () => {
    const text = "sources:\n  sensor.A:\n    type: generator\n    cont: 3\nsinks:\n  out: { type: blackhole }\n";
    const issue = issueAt(invalid(text), "sources.sensor.A.cont");
    expect(issue.line).toBe(4);
  });
});

describe("parseConfig: component types", () => {
  it("lists the valid types for an unknown source, sink, transform and dead_letter type", () => {
    const text = `sources:
  a: { type: kafka }
sinks:
  b: { type: elasticsearch }
transforms:
  - { type: javascript }
dead_letter: { type: s3 }
`;
    const issues = invalid(text);
    const cases = [
      { path: "sources.a.type", got: "kafka", defs: SOURCES, line: 2 },
      { path: "sinks.b.type", got: "elasticsearch", defs: SINKS, line: 4 },
      { path: "transforms[0].type", got: "javascript", defs: TRANSFORMS, line: 6 },
      { path: "dead_letter.type", got: "s3", defs: DEAD_LETTER_STORES, line: 7 },
    ];
    for (const c of cases) {
      const issue = issueAt(issues, c.path);
      expect(issue.message).toContain(`"${c.got}"`);
      for (const d of c.defs) expect(issue.message).toContain(d.type);
      expect(issue.line).toBe(c.line);
    }
    expect(issues).toHaveLength(cases.length);
    // Spot-check the lists are the real ones.
    expect(issueAt(issues, "sources.a.type").message).toMatch(/generator.*file|file.*generator/);
  });

  it("reports a missing type with the valid types", () => {
    const text = "sources:\n  a:\n    count: 3\nsinks:\n  b: { path: ./x.db }\n";
    const issues = invalid(text);
    const src = issueAt(issues, "sources.a.type");
    expect(src.message).toContain('missing "type"');
    expect(src.message).toContain("generator");
    expect(src.line).toBe(2);
    expect(issueAt(issues, "sinks.b.type").message).toContain('missing "type"');
  });

  it("reports a component that is not a mapping", () => {
    const issues = invalid("sources:\n  a:\nsinks:\n  b: blackhole\n");
    expect(issueAt(issues, "sources.a").message).toContain("mapping");
    expect(issueAt(issues, "sinks.b").message).toContain("mapping");
  });

  it("reports wrong value types and out-of-range values with their paths", () => {
    const text = render({ buffer: "when_full: drop_oldest", source: "keys: lots", sink: "concurrency: 0" });
    const issues = invalid(text);
    expect(issueAt(issues, "buffer.when_full").message).toMatch(/block.*reject.*drop_newest/);
    expect(issueAt(issues, "sources.gen.keys").message).toMatch(/expected number/);
    expect(issueAt(issues, "sinks.db.concurrency").line).toBe(lineOf(text, "concurrency: 0"));
    expect(issues).toHaveLength(3);
  });

  it("needs at least one source and one sink", () => {
    const issues = invalid("sources: {}\nsinks: {}\n");
    expect(issueAt(issues, "sources").message).toContain("at least one source");
    expect(issueAt(issues, "sinks").message).toContain("at least one sink");
  });
});

describe("parseConfig: concurrency", () => {
  const ADAPTIVE_DEFAULTS = {
    initial: DEFAULTS.sink.adaptive.initial,
    max: DEFAULTS.sink.adaptive.max,
    decrease_ratio: DEFAULTS.sink.adaptive.decrease_ratio,
    ewma_alpha: DEFAULTS.sink.adaptive.ewma_alpha,
    rtt_deviation_scale: DEFAULTS.sink.adaptive.rtt_deviation_scale,
  };
  const concurrencyOf = (value: string) => valid(render({ sink: `concurrency: ${value}` })).sinks[0]!.driving.concurrency;

  it("takes a fixed number, `adaptive`, or `{ adaptive: {...} }` with the defaults filled in", () => {
    expect(concurrencyOf("7")).toBe(7);
    expect(ADAPTIVE_DEFAULTS).toEqual({ initial: 1, max: 16, decrease_ratio: 0.9, ewma_alpha: 0.4, rtt_deviation_scale: 2.5 });
    expect(concurrencyOf("adaptive")).toEqual({ adaptive: ADAPTIVE_DEFAULTS });
    expect(concurrencyOf("{ adaptive: {} }")).toEqual({ adaptive: ADAPTIVE_DEFAULTS });
    expect(concurrencyOf("{ adaptive: { max: 8, decrease_ratio: 0.5 } }")).toEqual({ adaptive: { ...ADAPTIVE_DEFAULTS, max: 8, decrease_ratio: 0.5 } });
  });

  it.each([
    ["adaptve", "sinks.db.concurrency", /expected "adaptive"/],
    ["1.5", "sinks.db.concurrency", /expected int/],
    ["{ adaptive: { mx: 8 } }", "sinks.db.concurrency.adaptive.mx", /did you mean "max"/],
    ["{ adaptive: { max: 8 }, initial: 2 }", "sinks.db.concurrency.initial", /unknown key "initial"/],
    ["{ adaptive: { initial: 20 } }", "sinks.db.concurrency.adaptive.initial", /must not exceed max/],
    ["{ adaptive: { max: 0 } }", "sinks.db.concurrency.adaptive.max", /too small/i],
    ["{ adaptive: { decrease_ratio: 1 } }", "sinks.db.concurrency.adaptive.decrease_ratio", /too big/i],
    ["{ adaptive: { decrease_ratio: 0 } }", "sinks.db.concurrency.adaptive.decrease_ratio", /too small/i],
    ["{ adaptive: { ewma_alpha: 0 } }", "sinks.db.concurrency.adaptive.ewma_alpha", /too small/i],
    ["{ adaptive: { rtt_deviation_scale: -1 } }", "sinks.db.concurrency.adaptive.rtt_deviation_scale", /too small/i],
  ])("rejects `concurrency: %s` at %s", (value, path, message) => {
    const text = render({ sink: `concurrency: ${value}` });
    const issues = invalid(text);
    expect(issues).toHaveLength(1);
    const issue = issueAt(issues, path);
    expect(issue.message).toMatch(message);
    expect(issue.line).toBe(lineOf(text, "concurrency:"));
  });
});

describe("parseConfig: sizes and durations", () => {
  it("reads units of sizes and durations", () => {
    const c = valid(
      render({
        buffer: "max_bytes: 64MB",
        top: "shutdown_timeout: 5s",
        batch: "max_bytes: 512KiB",
        retry: "max_elapsed: 2m",
      }).replace("max_records: 10\n", "max_records: 10\n      max_wait: 250ms\n"),
    );
    expect(c.buffer.max_bytes).toBe(64_000_000);
    expect(c.shutdownTimeoutMs).toBe(5000);
    expect(c.sinks[0]!.driving.batch).toMatchObject({ max_bytes: 512 * 1024, max_wait: 250 });
    expect(c.sinks[0]!.driving.retry.max_elapsed).toBe(120_000);
    expect(valid(render({ buffer: "max_bytes: 64MiB" })).buffer.max_bytes).toBe(64 * 1024 * 1024);
    expect(valid(render({ buffer: "max_bytes: 1024" })).buffer.max_bytes).toBe(1024);
    expect(valid(render({ chaos: "latency: { min: 1ms, max: 1s }" })).sinks[0]!.driving.chaos?.latency).toEqual({ min: 1, max: 1000 });
  });

  it("rejects a size or duration without a known unit, saying what is accepted", () => {
    const text = render({
      buffer: "max_bytes: 64 parsecs",
      top: "shutdown_timeout: 64 parsecs",
      batch: "max_wait: soon",
      chaos: "latency: 3 parsecs",
    });
    const issues = invalid(text);
    const size = issueAt(issues, "buffer.max_bytes");
    expect(size.message).toContain('"64 parsecs" is not a size');
    expect(size.message).toContain("MiB");
    expect(size.line).toBe(lineOf(text, "max_bytes: 64 parsecs"));
    expect(issueAt(issues, "shutdown_timeout").message).toContain('"64 parsecs" is not a duration');
    expect(issueAt(issues, "sinks.db.batch.max_wait").message).toContain('"soon" is not a duration');
    // A union (a duration or { min, max }) must still say why, not zod's bare "Invalid input".
    expect(issueAt(issues, "sinks.db.chaos.latency").message).toContain('"3 parsecs" is not a duration');
    expect(issues).toHaveLength(4);
  });

  it("says which types a value may have when it has none of them", () => {
    const issue = issueAt(invalid(render({ chaos: "latency: true" })), "sinks.db.chaos.latency");
    expect(issue.message).toMatch(/expected number, string or object, received boolean/);
  });
});

describe("parseConfig: ${ENV} interpolation", () => {
  it("replaces ${NAME}, ${NAME:-default} and $${", () => {
    const text = `data_dir: \${DATA}/run
sources:
  f: { type: file, path: "\${INPUT:-./in.ndjson}" }
sinks:
  db: { type: sqlite, path: "\${DB_DIR:-/var/db}/out.db", table: "$\${literal}" }
`;
    const c = valid(text, { DATA: "/srv/sluice", DB_DIR: "/tmp/x" });
    expect(c.dataDir).toBe("/srv/sluice/run");
    expect(c.sources[0]!.options.path).toBe("./in.ndjson");
    expect(c.sinks[0]!.options.path).toBe("/tmp/x/out.db");
    expect(c.sinks[0]!.options.table).toBe("${literal}");
  });

  it("uses the default when the variable is set but empty", () => {
    expect(valid(`data_dir: \${D:-./fallback}\n${MINIMAL}`, { D: "" }).dataDir).toBe("./fallback");
  });

  it("reports every unset variable with its path and line, and no follow-up error for the same value", () => {
    const text = `data_dir: \${NOPE_DIR}
sources:
  f:
    type: file
    path: \${NOPE_INPUT}
sinks:
  out: { type: blackhole }
`;
    const issues = invalid(text, {});
    const dir = issueAt(issues, "data_dir");
    expect(dir.message).toContain("NOPE_DIR is not set");
    expect(dir.message).toContain("${NOPE_DIR:-default}");
    expect(dir.line).toBe(1);
    const input = issueAt(issues, "sources.f.path");
    expect(input.message).toContain("NOPE_INPUT is not set");
    expect(input.line).toBe(5);
    expect(issues).toHaveLength(2);
  });

  it("types an interpolated value as YAML would where the schema wants a number; strings stay strings", () => {
    const text = `buffer:
  max_records: \${MAX}
  max_bytes: \${BYTES:-1MiB}
sources:
  gen:
    type: generator
    count: \${COUNT:-7}
    id_field: \${FIELD}
sinks:
  db: { type: sqlite, path: ./x.db, table: "\${TABLE}" }
  out:
    type: blackhole
    batch:
      max_bytes: \${BATCH_BYTES}
`;
    const c = valid(text, { MAX: "500", FIELD: "123", TABLE: "2024", BATCH_BYTES: "4096" });
    expect(c.buffer.max_records).toBe(500);
    expect(c.buffer.max_bytes).toBe(1024 * 1024);
    expect(c.sources[0]!.options.count).toBe(7);
    // String fields keep the text, even when it looks like a number.
    expect(c.sources[0]!.idField).toBe("123");
    expect(c.sinks[0]!.options.table).toBe("2024");
    // A size accepts a number of bytes or a string with a unit: the number is taken.
    expect(c.sinks[1]!.driving.batch.max_bytes).toBe(4096);

    const issues = invalid(text, { MAX: "lots", FIELD: "x", TABLE: "t", BATCH_BYTES: "1" });
    expect(issueAt(issues, "buffer.max_records").message).toContain("expected number, received string");
    expect(issues).toHaveLength(1);
  });

  it("types a quoted reference too, as a flow mapping needs the quotes", () => {
    const c = valid(`sources:\n  gen: { type: generator, count: "\${N}" }\nsinks:\n  out: { type: blackhole }\n`, { N: "5" });
    expect(c.sources[0]!.options.count).toBe(5);
  });

  it("never lets a variable inject YAML structure", () => {
    const c = valid(`data_dir: \${EVIL}\n${MINIMAL}`, { EVIL: "{ a: 1 }\nsinks: {}" });
    expect(c.dataDir).toBe("{ a: 1 }\nsinks: {}");
    expect(c.sinks).toHaveLength(1);
  });

  it("does not interpolate keys", () => {
    const issues = invalid(`\${KEY}: 1\n${MINIMAL}`, { KEY: "data_dir" });
    expect(issueAt(issues, "${KEY}").message).toContain("unknown key");
  });
});

describe("parseConfig: YAML errors", () => {
  it("reports a syntax error with its line", () => {
    const text = "sources:\n  gen: { type: generator\nsinks:\n  out: { type: blackhole }\n";
    const issues = invalid(text);
    expect(issues.length).toBeGreaterThanOrEqual(1);
    expect(issues[0]!.path).toBe("(yaml)");
    expect(issues[0]!.line).toBe(3);
    expect(issues[0]!.message).toMatch(/flow map|\}/i);
  });

  it("reports a bad indentation with its line", () => {
    const text = "sources:\n  gen:\n    type: generator\n   count: 3\nsinks:\n  out: { type: blackhole }\n";
    const issues = invalid(text);
    expect(issues[0]!.path).toBe("(yaml)");
    expect(issues[0]!.line).toBe(4);
  });

  it("reports a duplicate key with its line", () => {
    const text = "sources:\n  gen: { type: generator }\n  gen: { type: generator }\nsinks:\n  out: { type: blackhole }\n";
    const issues = invalid(text);
    expect(issues).toHaveLength(1);
    expect(issues[0]!.message).toMatch(/unique/);
    expect(issues[0]!.line).toBe(3);
  });

  it("reports an empty file and a file that is not a mapping", () => {
    expect(invalid("# nothing here\n")[0]!.message).toContain("empty");
    expect(invalid("- a\n- b\n")[0]!.message).toMatch(/expected object, received array/);
  });
});

describe("parseConfig: aliases", () => {
  /** A config whose sinks all take the mapping anchored on the first one: `uses` aliases to it. */
  function sharedSink(uses: number): string {
    const aliases = Array.from({ length: uses }, (_, i) => `  s${i + 1}: *shared`).join("\n");
    return `sources:\n  gen: { type: generator }\nsinks:\n  s0: &shared { type: blackhole, batch: { max_records: 10 } }\n${aliases}\n`;
  }

  it.each([120, 500])("accepts an anchor used by %i aliases", (uses) => {
    const config = valid(sharedSink(uses));
    expect(config.sinks).toHaveLength(uses + 1);
    expect(config.sinks.every((s) => s.driving.batch.max_records === 10)).toBe(true);
  });

  it("refuses an anchor used more often than the limit, at the anchor's first alias", () => {
    const text = sharedSink(MAX_ALIAS_EXPANSIONS + 10);
    const issues = invalid(text);
    expect(issues).toHaveLength(1);
    expect(issues[0]!.path).toBe("(yaml)");
    expect(issues[0]!.message).toContain("too many alias expansions");
    expect(issues[0]!.line).toBe(lineOf(text, "s1: *shared"));
  });

  it("refuses a billion laughs quickly, as one config issue with its line", () => {
    const levels = ['  l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]'];
    for (let i = 1; i < 10; i++) levels.push(`  l${i}: &l${i} [${Array.from({ length: 9 }, () => `*l${i - 1}`).join(", ")}]`);
    const text = `${MINIMAL}laughs:\n${levels.join("\n")}\n`;
    const started = performance.now();
    const issues = invalid(text);
    expect(performance.now() - started).toBeLessThan(1000);
    expect(issues).toHaveLength(1);
    expect(issues[0]!.message).toMatch(/too many alias expansions.*alias bomb/);
    expect(issues[0]!.line).toBe(lineOf(text, "l1: &l1"));
  });

  it("reports an alias to an anchor that is not defined before it, at its line", () => {
    const text = "sources:\n  gen: *nowhere\nsinks:\n  out: { type: blackhole }\n";
    const issues = invalid(text);
    expect(issues).toEqual([{ path: "(yaml)", message: expect.stringContaining("nowhere"), line: 2, column: 8 }]);
  });
});

describe("parseConfig: names of the object machinery", () => {
  it("reports a top-level __proto__ or constructor key by its name", () => {
    for (const key of ["__proto__", "constructor"]) {
      const issue = issueAt(invalid(`${key}: { a: 1 }\n${MINIMAL}`), key);
      expect(issue.message).toMatch(new RegExp(`^unknown key "${key}"; allowed: data_dir, `));
      expect(issue.line).toBe(1);
    }
  });

  it.each(["__proto__", "constructor", "prototype"])("refuses a sink or source named %s, saying the name is reserved", (reserved) => {
    const onlySink = invalid(`sources:\n  gen: { type: generator }\nsinks:\n  ${reserved}: { type: blackhole }\n`);
    expect(onlySink).toEqual([{ path: `sinks.${reserved}`, message: expect.stringMatching(new RegExp(`^the name "${reserved}" is reserved`)), line: 4, column: 3 }]);
    const besideAnother = invalid(`sources:\n  gen: { type: generator }\n  ${reserved}: { type: generator }\nsinks:\n  out: { type: blackhole }\n`);
    expect(besideAnother).toEqual([{ path: `sources.${reserved}`, message: expect.stringContaining("reserved"), line: 3, column: 3 }]);
  });
});

describe("parseConfig: every error at once", () => {
  it("reports all the errors of a file, not just the first", () => {
    const text = `data_dir: \${UNSET_DATA_DIR}
shutdown_timeout: forever
bufer: { max_records: 10 }
buffer:
  max_records: -1
  when_full: drop_oldest
sources:
  gen:
    type: generator
    cout: 5
  tail:
    type: tcp
  file:
    type: file
sinks:
  db:
    type: sqlite
    path: ./x.db
    retries: 3
    batch: { max_wait: soon }
    retry: { max_atempts: 2 }
    chaos: { failure_rate: 2 }
  out:
    type: stdout
    colour: true
transforms:
  - type: module
  - { type: validate, schema: ./a.json, schema_inline: {} }
  - { type: lua }
dead_letter: { type: sqlite, pth: ./dlq.db }
`;
    const issues = invalid(text);
    const expected: Record<string, string> = {
      data_dir: "UNSET_DATA_DIR is not set",
      shutdown_timeout: "is not a duration",
      bufer: 'did you mean "buffer"?',
      "buffer.max_records": "",
      "buffer.when_full": "drop_newest",
      "sources.gen.cout": 'did you mean "count"?',
      "sources.tail.type": 'unknown source type "tcp"',
      "sources.file.path": "",
      "sinks.db.retries": '"retry.max_attempts"',
      "sinks.db.batch.max_wait": "is not a duration",
      "sinks.db.retry.max_atempts": 'did you mean "max_attempts"?',
      "sinks.db.chaos.failure_rate": "",
      "sinks.out.colour": 'unknown key "colour"',
      "transforms[0].path": "",
      "transforms[1].schema_inline": "exactly one of",
      "transforms[2].type": 'unknown transform type "lua"',
      "dead_letter.pth": 'did you mean "path"?',
    };
    expect(new Set(issues.map((i) => i.path))).toEqual(new Set(Object.keys(expected)));
    for (const [path, part] of Object.entries(expected)) {
      const issue = issueAt(issues, path);
      expect(issue.message, path).toContain(part);
      expect(issue.line, path).toBeGreaterThanOrEqual(1);
    }
    expect(issueAt(issues, "sources.gen.cout").line).toBe(lineOf(text, "cout: 5"));
    expect(issueAt(issues, "sinks.out.colour").line).toBe(lineOf(text, "colour: true"));
    expect(issueAt(issues, "dead_letter.pth").line).toBe(lineOf(text, "dead_letter:"));
  });
});

describe("loadConfig and formatIssues", () => {
  it("reports a missing file as an issue instead of throwing", async () => {
    const r = await loadConfig("/definitely/not/here.yaml", {});
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.issues).toHaveLength(1);
    expect(r.issues[0]!.path).toBe("(file)");
    expect(r.issues[0]!.message).toContain("/definitely/not/here.yaml");
  });

  it("formats one issue per line as file:line:col path: message", async () => {
    const dir = await mkdtemp(join(tmpdir(), "sluice-config-"));
    try {
      const file = join(dir, "p.yaml");
      const { writeFile } = await import("node:fs/promises");
      await writeFile(file, render({ buffer: "max_recods: 5" }));
      const r = await loadConfig(file, {});
      expect(r.ok).toBe(false);
      if (r.ok) return;
      expect(formatIssues(file, r.issues)).toBe(`${file}:4:3 buffer.max_recods: unknown key "max_recods"; did you mean "max_records"?`);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe("parseConfig: http source and durable buffer", () => {
  it("fills the http source's defaults and reads tokens from the environment", () => {
    const c = valid(
      `
sources:
  web: { type: http, auth: { tokens: ["\${TOKEN_A}", "\${TOKEN_B}"] } }
sinks:
  out: { type: blackhole }
`,
      { TOKEN_A: "a".repeat(16), TOKEN_B: "b".repeat(20) },
    );
    expect(c.sources[0]!.options).toMatchObject({
      listen: "127.0.0.1:8080",
      path: "/v1/events",
      max_body: 1024 * 1024,
      max_depth: 32,
      header_timeout: 10_000,
      request_timeout: 30_000,
      ack_timeout: 30_000,
      retry_after: 1000,
      auth: { tokens: ["a".repeat(16), "b".repeat(20)] },
    });
  });

  it("refuses short tokens and secrets and a listen without a port, each with its path", () => {
    const issues = invalid(`
sources:
  web:
    type: http
    listen: localhost
    auth: { tokens: [short], hmac: { secrets: [tiny] } }
sinks:
  out: { type: blackhole }
`);
    expect(issueAt(issues, "sources.web.listen").message).toMatch(/host:port/);
    expect(issueAt(issues, "sources.web.auth.tokens[0]").message).toMatch(/at least 16 characters/);
    expect(issueAt(issues, "sources.web.auth.hmac.secrets[0]").message).toMatch(/at least 16 characters/);
  });

  it("checks header_timeout against request_timeout once both are valid", () => {
    const issues = invalid(`
sources:
  web: { type: http, header_timeout: 40s, request_timeout: 30s }
sinks:
  out: { type: blackhole }
`);
    expect(issueAt(issues, "sources.web.header_timeout").message).toMatch(/must not exceed request_timeout/);
  });

  it("takes buffer.durable with its defaults, and refuses unknown keys in it", () => {
    const c = valid(`${MINIMAL}buffer: { durable: {} }\n`);
    expect(c.buffer.durable).toEqual({ max_bytes: DEFAULTS.durable_buffer.max_bytes, fsync: true });
    const d = valid(`${MINIMAL}buffer: { durable: { path: ./buf, max_bytes: 10MiB, fsync: false } }\n`);
    expect(d.buffer.durable).toEqual({ path: "./buf", max_bytes: 10 * 1024 * 1024, fsync: false });
    const issues = invalid(`${MINIMAL}buffer: { durable: { fsynk: true } }\n`);
    expect(issues.map((i) => i.path)).toContain("buffer.durable.fsynk");
  });
});

describe("parseConfig: transform limits", () => {
  const withTransforms = (transforms: string) => `
sources:
  gen: { type: generator }
transforms:
${transforms}
sinks:
  out: { type: blackhole }
`;

  it("gives every transform a timeout and a max_split, defaults from DEFAULTS, each settable", () => {
    const config = valid(withTransforms("  - { type: module, path: ./a.mjs }\n  - { type: module, path: ./b.mjs, timeout: 5s, max_split: 3 }"));
    expect(config.transforms.map((t) => t.limits)).toEqual([
      { timeout: DEFAULTS.transform.timeout_ms, max_split: DEFAULTS.transform.max_split },
      { timeout: 5000, max_split: 3 },
    ]);
    expect(config.transforms[1]!.options).toEqual({ path: "./b.mjs", export: "default" });
  });

  it("refuses a bad limit with its path", () => {
    const issues = invalid(withTransforms("  - { type: validate, schema: ./s.json, max_split: 0, timout: 1s }"));
    expect(issues.map((i) => [i.path, i.message])).toEqual([
      ["transforms[0].max_split", "Too small: expected number to be >0"],
      ["transforms[0].timout", 'unknown key "timout"; did you mean "timeout"?'],
    ]);
  });
});
