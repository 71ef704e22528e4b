/**
 * Crash safety of the real CLI process: an NDJSON file -> file source -> SQLite, SIGKILLed three
 * times at random moments mid-run and restarted with the same config and data_dir. Every line must
 * end in SQLite exactly once, and each restart must resume from the file source's checkpoint.
 *
 * The kill moments come from a seed printed with the test (set CRASH_SEED to replay one).
 */
import { existsSync } from "node:fs";
import { mkdtemp, open, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import { afterAll, describe, it } from "vitest";
import { mulberry32 } from "../../src/core/random.js";
import { fingerprintOf, generationToken, identityOf } from "../../src/sources/file/identity.js";
import { readDeadLetters } from "../../src/sinks/dead-letter-sqlite.js";
import { killClis, startCli } from "../helpers/cli.js";


const TOTAL = 200_000;
const SOURCE = "readings";
const KILLS = 3;
const SEED = Number(process.env.CRASH_SEED ?? Math.floor(Math.random() * 1e9));

const dirs: string[] = [];
afterAll(async () => {
  killClis();
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

interface Variant {
  /** The line for reading `n` (from 1). */
  readonly line: (n: number) => string;
  /** The record id of reading `n`, whose line starts at byte `offset` of the file generation `token`. */
  readonly id: (n: number, offset: number, token: string) => string;
}

const VARIANTS: Record<string, Variant> = {
  "ids in the payload": {
    line: (n) => `{"id":"reading-${n}","sensor":"sensor-${n % 50}","value":${(n % 1000) / 10},"seq":${n}}`,
    id: (n) => `reading-${n}`,
  },
  "ids from the byte offset": {
    line: (n) => `{"sensor":"sensor-${n % 50}","value":${(n % 1000) / 10},"seq":${n}}`,
    id: (_n, offset, token) => `${SOURCE}:${token}:${offset}`,
  },
};

/**
 * Rows in the table, cheaply: the largest rowid, which equals the count because rows are only
 * inserted (`ON CONFLICT (id) DO NOTHING` uses no rowid for a skipped row). A count(*) per poll would scan
 * the table and slow the run it watches.
 */
function countRows(db: string): number {
  let conn: Database.Database | undefined;
  try {
    conn = new Database(db, { fileMustExist: true });
    return (conn.prepare("SELECT coalesce(max(rowid), 0) AS n FROM records").get() as { n: number }).n;
  } catch {
    return 0; // not created yet
  } finally {
    conn?.close();
  }
}

async function readCheckpoint(file: string): Promise<{ offset: number; line: number } | undefined> {
  if (!existsSync(file)) return undefined;
  return JSON.parse(await readFile(file, "utf8")) as { offset: number; line: number };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe(`SIGKILL mid-run, restart, repeat (seed ${SEED})`, () => {
  // Several variants run at once, each with kill cycles of up to 40 s: 60 s was too little at a load of 20.
  it.concurrent.for(Object.keys(VARIANTS))("every line reaches SQLite exactly once: %s", { timeout: 240_000 }, async (name, { expect }) => {
    const variant = VARIANTS[name]!;
    const random = mulberry32(SEED + name.length);
    const dir = await mkdtemp(join(tmpdir(), "sluice-crash-"));
    dirs.push(dir);

    // The input, and the id each line must end up under.
    const input = join(dir, "readings.ndjson");
    const parts: string[] = [];
    for (let n = 1; n <= TOTAL; n++) parts.push(`${variant.line(n)}\n`);
    await writeFile(input, parts.join(""));
    // The first generation a checkpoint sees (epoch 0) of this very file.
    const fh = await open(input, "r");
    const token = generationToken(await identityOf(fh), await fingerprintOf(fh), 0);
    await fh.close();
    const expectedIds: string[] = new Array(TOTAL);
    let offset = 0;
    for (let n = 1; n <= TOTAL; n++) {
      expectedIds[n - 1] = variant.id(n, offset, token);
      offset += Buffer.byteLength(parts[n - 1]!);
    }
    const fileSize = (await stat(input)).size;

    const db = join(dir, "out.db");
    const dataDir = join(dir, "data");
    const checkpointFile = join(dataDir, "checkpoints", `${SOURCE}.json`);
    const configFile = join(dir, "pipeline.yaml");
    // Latency per batch so a run takes seconds, leaving room to kill it mid-write.
    await writeFile(
      configFile,
      `data_dir: ${dataDir}
observability: { log_level: info }
sources:
  ${SOURCE}:
    type: file
    path: ${input}
    checkpoint_interval: 100ms
sinks:
  db:
    type: sqlite
    path: ${db}
    batch: { max_records: 2000, max_wait: 20ms }
    chaos: { latency: { min: 1ms, max: 10ms } }
`,
    );

    // Kill cycles: each once a random 3-8% more of the lines are in SQLite (after the restarted
    // run re-did what its checkpoint had not covered), plus a random delay.
    const killedAt: number[] = [];
    const checkpoints: { offset: number; line: number }[] = [];
    for (let k = 0; k < KILLS; k++) {
      const target = (killedAt.at(-1) ?? 0) + Math.floor(TOTAL * (0.03 + random() * 0.05));
      const child = startCli(configFile, join(dir, `summary-${k}.json`), dir);
      const deadline = Date.now() + 40_000;
      while (countRows(db) < target) {
        if (child.process.exitCode !== null) throw new Error(`run ${k} exited before the kill:\n${child.output()}`);
        if (Date.now() > deadline) throw new Error(`run ${k} did not reach ${target} rows:\n${child.output()}`);
        await sleep(50);
      }
      await sleep(Math.floor(random() * 100));
      child.process.kill("SIGKILL");
      const { signal } = await child.exited;
      // Killed mid-run, not finished on its own: no summary written, not all rows there.
      expect(signal, child.output()).toBe("SIGKILL");
      expect(existsSync(join(dir, `summary-${k}.json`))).toBe(false);
      const rows = countRows(db);
      expect(rows).toBeGreaterThanOrEqual(target);
      expect(rows).toBeLessThan(TOTAL);
      killedAt.push(rows);

      // The checkpoint only moves forward and never runs ahead of what is in SQLite. (A run killed
      // before its first checkpoint write leaves none: the next run starts from the top.)
      const cp = (await readCheckpoint(checkpointFile)) ?? { offset: 0, line: 0 };
      if (k > 0) expect(cp.offset).toBeGreaterThanOrEqual(checkpoints[k - 1]!.offset);
      expect(cp.offset).toBeLessThan(fileSize);
      // Lines before the checkpoint are all in the table (the checkpoint moves after the commit).
      expect(cp.line).toBeLessThanOrEqual(rows);
      checkpoints.push(cp);
    }

    // The last run goes to the end.
    const summaryFile = join(dir, "summary-final.json");
    const last = startCli(configFile, summaryFile, dir);
    const timeout = setTimeout(() => last.process.kill("SIGKILL"), 40_000);
    const { code } = await last.exited;
    clearTimeout(timeout);
    expect(code, last.output()).toBe(0);
    expect(last.output()).toContain("resuming from checkpoint");

    const summary = JSON.parse(await readFile(summaryFile, "utf8")) as { records: { received: number; delivered: number; dead_lettered: number; dropped: number } };
    // Resumed, not started over: the final run read only what the checkpoint had not covered.
    expect(summary.records.received).toBeLessThan(TOTAL);
    expect(summary.records.received).toBe(TOTAL - checkpoints.at(-1)!.line);
    expect(summary.records).toMatchObject({ delivered: summary.records.received, dead_lettered: 0, dropped: 0 });
    expect((await readCheckpoint(checkpointFile))?.offset).toBe(fileSize);

    // Exactly once: every line's id, each once, nothing else; every line's content once.
    const conn = new Database(db, { readonly: true });
    try {
      const counts = conn
        .prepare("SELECT count(*) AS n, count(DISTINCT id) AS ids, count(DISTINCT json_extract(payload, '$.seq')) AS seqs, min(json_extract(payload, '$.seq')) AS lo, max(json_extract(payload, '$.seq')) AS hi FROM records")
        .get() as { n: number; ids: number; seqs: number; lo: number; hi: number };
      expect(counts).toEqual({ n: TOTAL, ids: TOTAL, seqs: TOTAL, lo: 1, hi: TOTAL });

      const stored = conn.prepare("SELECT id, json_extract(payload, '$.seq') AS seq FROM records").all() as { id: string; seq: number }[];
      const expected = new Set(expectedIds);
      const extra = stored.filter((r) => !expected.has(r.id)).map((r) => r.id);
      expect(extra.slice(0, 5)).toEqual([]);
      // Each id holds its own line's content.
      const wrong = stored.filter((r) => expectedIds[r.seq - 1] !== r.id);
      expect(wrong.slice(0, 5)).toEqual([]);
    } finally {
      conn.close();
    }
    expect(readDeadLetters(join(dataDir, "dlq.db"))).toEqual([]);
    expect(killedAt.every((rows, i) => i === 0 || rows >= killedAt[i - 1]!)).toBe(true);
  });
});
