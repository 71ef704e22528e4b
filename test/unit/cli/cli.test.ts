/**
 * The CLI in-process: `main(argv, io)` with captured streams. `validate` and its exit codes,
 * `run` end to end on SQLite (summary JSON shape, summary table, dead letters, malformed input).
 */
import { existsSync } from "node:fs";
import { mkdtemp, open, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import Database from "better-sqlite3";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { main } from "../../../src/cli/main.js";
import { MAX_ALIAS_EXPANSIONS } from "../../../src/config/load.js";
import { runCli } from "../../helpers/cli.js";
import { readDeadLetters } from "../../../src/sinks/dead-letter-sqlite.js";
import { fingerprintOf, generationToken, identityOf } from "../../../src/sources/file/identity.js";

interface Captured {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

function capture(): { stream: Writable; text: () => string } {
  const chunks: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer | string, _encoding, done) {
      chunks.push(String(chunk));
      done();
    },
  });
  return { stream, text: () => chunks.join("") };
}

async function cli(...argv: string[]): Promise<Captured> {
  const out = capture();
  const err = capture();
  const code = await main(argv, { stdout: out.stream, stderr: err.stream });
  return { code, stdout: out.text(), stderr: err.text() };
}

function rows(db: string, table = "records"): { id: string; payload: string }[] {
  const conn = new Database(db, { readonly: true, fileMustExist: true });
  try {
    return conn.prepare(`SELECT id, payload FROM ${table} ORDER BY id`).all() as { id: string; payload: string }[];
  } finally {
    conn.close();
  }
}

interface Summary {
  records: { received: number; delivered: number; new: number; already_present: number; dead_lettered: number; dropped: number; retried: number };
  sinks: Record<string, { delivered: number; new: number; already_present: number; dead_lettered: number }>;
  elapsed_seconds: number;
}

/** Reads the summary file and checks it has exactly DESIGN.md's shape, plus the split of `delivered` into new and already present. */
async function readSummary(file: string, sinkNames: string[]): Promise<Summary> {
  const s = JSON.parse(await readFile(file, "utf8")) as Summary;
  expect(Object.keys(s).sort()).toEqual(["elapsed_seconds", "records", "sinks"]);
  expect(Object.keys(s.records).sort()).toEqual(["already_present", "dead_lettered", "delivered", "dropped", "new", "received", "retried"]);
  for (const v of Object.values(s.records)) expect(Number.isInteger(v) && v >= 0).toBe(true);
  expect(s.records.new + s.records.already_present).toBe(s.records.delivered);
  expect(Object.keys(s.sinks).sort()).toEqual([...sinkNames].sort());
  for (const sink of Object.values(s.sinks)) {
    expect(Object.keys(sink).sort()).toEqual(["already_present", "dead_lettered", "delivered", "new"]);
    for (const v of Object.values(sink)) expect(Number.isInteger(v) && v >= 0).toBe(true);
    expect(sink.new + sink.already_present).toBe(sink.delivered);
  }
  expect(typeof s.elapsed_seconds).toBe("number");
  expect(s.elapsed_seconds).toBeGreaterThan(0);
  return s;
}

let dir: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "sluice-cli-"));
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function config(text: string, name = "pipeline.yaml"): Promise<string> {
  const file = join(dir, name);
  await writeFile(file, text);
  return file;
}

