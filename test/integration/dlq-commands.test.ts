/**
 * `sluice dlq list|show|replay|purge` as child processes against a real SQLite dead-letter store
 * and a real SQLite sink: filters and --json, replay that succeeds and that fails again, --rate,
 * a replay SIGKILLed mid-way and run again, purge, resolved marking by a normal run, and the
 * refusal to replay while a run holds data_dir.
 */
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import Database from "better-sqlite3";
import { afterAll, afterEach, beforeEach, describe, expect, it } from "vitest";
import { main } from "../../src/cli/main.js";
import type { DeadLetter } from "../../src/components/contracts.js";
import { acquireDirLock } from "../../src/core/dir-lock.js";
import { createSqliteDeadLetterStore, readDeadLetters, type DeadLetterRow } from "../../src/sinks/dead-letter-sqlite.js";
import { killClis, runCli, startSluice, type CliResult } from "../helpers/cli.js";
import { makeRecords } from "../helpers/records.js";

let dir: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "sluice-dlq-cli-"));
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

afterAll(() => killClis());

const dlqPath = () => join(dir, "data", "dlq.db");
const rows = (): DeadLetterRow[] => readDeadLetters(dlqPath());

/** Writes `<name>.yaml`: a generator of `count` records into sqlite sink `db` (out.db), with `db` settings `dbExtra`. */
async function pipeline(name: string, o: { count?: number; dbExtra?: string; extra?: string[] } = {}): Promise<string> {
  const file = join(dir, `${name}.yaml`);
  await writeFile(
    file,
    [
      `data_dir: ${join(dir, "data")}`,
      "sources:",
      `  gen: { type: generator, count: ${o.count ?? 20} }`,
      "sinks:",
      `  db: { type: sqlite, path: ${join(dir, "out.db")}${o.dbExtra === undefined ? "" : `, ${o.dbExtra}`} }`,
      ...(o.extra ?? []),
    ].join("\n"),
  );
  return file;
}

const ALWAYS_FAILS = "chaos: { permanent_failure_rate: 1 }";

function sluice(argv: readonly string[]): Promise<CliResult> {
  return runCli(argv, { cwd: dir });
}

/** The CLI in this process (its config paths are absolute): for output that needs no real process. */
async function inProcess(argv: readonly string[]): Promise<CliResult> {
  let stdout = "";
  let stderr = "";
  const sink = (add: (s: string) => void) =>
    new Writable({
      write(chunk: Buffer, _encoding, done) {
        add(chunk.toString());
        done();
      },
    });
  const code = await main(argv, { stdout: sink((s) => (stdout += s)), stderr: sink((s) => (stderr += s)) });
  return { code, stdout, stderr };
}

/** Runs the pipeline to its end and checks it exited 0. */
async function run(file: string): Promise<void> {
  const r = await sluice(["run", file, "--no-progress"]);
  expect(r.code, r.stderr).toBe(0);
}

function sinkIds(): string[] {
  const db = new Database(join(dir, "out.db"), { readonly: true });
  try {
    return (db.prepare("SELECT id FROM records ORDER BY id").all() as { id: string }[]).map((r) => r.id);
  } finally {
    db.close();
  }
}

const ids = (n: number, from = 1) => Array.from({ length: n }, (_, i) => `gen-${i + from}`).sort();
const ndjson = (text: string) =>
  text
    .trim()
    .split("\n")
    .filter((l) => l !== "")
    .map((l) => JSON.parse(l) as Record<string, unknown>);

