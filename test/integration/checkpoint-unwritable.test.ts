/**
 * A checkpoint that cannot be written (issue 12, point 8): `data_dir/checkpoints` is a read-only
 * file system (a tmpfs mounted `ro`; without permission to mount, a directory without write
 * permission where that binds, else skipped saying why). `sluice run` delivers every record, says
 * in one line that the progress was not saved, and exits 1.
 */
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import { afterEach, describe, expect, it } from "vitest";
import { runCli } from "../helpers/cli.js";
import { mountTmpfs } from "../helpers/tmpfs.js";

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** Makes `dir` read-only; false (having printed why) where that cannot be done here. */
async function readOnly(dir: string): Promise<boolean> {
  const unmount = mountTmpfs(dir, "ro,size=64k");
  if (unmount !== undefined) {
    cleanups.push(unmount);
    return true;
  }
  // Without the mount, permissions: they bind every user but root.
  if (process.getuid?.() !== 0) {
    await chmod(dir, 0o555);
    cleanups.push(() => chmod(dir, 0o755));
    return true;
  }
  return false;
}

describe("a checkpoint that cannot be written", () => {
  it("delivers every record, says the progress was not saved, and exits 1", async (ctx) => {
    const dir = await mkdtemp(join(tmpdir(), "sluice-ckpt-ro-"));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    const checkpoints = join(dir, "data", "checkpoints");
    await mkdir(checkpoints, { recursive: true });
    if (!(await readOnly(checkpoints))) return ctx.skip();
    await writeFile(join(dir, "in.ndjson"), Array.from({ length: 500 }, (_, i) => JSON.stringify({ id: `r${i}`, n: i })).join("\n") + "\n");
    await writeFile(
      join(dir, "pipeline.yaml"),
      `data_dir: ./data
buffer: { chunk_size: 50 }
sources:
  in: { type: file, path: ./in.ndjson }
sinks:
  out: { type: sqlite, path: ./out.db }
`,
    );

    const run = await runCli(["run", "pipeline.yaml", "--summary-json", "summary.json", "--no-progress"], { cwd: dir });
    expect(run.code).toBe(1);
    expect(run.stderr).toMatch(/\nrun failed: ERR_CHECKPOINT_WRITE: source in: progress not saved \(.*(EROFS|EACCES).*\); its records were delivered, but the next run starts again from the last checkpoint saved\n/);
    expect(run.stderr).toMatch(/sluice run failed in/);
    const summary = JSON.parse(await readFile(join(dir, "summary.json"), "utf8")) as { records: { received: number; delivered: number } };
    expect(summary.records).toMatchObject({ received: 500, delivered: 500 });
    const db = new Database(join(dir, "out.db"), { readonly: true });
    const ids = (db.prepare("SELECT id FROM records").all() as { id: string }[]).map((r) => r.id);
    db.close();
    expect(new Set(ids).size).toBe(500);
  }, 60_000);
});