describe("sluice validate", () => {
  it("exits 0 on the demo pipeline", async () => {
    const r = await cli("validate", "examples/demo/pipeline.yaml");
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("examples/demo/pipeline.yaml: valid");
    expect(r.stdout).toContain("1 source(s), 2 transform(s), 1 sink(s)");
  });

  it("exits 2 with every error, its path and line, on a bad config", async () => {
    const file = await config(`data_dir: ./data
buffer:
  max_recods: 10
sources:
  gen:
    type: generator
    cout: 5
  other:
    type: kafka
sinks:
  db:
    type: sqlite
    path: ./x.db
    retries: 3
    batch: { max_wait: soon }
`);
    const r = await cli("validate", file);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe("");
    const lines = r.stderr.trim().split("\n");
    expect(lines).toContain(`${file}:3:3 buffer.max_recods: unknown key "max_recods"; did you mean "max_records"?`);
    expect(lines).toContain(`${file}:7:5 sources.gen.cout: unknown key "cout"; did you mean "count"?`);
    expect(r.stderr).toMatch(new RegExp(`${file}:9:\\d+ sources\\.other\\.type: unknown source type "kafka"`));
    expect(lines).toContain(`${file}:14:5 sinks.db.retries: unknown key "retries"; it is called "retry.max_attempts"`);
    expect(r.stderr).toMatch(new RegExp(`${file}:15:\\d+ sinks\\.db\\.batch\\.max_wait: "soon" is not a duration`));
    expect(lines.at(-1)).toBe(`5 errors in ${file}`);
  });

  it("exits 2 on a missing file", async () => {
    const missing = join(dir, "nope.yaml");
    const r = await cli("validate", missing);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`cannot read ${missing}`);
    expect(r.stderr).toContain("1 error in");
  });

  it("exits 2 on an unknown command, an unknown option and a missing argument", async () => {
    const unknownCommand = await cli("frobnicate", "x.yaml");
    expect(unknownCommand.code).toBe(2);
    expect(unknownCommand.stderr).toContain("unknown command 'frobnicate'");

    const unknownOption = await cli("validate", "--strict", "examples/demo/pipeline.yaml");
    expect(unknownOption.code).toBe(2);
    expect(unknownOption.stderr).toContain("unknown option '--strict'");

    const runOption = await cli("run", "examples/demo/pipeline.yaml", "--sumary-json", "x.json");
    expect(runOption.code).toBe(2);
    expect(runOption.stderr).toContain("unknown option '--sumary-json'");

    const missingArg = await cli("validate");
    expect(missingArg.code).toBe(2);
    expect(missingArg.stderr).toContain("missing required argument 'config'");

    const nothing = await cli();
    expect(nothing.code).toBe(2);
  });

  it("exits 0 on --help", async () => {
    const r = await cli("--help");
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("run");
    expect(r.stdout).toContain("validate");
  });

  it("exits 2 when a transform module does not load and a schema file is not JSON, reporting both", async () => {
    await writeFile(join(dir, "broken.mjs"), "export default function (p) { return p;\n"); // syntax error
    await writeFile(join(dir, "not-json.schema.json"), "{ type: object, this is not json");
    await writeFile(join(dir, "fine.mjs"), "export default (p) => p;\n");
    const file = await config(`sources:
  gen: { type: generator, count: 1 }
transforms:
  - { type: module, path: ./broken.mjs }
  - { type: validate, schema: ./not-json.schema.json }
  - { type: module, path: ./fine.mjs }
  - { type: module, path: ./missing.mjs }
sinks:
  out: { type: blackhole }
`);
    const r = await cli("validate", file);
    expect(r.code).toBe(2);
    const lines = r.stderr.trim().split("\n");
    const t0 = lines.find((l) => l.includes("transforms[0]"));
    const t1 = lines.find((l) => l.includes("transforms[1]"));
    const t3 = lines.find((l) => l.includes("transforms[3]"));
    expect(t0).toContain("broken.mjs");
    expect(t0).toContain("could not be loaded");
    expect(t1).toContain("not-json.schema.json");
    expect(t1).toContain("is not JSON");
    expect(t3).toContain("missing.mjs");
    expect(r.stderr).not.toContain("transforms[2]");
    expect(lines.at(-1)).toBe(`3 errors in ${file}`);
  });

  it("run refuses the same config with exit 2 before creating anything", async () => {
    await writeFile(join(dir, "broken.mjs"), "export default 42;\n");
    const file = await config(`data_dir: ${join(dir, "data")}
sources:
  gen: { type: generator, count: 1 }
transforms:
  - { type: module, path: ./broken.mjs }
sinks:
  out: { type: blackhole }
`);
    const r = await cli("run", file);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("transforms[0]");
    expect(r.stderr).toContain("must be a function");
    expect(existsSync(join(dir, "data"))).toBe(false);
  });

  it("run exits 2 with the config errors of a bad config", async () => {
    const file = await config("sources:\n  gen: { type: generator, cout: 1 }\nsinks:\n  out: { type: blackhole }\n");
    const r = await cli("run", file);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('sources.gen.cout: unknown key "cout"');
  });
});

