/**
 * The PostgreSQL section of `npm run bench` (issues #3, #15): the same NDJSON rows into the same
 * table shape five ways, each in its own child process, in the same run:
 *
 *   (a) `psql \copy` of the rows as a COPY text file (`id<TAB>payload`, prepared once, untimed): the ceiling;
 *   (b) multi-row `INSERT .. ON CONFLICT (id) DO NOTHING`, 1,000 rows per statement, 4 connections (pg.Pool);
 *   (c) sluice: `file` source -> `module` transform bench/enrich.mjs (changes the payload in place)
 *       -> `postgres` sink, `mode: insert`, library API, defaults, in a node started with the flags
 *       the `sluice` command starts with (bin/sluice.js: a larger young generation);
 *   (d) the same with bench/enrich-copy.mjs, the copying one-liner users write
 *       (`(p) => ({ ...p, processed_at: Date.now() / 1000 })`);
 *   (e) (d) again, same file, same table: every record a duplicate; must add zero rows.
 *
 * Fairness, as measured here:
 * - Same rows: after every run the table is checked (untimed) for exactly N rows, every id equal
 *   to `gen-<payload.seq>`, the sum of `seq`, and a fingerprint of every (id, payload without
 *   `processed_at`) pair that must be equal across contenders, so no contender can win by writing
 *   less or other rows; after a transform every payload must hold `processed_at`. The baselines
 *   write the rows untransformed: they are the ceiling a transform can only approach.
 * - Same shape: (a) and (b) write into a table created here with the DDL the sink documents for
 *   `create_table` (`id text primary key, key text, payload jsonb, event_time timestamptz,
 *   ingested_at timestamptz`), filling `id` and `payload`, `ingested_at` by a `now()` default and
 *   leaving `key` and `event_time` null, which is what the sink writes for records without
 *   `key_field` / `time_field`. For (c) the table is dropped and the sink creates its own; the
 *   report compares the two tables' columns and indexes from the catalog and prints any difference.
 * - Fresh start: before (a), (b) and (c) the table is dropped (and re-created for the baselines),
 *   then `CHECKPOINT`, so no run pays for flushing the previous run's dirty pages. Before (d),
 *   `VACUUM (ANALYZE)` of the table (hint bits and visibility map set, statistics current: the
 *   state autovacuum leaves a live table in; otherwise the duplicate run would also pay a one-time
 *   rewrite of 1M freshly written tuples' hint bits) and `CHECKPOINT`. Each table is dropped as
 *   soon as it is checked (sluice's after (d)), so autovacuum, which stays on as on any server,
 *   never works on one contender's table inside another contender's timing.
 * - Input in the page cache: both files are read once before the first run.
 * - Every table is logged, the server's settings (synchronous_commit etc.) are untouched.
 *   (a) commits once; (b) once per 1,000 rows; sluice once per batch: that difference is each
 *   method's own. Rounds interleave the contenders; records/s and CPU are medians over BENCH_PG_RUNS,
 *   ratios the median of each round's ratio (a load that comes and goes hits both sides of a round).
 *   CPU-s per million rows of the client is the figure least moved by other work on the machine.
 * - Timing: each child times itself from just before its first connection to its last commit.
 *   Client CPU is the child's own (psql's for (a)); server CPU is the PostgreSQL processes' CPU
 *   over the run (the postmaster, its reaped backends, its live children), when readable.
 *
 * Env: BENCH_PG=0 skips the section; BENCH_PG_RECORDS (1000000); BENCH_PG_RUNS (3, about 40 s each here);
 * BENCH_PG_URL (postgres://postgres@127.0.0.1:5432/test). Unreachable server: skipped, reason
 * printed. Exit code non-zero only when a contender failed or a table check failed.
 *
 * Standalone (this section only): `node --import tsx bench/postgres.ts`.
 */
import { spawnSync } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { cpus, loadavg } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import pg from "pg";
import { DEFAULTS } from "../src/config/defaults.js";
import { definition as postgresSink } from "../src/sinks/postgres/options.js";
import { CLI_NODE_FLAGS, prepareLaunch, runChild, type Launcher } from "./build.js";
import { ensureDataFile, warmPageCache } from "./data-gen.js";
import { ensureCopyFile } from "./pg-copy-file.js";
import type { ContenderResult } from "./contenders/protocol.js";
import { quoteIdent, type PgTask } from "./contenders/pg-protocol.js";
import { fmtInt, fmtRatio, intEnv, median, progress } from "./report.js";


