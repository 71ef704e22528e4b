/**
 * The scenario the fleet fault tests share (redis-fleet, nats-fleet): three `sluice run` workers
 * (test/helpers/fleet.ts) read one broker group into one PostgreSQL table while a random worker
 * is SIGKILLed and started again every few seconds, optionally with the broker itself restarted
 * once part of the records are in. Then one poison record, which kills every worker that
 * transforms it, is added: it must end in a dead-letter store with ERR_MAX_DELIVERIES after
 * {@link MAX_DELIVERIES} deliveries, not be redelivered forever. At the end every record is in the
 * table exactly once, nothing is pending at the broker, and every worker stops with exit 0.
 *
 * The poison comes after the preloaded records are in, on a quiet stream: a record that kills its
 * process takes the records in flight beside it along (they are delivered again with it, and count
 * deliveries too), which is what max_deliveries cannot tell apart; see README "Scaling out".
 */
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { expect } from "vitest";
import { readDeadLetters, type DeadLetterRow } from "../../src/sinks/dead-letter-sqlite.js";
import type { BrokerServer } from "../helpers/broker-servers.js";
import { uniqueName } from "../helpers/brokers.js";
import { startFleet, type Fleet } from "../helpers/fleet.js";
import { countRows, query } from "./postgres-harness.js";

export const PG_URL = process.env.SLUICE_PG_URL ?? "postgres://postgres@127.0.0.1:5432/test";

/** Workers in the fleet. */
const WORKERS = 3;
/**
 * Deliveries of the poison record before it is dead-lettered (the source's max_deliveries /
 * max_deliver). Every kill counts a delivery of each record the killed worker held: at 3, the
 * random kills alone dead-lettered ordinary records now and then (a reclaimed chunk whose new
 * worker was killed too, three times running).
 */
export const MAX_DELIVERIES = 5;
/** Kills at most, at the scenario's pace: enough to hit every worker a few times while the records flow. */
const MAX_KILLS = 8;
/** The poison record's id. */
export const POISON_ID = "poison";
const KILLS_ITSELF = resolve(import.meta.dirname, "../fixtures/transforms/kills-itself.mjs");

/** The i-th preloaded record's id and body: what an ingest node's sink writes. */
export function preloadRecord(i: number): { id: string; body: string } {
  const id = `r-${i}`;
  return { id, body: `{"id":"${id}","sensor":"s-${i % 97}","value":${i % 1000},"unit":"C"}` };
}

/** The poison record's body. */
export const POISON_BODY = `{"id":"${POISON_ID}","poison":true}`;

/** One broker's part of the scenario. */
export interface Scenario {
  /** For directory names and the log line. */
  readonly name: string;
  /** Records preloaded before the fleet starts, as {@link preloadRecord} makes them. */
  readonly total: number;
  /** The `sources:` block of the workers' pipeline. */
  readonly sourceYaml: string;
  /** Adds the poison record ({@link POISON_BODY}, id {@link POISON_ID}) to the broker. */
  addPoison(): Promise<void>;
  /** Records delivered to a worker and not yet acked, at the broker. */
  pending(): Promise<number>;
  /** Mean time between two kills, ms. */
  readonly killEveryMs: number;
  /** Restart (SIGKILL + start) `server` once `at` of the records are in the table. */
  readonly restart?: { readonly server: BrokerServer; readonly at: number };
  /** How long the records may take to reach the table, ms. */
  readonly timeoutMs: number;
}

/** What a scenario run measured, for its log line and further checks. */
export interface ScenarioReport {
  /** Rows in the table when each kill happened. */
  readonly rowsAtKills: readonly number[];
  /** Rows just before and just after the broker restart. */
  readonly restart?: { readonly before: number; readonly after: number };
  readonly seconds: { readonly flow: number; readonly poison: number; readonly total: number };
}