describe("sluice validate and run: the file a file source reads", () => {
  const pipelineReading = (path: string, follow: boolean) =>
    `data_dir: ${join(dir, "data")}\nsources:\n  logs: { type: file, path: ${path}, follow: ${follow} }\nsinks:\n  out: { type: blackhole }\n`;

  it("refuses a file that does not exist, with its path, before run creates anything", async () => {
    const missing = join(dir, "nope.ndjson");
    const file = await config(pipelineReading(missing, false));
    for (const command of ["validate", "run"]) {
      const r = await cli(command, file);
      expect(r.code, r.stderr).toBe(2);
      expect(r.stderr).toBe(`${file} sources.logs.path: ${missing} does not exist\n1 error in ${file}\n`);
    }
    expect(existsSync(join(dir, "data"))).toBe(false);
  });

  it("refuses a directory, and a followed file whose directory does not exist", async () => {
    const asDir = await config(pipelineReading(dir, false), "dir.yaml");
    expect((await cli("validate", asDir)).stderr).toContain(`sources.logs.path: ${dir} is a directory, not a file`);
    const missingDir = join(dir, "no-such-dir", "app.ndjson");
    const followed = await config(pipelineReading(missingDir, true), "followed.yaml");
    const r = await cli("validate", followed);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`sources.logs.path: ${missingDir} does not exist, nor does its directory ${join(dir, "no-such-dir")}`);
  });

  it("only warns about a followed file that does not exist yet in a directory that does", async () => {
    const later = join(dir, "later.ndjson");
    const file = await config(pipelineReading(later, true));
    const r = await cli("validate", file);
    expect(r.code).toBe(0);
    expect(r.stderr).toBe(`${file} warning: sources.logs.path: ${later} does not exist yet; with follow the source waits for it\n`);
    expect(r.stdout).toContain("valid");
  });

  it("resolves a relative path against the working directory, as the source does", async () => {
    const file = await config(pipelineReading("./test/unit/cli/cli.test.ts", false));
    expect((await cli("validate", file)).code).toBe(0);
  });
});

describe("sluice validate: YAML aliases", () => {
  it("accepts a sink block shared by 120 aliases", async () => {
    const aliases = Array.from({ length: 120 }, (_, i) => `  s${i + 1}: *sink`).join("\n");
    const file = await config(`sources:\n  gen: { type: generator, count: 1 }\nsinks:\n  s0: &sink { type: blackhole }\n${aliases}\n`);
    const r = await cli("validate", file);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("121 sink(s)");
  });

  it("refuses more uses than the limit and a billion laughs with exit 2, one line with file and line, no stack", async () => {
    const aliases = Array.from({ length: MAX_ALIAS_EXPANSIONS + 1 }, (_, i) => `  s${i + 1}: *sink`).join("\n");
    const tooMany = await config(`sources:\n  gen: { type: generator, count: 1 }\nsinks:\n  s0: &sink { type: blackhole }\n${aliases}\n`, "many.yaml");
    const levels = ['  l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]'];
    for (let i = 1; i < 10; i++) levels.push(`  l${i}: &l${i} [${Array.from({ length: 9 }, () => `*l${i - 1}`).join(", ")}]`);
    const bomb = await config(`sources:\n  gen: { type: generator, count: 1 }\nsinks:\n  out: { type: blackhole }\nlaughs:\n${levels.join("\n")}\n`, "bomb.yaml");
    // A real process: an uncaught error would show here as a stack and exit 1.
    for (const [file, line] of [[tooMany, 5], [bomb, 7]] as const) {
      for (const command of ["validate", "run"]) {
        const r = await runCli([command, file], { cwd: dir });
        expect(r.code, r.stderr).toBe(2);
        expect(r.stderr.trim().split("\n")).toEqual([expect.stringMatching(new RegExp(`^${file}:${line}:\\d+ \\(yaml\\): too many alias expansions`)), `1 error in ${file}`]);
        expect(r.stderr).not.toMatch(/^\s+at |ReferenceError/m);
      }
    }
  });
});