const TARGETS = {
  sluiceVsCopy: 0.8,
  sluiceVsInsert: 2,
  duplicatesVsCopy: 0.6,
};
// A child that takes longer than this is killed and counted as failed.
const CHILD_TIMEOUT_MS = 5 * 60 * 1000;
// 1-minute load average per core above which the report warns that other work competed for the CPU.
const BUSY_LOAD_PER_CORE = 0.75;
const CONNECT_TIMEOUT_MS = 3000;
// USER_HZ, the unit of /proc/<pid>/stat times.
const CLOCK_TICKS_PER_SECOND = 100;

const CHILDREN = ["pg-psql-copy", "pg-multi-insert", "pg-sluice"] as const;
type ChildName = (typeof CHILDREN)[number];

type StepId = "copy" | "insert" | "inplace" | "sluice" | "duplicates";
interface Step {
  readonly id: StepId;
  readonly label: string;
  readonly child: ChildName;
  readonly table: string;
  /** create: drop, create with the documented DDL; drop: drop, the sink creates it; keep: the table of the step before. */
  readonly prepare: "create" | "drop" | "keep";
  /** sluice's transform module, absolute path. */
  readonly transform?: string;
}

const TABLES = { copy: "sluice_bench_pg_copy", insert: "sluice_bench_pg_insert", inplace: "sluice_bench_pg_inplace", sluice: "sluice_bench_pg_sluice" } as const;
const BENCH_DIR = fileURLToPath(new URL(".", import.meta.url));
const IN_PLACE = join(BENCH_DIR, "enrich.mjs");
const COPYING = join(BENCH_DIR, "enrich-copy.mjs");

const STEPS: readonly Step[] = [
  { id: "copy", label: "psql \\copy (ceiling)", child: "pg-psql-copy", table: TABLES.copy, prepare: "create" },
  { id: "insert", label: "multi-row INSERT, 1,000/stmt x 4 conns", child: "pg-multi-insert", table: TABLES.insert, prepare: "create" },
  { id: "inplace", label: "sluice, in-place transform", child: "pg-sluice", table: TABLES.inplace, prepare: "drop", transform: IN_PLACE },
  { id: "sluice", label: "sluice, copying transform", child: "pg-sluice", table: TABLES.sluice, prepare: "drop", transform: COPYING },
  { id: "duplicates", label: "sluice again, all duplicates", child: "pg-sluice", table: TABLES.sluice, prepare: "keep", transform: COPYING },
];

/** The table the baselines write: the sink's documented `create_table` shape. */
const baselineDdl = (table: string): string =>
  `CREATE TABLE ${quoteIdent(table)} (id text PRIMARY KEY, key text, payload jsonb, event_time timestamptz, ingested_at timestamptz DEFAULT now())`;

// Read at load, so a bad value stops `npm run bench` before the first section runs, not after it.
const records = intEnv("BENCH_PG_RECORDS", 1_000_000, 1);
const runs = intEnv("BENCH_PG_RUNS", 3, 1);
const url = process.env.BENCH_PG_URL ?? "postgres://postgres@127.0.0.1:5432/test";

const fmtSec = (n: number): string => n.toFixed(2);

/**
 * CPU seconds used so far by the PostgreSQL server: the postmaster's own and its reaped
 * children's (backends that already exited), plus its live children's (backends, checkpointer,
 * WAL writer, autovacuum). Undefined when the server's processes cannot be read (not local, or
 * no permission), in which case the report shows "-".
 */
