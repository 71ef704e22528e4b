/**
 * The dead-letter database deleted while a run writes to it (issue 12, point 8). The real CLI
 * follows an NDJSON file in which every other line is malformed (dead-lettered at the source
 * stage) into SQLite. Mid-run the test takes the DLQ's write lock, reads every dead letter so far,
 * deletes `dlq.db`, its -wal and -shm, and lets go; then more lines come. Those dead letters must
 * not be reported durable: `/health/ready` says why, and once `dead_letter.retry.max_elapsed` has
 * passed the run exits 1 with a clear message. A rerun (the file no longer followed) delivers what
 * was left un-acked. Counted at the end: every valid line is in the sink, every malformed one in
 * the deleted DLQ (as read before deleting it) or in the DLQ the rerun created.
 */
import { appendFile, mkdtemp, rm, writeFile } from "node:fs/promises";
import { existsSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import { afterAll, describe, expect, it } from "vitest";
import { readDeadLetters } from "../../src/sinks/dead-letter-sqlite.js";
import { killClis, startCli, type Cli } from "../helpers/cli.js";
import { freePort, waitUntil } from "../helpers/http-pipeline.js";

const dirs: string[] = [];
afterAll(async () => {
  killClis();
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

/** Lines `from` to `to` (excluded): even ones valid records, odd ones malformed. */
function lines(from: number, to: number): string {
  let text = "";
  for (let i = from; i < to; i++) text += i % 2 === 0 ? `${JSON.stringify({ id: `v${i}`, n: i })}\n` : `{malformed ${i}\n`;
  return text;
}

function config(port: number, follow: boolean): string {
  return `data_dir: ./data
buffer: { chunk_size: 10 }
sources:
  in: { type: file, path: ./in.ndjson, follow: ${follow} }
sinks:
  out: { type: sqlite, path: ./out.db }
dead_letter: { type: sqlite, retry: { max_elapsed: 3s } }
observability: { listen: "127.0.0.1:${port}" }
`;
}

async function exitOf(cli: Cli, ms: number): Promise<number | null> {
  const timeout = new Promise<"timeout">((r) => setTimeout(() => r("timeout"), ms).unref());
  const result = await Promise.race([cli.exited, timeout]);
  if (result === "timeout") throw new Error(`sluice did not exit within ${ms} ms:\n${cli.output()}`);
  return result.code;
}

describe("the dead-letter database deleted mid-run", () => {
  it("reports no dead letter durable after the deletion, turns not ready, exits 1; nothing is lost", async () => {
    const dir = await mkdtemp(join(tmpdir(), "sluice-dlq-deleted-"));
    dirs.push(dir);
    const dlq = join(dir, "data", "dlq.db");
    const port = await freePort();
    await writeFile(join(dir, "in.ndjson"), lines(0, 200));
    await writeFile(join(dir, "follow.yaml"), config(port, true));
    const run = startCli(join(dir, "follow.yaml"), join(dir, "summary1.json"), dir);
    // While sluice creates the store, the file may be there before its table.
    const deadSoFar = () => {
      try {
        return readDeadLetters(dlq).length;
      } catch {
        return 0;
      }
    };
    await waitUntil("the first dead letters", () => deadSoFar() >= 100, 30_000);

    // Under the write lock, so that no dead letter is committed between reading them and deleting the files.
    const db = new Database(dlq, { timeout: 5000 });
    db.exec("BEGIN IMMEDIATE");
    const deleted = (db.prepare("SELECT raw FROM dead_letters").all() as { raw: string }[]).map((r) => r.raw);
    for (const suffix of ["", "-wal", "-shm"]) rmSync(`${dlq}${suffix}`);
    db.exec("ROLLBACK");
    db.close();
    await appendFile(join(dir, "in.ndjson"), lines(200, 400));

    let problem: string | undefined;
    await waitUntil(
      "/health/ready to say why",
      async () => {
        const res = await fetch(`http://127.0.0.1:${port}/health/ready`).catch(() => undefined);
        if (res?.status !== 503) return false;
        problem = ((await res.json()) as { problems: string[] }).problems.find((p) => p.startsWith("dead_letter:"));
        return problem !== undefined;
      },
      20_000,
    );
    expect(problem).toMatch(new RegExp(`^dead_letter: cannot write: ERR_DEAD_LETTER_WRITE: .*${dlq}.* was deleted`));
    expect(await exitOf(run, 30_000)).toBe(1);
    expect(run.output()).toMatch(/run failed: ERR_DEAD_LETTER_WRITE: dead letters could not be written for \d+(\.\d)? s .*was deleted while sluice had it open.*the next run delivers them again/);
    // Not created again behind the user's back.
    expect(existsSync(dlq)).toBe(false);

    await writeFile(join(dir, "once.yaml"), config(await freePort(), false));
    const rerun = startCli(join(dir, "once.yaml"), join(dir, "summary2.json"), dir);
    expect(await exitOf(rerun, 60_000)).toBe(0);

    const out = new Database(join(dir, "out.db"), { readonly: true });
    const delivered = new Set((out.prepare("SELECT id FROM records").all() as { id: string }[]).map((r) => r.id));
    out.close();
    const dead = new Set([...deleted, ...readDeadLetters(dlq).map((r) => r.raw)]);
    const lost: string[] = [];
    for (let i = 0; i < 400; i++) {
      if (i % 2 === 0 ? !delivered.has(`v${i}`) : !dead.has(`{malformed ${i}`)) lost.push(String(i));
    }
    expect(lost).toEqual([]);
    expect(delivered.size).toBe(200);
  }, 120_000);
});
