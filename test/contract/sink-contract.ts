/**
 * The one contract suite every sink passes (Benthos `integration.StreamTests` style): connect,
 * write and read back, empty batch, redelivery, partial failure by index, a big batch, close and
 * reopen, and hostile strings. A sink's test file calls {@link runSinkContract} once.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { withChaos } from "../../src/components/chaos.js";
import type { ComponentContext, Sink, WriteResult } from "../../src/components/contracts.js";
import { systemClock, type Clock } from "../../src/core/clock.js";
import { SluiceError } from "../../src/core/errors.js";
import { silentLogger, type InternalEvent } from "../../src/core/events.js";
import type { JsonObject, SluiceRecord } from "../../src/core/record.js";
import { makeRecords } from "../helpers/records.js";

/** A record as a sink stored it, normalized across sinks for comparison. */
export interface StoredRecord {
  readonly id: string;
  readonly key: string | null;
  /** ISO 8601, or null when the record had no event time. */
  readonly eventTime: string | null;
  readonly payload: JsonObject;
}

/** Per-test environment: a fresh temp directory (removed afterwards) and a context rooted in it. */
export interface ContractEnv {
  readonly dir: string;
  readonly ctx: ComponentContext;
}

/** Options of {@link runSinkContract}. */
export interface SinkContractOptions {
  /**
   * Whether writing the same records twice leaves one copy (true, the default: table sinks). An
   * append-only sink (file, stdout) is at-least-once: the suite then checks that no record is
   * missing and that exactly the redelivered ones appear twice.
   */
  readonly idempotent?: boolean;
  /**
   * Whether the sink reports the records it already held (`WriteResult.alreadyPresent`); default:
   * true for an idempotent sink that keeps what it writes (readBack given). A sink that does not
   * must report none: every record it commits counts as new.
   */
  readonly reportsPresent?: boolean;
  /** Whether data survives close and a new sink on the same place (default: true when readBack is given). */
  readonly durable?: boolean;
  /** Records in the big batch; default 10,000. */
  readonly bigBatch?: number;
  /**
   * What the store cannot hold unchanged, for the hostile-records case (PostgreSQL: U+0000 in text
   * and jsonb, lone surrogates in UTF-8). The sink must report each record `rejects` picks as a
   * permanent `ERR_SINK_REJECTED` failure and store the rest; `stored` says how a stored record
   * reads back. Default: every hostile record is stored unchanged.
   */
  readonly unrepresentable?: {
    readonly rejects: (record: SluiceRecord) => boolean;
    readonly stored: (record: StoredRecord) => StoredRecord;
  };
}

/**
 * A {@link ComponentContext} for tests: `baseDir` is `dir`, `dataDir` is `<dir>/data` (distinct, so
 * a test notices a path resolved against the wrong one; not created here). Emitted events are
 * kept in `events`.
 */
export function sinkContext(dir: string, clock: Clock = systemClock, name = "test-sink"): ComponentContext & { events: InternalEvent[] } {
  const events: InternalEvent[] = [];
  return { name, dataDir: join(dir, "data"), baseDir: dir, clock, logger: silentLogger, emit: (e) => events.push(e), events };
}

/** Makes a fresh temp directory under the OS temp dir; the returned function removes it. */
export async function tempDir(prefix = "sluice-sink-"): Promise<{ dir: string; remove: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  return { dir, remove: () => rm(dir, { recursive: true, force: true }) };
}

/** What a record should look like once stored. */
export function expected(record: SluiceRecord): StoredRecord {
  return {
    id: record.id,
    key: record.key ?? null,
    eventTime: record.eventTime === undefined ? null : new Date(record.eventTime).toISOString(),
    payload: record.payload,
  };
}

function byId(a: { id: string }, b: { id: string }): number {
  return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
}

function countById(stored: readonly StoredRecord[]): Map<string, number> {
  const counts = new Map<string, number>();
  for (const r of stored) counts.set(r.id, (counts.get(r.id) ?? 0) + 1);
  return counts;
}

function failuresOf(result: WriteResult | void): readonly { index: number; error: SluiceError }[] {
  return result?.failures ?? [];
}

function presentOf(result: WriteResult | void): number[] {
  return [...(result?.alreadyPresent ?? [])].sort((a, b) => a - b);
}

/** 0, 1, ..., n - 1. */
function indexes(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i);
}