function serverCpuReader(dataDirectory: string): (() => number | undefined) | undefined {
  let postmaster: number;
  try {
    postmaster = Number(readFileSync(join(dataDirectory, "postmaster.pid"), "utf8").split("\n")[0]);
    if (!Number.isSafeInteger(postmaster) || postmaster <= 0) return undefined;
    readFileSync(`/proc/${postmaster}/stat`, "utf8");
  } catch {
    return undefined;
  }
  const fields = (pid: string): string[] | undefined => {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
      // From field 3 (state) on; the command name before it may hold spaces.
      return stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    } catch {
      return undefined; // exited between readdir and read
    }
  };
  return () => {
    const own = fields(String(postmaster));
    if (own === undefined) return undefined;
    let ticks = Number(own[11]) + Number(own[12]) + Number(own[13]) + Number(own[14]);
    for (const pid of readdirSync("/proc")) {
      if (!/^\d+$/.test(pid) || pid === String(postmaster)) continue;
      const f = fields(pid);
      if (f !== undefined && Number(f[1]) === postmaster) ticks += Number(f[11]) + Number(f[12]);
    }
    return ticks / CLOCK_TICKS_PER_SECOND;
  };
}

/** What the untimed check after a run found in the table. */
interface TableCheck {
  readonly rows: number;
  readonly seqSum: string;
  /** Rows whose id is not `gen-<payload.seq>`. */
  readonly mismatched: number;
  /** Sum of a hash of every (id, payload without processed_at): equal tables of equal rows have equal fingerprints. */
  readonly fingerprint: string;
  /** Rows whose payload holds `processed_at` (the transforms' field). */
  readonly processed: number;
  readonly newestIngestedAt: string | null;
  readonly bytes: number;
}

async function checkTable(db: pg.Client, table: string): Promise<TableCheck> {
  const t = quoteIdent(table);
  const r = await db.query<{ rows: string; seq_sum: string | null; mismatched: string; fingerprint: string | null; processed: string; newest: string | null; bytes: string }>(
    `SELECT count(*) AS rows, sum((payload->>'seq')::bigint)::text AS seq_sum,
            count(*) FILTER (WHERE id IS DISTINCT FROM 'gen-' || (payload->>'seq')) AS mismatched,
            sum(hashtext(id || ' ' || (payload - 'processed_at')::text)::bigint)::text AS fingerprint,
            count(*) FILTER (WHERE payload ? 'processed_at') AS processed,
            max(ingested_at)::text AS newest, pg_total_relation_size('${t.replace(/'/g, "''")}') AS bytes
       FROM ${t}`,
  );
  const row = r.rows[0]!;
  return {
    rows: Number(row.rows),
    seqSum: row.seq_sum ?? "0",
    mismatched: Number(row.mismatched),
    fingerprint: row.fingerprint ?? "0",
    processed: Number(row.processed),
    newestIngestedAt: row.newest,
    bytes: Number(row.bytes),
  };
}

/** Columns and indexes of a table, from the catalog, with the table's own name taken out. */
async function tableShape(db: pg.Client, table: string): Promise<string[]> {
  const columns = await db.query<{ column_name: string; data_type: string; is_nullable: string; column_default: string | null }>(
    `SELECT column_name, data_type, is_nullable, column_default FROM information_schema.columns
      WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position`,
    [table],
  );
  const indexes = await db.query<{ def: string }>(
    `SELECT regexp_replace(replace(indexdef, $1, '<table>'), 'INDEX \\S+ ON', 'INDEX ON') AS def FROM pg_indexes
      WHERE schemaname = current_schema() AND tablename = $1 ORDER BY indexname`,
    [table],
  );
  return [
    ...columns.rows.map((c) => `column ${c.column_name} ${c.data_type}${c.is_nullable === "NO" ? " not null" : ""}${c.column_default !== null ? ` default ${c.column_default}` : ""}`),
    ...indexes.rows.map((i) => i.def),
  ];
}

interface Run {
  readonly round: number;
  readonly result: ContenderResult;
  readonly serverCpuSeconds: number | undefined;
  readonly check: TableCheck;
  /** The duplicate run: the table as it was before. */
  readonly before: TableCheck | undefined;
}

interface Outcome {
  readonly runs: Run[];
  readonly failed: string[];
}

/** Connects, or says why not. */
async function connect(url: string): Promise<pg.Client | string> {
  const db = new pg.Client({ connectionString: url, connectionTimeoutMillis: CONNECT_TIMEOUT_MS });
  // A server restart while the bench holds this connection would otherwise crash the runner.
  db.on("error", () => undefined);
  try {
    await db.connect();
    await db.query("SELECT 1");
    return db;
  } catch (err) {
    await db.end().catch(() => undefined);
    return err instanceof Error ? err.message || err.constructor.name : String(err);
  }
}

