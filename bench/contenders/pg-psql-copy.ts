/**
 * Baseline (a), the ceiling: `psql \copy` of the prepared COPY text file (`id<TAB>payload`, the
 * same rows as the NDJSON) into the table's `id` and `payload` columns: one client-side COPY
 * stream, one transaction, nothing parsed on the client. This child only starts `psql` and times
 * it; the work happens in psql and the server. Its CPU figure is psql's own (a reaped child's
 * user + system time, from /proc/self/stat), not this wrapper's.
 */
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { fail, startClock } from "./protocol.js";
import { finishPg, quoteIdent, readPgTask } from "./pg-protocol.js";

// USER_HZ: the unit of /proc/<pid>/stat times; 100 on every Linux Node supports.
const CLOCK_TICKS_PER_SECOND = 100;

/** CPU seconds of this process's reaped children (cutime + cstime). */
function childrenCpuSeconds(): number {
  const stat = readFileSync("/proc/self/stat", "utf8");
  // Fields after the command name (which may hold spaces), from field 3 (state) on.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[13]) + Number(fields[14])) / CLOCK_TICKS_PER_SECOND;
}

const task = readPgTask();
// psql's `\copy ... from '<file>'`: the file name is a single-quoted literal.
const source = `'${task.copyFile.replace(/'/g, "''")}'`;
const command = `\\copy ${quoteIdent(task.table)} (id, payload) FROM ${source}`;

const cpuBefore = childrenCpuSeconds();
const started = startClock();
const { code, stdout, stderr } = await new Promise<{ code: number | null; stdout: string; stderr: string }>((done) => {
  const child = spawn("psql", ["-X", "-v", "ON_ERROR_STOP=1", "-d", task.url, "-c", command], { stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let err = "";
  child.stdout.setEncoding("utf8").on("data", (d: string) => (out += d));
  child.stderr.setEncoding("utf8").on("data", (d: string) => (err += d));
  child.on("error", (e) => done({ code: null, stdout: out, stderr: `${err}\n${e.message}` }));
  child.on("close", (c) => done({ code: c, stdout: out, stderr: err }));
});
const cpu = childrenCpuSeconds() - cpuBefore;
const copied = /^COPY (\d+)$/m.exec(stdout);
if (code !== 0 || copied === null) fail(`psql \\copy: exit code ${code}\n${stdout}${stderr}`.trim());
finishPg(task, "psql-copy", Number(copied[1]), started, cpu);