/** Dead letters of several sinks, codes and times, written through the store itself. */
async function seed(): Promise<void> {
  const store = createSqliteDeadLetterStore(dlqPath());
  await store.open();
  const records = makeRecords(6);
  const t = (h: number) => Date.parse("2026-01-01T00:00:00Z") + h * 3_600_000;
  const letter = (i: number, sink: string, code: string, hour: number): DeadLetter => ({
    record: records[i]!,
    raw: undefined,
    sink,
    code,
    message: `failed ${i}`,
    attempts: 2,
    firstFailureAt: t(hour),
    lastFailureAt: t(hour),
  });
  await store.write([
    letter(0, "db", "ERR_SINK_REJECTED", 0),
    letter(1, "db", "ERR_CHAOS_PERMANENT", 1),
    letter(2, "warehouse", "ERR_SINK_REJECTED", 2),
    letter(3, "warehouse", "ERR_SINK_REJECTED", 3),
    letter(4, "transform:validate", "ERR_RECORD_INVALID", 4),
    letter(5, "db", "ERR_SINK_REJECTED", 5),
  ]);
  await store.close();
}

describe("sluice dlq list and show", () => {
  it("selects by sink, code, id, time and limit; --json prints one entry per line with stable fields", async () => {
    const file = await pipeline("p");
    await seed();
    const list = async (...args: string[]) => {
      const r = await inProcess(["dlq", "list", file, "--json", ...args]);
      expect(r.code, r.stderr).toBe(0);
      return ndjson(r.stdout);
    };
    const all = await list();
    expect(all.map((e) => e.seq)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(Object.keys(all[0]!)).toEqual([
      "seq", "record_id", "source", "sink", "status", "code", "message", "attempts",
      "first_failure_at", "last_failure_at", "replayed_at", "resolved_at", "payload", "raw",
    ]);
    expect(all[0]).toMatchObject({ record_id: "r-0", sink: "db", status: "pending", code: "ERR_SINK_REJECTED", attempts: 2, last_failure_at: "2026-01-01T00:00:00.000Z", replayed_at: null, raw: null });
    expect(all[0]!.payload).toEqual(makeRecords(1)[0]!.payload);

    expect((await list("--sink", "warehouse")).map((e) => e.seq)).toEqual([3, 4]);
    expect((await list("--sink", "warehouse", "--sink", "transform:validate")).map((e) => e.seq)).toEqual([3, 4, 5]);
    expect((await list("--code", "ERR_SINK_REJECTED", "--sink", "db")).map((e) => e.seq)).toEqual([1, 6]);
    expect((await list("--id", "r-2", "--id", "r-5")).map((e) => e.seq)).toEqual([3, 6]);
    expect((await list("--since", "2026-01-01T02:00:00Z", "--until", "2026-01-01T05:00:00Z")).map((e) => e.seq)).toEqual([3, 4, 5]);
    expect((await list("--limit", "2")).map((e) => e.seq)).toEqual([1, 2]);
    // A duration counts back from now: every seeded entry is older than 2 hours.
    expect(await list("--since", "2h")).toEqual([]);
    expect(await list("--status", "replayed")).toEqual([]);

    const table = await inProcess(["dlq", "list", file, "--sink", "db"]);
    expect(table.code).toBe(0);
    expect(table.stdout).toMatch(/^SEQ\s+RECORD ID\s+SINK\s+STATUS\s+CODE\s+ATTEMPTS\s+LAST FAILURE\s+MESSAGE$/m);
    expect(table.stdout).toMatch(/^6\s+r-5\s+db\s+pending\s+ERR_SINK_REJECTED\s+2\s+2026-01-01T05:00:00.000Z\s+failed 5$/m);
    expect(table.stdout.trim().split("\n").at(-1)).toBe("3 entries: 3 pending; by sink: db 3; by code: ERR_SINK_REJECTED 2, ERR_CHAOS_PERMANENT 1");

    const show = await inProcess(["dlq", "show", file, "--id", "r-1"]);
    expect(show.code).toBe(0);
    expect(show.stdout).toMatch(/^entry 2$/m);
    expect(show.stdout).toMatch(/^ {2}code {14}ERR_CHAOS_PERMANENT$/m);
    expect(show.stdout).toMatch(/^ {2}payload {11}\{$/m);
    expect(show.stdout).toContain('"id": "r-1"');

    const bad = await inProcess(["dlq", "list", file, "--since", "yesterday"]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain("--since yesterday: not an ISO 8601 date");
  });
});

describe("sluice dlq replay", () => {
  it("delivers the entries to the sink that failed them and marks them replayed; nothing is deleted", async () => {
    await run(await pipeline("failing", { dbExtra: ALWAYS_FAILS }));
    expect(rows().map((r) => r.status)).toEqual(Array(20).fill("pending"));
    expect(sinkIds()).toEqual([]);

    const fixed = await pipeline("fixed");
    const before = Date.now();
    const r = await sluice(["dlq", "replay", fixed]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe("replay completed: 20 selected, 20 replayed (0 already present in the sink), 0 failed again, 0 skipped\n");
    expect(sinkIds()).toEqual(ids(20));
    const after = rows();
    expect(after).toHaveLength(20);
    for (const row of after) {
      expect(row.status).toBe("replayed");
      expect(Date.parse(row.replayed_at!)).toBeGreaterThanOrEqual(before - 1000);
    }
    // Only pending entries are replayed by default: nothing is left.
    const again = await sluice(["dlq", "replay", fixed, "--json"]);
    expect(ndjson(again.stdout)).toEqual([{ selected: 0, replayed: 0, failed_again: 0, skipped: 0, already_present: 0, outcome: "completed" }]);
  });

  it("keeps an entry that fails again pending, with its attempts added up, the new error and failure time", async () => {
    const file = await pipeline("failing", { count: 5, dbExtra: "chaos: { permanent_failure_rate: 1 }, retry: { max_attempts: 1 }" });
    await run(file);
    const first = rows();
    expect(first.map((r) => r.attempts)).toEqual([1, 1, 1, 1, 1]);
    const failing = await pipeline("failing-harder", { count: 5, dbExtra: "chaos: { failure_rate: 1 }, retry: { max_attempts: 3, initial_backoff: 1, max_backoff: 1 }" });
    const r = await sluice(["dlq", "replay", failing, "--json"]);
    expect(r.code, r.stderr).toBe(1);
    expect(ndjson(r.stdout)).toEqual([{ selected: 5, replayed: 0, failed_again: 5, skipped: 0, already_present: 0, outcome: "completed" }]);
    const after = rows();
    for (const [i, row] of after.entries()) {
      expect(row).toMatchObject({ status: "pending", attempts: 1 + 3, code: "ERR_CHAOS_TRANSIENT", replayed_at: null, first_failure_at: first[i]!.first_failure_at });
      expect(row.last_failure_at! > first[i]!.last_failure_at!).toBe(true);
    }
    expect(sinkIds()).toEqual([]);
  });

  it("re-parses raw input: a JSON object now goes through, still-unparsable input stays pending", async () => {
    const file = await pipeline("p");
    const store = createSqliteDeadLetterStore(dlqPath());
    await store.open();
    const [a, b] = makeRecords(2);
    const at = Date.now() - 60_000;
    const malformed = (record: typeof a, raw: string): DeadLetter => ({ record: { ...record!, source: "gen", payload: {} }, raw, sink: "source:gen", code: "ERR_RECORD_MALFORMED", message: "not JSON", attempts: 0, firstFailureAt: at, lastFailureAt: at });
    await store.write([malformed(a, '{"reading": 1}'), malformed(b, "{broken")]);
    await store.close();

    const r = await sluice(["dlq", "replay", file, "--json"]);
    expect(r.code, r.stderr).toBe(1);
    expect(ndjson(r.stdout)[0]).toMatchObject({ selected: 2, replayed: 1, failed_again: 1 });
    const [ok, still] = rows();
    expect(ok).toMatchObject({ record_id: "r-0", status: "replayed" });
    expect(still).toMatchObject({ record_id: "r-1", status: "pending", code: "ERR_RECORD_MALFORMED", raw: "{broken" });
    expect(still!.message).toMatch(/^still not JSON on replay/);
    // The record keeps its id; the payload parsed from the raw input is what the sink stores.
    const db = new Database(join(dir, "out.db"), { readonly: true });
    const stored = db.prepare("SELECT id, payload FROM records").all() as { id: string; payload: string }[];
    expect(stored.map((row) => [row.id, JSON.parse(row.payload)])).toEqual([["r-0", { reading: 1 }]]);
    db.close();
  });

  it("sends entries to another sink with --to, and skips entries of a sink the config no longer has", async () => {
    const file = join(dir, "two-sinks.yaml");
    await writeFile(file, ["data_dir: ./data", "sources:", "  gen: { type: generator, count: 1 }", "sinks:", "  db: { type: sqlite, path: ./out.db }", "  spare: { type: sqlite, path: ./spare.db }"].join("\n"));
    await seed();
    const skipped = await sluice(["dlq", "replay", file, "--sink", "warehouse", "--json"]);
    expect(ndjson(skipped.stdout)[0]).toMatchObject({ selected: 2, replayed: 0, skipped: 2 });
    expect(skipped.stderr).toContain("sink warehouse is not in the config (replay it elsewhere with --to <sink>)");
    expect(rows().filter((r) => r.sink === "warehouse").map((r) => r.status)).toEqual(["pending", "pending"]);

    const moved = await sluice(["dlq", "replay", file, "--sink", "warehouse", "--to", "spare", "--json"]);
    expect(moved.code, moved.stderr).toBe(0);
    expect(ndjson(moved.stdout)[0]).toMatchObject({ selected: 2, replayed: 2 });
    const spare = new Database(join(dir, "spare.db"), { readonly: true });
    expect(spare.prepare("SELECT id FROM records ORDER BY id").all()).toEqual([{ id: "r-2" }, { id: "r-3" }]);
    spare.close();

    const unknown = await sluice(["dlq", "replay", file, "--to", "nowhere"]);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain("--to nowhere: no such sink");
  });

  it("keeps to --rate: 20 entries at 10/s take about 2 s", async () => {
    await run(await pipeline("failing", { dbExtra: ALWAYS_FAILS }));
    const r = await sluice(["dlq", "replay", await pipeline("fixed", { dbExtra: "batch: { max_records: 1 }" }), "--rate", "10"]);
    expect(r.code, r.stderr).toBe(0);
    const times = rows().map((row) => Date.parse(row.replayed_at!));
    const span = Math.max(...times) - Math.min(...times);
    // The last entry goes out 19/10 s after the first; chunks of one (a tenth of a second's worth).
    expect(span).toBeGreaterThanOrEqual(1700);
    expect(span).toBeLessThan(6000);
  });

  it("interrupted by SIGKILL and run again, delivers each entry once and marks every one replayed", async () => {
    await run(await pipeline("failing", { count: 40, dbExtra: ALWAYS_FAILS }));
    // A slow sink: one record per batch, 100 ms each; five entries per chunk (the unit of marking).
    const slow = await pipeline("slow", { count: 40, dbExtra: "batch: { max_records: 1 }, chaos: { latency: 100ms }", extra: ["buffer: { chunk_size: 5 }"] });
    const first = startSluice(["dlq", "replay", slow, "--json"], dir);
    const deadline = Date.now() + 30_000;
    while (rows().filter((r) => r.status === "replayed").length < 10) {
      expect(Date.now(), first.output()).toBeLessThan(deadline);
      await new Promise((r) => setTimeout(r, 20));
    }
    first.process.kill("SIGKILL");
    expect((await first.exited).signal).toBe("SIGKILL");
    const markedBefore = rows().filter((r) => r.status === "replayed").length;
    expect(markedBefore).toBeLessThan(40);
    const inSinkBefore = sinkIds().length;

    const second = await sluice(["dlq", "replay", slow, "--json"]);
    expect(second.code, second.stderr).toBe(0);
    const summary = ndjson(second.stdout)[0]!;
    // The rerun replays exactly the entries not marked; of those, only the ones committed but not
    // yet marked at the kill (at most the rest of one chunk) were already in the sink.
    expect(summary).toMatchObject({ selected: 40 - markedBefore, replayed: 40 - markedBefore, failed_again: 0 });
    expect(summary.already_present).toBe(inSinkBefore - markedBefore);
    expect(summary.already_present as number).toBeLessThanOrEqual(5);
    expect(second.stderr).toContain("took over the lock of a process that is gone");
    expect(sinkIds()).toEqual(ids(40));
    expect(rows().every((r) => r.status === "replayed")).toBe(true);
  });

  it("refuses while a run of the pipeline holds data_dir, and says why", async () => {
    const file = await pipeline("p");
    await seed();
    const lock = await acquireDirLock(join(dir, "data", "pipeline.lock"), `data_dir ${join(dir, "data")}`);
    try {
      const r = await sluice(["dlq", "replay", file]);
      expect(r.code).toBe(1);
      expect(r.stderr).toContain(`sluice dlq replay: refused: data_dir ${join(dir, "data")} is in use by process ${process.pid}`);
      expect(r.stderr).toContain("it runs only while no `sluice run` of this pipeline (nor another replay) does");
      expect(rows().every((row) => row.status === "pending")).toBe(true);
    } finally {
      await lock.release();
    }
    // list, show and purge read and write the store beside a run (WAL): not refused.
    expect((await sluice(["dlq", "list", file])).code).toBe(0);
  });
});

describe("sluice dlq purge", () => {
  it("deletes replayed and resolved entries by default; --all deletes pending ones, only with --yes off a terminal", async () => {
    const file = await pipeline("p", { count: 4 });
    await seed();
    // Entries of sink db get replayed (r-0, r-1, r-5); the others stay pending.
    const replayed = await sluice(["dlq", "replay", file, "--sink", "db"]);
    expect(replayed.code, replayed.stderr).toBe(0);
    expect(rows().map((r) => `${r.seq}:${r.status}`)).toEqual(["1:replayed", "2:replayed", "3:pending", "4:pending", "5:pending", "6:replayed"]);

    const purged = await sluice(["dlq", "purge", file]);
    expect(purged.stdout).toBe("purged 3 entries\n");
    expect(rows().map((r) => r.seq)).toEqual([3, 4, 5]);

    const refused = await sluice(["dlq", "purge", file, "--all", "--sink", "warehouse"]);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toContain("would delete 2 entries, 2 of them pending (never delivered); add --yes");
    expect(rows().map((r) => r.seq)).toEqual([3, 4, 5]);

    const pendingWithoutAll = await sluice(["dlq", "purge", file, "--status", "pending"]);
    expect(pendingWithoutAll.code).toBe(2);

    const all = await sluice(["dlq", "purge", file, "--all", "--yes", "--sink", "warehouse", "--json"]);
    expect(ndjson(all.stdout)).toEqual([{ purged: 2 }]);
    expect(rows().map((r) => r.seq)).toEqual([5]);
  });
});

describe("resolved marking", () => {
  it("a normal run that delivers a dead-lettered record marks its entry of that sink resolved, and no other", async () => {
    await run(await pipeline("failing", { count: 10, dbExtra: ALWAYS_FAILS }));
    // An entry of the same record id but another sink: the run below does not deliver to it.
    const store = createSqliteDeadLetterStore(dlqPath());
    await store.open();
    const [r] = makeRecords(1);
    await store.write([{ record: { ...r!, id: "gen-1" }, raw: undefined, sink: "elsewhere", code: "ERR_SINK_REJECTED", message: "no", attempts: 1, firstFailureAt: Date.now(), lastFailureAt: Date.now() }]);
    await store.close();

    const before = Date.now();
    await run(await pipeline("fixed", { count: 10 }));
    const after = rows();
    const db = after.filter((row) => row.sink === "db");
    expect(db).toHaveLength(10);
    for (const row of db) {
      expect(row.status).toBe("resolved");
      expect(Date.parse(row.resolved_at!)).toBeGreaterThanOrEqual(before - 1000);
    }
    expect(after.find((row) => row.sink === "elsewhere")).toMatchObject({ record_id: "gen-1", status: "pending", resolved_at: null });
    const listed = await sluice(["dlq", "list", join(dir, "fixed.yaml"), "--status", "resolved", "--json"]);
    expect(ndjson(listed.stdout)).toHaveLength(10);
  });
});
