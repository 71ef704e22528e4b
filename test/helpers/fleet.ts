/**
 * A fleet of `sluice run` workers for the fault tests of scaling out: N real CLI children on one
 * pipeline file, each in its own working directory (so a relative `data_dir` gives each its own
 * dead-letter store and lock), SIGKILLed at random and started again, stopped with SIGTERM at the
 * end with their summaries collected.
 *
 * Each worker gets `SLUICE_WORKER` (its index) and `SLUICE_WORKER_PORT` (a free port, the same
 * across its restarts) in its environment; the pipeline must serve its observability endpoints
 * there (`observability: { listen: "127.0.0.1:${SLUICE_WORKER_PORT}" }`, or through a variable of
 * its own that `env` sets from the port): the fleet kills only workers that answer `/health/live`
 * and stops them only once they all do, so no kill or SIGTERM hits a process still starting.
 *
 * A worker that dies by a signal nobody sent here (a transform that kills its own process) is
 * started again at once and recorded as a self-exit; one that exits with a code on its own (a
 * config error, a run that failed) is recorded and left down, so a test sees it instead of a
 * restart loop. Call {@link Fleet.abort} in a `finally` so no worker outlives a failed test.
 */
import { mkdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { freePort } from "./broker-servers.js";
import { startCli, type Cli } from "./cli.js";

/** How long {@link Fleet.stop} waits for a worker to drain and exit after SIGTERM before it SIGKILLs it, in ms. */
const STOP_TIMEOUT_MS = 30_000;
/** How long a (re)started worker may take to answer `/health/live`, in ms (a loaded 2-core machine compiles the sources for seconds). */
const START_TIMEOUT_MS = 60_000;

/** What a worker's `--summary-json` holds (the fields the fault tests read). */
export interface WorkerSummary {
  readonly records: { received: number; delivered: number; already_present: number; dead_lettered: number; dropped: number; retried: number };
  readonly sinks: Record<string, { delivered: number; dead_lettered: number }>;
  readonly elapsed_seconds: number;
}

/** One exit of a worker before {@link Fleet.stop}. */
export interface WorkerExit {
  readonly worker: number;
  /** Which start of the worker this was: 0 for the first. */
  readonly run: number;
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  /** True when the fleet killed it (a {@link Fleet.killRandom}); false when it ended on its own. */
  readonly killed: boolean;
  /** Date.now() at the exit. */
  readonly at: number;
  /** Its stderr. */
  readonly output: string;
}

/** How a worker's last run ended at {@link Fleet.stop}. */
export interface WorkerResult {
  readonly worker: number;
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  /** Its `--summary-json`, or undefined when it wrote none (it did not exit by itself). */
  readonly summary: WorkerSummary | undefined;
  readonly output: string;
}

/** Where and how the workers run. */
export interface FleetOptions {
  /** The pipeline every worker runs. */
  readonly configFile: string;
  /** How many workers. */
  readonly size: number;
  /** Parent of the workers' working directories `worker-<i>` (created). */
  readonly dir: string;
  /** More environment of worker `i`, whose observability port is `port` (on top of this process's and the fleet's two variables); default none. */
  readonly env?: (worker: number, port: number) => Record<string, string>;
}

/** A running fleet, from {@link startFleet}. */
export interface Fleet {
  /** Worker `i`'s working directory: a relative `data_dir` resolves against it. */
  cwd(worker: number): string;
  /** Every exit before {@link stop}, in order: the fleet's kills and the workers' own. */
  readonly exits: readonly WorkerExit[];
  /** How many workers are running now. */
  running(): number;
  /** The stderr of worker `i`'s current run so far. */
  output(worker: number): string;
  /** Resolves once every running worker answers `/health/live`; rejects after `timeoutMs` naming the one that does not. */
  live(timeoutMs?: number): Promise<void>;
  /**
   * SIGKILLs a worker chosen at random among those that answer `/health/live`, waiting until at
   * least two do (so one is always working), waits for its exit and starts it again; resolves to
   * its index.
   */
  killRandom(): Promise<number>;
  /**
   * Calls {@link killRandom} at random intervals of 0.5 to 1.5 x `everyMs`, then `onKill` with
   * the worker killed, until the function it returns is called or after `maxKills` kills (default
   * no limit: on a slow machine each kill costs a restart's CPU, so a bound keeps a test's time
   * bounded); that resolves, once the loop ended, to the number of kills. Two workers may be down
   * at once, as in a real outage.
   */
  startKilling(everyMs: number, options?: { maxKills?: number; onKill?: (worker: number) => unknown }): () => Promise<number>;
  /**
   * Waits for {@link live}, sends SIGTERM to every worker, waits for each to drain and exit
   * (SIGKILL after `timeoutMs`), and resolves to how each last run ended.
   */
  stop(timeoutMs?: number): Promise<WorkerResult[]>;
  /** SIGKILLs every worker for good (nothing restarts). For `finally`; safe after {@link stop}. */
  abort(): void;
}

interface Slot {
  readonly index: number;
  readonly cwd: string;
  readonly port: number;
  cli: Cli;
  run: number;
  summaryFile: string;
  /** Set by killRandom before its SIGKILL, so the exit is recorded as the fleet's. */
  killing: boolean;
}

const alive = (cli: Cli) => cli.process.exitCode === null && cli.process.signalCode === null;

/** Whether the worker on `port` answers `/health/live` with 200. */
async function answers(port: number): Promise<boolean> {
  try {
    const res = await fetch(`http://127.0.0.1:${port}/health/live`, { signal: AbortSignal.timeout(2000) });
    await res.body?.cancel();
    return res.status === 200;
  } catch {
    return false;
  }
}

/** Starts `size` workers on `configFile`; resolves once each child is spawned (not once its pipeline runs). */
export async function startFleet(options: FleetOptions): Promise<Fleet> {
  const exits: WorkerExit[] = [];
  let stopping = false;
  const slots: Slot[] = [];

  function launch(slot: Slot): void {
    slot.summaryFile = join(slot.cwd, `summary-${slot.run}.json`);
    const env = { ...options.env?.(slot.index, slot.port), SLUICE_WORKER: String(slot.index), SLUICE_WORKER_PORT: String(slot.port) };
    const cli = startCli(options.configFile, slot.summaryFile, slot.cwd, env);
    slot.cli = cli;
    const run = slot.run;
    void cli.exited.then(({ code, signal }) => {
      if (stopping) return;
      const killed = slot.killing;
      slot.killing = false;
      exits.push({ worker: slot.index, run, code, signal, killed, at: Date.now(), output: cli.output() });
      // A worker that exits with a code on its own would exit again: leave it down for the test to see.
      if (!killed && signal === null) return;
      slot.run++;
      launch(slot);
    });
  }

  for (let index = 0; index < options.size; index++) {
    const cwd = join(options.dir, `worker-${index}`);
    await mkdir(cwd, { recursive: true });
    const slot = { index, cwd, port: await freePort(), run: 0, killing: false } as Slot;
    slots.push(slot);
    launch(slot);
  }

  async function live(timeoutMs = START_TIMEOUT_MS): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (const slot of slots) {
      while (alive(slot.cli) && !(await answers(slot.port))) {
        if (Date.now() > deadline) throw new Error(`worker ${slot.index} did not answer /health/live within ${timeoutMs} ms:\n${slot.cli.output()}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  }

  async function killRandom(): Promise<number> {
    const deadline = Date.now() + START_TIMEOUT_MS;
    let up: Slot[];
    for (;;) {
      const answering = await Promise.all(slots.map(async (s) => alive(s.cli) && (await answers(s.port))));
      up = slots.filter((_, i) => answering[i]);
      // Never the last one standing: with every worker restarting at once (seconds each on a loaded machine) nothing would move.
      if (up.length > Math.min(1, slots.length - 1)) break;
      if (Date.now() > deadline) throw new Error(`no worker answered /health/live within ${START_TIMEOUT_MS} ms`);
      await new Promise((r) => setTimeout(r, 100));
    }
    const slot = up[Math.floor(Math.random() * up.length)]!;
    slot.killing = true;
    const cli = slot.cli;
    cli.process.kill("SIGKILL");
    // launch() is chained on the same promise before this await: the worker is started again when it resolves.
    await cli.exited;
    return slot.index;
  }

  return {
    cwd: (worker) => slots[worker]!.cwd,
    exits,
    running: () => slots.filter((s) => alive(s.cli)).length,
    output: (worker) => slots[worker]!.cli.output(),
    live,
    killRandom,
    startKilling(everyMs, { maxKills = Infinity, onKill } = {}) {
      let done = false;
      let wake: () => void = () => {};
      let kills = 0;
      const loop = (async () => {
        while (!done && kills < maxKills) {
          await new Promise<void>((resolve) => {
            const timer = setTimeout(resolve, everyMs * (0.5 + Math.random()));
            wake = () => (clearTimeout(timer), resolve());
          });
          if (done || stopping) break;
          const worker = await killRandom();
          kills++;
          await onKill?.(worker);
        }
        return kills;
      })();
      return () => {
        done = true;
        wake();
        return loop;
      };
    },
    async stop(timeoutMs = STOP_TIMEOUT_MS) {
      await live();
      stopping = true;
      return Promise.all(
        slots.map(async (slot): Promise<WorkerResult> => {
          const cli = slot.cli;
          if (alive(cli)) cli.process.kill("SIGTERM");
          const timer = setTimeout(() => cli.process.kill("SIGKILL"), timeoutMs);
          const { code, signal } = await cli.exited;
          clearTimeout(timer);
          const summary = await readFile(slot.summaryFile, "utf8").then(
            (text) => JSON.parse(text) as WorkerSummary,
            () => undefined,
          );
          return { worker: slot.index, code, signal, summary, output: cli.output() };
        }),
      );
    },
    abort() {
      stopping = true;
      for (const slot of slots) if (alive(slot.cli)) slot.cli.process.kill("SIGKILL");
    },
  };
}