/** Records whose ids, keys and payloads are hostile: quotes, SQL, unicode, control characters, line breaks. */
export function hostileRecords(): SluiceRecord[] {
  const base = Date.UTC(2024, 5, 1);
  const strings = [
    `a"; drop table records; --`,
    "' OR '1'='1",
    "Robert'); DROP TABLE students;--",
    "emoji 🚀🔥 and flags 🇳🇱",
    "ünïcödé Ωμέγα 日本語 עברית العربية",
    "line\nbreak\r\nand\ttab",
    "separators \u2028 and \u2029",
    "back\\slash and \"quotes\"",
    "nul\u0000byte",
    "combining e\u0301 vs \u00e9",
    "{\"looks\":\"like json\"}",
    "",
  ];
  return strings.map((s, i) => ({
    id: `hostile-${i}-${s}`,
    key: i % 3 === 0 ? undefined : s,
    payload: {
      id: `hostile-${i}`,
      text: s,
      nested: { list: [s, i, null, true, { deep: s }], empty: {}, none: [] },
      [s === "" ? "empty-key" : s]: s,
      big: 1.7976931348623157e308,
      negative: -0.000001,
      lone_surrogate: "\ud800",
    },
    eventTime: i % 2 === 0 ? undefined : base + i,
    receivedAt: base + i,
    source: "test",
    attempts: 0,
  }));
}

/**
 * Registers the sink contract tests.
 *
 * `makeSink(env)` builds a new, unconnected sink writing to the test's place (usually under
 * `env.dir`); it is called again on the same env for the reopen case. `readBack(env)` returns
 * everything the sink has durably stored there; pass undefined for a sink that keeps nothing
 * (only the cases that need no read-back run, the rest check what the sink reports).
 */
