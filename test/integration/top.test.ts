/**
 * `sluice top` against two running instances (real `sluice run` processes) and one that is not
 * there: in a terminal (a tmux pane: the screen redrawn in place on the alternate screen, `q`
 * quits) and with stdout a pipe (plain lines).
 */
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { requireTool } from "../helpers/tools.js";
import { killClis, runCli, startSluice } from "../helpers/cli.js";

const ENTRY = join(resolve(import.meta.dirname, "../.."), "src/cli/entry.ts");
const TSX = pathToFileURL(createRequire(import.meta.url).resolve("tsx")).href;


async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((done) => server.listen(0, "127.0.0.1", done));
  const port = (server.address() as { port: number }).port;
  await new Promise<void>((done) => server.close(() => done()));
  return port;
}

const hasTmux = requireTool("tmux", ["-V"], "Debian's tmux package (apt-get install tmux)");
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let dir: string;
const ports: number[] = [];
let downPort: number;

/** Starts an instance: a generator at 500 records/s into a blackhole (the second one: into SQLite), metrics on `port`. */
async function instance(name: string, port: number, sink: string): Promise<void> {
  await writeFile(
    join(dir, `${name}.yaml`),
    `data_dir: ./${name}-data\nobservability: { listen: "127.0.0.1:${port}", log_level: silent, progress: never }\nsources:\n  ${name}-gen: { type: generator, count: 100000000, rate: 500 }\nsinks:\n  ${name}-out: ${sink}\n`,
  );
  startSluice(["run", `${name}.yaml`], dir);
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "sluice-top-"));
  ports.push(await freePort(), await freePort());
  downPort = await freePort();
  await instance("alpha", ports[0]!, "{ type: blackhole }");
  await instance("beta", ports[1]!, "{ type: sqlite, path: ./beta.db }");
  for (const port of ports) {
    for (let i = 0; ; i++) {
      const ok = await fetch(`http://127.0.0.1:${port}/metrics`).then((r) => r.ok, () => false);
      if (ok) break;
      if (i > 150) throw new Error(`instance on ${port} did not start`);
      await sleep(200);
    }
  }
});

afterAll(async () => {
  killClis();
  await rm(dir, { recursive: true, force: true });
});