/** Polls `check` every 250 ms until it is true; fails after `timeoutMs`, or as soon as a worker went down for good. */
async function waitFor(fleet: Fleet, what: () => string, timeoutMs: number, check: () => Promise<boolean> | boolean): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const down = fleet.exits.find((e) => !e.killed && e.signal === null);
    if (down !== undefined) throw new Error(`worker ${down.worker} exited with code ${down.code} while waiting for ${what()}:\n${down.output}`);
    if (await check()) return;
    if (Date.now() > deadline) {
      const outputs = Array.from({ length: WORKERS }, (_, i) => `worker ${i}:\n${fleet.output(i).slice(-3000)}`).join("\n");
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what()}; exits: ${JSON.stringify(fleet.exits.map((e) => [e.worker, e.signal ?? e.code]))}\n${outputs}`);
    }
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** Every worker's dead letters (each has its own data_dir and dlq.db). */
function deadLetters(fleet: Fleet): (DeadLetterRow & { worker: number })[] {
  return Array.from({ length: WORKERS }, (_, worker) => readDeadLetters(join(fleet.cwd(worker), "data", "dlq.db")).map((d) => ({ ...d, worker }))).flat();
}

/** Runs the scenario and checks its end state; resolves to what it measured. */
export async function runFleetScenario(s: Scenario): Promise<ScenarioReport> {
  const table = uniqueName(`fleet_${s.name}_`);
  const dir = await mkdtemp(join(tmpdir(), `sluice-fleet-${s.name}-`));
  const configFile = join(dir, "worker.yaml");
  // Small batches, so a kill finds commits in flight and a redelivery meets rows already there.
  await writeFile(
    configFile,
    `data_dir: ./data
shutdown_timeout: 20s
buffer: { max_records: 4000 }
sources:
${s.sourceYaml}
transforms:
  - { type: module, path: ${KILLS_ITSELF} }
sinks:
  db:
    type: postgres
    url: ${PG_URL}
    table: ${table}
    batch: { max_records: 1000, max_wait: 20ms }
    retry: { max_attempts: 1000, max_elapsed: 60s, initial_backoff: 50ms, max_backoff: 1s }