export function runSinkContract(
  name: string,
  makeSink: (env: ContractEnv) => Sink | Promise<Sink>,
  readBack: ((env: ContractEnv) => Promise<StoredRecord[]>) | undefined,
  options: SinkContractOptions = {},
): void {
  const idempotent = options.idempotent ?? true;
  const reportsPresent = options.reportsPresent ?? (idempotent && readBack !== undefined);
  /** What a sink that reports them must say is already present; one that does not reports none. */
  const present = (reported: number[]) => (reportsPresent ? reported : []);
  const durable = options.durable ?? readBack !== undefined;
  const bigBatch = options.bigBatch ?? 10_000;
  const rejects = options.unrepresentable?.rejects ?? (() => false);
  const stored = options.unrepresentable?.stored ?? ((r: StoredRecord) => r);

  describe(`sink contract: ${name}`, () => {
    let env: ContractEnv;
    let remove: () => Promise<void>;
    const open: Sink[] = [];
    const signal = new AbortController().signal;

    async function connected(): Promise<Sink> {
      const sink = await makeSink(env);
      await sink.connect(signal);
      open.push(sink);
      return sink;
    }

    async function closeSink(sink: Sink): Promise<void> {
      open.splice(open.indexOf(sink), 1);
      await sink.close();
    }

    beforeEach(async () => {
      const temp = await tempDir(`sluice-contract-${name.replace(/[^a-z0-9]/gi, "")}-`);
      env = { dir: temp.dir, ctx: sinkContext(temp.dir) };
      remove = temp.remove;
    });

    afterEach(async () => {
      for (const sink of open.splice(0)) await sink.close().catch(() => undefined);
      await remove();
    });

    it("declares a positive integer maxInFlight, connects and closes", async () => {
      const sink = await connected();
      expect(Number.isInteger(sink.maxInFlight) && sink.maxInFlight >= 1).toBe(true);
      await closeSink(sink);
    });

    it("writes a batch that reads back exactly, envelope included", async () => {
      const sink = await connected();
      const records = [...makeRecords(20), ...makeRecords(5, { start: 20, eventTime: false })];
      const result = await sink.write(records, signal);
      expect(failuresOf(result)).toEqual([]);
      if (readBack) {
        expect((await readBack(env)).sort(byId)).toEqual(records.map(expected).sort(byId));
      }
    });

    it("accepts an empty batch, stores nothing, and keeps working", async () => {
      const sink = await connected();
      expect(failuresOf(await sink.write([], signal))).toEqual([]);
      if (readBack) expect(await readBack(env)).toEqual([]);
      const records = makeRecords(3);
      expect(failuresOf(await sink.write(records, signal))).toEqual([]);
      if (readBack) expect((await readBack(env)).map((r) => r.id).sort()).toEqual(["r-0", "r-1", "r-2"]);
    });

    it(
      idempotent
        ? "keeps one copy of a record written twice (idempotent by id)"
        : "keeps every record of a redelivered batch at least once (at-least-once, duplicates allowed)",
      async () => {
        const sink = await connected();
        const records = makeRecords(50);
        const first = await sink.write(records, signal);
        expect(failuresOf(first)).toEqual([]);
        expect(presentOf(first)).toEqual([]);
        // A redelivery overlapping the first batch, as after a retry of a partly committed write.
        const again = [...records.slice(25), ...makeRecords(10, { start: 50 })];
        const second = await sink.write(again, signal);
        expect(failuresOf(second)).toEqual([]);
        expect(presentOf(second)).toEqual(present(indexes(25)));
        if (!readBack) return;
        const counts = countById(await readBack(env));
        expect(counts.size).toBe(60);
        for (let i = 0; i < 60; i++) {
          const n = counts.get(`r-${i}`) ?? 0;
          if (idempotent) expect(n, `r-${i}`).toBe(1);
          else expect(n, `r-${i}`).toBe(i >= 25 && i < 50 ? 2 : 1);
        }
      },
    );

    it(
      reportsPresent ? "reports every record of a batch written twice as already present" : "reports no record as already present",
      async () => {
        const sink = await connected();
        const records = makeRecords(40);
        expect(presentOf(await sink.write(records, signal))).toEqual([]);
        const again = await sink.write(records, signal);
        expect(failuresOf(again)).toEqual([]);
        expect(presentOf(again)).toEqual(present(indexes(40)));
        // One id twice in a fresh batch: the first copy is new, the second already present.
        const twice = makeRecords(3, { start: 40 });
        expect(presentOf(await sink.write([...twice, twice[0]!], signal))).toEqual(present([3]));
      },
    );

    it("reports per-record failures by index and stores exactly the others", async () => {
      const inner = await connected();
      const passed: SluiceRecord[][] = [];
      const spy: Sink = {
        maxInFlight: inner.maxInFlight,
        connect: (s) => inner.connect(s),
        close: () => inner.close(),
        write: (records, s) => {
          passed.push([...records]);
          return inner.write(records, s);
        },
      };
      const sink = withChaos(
        spy,
        { failure_rate: 0, permanent_failure_rate: 0.3, latency: { min: 0, max: 0 }, seed: 7 },
        systemClock,
      );
      const records = makeRecords(100);
      const failures = failuresOf(await sink.write(records, signal));

      // Guards the test itself: with this seed some records fail and some pass.
      expect(failures.length).toBeGreaterThan(5);
      expect(failures.length).toBeLessThan(95);
      const failed = new Set(failures.map((f) => f.index));
      expect(failed.size).toBe(failures.length);
      for (const f of failures) {
        expect(f.index).toBeGreaterThanOrEqual(0);
        expect(f.index).toBeLessThan(records.length);
        expect(f.error).toBeInstanceOf(SluiceError);
        expect(f.error.code).toBe("ERR_CHAOS_PERMANENT");
        expect(f.error.retryable).toBe(false);
      }
      const survivors = records.filter((_, i) => !failed.has(i));
      expect(passed).toEqual([survivors]);
      if (readBack) {
        expect((await readBack(env)).map((r) => r.id).sort()).toEqual(survivors.map((r) => r.id).sort());
      }
      // Written again, now without chaos: the survivors were stored, the failed records were not.
      const again = await inner.write(records, signal);
      expect(presentOf(again)).toEqual(present(indexes(records.length).filter((i) => !failed.has(i))));
    });

    it(`writes a big batch (${bigBatch} records) in one write`, async () => {
      const sink = await connected();
      const records = makeRecords(bigBatch);
      expect(failuresOf(await sink.write(records, signal))).toEqual([]);
      if (!readBack) return;
      const stored = await readBack(env);
      expect(stored.length).toBe(bigBatch);
      expect(countById(stored).size).toBe(bigBatch);
      const last = stored.find((r) => r.id === `r-${bigBatch - 1}`);
      expect(last).toEqual(expected(records[bigBatch - 1]!));
    });

    it(durable ? "keeps its data across close and reopen" : "can be closed and a new one connected on the same place", async () => {
      const first = await connected();
      const before = makeRecords(30);
      expect(failuresOf(await first.write(before, signal))).toEqual([]);
      await closeSink(first);

      const second = await connected();
      if (durable && readBack) expect((await readBack(env)).map((r) => r.id).sort()).toEqual(before.map((r) => r.id).sort());
      const after = makeRecords(20, { start: 30 });
      expect(failuresOf(await second.write(after, signal))).toEqual([]);
      await closeSink(second);
      if (durable && readBack) {
        const ids = (await readBack(env)).map((r) => r.id).sort();
        expect(ids).toEqual([...before, ...after].map((r) => r.id).sort());
      }
    });

    it("stores hostile ids, keys and payloads (quotes, SQL, unicode, control characters) unchanged", async () => {
      const sink = await connected();
      const records = hostileRecords();
      const rejected = records.flatMap((r, i) => (rejects(r) ? [i] : []));
      const kept = records.filter((r) => !rejects(r));
      // Guards the test itself: an exemption must leave most hostile records to check.
      expect(kept.length).toBeGreaterThan(records.length / 2);
      const failures = failuresOf(await sink.write(records, signal));
      expect(failures.map((f) => f.index).sort((a, b) => a - b)).toEqual(rejected);
      for (const f of failures) expect([f.error.code, f.error.retryable]).toEqual(["ERR_SINK_REJECTED", false]);
      if (!readBack) return;
      expect((await readBack(env)).sort(byId)).toEqual(kept.map((r) => stored(expected(r))).sort(byId));
      // Still a working sink afterwards: nothing in the data was executed as a statement.
      expect(failuresOf(await sink.write(makeRecords(2), signal))).toEqual([]);
      expect((await readBack(env)).length).toBe(kept.length + 2);
    });
  });
}