describe("sluice run", () => {
  it("runs a generator into SQLite, writes the summary JSON and prints the summary table", async () => {
    const db = join(dir, "out.db");
    const summaryFile = join(dir, "summary.json");
    const file = await config(`data_dir: ${join(dir, "data")}
observability: { log_level: error }
sources:
  gen: { type: generator, count: 2000, seed: 5 }
sinks:
  readings:
    type: sqlite
    path: ${db}
    batch: { max_records: 300, max_wait: 5ms }
`);
    const r = await cli("run", file, "--summary-json", summaryFile);
    expect(r.code, r.stderr).toBe(0);

    const s = await readSummary(summaryFile, ["readings"]);
    expect(s.records).toEqual({ received: 2000, delivered: 2000, new: 2000, already_present: 0, dead_lettered: 0, dropped: 0, retried: 0 });
    expect(s.sinks.readings).toEqual({ delivered: 2000, new: 2000, already_present: 0, dead_lettered: 0 });

    const stored = rows(db);
    expect(stored).toHaveLength(s.records.delivered);
    expect(new Set(stored.map((row) => row.id))).toEqual(new Set(Array.from({ length: 2000 }, (_, i) => `gen-${i + 1}`)));
    expect(JSON.parse(stored[0]!.payload)).toMatchObject({ sensor: expect.stringMatching(/^sensor-/), unit: "C" });
    expect(existsSync(join(dir, "data"))).toBe(true);

    expect(r.stderr).toMatch(/sluice run completed in \d+\.\d s/);
    expect(r.stderr).toMatch(/received\s+2,000/);
    expect(r.stderr).toMatch(/delivered\s+2,000/);
    expect(r.stderr).toMatch(/dead-lettered\s+0/);
    expect(r.stderr).toMatch(/delivered\s+2,000 {2}\(2,000 new, 0 already present\)/);
    expect(r.stderr).toMatch(/readings\s+2,000\s+2,000\s+0\s+0/);
    expect(r.stdout).toBe("");
  });

  it("dead-letters chaos's permanent failures with ERR_CHAOS_PERMANENT and accounts for every record", async () => {
    const db = join(dir, "out.db");
    const summaryFile = join(dir, "summary.json");
    const file = await config(`data_dir: ${join(dir, "data")}
observability: { log_level: silent }
sources:
  gen: { type: generator, count: 2000, seed: 9 }
sinks:
  readings:
    type: sqlite
    path: ${db}
    batch: { max_records: 250, max_wait: 5ms }
    retry: { max_attempts: 8, initial_backoff: 1ms, max_backoff: 5ms }
    chaos: { failure_rate: 0.2, permanent_failure_rate: 0.05, seed: 11 }
`);
    const r = await cli("run", file, "--summary-json", summaryFile);
    expect(r.code, r.stderr).toBe(0);
    const s = await readSummary(summaryFile, ["readings"]);
    const { received, delivered, dead_lettered, dropped, retried } = s.records;
    expect(received).toBe(2000);
    expect(received).toBe(delivered + dead_lettered + dropped);
    // 5% of 2000: far from 0 and far from all.
    expect(dead_lettered).toBeGreaterThan(40);
    expect(dead_lettered).toBeLessThan(200);
    expect(retried).toBeGreaterThan(0);
    expect(s.sinks.readings).toEqual({ delivered, new: delivered, already_present: 0, dead_lettered });

    const dead = readDeadLetters(join(dir, "data", "dlq.db"));
    expect(dead).toHaveLength(dead_lettered);
    for (const d of dead) {
      expect(d.code).toBe("ERR_CHAOS_PERMANENT");
      expect(d.sink).toBe("readings");
      expect(d.source).toBe("gen");
      expect(d.attempts).toBeGreaterThanOrEqual(1);
      expect(JSON.parse(d.payload!)).toMatchObject({ id: d.record_id });
    }
    const stored = rows(db).map((row) => row.id);
    expect(stored).toHaveLength(delivered);
    // Every generated record is in exactly one place: the table or the dead letters.
    const all = [...stored, ...dead.map((d) => d.record_id)];
    expect(new Set(all).size).toBe(2000);
    expect(all).toHaveLength(2000);

    expect(r.stderr).toContain(`dead letters: ${join(dir, "data", "dlq.db")}`);
  });

  it("dead-letters malformed lines of a file with their path:line and delivers the rest", async () => {
    const input = join(dir, "input.ndjson");
    const bad = new Map<number, string>([
      [17, '{"id":"r-17","value":'],
      [500, "[1,2,3]"],
      [1000, "not json at all"],
    ]);
    const lines: string[] = [];
    for (let n = 1; n <= 1000; n++) lines.push(bad.get(n) ?? JSON.stringify({ id: `r-${n}`, sensor: `s-${n % 7}`, value: n / 10 }));
    await writeFile(input, `${lines.join("\n")}\n`);
    const db = join(dir, "out.db");
    const summaryFile = join(dir, "summary.json");
    const file = await config(`data_dir: ${join(dir, "data")}
observability: { log_level: silent }
sources:
  lines: { type: file, path: ${input} }
sinks:
  db: { type: sqlite, path: ${db} }
`);
    const r = await cli("run", file, "--summary-json", summaryFile);
    expect(r.code, r.stderr).toBe(0);

    const s = await readSummary(summaryFile, ["db"]);
    expect(s.records).toMatchObject({ received: 1000, delivered: 997, dead_lettered: 3, dropped: 0 });

    const dead = readDeadLetters(join(dir, "data", "dlq.db"));
    expect(dead).toHaveLength(3);
    expect(dead.map((d) => d.code)).toEqual(["ERR_RECORD_MALFORMED", "ERR_RECORD_MALFORMED", "ERR_RECORD_MALFORMED"]);
    const byLine = new Map(dead.map((d) => [Number(/input\.ndjson:(\d+)/.exec(d.message)?.[1]), d]));
    expect([...byLine.keys()].sort((a, b) => a - b)).toEqual([17, 500, 1000]);
    for (const [line, raw] of bad) {
      const d = byLine.get(line)!;
      expect(d.message).toContain(`${input}:${line}`);
      expect(d.raw).toBe(raw);
      expect(d.sink).toBe("source:lines");
    }

    const stored = rows(db).map((row) => row.id);
    expect(stored).toHaveLength(997);
    expect(stored).not.toContain("r-17");
    expect(stored).toContain("r-999");
  });

  it("on a rerun over the same file, splits delivered into new and already present, and keeps one dead letter per record and sink", async () => {
    const input = join(dir, "input.ndjson");
    // Every 100th record breaks the table's CHECK (a permanent failure of that record in sink db); line 50 is not JSON.
    const line = (n: number) => (n === 50 ? "not json" : JSON.stringify({ id: `r-${n}`, bad: n % 100 === 7 }));
    const write = (from: number, to: number) => writeFile(input, `${Array.from({ length: to - from + 1 }, (_, i) => line(from + i)).join("\n")}\n`, { flag: "a" });
    await write(1, 1000);
    const db = join(dir, "out.db");
    const setup = new Database(db);
    setup.exec("CREATE TABLE records (id TEXT PRIMARY KEY, key TEXT, payload TEXT, event_time TEXT, ingested_at TEXT, CHECK (json_extract(payload, '$.bad') = 0))");
    setup.close();
    const summaryFile = join(dir, "summary.json");
    const file = await config(`data_dir: ${join(dir, "data")}
observability: { log_level: silent }
sources:
  lines: { type: file, path: ${input} }
sinks:
  db: { type: sqlite, path: ${db} }
`);
    const first = await cli("run", file, "--summary-json", summaryFile);
    expect(first.code, first.stderr).toBe(0);
    expect((await readSummary(summaryFile, ["db"])).records).toMatchObject({ received: 1000, delivered: 989, new: 989, already_present: 0, dead_lettered: 11 });
    expect(first.stderr).toMatch(/delivered\s+989 {2}\(989 new, 0 already present\)/);

    // The next run reads the whole file again (its checkpoint is gone, as after a lost data_dir), 500 lines longer.
    await write(1001, 1500);
    await rm(join(dir, "data", "checkpoints"), { recursive: true });
    const second = await cli("run", file, "--summary-json", summaryFile);
    expect(second.code, second.stderr).toBe(0);
    const s = await readSummary(summaryFile, ["db"]);
    expect(s.records).toMatchObject({ received: 1500, delivered: 1484, new: 495, already_present: 989, dead_lettered: 16 });
    expect(s.sinks.db).toEqual({ delivered: 1484, new: 495, already_present: 989, dead_lettered: 15 });
    expect(second.stderr).toMatch(/delivered\s+1,484 {2}\(495 new, 989 already present\)/);
    expect(second.stderr).toMatch(/db\s+1,484\s+495\s+989\s+15/);
    expect(rows(db)).toHaveLength(1484);

    // The malformed line's id is its file generation (the same file, grown) and byte offset: the same in both runs.
    const malformedAt = Array.from({ length: 49 }, (_, i) => line(i + 1).length + 1).reduce((a, b) => a + b);
    const fh = await open(input, "r");
    const token = generationToken(await identityOf(fh), await fingerprintOf(fh), 0);
    await fh.close();
    const dead = readDeadLetters(join(dir, "data", "dlq.db"));
    const failing = [7, 107, 207, 307, 407, 507, 607, 707, 807, 907, 1007, 1107, 1207, 1307, 1407];
    expect(dead.map((d) => `${d.record_id} ${d.sink}`).sort()).toEqual([`lines:${token}:${malformedAt} source:lines`, ...failing.map((n) => `r-${n} db`)].sort());
    // Dead-lettered in both runs: one entry each, with the attempts of both.
    for (const d of dead) expect([d.record_id, d.attempts]).toEqual([d.record_id, d.sink === "db" ? (Number(d.record_id.slice(2)) < 1000 ? 2 : 1) : 0]);
  });
});