describe("sluice top", () => {
  it("with stdout a pipe: plain key=value lines per refresh, rates from the second on, the missing instance down", async () => {
    const r = await runCli(["top", `127.0.0.1:${ports[0]}`, `http://127.0.0.1:${ports[1]}/metrics`, `127.0.0.1:${downPort}`, "--count", "2", "--interval", "1s"]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const lines = r.stdout.trim().split("\n");
    const a = `http://127.0.0.1:${ports[0]}/metrics`;
    const b = `http://127.0.0.1:${ports[1]}/metrics`;
    const down = `http://127.0.0.1:${downPort}/metrics`;
    const at = (url: string, what: string) => lines.filter((l) => l.split(" ")[1] === url && l.split(" ")[2] === what);
    expect(lines.every((l) => /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z http:\/\/127\.0\.0\.1:\d+\/metrics /.test(l))).toBe(true);
    expect(at(a, "up")).toHaveLength(2);
    expect(at(a, "up")[0]).toMatch(/ received=\d+ received_per_s=- delivered=\d+ delivered_per_s=- dead_lettered=0 dropped=0 retried=0 buffer_records=\d+ buffer_max_records=10000 buffer_bytes=\d+ buffer_max_bytes=67108864$/);
    expect(at(a, "source")[1]).toMatch(/ source alpha-gen total=\d+ per_s=\d+\.\d dead_lettered=0$/);
    expect(at(b, "sink")[1]).toMatch(/ sink beta-out total=\d+ per_s=\d+\.\d dead_lettered=0 retried=0 up=1$/);
    // 500 records/s generated: the second refresh's rate is about that.
    const rate = Number(/per_s=(\d+\.\d)/.exec(at(b, "source")[1]!)![1]);
    expect(rate).toBeGreaterThan(100);
    expect(rate).toBeLessThan(1000);
    expect(Number(/total=(\d+)/.exec(at(a, "source")[1]!)![1])).toBeGreaterThan(Number(/total=(\d+)/.exec(at(a, "source")[0]!)![1]));
    expect(at(down, "down")).toHaveLength(2);
    expect(at(down, "down")[1]).toMatch(new RegExp(` down since=\\S+Z error="connect ECONNREFUSED 127\\.0\\.0\\.1:${downPort}"$`));
  });

  it("refuses a URL that is not http (exit 2)", async () => {
    const r = await runCli(["top", "ftp://127.0.0.1:21/"]);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe("sluice top: ftp://127.0.0.1:21/: not an http(s) URL\n");
  });

  describe.skipIf(!hasTmux)("in a terminal (tmux)", () => {
    const socket = `sluice-top-${randomBytes(4).toString("hex")}`;
    const tmux = (...args: string[]) => spawnSync("tmux", ["-L", socket, ...args], { encoding: "utf8" });
    const pane = () => tmux("capture-pane", "-p", "-t", "top").stdout;
    const alternate = () => tmux("display-message", "-p", "-t", "top", "#{alternate_on}").stdout.trim();

    afterAll(() => {
      tmux("kill-server");
    });

    async function until(what: string, ok: (screen: string) => boolean): Promise<string> {
      for (let i = 0; i < 150; i++) {
        const screen = pane();
        if (ok(screen)) return screen;
        await sleep(200);
      }
      throw new Error(`the pane never showed ${what}:\n${pane()}`);
    }

    it("draws both instances in place on the alternate screen, shows the missing one down, and q quits", async () => {
      const command = [process.execPath, "--conditions=sluice-source", "--import", TSX, ENTRY, "top", `127.0.0.1:${ports[0]}`, `127.0.0.1:${ports[1]}`, `127.0.0.1:${downPort}`, "--interval", "500ms"].map((a) => `'${a}'`).join(" ");
      const started = tmux("new-session", "-d", "-s", "top", "-x", "150", "-y", "40", `${command}; echo "top exited $?"; sleep 60`);
      expect(started.status, started.stderr).toBe(0);

      const rated = /^ {2}source {2}alpha-gen +[\d,]+ +[\d,]+ +0 +- *$/m;
      const first = await until("rates for both instances", (s) => rated.test(s) && /^ {2}sink {4}beta-out +[\d,]+ +[\d,]+ +0 +0 +up *$/m.test(s));
      expect(alternate()).toBe("1");
      const lines = first.split("\n");
      expect(lines[0]).toMatch(/^sluice top - 3 instances, every 0\.5 s - q: quit +\d\d:\d\d:\d\d$/);
      expect(first).toContain(`http://127.0.0.1:${ports[0]}/metrics  up`);
      expect(first).toContain(`http://127.0.0.1:${ports[1]}/metrics  up`);
      expect(first).toMatch(new RegExp(`http://127\\.0\\.0\\.1:${downPort}/metrics  DOWN since \\d\\d:\\d\\d:\\d\\d: connect ECONNREFUSED 127\\.0\\.0\\.1:${downPort} \\(retrying\\)`));
      expect(first).toMatch(/^ {2}buffer [\d,]+ \/ 10,000 records \(\d+%\) {2}.+ \/ 64\.0 MiB \(\d+%\)$/m);
      expect(first).toMatch(/^ {2}KIND {4}NAME +RATE\/S +TOTAL +DEAD-LETTERED +RETRIED +STATE$/m);

      // Redrawn in place: later, the same one screen (one title line), with a larger total.
      const total = (s: string) => Number(rated.exec(s)![0].trim().split(/ +/)[3]!.replaceAll(",", ""));
      const later = await until("a larger total", (s) => rated.test(s) && total(s) > total(first));
      expect(later.split("\n").filter((l) => l.startsWith("sluice top - ")).length).toBe(1);
      expect(later.split("\n")[0]).toMatch(/^sluice top - /);

      tmux("send-keys", "-t", "top", "q");
      const after = await until("the exit", (s) => s.includes("top exited"));
      expect(after).toContain("top exited 0");
      expect(alternate()).toBe("0");
      // Back on the normal screen: nothing of top's screen was left on it.
      expect(after).not.toContain("sluice top - ");
    });
  });
});
