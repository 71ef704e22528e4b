/**
 * The logs of a real `sluice run` whose stderr is a pipe: JSON lines, `--log-level` over the
 * config's `log_level`, error lines with component, code and first record id, rate-limited.
 */
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { afterAll, afterEach, beforeEach, describe, expect, it } from "vitest";
import { requireTool } from "../helpers/tools.js";
import { killClis, runCli } from "../helpers/cli.js";

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "sluice-logs-"));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});
afterAll(killClis);

const hasTmux = requireTool("tmux", ["-V"], "Debian's tmux package (apt-get install tmux)");
const ENTRY = join(resolve(import.meta.dirname, "../.."), "src/cli/entry.ts");
const TSX = pathToFileURL(createRequire(import.meta.url).resolve("tsx")).href;


/** 2,000 records in batches of 20 to a sink that fails ~3% of records for good: dead letters in most batches. */
async function failingPipeline(logLevel: string): Promise<string> {
  const file = join(dir, "pipeline.yaml");
  await writeFile(
    file,
    `data_dir: ./data
observability: { log_level: ${logLevel}, progress: never }
sources:
  gen: { type: generator, count: 2000, seed: 7 }
sinks:
  db:
    type: sqlite
    path: ./out.db
    batch: { max_records: 20 }
    chaos: { permanent_failure_rate: 0.03, seed: 11 }
`,
  );
  return file;
}

interface LogLine {
  readonly level: number;
  readonly msg: string;
  readonly [field: string]: unknown;
}

/** The JSON lines of stderr (the summary table is plain text after them). */
function jsonLines(stderr: string): LogLine[] {
  return stderr
    .split("\n")
    .filter((l) => l.startsWith("{"))
    .map((l) => JSON.parse(l) as LogLine);
}

describe("sluice run: logs", () => {
  it("--log-level wins over log_level; error lines carry component, code and first record id, and repeats are rate-limited", async () => {
    const file = await failingPipeline("silent");
    const quiet = await runCli(["run", file], { cwd: dir });
    expect(quiet.code).toBe(0);
    expect(jsonLines(quiet.stderr)).toEqual([]);
    expect(quiet.stderr).toMatch(/dead-lettered\s+[1-9]/);

    await rm(join(dir, "data"), { recursive: true });
    await rm(join(dir, "out.db"));
    const loud = await runCli(["run", file, "--log-level", "error"], { cwd: dir });
    expect(loud.code).toBe(0);
    const lines = jsonLines(loud.stderr);
    const errors = lines.filter((l) => l.level === 50);
    expect(errors.length).toBeGreaterThan(0);
    expect(lines.filter((l) => l.level < 50)).toEqual([]);
    for (const line of errors) {
      expect(line).toMatchObject({ component: "db", code: "ERR_CHAOS_PERMANENT" });
      expect(line.first_record_id).toMatch(/^gen-\d+$/);
    }
    // Dozens of batches dead-letter records within a second or two: 5 lines pass per 10 s window,
    // then one line says how many were held back (a window ends at the latest when the run does).
    const passed = errors.filter((l) => l.suppressed === undefined);
    const reports = errors.filter((l) => l.suppressed !== undefined);
    expect(passed.every((l) => l.msg === "records dead-lettered")).toBe(true);
    expect(reports.length).toBeGreaterThanOrEqual(1);
    expect(passed.length).toBeGreaterThanOrEqual(5);
    // No window of 10 s (opened by its first line) let more than 5 through.
    let start = Number.NEGATIVE_INFINITY;
    let inWindow = 0;
    for (const l of passed) {
      const at = Number(l.time);
      if (at - start >= 10_000) [start, inWindow] = [at, 0];
      expect(++inWindow).toBeLessThanOrEqual(5);
    }
    expect(reports[0]!.suppressed).toBeGreaterThan(10);
    expect(reports[0]!.msg).toMatch(/^\d+ more like this suppressed in 10 s: records dead-lettered$/);
    // The message is the first record's error.
    expect(passed[0]!.err).toBe(`chaos: injected permanent failure of record ${String(passed[0]!.first_record_id)}`);
  });

  it("refuses an unknown --log-level (exit 2)", async () => {
    const file = await failingPipeline("info");
    const r = await runCli(["run", file, "--log-level", "loud"], { cwd: dir });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("Allowed choices are debug, info, warn, error, silent");
  });

  describe.skipIf(!hasTmux)("on a terminal (tmux)", () => {
    const socket = `sluice-logs-${randomBytes(4).toString("hex")}`;
    const tmux = (...args: string[]) => spawnSync("tmux", ["-L", socket, ...args], { encoding: "utf8" });
    afterAll(() => {
      tmux("kill-server");
    });

    it("prints one readable line per entry: time, level, message, key=value fields", async () => {
      const file = await failingPipeline("error");
      const command = [process.execPath, "--conditions=sluice-source", "--import", TSX, ENTRY, "run", file].map((a) => `'${a}'`).join(" ");
      const started = tmux("new-session", "-d", "-s", "logs", "-x", "220", "-y", "50", "-c", dir, `${command}; echo "run exited $?"; sleep 60`);
      expect(started.status, started.stderr).toBe(0);
      let screen = "";
      for (let i = 0; i < 300 && !screen.includes("run exited"); i++) {
        await new Promise((r) => setTimeout(r, 200));
        screen = tmux("capture-pane", "-p", "-J", "-S", "-", "-t", "logs").stdout;
      }
      expect(screen).toContain("run exited 0");
      const lines = screen.split("\n").filter((l) => / ERROR /.test(l));
      expect(lines.length).toBeGreaterThan(0);
      expect(lines[0]).toMatch(/^\d\d:\d\d:\d\d ERROR records dead-lettered component=db code=ERR_CHAOS_PERMANENT first_record_id=gen-\d+ err=chaos: injected permanent failure of record gen-\d+ records=\d+$/);
      expect(screen).not.toContain('{"level"');
    });
  });
});