observability: { listen: "127.0.0.1:\${SLUICE_WORKER_PORT}", log_level: warn }
`,
  );
  const started = Date.now();
  const fleet = await startFleet({ configFile, size: WORKERS, dir });
  try {
    const rows = () => countRows(PG_URL, table);
    const rowsAtKills: number[] = [];
    const stopKilling = fleet.startKilling(s.killEveryMs, { maxKills: MAX_KILLS, onKill: async () => void rowsAtKills.push(await rows()) });
    let restart: { before: number; after: number } | undefined;
    let last = 0;
    await waitFor(fleet, () => `${s.total} rows (${last} now; rows at the kills ${rowsAtKills.join(", ")}; dead letters ${deadLetters(fleet).length})`, s.timeoutMs, async () => {
      const n = (last = await rows());
      if (s.restart !== undefined && restart === undefined && n >= s.total * s.restart.at) {
        await s.restart.server.restart();
        restart = { before: n, after: await rows() };
      }
      return n >= s.total;
    });
    await stopKilling();
    const flowDone = Date.now();
    expect(
      fleet.exits.filter((e) => !e.killed),
      "a worker died on its own before the poison",
    ).toEqual([]);

    await s.addPoison();
    await waitFor(fleet, () => "the poison record dead-lettered", 60_000, () => deadLetters(fleet).length > 0);
    await waitFor(fleet, () => "nothing pending at the broker", 60_000, async () => (await s.pending()) === 0);
    const poisonDone = Date.now();
    const selfExits = fleet.exits.filter((e) => !e.killed).length;
    // Not redelivered forever: no worker dies of it any more, also after another claim_idle / ack_wait.
    await new Promise((r) => setTimeout(r, 3000));
    expect(fleet.exits.filter((e) => !e.killed).length).toBe(selfExits);
    const results = await fleet.stop();

    for (const r of results) expect({ worker: r.worker, code: r.code, signal: r.signal }, r.output).toEqual({ worker: r.worker, code: 0, signal: null });
    const dead = deadLetters(fleet);
    const exitLog = fleet.exits
      .filter((e) => !e.killed)
      .map((e) => `worker ${e.worker} run ${e.run} at +${((e.at - flowDone) / 1000).toFixed(1)} s`)
      .join(", ");
    const poisonLog = `${selfExits} self-exits after the poison (${exitLog}); dead letters: ${dead.map((d) => `worker ${d.worker} at ${d.last_failure_at}: ${d.message}`).join("; ")}; summaries dead_lettered: ${results.map((r) => r.summary?.records.dead_lettered).join(", ")}`;
    // Each delivery of the poison killed the worker that had it, until one found it delivered max_deliveries times.
    expect(
      fleet.exits.filter((e) => !e.killed).every((e) => e.signal === "SIGKILL"),
      poisonLog,
    ).toBe(true);
    expect(selfExits, poisonLog).toBeGreaterThanOrEqual(MAX_DELIVERIES);
    // Once, or sometimes twice, and more deaths than max_deliveries (what the times of the deaths and
    // dead letters show): with nats_jetstream's ack_wait of 2 s on a loaded machine, a worker just
    // started (loading its transform module on its first record) missed its working() ticks past
    // ack_wait, so the server delivered the record again, to it or another worker, while the first
    // copy was still in flight: both copies kill, or one is dead-lettered and the other kills the
    // worker before its +TERM is sent (then a third copy is dead-lettered elsewhere). At least once,
    // like any delivery.
    expect(new Set(dead.map((d) => `${d.record_id} ${d.code}`)), poisonLog).toEqual(new Set([`${POISON_ID} ERR_MAX_DELIVERIES`]));
    for (const d of dead) expect(Number(/delivered (\d+) times/.exec(d.message)?.[1]), d.message).toBeGreaterThanOrEqual(MAX_DELIVERIES);
    const [counts] = await query<{ n: number; distinct: number; poison: number }>(
      PG_URL,
      `SELECT count(*)::int AS n, count(DISTINCT id)::int AS distinct, count(*) FILTER (WHERE id = $1)::int AS poison FROM "${table}"`,
      [POISON_ID],
    );
    expect(counts).toEqual({ n: s.total, distinct: s.total, poison: 0 });
    expect(await s.pending()).toBe(0);
    // The kills hit workers with records to lose: at least two while the table was filling.
    expect(rowsAtKills.filter((n) => n > 0 && n < s.total).length, `rows at the kills: ${rowsAtKills.join(", ")}`).toBeGreaterThanOrEqual(2);
    if (s.restart !== undefined) {
      expect(restart, "the broker was not restarted").toBeDefined();
      expect(restart!.before).toBeGreaterThanOrEqual(s.total * 0.1);
      expect(restart!.after, "the restart came after the records were in").toBeLessThan(s.total * 0.9);
    }
    const report = {
      rowsAtKills,
      ...(restart === undefined ? {} : { restart }),
      seconds: { flow: (flowDone - started) / 1000, poison: (poisonDone - flowDone) / 1000, total: (Date.now() - started) / 1000 },
    };
    console.log(
      `${s.name}: ${s.total} records through ${WORKERS} workers in ${report.seconds.flow.toFixed(1)} s with ${rowsAtKills.length} kills at rows ${rowsAtKills.join(", ")}` +
        `${restart === undefined ? "" : `; broker restarted at ${restart.before} rows`}; poison dead-lettered in ${report.seconds.poison.toFixed(1)} s (${poisonLog}); total ${report.seconds.total.toFixed(1)} s`,
    );
    return report;
  } finally {
    fleet.abort();
    await query(PG_URL, `DROP TABLE IF EXISTS "${table}"`).catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
  }
}