/**
 * Runs the PostgreSQL section and prints its report on stdout (progress on stderr). Resolves
 * with the exit code it asks for: 0, or 1 when a contender failed or a table check failed.
 */
export async function runPostgresBench(): Promise<number> {
  if (process.env.BENCH_PG === "0") {
    console.log("\nsluice bench, PostgreSQL: skipped (BENCH_PG=0)");
    return 0;
  }
  const where = url.replace(/\/\/[^@/]*@/, "//");

  const db = await connect(url);
  if (typeof db === "string") {
    console.log(`\nsluice bench, PostgreSQL: skipped, cannot reach ${where}: ${db}`);
    return 0;
  }
  const psql = spawnSync("psql", ["--version"], { encoding: "utf8" });
  if (psql.status !== 0) {
    await db.end();
    console.log(`\nsluice bench, PostgreSQL: skipped, \`psql\` (the COPY ceiling) is not runnable: ${psql.error?.message ?? psql.stderr.trim()}`);
    return 0;
  }

  const dropAll = async (): Promise<void> => {
    for (const table of Object.values(TABLES)) await db.query(`DROP TABLE IF EXISTS ${quoteIdent(table)}`);
  };
  try {
    const server = (await db.query<{ version: string; data_directory: string | null }>(
      "SELECT current_setting('server_version') AS version, current_setting('data_directory', true) AS data_directory",
    )).rows[0]!;
    const serverCpu = server.data_directory === null ? undefined : serverCpuReader(server.data_directory);

    const { file, generated } = ensureDataFile(records, (n) => progress.live(`generating ${fmtInt(records)} records: ${Math.floor((n / records) * 100)}%`));
    if (generated) progress.line(`generated ${file}`);
    progress.live(`writing the COPY text file for ${file}`);
    const copy = ensureCopyFile(file, records);
    if (copy.generated) progress.line(`wrote ${copy.file} (psql \\copy input, untimed)`);
    progress.live("reading the input files once (page cache)");
    warmPageCache(file);
    warmPageCache(copy.file);

    progress.live("bundling PostgreSQL contenders");
    const bundled = await prepareLaunch(CHILDREN);
    // sluice's children run with the node flags the `sluice` command starts with (bin/sluice.js).
    const launcher: Launcher<ChildName> = { mode: bundled.mode, args: (name) => [...(name === "pg-sluice" ? CLI_NODE_FLAGS : []), ...bundled.args(name)] };
    progress.line(launcher.mode === "bundled" ? "PostgreSQL contenders bundled with esbuild" : "esbuild unavailable: PostgreSQL contenders run under `node --import tsx`");

    const outcomes = new Map<StepId, Outcome>(STEPS.map((s) => [s.id, { runs: [], failed: [] }]));
    const loads: number[] = [];
    let shapeDiff: string[] | undefined;
    const total = runs * STEPS.length;
    let n = 0;
    const sectionStarted = performance.now();

    /** records/s of psql \copy in `round`, when it ran. */
    const copyIn = (round: number): number | undefined => {
      const r = outcomes.get("copy")!.runs.find((x) => x.round === round);
      return r === undefined ? undefined : r.result.records / r.result.seconds;
    };
    let baselineShape: string[] | undefined;
    const expectedSum = ((BigInt(records) * BigInt(records + 1)) / 2n).toString();

    /** One contender run: prepare the table, run the child, check the table. Resolves true when all went well. */
    const runStep = async (step: Step, round: number, before: TableCheck | undefined): Promise<boolean> => {
      n++;
      const tag = `[pg ${`${n}/${total}]`.padEnd(String(total).length * 2 + 2)} ${step.label.padEnd(38)} run ${round}/${runs}`;
      const outcome = outcomes.get(step.id)!;
      const t = quoteIdent(step.table);
      if (step.prepare === "keep" && before === undefined) {
        outcome.failed.push("skipped: the first sluice run did not fill the table");
        progress.line(`${tag}  SKIPPED: the first sluice run did not fill the table`);
        return false;
      }
      progress.live(`${tag} ... preparing the table`);
      if (step.prepare === "keep") {
        await db.query(`VACUUM (ANALYZE) ${t}`);
      } else {
        await db.query(`DROP TABLE IF EXISTS ${t}`);
        if (step.prepare === "create") {
          await db.query(baselineDdl(step.table));
          baselineShape ??= await tableShape(db, step.table);
        }
      }
      await db.query("CHECKPOINT");

      loads.push(loadavg()[0]!);
      progress.live(`${tag} ... running`);
      const cpuBefore = serverCpu?.();
      const task: PgTask = { file, copyFile: copy.file, records, url, table: step.table, ...(step.transform === undefined ? {} : { transform: step.transform }) };
      const result = await runChild(launcher, step.child, task, CHILD_TIMEOUT_MS);
      const cpuAfter = serverCpu?.();
      if ("error" in result) {
        outcome.failed.push(result.error);
        progress.line(`${tag}  FAILED: ${result.error}`);
        return false;
      }

      progress.live(`${tag} ... checking the table`);
      const check = await checkTable(db, step.table);
      const wrong: string[] = [];
      if (check.rows !== records) wrong.push(`${fmtInt(check.rows)} rows, expected ${fmtInt(records)}`);
      if (check.seqSum !== expectedSum) wrong.push(`sum of seq ${check.seqSum}, expected ${expectedSum}`);
      if (check.mismatched !== 0) wrong.push(`${fmtInt(check.mismatched)} rows whose id is not gen-<seq>`);
      if (step.transform !== undefined && check.processed !== check.rows) wrong.push(`${fmtInt(check.rows - check.processed)} rows without the transform's processed_at`);
      const reference = outcomes.get("copy")!.runs[0]?.check.fingerprint;
      if (reference !== undefined && check.fingerprint !== reference) wrong.push(`(id, payload) fingerprint ${check.fingerprint} differs from psql \\copy's ${reference}`);
      if (before !== undefined) {
        if (check.rows !== before.rows) wrong.push(`the duplicate run changed the row count from ${fmtInt(before.rows)} to ${fmtInt(check.rows)}`);
        if (check.newestIngestedAt !== before.newestIngestedAt) wrong.push(`the duplicate run rewrote rows (newest ingested_at ${before.newestIngestedAt} -> ${check.newestIngestedAt})`);
      }
      if (wrong.length > 0) {
        const message = `table check failed: ${wrong.join("; ")}`;
        outcome.failed.push(message);
        progress.line(`${tag}  FAILED: ${message}`);
        return false;
      }
      if (step.id === "sluice" && shapeDiff === undefined && baselineShape !== undefined) {
        const [baseline, sink] = [baselineShape, await tableShape(db, step.table)];
        shapeDiff = [
          ...baseline.filter((x) => !sink.includes(x)).map((x) => `baselines only: ${x}`),
          ...sink.filter((x) => !baseline.includes(x)).map((x) => `sink only: ${x}`),
        ];
      }
      const serverCpuSeconds = cpuBefore !== undefined && cpuAfter !== undefined ? cpuAfter - cpuBefore : undefined;
      outcome.runs.push({ round, result, serverCpuSeconds, check, before });
      progress.line(
        `${tag}  ${fmtInt(result.records / result.seconds).padStart(9)} records/s  ${fmtSec(result.seconds).padStart(6)} s` +
          `${step.id === "copy" || copyIn(round) === undefined ? "" : `  ${fmtRatio(result.records / result.seconds / copyIn(round)!)} of \\copy`}` +
          `  client CPU ${fmtSec(result.cpuSeconds)} s  server CPU ${serverCpuSeconds === undefined ? "-" : fmtSec(serverCpuSeconds)} s`,
      );
      return true;
    };

    for (let round = 1; round <= runs; round++) {
      // The table sluice filled, as checked: the duplicate run's starting point.
      let filled: TableCheck | undefined;
      for (const step of STEPS) {
        let ok = false;
        try {
          ok = await runStep(step, round, step.prepare === "keep" ? filled : undefined);
          if (ok && step.id === "sluice") filled = outcomes.get("sluice")!.runs.at(-1)!.check;
        } finally {
          // Dropped as soon as it is checked (sluice's after the duplicate run), so autovacuum of one
          // contender's table never runs inside another contender's timing.
          if (!(ok && step.id === "sluice")) await db.query(`DROP TABLE IF EXISTS ${quoteIdent(step.table)}`);
        }
      }
    }
    const sectionSeconds = (performance.now() - sectionStarted) / 1000;

    const rate = (id: StepId): number | undefined => {
      const r = outcomes.get(id)!.runs;
      return r.length === 0 ? undefined : median(r.map((x) => x.result.records / x.result.seconds));
    };
    const med = (id: StepId, f: (r: Run) => number | undefined): number | undefined => {
      const values = outcomes.get(id)!.runs.map(f);
      return values.length === 0 || values.some((v) => v === undefined) ? undefined : median(values as number[]);
    };
    /** Median over the rounds of `id`'s records/s over `base`'s in the same round. */
    const roundRatio = (id: StepId, base: StepId): number | undefined => {
      const ratios: number[] = [];
      for (const r of outcomes.get(id)!.runs) {
        const b = outcomes.get(base)!.runs.find((x) => x.round === r.round);
        if (b !== undefined) ratios.push(r.result.records / r.result.seconds / (b.result.records / b.result.seconds));
      }
      return ratios.length === 0 ? undefined : median(ratios);
    };

    const header = ["contender", "rows", "records/s", "seconds", "vs psql \\copy", "vs multi-row INSERT", "client CPU-s", "client CPU-s/M rows", "server CPU-s", "client peak RSS MiB", "table MiB"];
    const rows: string[][] = STEPS.map((step) => {
      const o = outcomes.get(step.id)!;
      const r = rate(step.id);
      const dash = (v: number | undefined, f: (v: number) => string): string => (v === undefined ? "-" : f(v));
      return [
        `${step.label}${o.failed.length > 0 ? " (FAILED)" : ""}`,
        step.id === "duplicates" && o.runs.length > 0 ? `${fmtInt(records)} (0 new)` : fmtInt(records),
        dash(r, fmtInt),
        dash(med(step.id, (x) => x.result.seconds), fmtSec),
        step.id === "copy" ? "1.00x" : dash(roundRatio(step.id, "copy"), fmtRatio),
        step.id === "insert" ? "1.00x" : dash(roundRatio(step.id, "insert"), fmtRatio),
        dash(med(step.id, (x) => x.result.cpuSeconds), fmtSec),
        dash(med(step.id, (x) => (x.result.cpuSeconds / x.result.records) * 1e6), fmtSec),
        dash(med(step.id, (x) => x.serverCpuSeconds), fmtSec),
        // psql is not a Node process: the wrapper's own RSS would say nothing about it.
        step.id === "copy" ? "-" : dash(med(step.id, (x) => x.result.maxRssMiB), (v) => v.toFixed(1)),
        dash(med(step.id, (x) => x.check.bytes / 1024 / 1024), (v) => v.toFixed(0)),
      ];
    });
    const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
    const render = (cells: string[]): string => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join("  ");

    const out: string[] = [];
    out.push("");
    out.push(`sluice bench, PostgreSQL: ${fmtInt(records)} records from NDJSON into a table; PostgreSQL ${server.version} at ${where}; node ${process.version}, ${cpus().length} x ${cpus()[0]?.model.trim() ?? "cpu"}`);
    out.push(`records/s: median of ${runs} run(s), each a fresh process timed from its first connection to its last commit; ratios: median of the rounds' ratios; every table checked afterwards (rows, ids, payload fingerprint)`);
    out.push(`fresh table + CHECKPOINT before each run; VACUUM (ANALYZE) + CHECKPOINT before the duplicate run; client CPU-s: the contender process (psql for \\copy); server CPU-s: all PostgreSQL processes (other clients' work included)`);
    const sinkDefaults = postgresSink.options.parse({ url, table: TABLES.sluice });
    out.push(
      `sluice: file source -> module transform (in place: bench/enrich.mjs; copying: bench/enrich-copy.mjs) -> postgres sink (mode insert) with the defaults: batch.max_records ${fmtInt(DEFAULTS.sink.batch.max_records)}, ` +
        `concurrency ${String(DEFAULTS.sink.concurrency)}, pool_size ${sinkDefaults.pool_size}, buffer.max_records ${fmtInt(DEFAULTS.buffer.max_records)}; ` +
        `node flags of the sluice command (bin/sluice.js): ${CLI_NODE_FLAGS.length === 0 ? "none" : CLI_NODE_FLAGS.join(" ")}; section took ${sectionSeconds.toFixed(0)} s`,
    );
    const maxLoad = Math.max(0, ...loads);
    if (maxLoad > cpus().length * BUSY_LOAD_PER_CORE) {
      out.push(`warning: the machine was busy (1-min load average ${Math.min(...loads).toFixed(1)}-${maxLoad.toFixed(1)} at run starts, ${cpus().length} cores); wall-clock figures are noisy`);
    }
    if (shapeDiff !== undefined) {
      out.push(
        shapeDiff.length === 0
          ? "table shape: the sink's table has the same columns and indexes as the baselines' (id text primary key, key, payload jsonb, event_time, ingested_at)"
          : `table shape: the sink's table differs from the baselines': ${shapeDiff.join("; ")}`,
      );
    }
    out.push("");
    out.push(render(header));
    out.push(widths.map((w) => "-".repeat(w)).join("  "));
    for (const row of rows) out.push(render(row));
    out.push("");

    const verdict = (ok: boolean | undefined): string => (ok === undefined ? "n/a " : ok ? "PASS" : "FAIL");
    const ratioLine = (ratio: number | undefined, target: number, text: string): string =>
      `  ${verdict(ratio === undefined ? undefined : ratio >= target)}  ${text} >= ${target}x: ${ratio === undefined ? "not measured" : fmtRatio(ratio)}`;
    out.push("targets:");
    out.push(ratioLine(roundRatio("sluice", "copy"), TARGETS.sluiceVsCopy, "sluice (copying transform) records/s vs psql \\copy"));
    out.push(ratioLine(roundRatio("inplace", "copy"), TARGETS.sluiceVsCopy, "sluice (in-place transform) records/s vs psql \\copy"));
    out.push(ratioLine(roundRatio("sluice", "insert"), TARGETS.sluiceVsInsert, "sluice (copying transform) records/s vs multi-row INSERT"));
    out.push(ratioLine(roundRatio("duplicates", "copy"), TARGETS.duplicatesVsCopy, "duplicate-run records/s vs psql \\copy"));
    const dupRuns = outcomes.get("duplicates")!.runs;
    const dupFailed = outcomes.get("duplicates")!.failed.some((f) => f.startsWith("table check failed"));
    out.push(
      `  ${verdict(dupRuns.length === 0 && !dupFailed ? undefined : !dupFailed)}  duplicate run adds zero rows and rewrites none: ` +
        (dupFailed ? "no (see above)" : dupRuns.length === 0 ? "not measured" : `${fmtInt(dupRuns[0]!.check.rows)} rows before and after, newest ingested_at unchanged`),
    );
    for (const r of dupRuns) {
      const grown = r.before === undefined ? 0 : r.check.bytes - r.before.bytes;
      // Rows a failed statement wrote before the conflict was found stay as dead tuples until VACUUM.
      if (grown > 1024 * 1024) {
        out.push(
          `  note  the duplicate run grew the table from ${fmtInt(r.before!.bytes / 1024 / 1024)} to ${fmtInt(r.check.bytes / 1024 / 1024)} MiB with no new rows: ` +
            `tuples written and rolled back (dead until VACUUM)`,
        );
        break;
      }
    }
    console.log(out.join("\n"));

    const failures = STEPS.flatMap((s) => outcomes.get(s.id)!.failed.map((f) => `${s.label}: ${f}`));
    if (failures.length > 0) {
      console.error(`\n${failures.length} PostgreSQL contender run(s) failed:\n${failures.map((f) => `  ${f}`).join("\n")}`);
      return 1;
    }
    return 0;
  } finally {
    await dropAll().catch(() => undefined);
    await db.end().catch(() => undefined);
  }
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) {
  process.exitCode = await runPostgresBench();
}