describe("sluice components", () => {
  it("lists every built-in type with its options, defaults and descriptions", async () => {
    const r = await cli("components");
    expect(r.code).toBe(0);
    for (const type of ["source generator", "source file", "source redis_streams", "transform module", "transform validate", "sink sqlite", "sink file", "sink stdout", "sink blackhole", "sink redis_streams", "sink nats_jetstream", "source rabbitmq", "sink rabbitmq", "dead_letter sqlite"]) {
      expect(r.stdout).toContain(`${type}:`);
    }
    expect(r.stdout).toMatch(/^\s+rotate_bytes\s+default 67108864\. Finish a segment/m);
    expect(r.stdout).toMatch(/^\s+path\s+required\./m);
  });

  it("shows one type, and exits 2 naming the valid types for an unknown one", async () => {
    const one = await cli("components", "sqlite");
    expect(one.code).toBe(0);
    expect(one.stdout).toContain("sink sqlite:");
    expect(one.stdout).toContain("dead_letter sqlite:");
    expect(one.stdout).not.toContain("sink file:");
    const bad = await cli("components", "kafka");
    expect(bad.code).toBe(2);
    expect(bad.stderr).toBe(
      'unknown component kind or type "kafka"; kinds: source, transform, sink, dead_letter; types by kind: source: generator, file, http, redis_streams, nats_jetstream, mqtt, rabbitmq; transform: module, validate; sink: sqlite, postgres, file, stdout, blackhole, redis_streams, nats_jetstream, rabbitmq, parquet; dead_letter: sqlite\n',
    );
  });

  it.each([
    ["sink", "sink", ["sqlite", "postgres", "file", "stdout", "blackhole", "redis_streams", "nats_jetstream", "rabbitmq", "parquet"]],
    ["sinks", "sink", ["sqlite", "postgres", "file", "stdout", "blackhole", "redis_streams", "nats_jetstream", "rabbitmq", "parquet"]],
    ["source", "source", ["generator", "file", "http", "redis_streams", "nats_jetstream", "mqtt", "rabbitmq"]],
    ["sources", "source", ["generator", "file", "http", "redis_streams", "nats_jetstream", "mqtt", "rabbitmq"]],
    ["transform", "transform", ["module", "validate"]],
    ["transforms", "transform", ["module", "validate"]],
    ["dead_letter", "dead_letter", ["sqlite"]],
  ])("takes a kind, %s, and shows that kind's types only", async (word, kind, types) => {
    const r = await cli("components", word);
    expect(r.code, r.stderr).toBe(0);
    const headers = r.stdout.split("\n").filter((l) => /^\S+ \S+: /.test(l));
    expect(headers.map((l) => l.slice(0, l.indexOf(":")))).toEqual(types.map((t) => `${kind} ${t}`));
  });
});

describe("sluice --version", () => {
  it.each(["--version", "-V"])("%s prints the package's version and exits 0", async (flag) => {
    const pkg = JSON.parse(await readFile("package.json", "utf8")) as { version: string };
    const r = await cli(flag);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(`${pkg.version}\n`);
  });
});
