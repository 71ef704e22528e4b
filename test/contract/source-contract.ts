/**
 * The one contract suite every source passes, like the sink suite: acked only after commit; a
 * redelivered record keeps its id; a full buffer stops reading (or rejects, per the source's
 * `whenFull`); a stop mid-run loses nothing; a source reconnects after its service drops. A
 * source's test file calls {@link runSourceContract} once with a {@link SourceDriver}.
 *
 * The suite runs the real engine (a {@link Pipeline} on a memory buffer) on the system clock, as
 * sources do real I/O; it waits on conditions, never for fixed times, except where it checks that
 * something does not happen (a bounded real wait).
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { ComponentContext, EnqueueOutcome, Sink, Source, SourceHandle } from "../../src/components/contracts.js";
import { MemoryBuffer } from "../../src/core/buffer.js";
import { systemClock } from "../../src/core/clock.js";
import { SluiceError } from "../../src/core/errors.js";
import { silentLogger, type InternalEvent } from "../../src/core/events.js";
import { Pipeline, type PipelineStatus } from "../../src/core/pipeline.js";
import type { JsonObject, SluiceRecord } from "../../src/core/record.js";
import { Metrics } from "../../src/observability/metrics.js";
import { MemoryDeadLetterStore } from "../helpers/memory.js";

/** How the suite drives one source type. One driver per test: it owns the service's state (a file, a server's producer). */
export interface SourceDriver {
  /** Prepares the service before the test (a free port), if it needs to. */
  setup?(): Promise<void>;
  /**
   * Whether the source has a connection to a service that can drop (default true). The
   * reconnect case then runs it behind {@link withScriptedFaults}, which stops `run` and calls it
   * again, so `run` must be callable again after it returned. HTTP has none: producers connect to
   * it, and their retries are the producers' (its case is skipped).
   */
  readonly connection?: boolean;
  /**
   * Creates the source, which should deliver records `0 .. total-1` (with what {@link produce}
   * makes available). Called once per pipeline run; the service's state (the file and its
   * checkpoint) persists between the runs of one test, as between two runs of `sluice run`.
   */
  create(ctx: ComponentContext, total: number): Source;
  /**
   * Makes records `0 .. total-1` available, once the source runs (a file: written before; HTTP:
   * posted now, retried while answered 429/503, resolving once every one was answered 202).
   * Called after `run()` started, once per run; a later run's call redelivers what the earlier
   * did not get acked (HTTP: the producer retries the requests it had no 202 for).
   */
  produce(total: number, signal: AbortSignal): Promise<void>;
  /** The record's place in `0 .. total-1`, from its payload. */
  indexOf(payload: JsonObject): number;
  /** Whether the producer was told "full, retry later" (HTTP 429/503) since the driver was made; for `whenFull: "reject"` sources. */
  rejections?(): number;
  /** Cleans up (servers, clients); called after each test. */
  dispose?(): Promise<void>;
}

/** A sink whose writes wait for a gate; records what it was asked to write and what it committed. */
class GateSink implements Sink {
  readonly maxInFlight = 1;
  readonly attempted = new Set<string>();
  readonly committed = new Map<string, SluiceRecord>();
  writeCalls = 0;
  private open = false;
  private waiters: (() => void)[] = [];

  constructor(gateOpen: boolean) {
    this.open = gateOpen;
  }

  release(): void {
    this.open = true;
    for (const w of this.waiters.splice(0)) w();
  }

  async connect(): Promise<void> {}

  async write(records: readonly SluiceRecord[], signal: AbortSignal): Promise<void> {
    this.writeCalls++;
    for (const r of records) this.attempted.add(r.id);
    if (!this.open) {
      await new Promise<void>((resolve, reject) => {
        this.waiters.push(resolve);
        signal.addEventListener("abort", () => reject(new SluiceError("ERR_ABORTED", "write aborted")), { once: true });
      });
    }
    for (const r of records) this.committed.set(r.id, r);
  }

  async close(): Promise<void> {}
}

/** The source as the engine sees it, with every ack call recorded along with how much was committed then. */
function observed(source: Source, sink: GateSink, acks: { committed: number }[]): Source {
  return {
    acks: source.acks,
    whenFull: source.whenFull,
    ...(source.connect ? { connect: (signal: AbortSignal) => source.connect!(signal) } : {}),
    run: (handle, signal) => source.run(handle, signal),
    ack: (checkpoint) => {
      acks.push({ committed: sink.committed.size });
      return source.ack(checkpoint);
    },
    close: () => source.close(),
  };
}

/**
 * A scripted fault around a source: `connect` fails `connectFailures` times
 * (`ERR_SOURCE_CONNECT`, as a refused connection), and the connection drops once after
 * `dropAfterChunks` chunks: the source is stopped as if the pipeline had stopped it, and `run`
 * rejects with a retryable `ERR_SOURCE_CONNECT`, so the engine reconnects and runs it again.
 */
export function withScriptedFaults(source: Source, script: { connectFailures: number; dropAfterChunks: number }): Source & { connects: number } {
  let dropped = false;
  const faulty = {
    connects: 0,
    acks: source.acks,
    whenFull: source.whenFull,
    connect: async (signal: AbortSignal): Promise<void> => {
      faulty.connects++;
      if (faulty.connects <= script.connectFailures) throw new SluiceError("ERR_SOURCE_CONNECT", "ECONNREFUSED 127.0.0.1:4222");
      await source.connect?.(signal);
    },
    run: async (handle: SourceHandle, signal: AbortSignal): Promise<void> => {
      const connection = new AbortController();
      const onStop = () => connection.abort();
      signal.addEventListener("abort", onStop, { once: true });
      let chunks = 0;
      const inner: SourceHandle = {
        chunkSize: handle.chunkSize,
        record: (...a) => handle.record(...a),
        malformed: (...a) => handle.malformed(...a),
        expectedWait: (...a) => handle.expectedWait(...a),
        waitForRoom: (...a) => handle.waitForRoom(...a),
        enqueue: async (records, checkpoint, options): Promise<EnqueueOutcome> => {
          if (!dropped && chunks >= script.dropAfterChunks) {
            dropped = true;
            connection.abort();
            return "stopping";
          }
          chunks++;
          return handle.enqueue(records, checkpoint, options);
        },
      };
      try {
        await source.run(inner, connection.signal);
      } finally {
        signal.removeEventListener("abort", onStop);
      }
      if (connection.signal.aborted && !signal.aborted) throw new SluiceError("ERR_SOURCE_CONNECT", "connection reset by peer");
    },
    ack: (checkpoint: unknown) => source.ack(checkpoint),
    close: () => source.close(),
  };
  return faulty;
}

/** Polls `cond` every 5 ms of real time; throws after `timeoutMs`. */
async function until(cond: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

interface Run {
  readonly pipeline: Pipeline;
  readonly sink: GateSink;
  readonly acks: { committed: number }[];
  readonly events: InternalEvent[];
  readonly metrics: Metrics;
  readonly buffer: MemoryBuffer;
  readonly done: Promise<PipelineStatus>;
  /** The source's readiness problem line right after each `source_connect_failed` event. */
  readonly downLines: string[];
  received(): number;
}

/**
 * Runs the source contract suite for one source type.
 *
 * @param name the source type, for the test names
 * @param makeDriver a fresh driver per test, with its own temp directory
 */
export function runSourceContract(name: string, makeDriver: (dir: string) => SourceDriver): void {
  describe(`source contract: ${name}`, () => {
    let dir: string;
    let driver: SourceDriver;

    beforeEach(async () => {
      dir = await mkdtemp(join(tmpdir(), `sluice-source-contract-${name}-`));
      driver = makeDriver(dir);
      await driver.setup?.();
    });

    afterEach(async () => {
      await driver.dispose?.();
      await rm(dir, { recursive: true, force: true });
    });

    const context = (): ComponentContext => ({ name: "src", dataDir: join(dir, "data"), baseDir: dir, clock: systemClock, logger: silentLogger, emit: () => {} });

    function start(total: number, o: { gateOpen: boolean; maxRecords?: number; shutdownTimeoutMs?: number; wrap?: (s: Source) => Source }): Run {
      const sink = new GateSink(o.gateOpen);
      const acks: { committed: number }[] = [];
      const events: InternalEvent[] = [];
      const downLines: string[] = [];
      const metrics = new Metrics(["out"], silentLogger, () => Date.now());
      const buffer = new MemoryBuffer({ maxRecords: o.maxRecords ?? 10_000, maxBytes: 64 * 1024 * 1024 });
      const ctx = context();
      const source = observed((o.wrap ?? ((s) => s))(driver.create({ ...ctx, emit: (e) => events.push(e) }, total)), sink, acks);
      const pipeline = new Pipeline({
        sources: [{ name: "src", source, connectBackoff: { initialMs: 5, maxMs: 20, multiplier: 2 } }],
        transforms: [],
        sinks: [{ name: "out", sink, batch: { maxRecords: 10, maxBytes: 1024 * 1024, maxWaitMs: 5 }, retry: { maxAttempts: 3, maxElapsedMs: 60_000, backoff: { initialMs: 5, maxMs: 20, multiplier: 2 } }, concurrency: 1 }],
        deadLetter: new MemoryDeadLetterStore(),
        buffer,
        whenFull: "block",
        chunkSize: 10,
        shutdownTimeoutMs: o.shutdownTimeoutMs ?? 5_000,
        emit: (e) => {
          events.push(e);
          metrics.handle(e);
          if (e.type === "source_connect_failed") downLines.push(...metrics.sourcesDown());
        },
      });
      const done = pipeline.run();
      return {
        pipeline,
        sink,
        acks,
        events,
        metrics,
        buffer,
        done,
        downLines,
        received: () => events.reduce((n, e) => n + (e.type === "records_received" ? e.count : 0), 0),
      };
    }

    /** Produces `total` records into a run, in the background; a producer cut off by the stop is fine. */
    function produce(total: number): AbortController {
      const stop = new AbortController();
      driver.produce(total, stop.signal).catch(() => {});
      return stop;
    }

    /** Stops a run once `cond` holds (or at once when its sources were finite and it already ended). */
    async function stopWhen(run: Run, cond: () => boolean, what: string): Promise<PipelineStatus> {
      let ended = false;
      void run.done.then(() => (ended = true));
      // Not before the sink connected: a stop while a sink never connected aborts at once and
      // leaves the source behind (see Pipeline.stop), which is another case than this one.
      await until(() => ended || (run.events.some((e) => e.type === "sink_connected") && cond()), what);
      run.pipeline.stop();
      return run.done;
    }

    const indexes = (records: Iterable<SluiceRecord>) => new Set([...records].map((r) => driver.indexOf(r.payload)));

    it("acks a chunk only after the sink committed it", async () => {
      const run = start(30, { gateOpen: false });
      const producer = produce(30);
      await until(() => run.sink.writeCalls > 0 && run.received() === 30, "30 records received and a write started");
      expect(run.acks).toEqual([]);
      run.sink.release();
      const status = await stopWhen(run, () => run.sink.committed.size === 30 && run.acks.length > 0, "30 records committed");
      producer.abort();
      expect(["completed", "stopped"]).toContain(status.tag);
      expect(run.acks.length).toBeGreaterThan(0);
      for (const a of run.acks) expect(a.committed).toBeGreaterThan(0);
      expect(indexes(run.sink.committed.values()).size).toBe(30);
    });

    it("gives a redelivered record the same id", async () => {
      const first = start(30, { gateOpen: false, shutdownTimeoutMs: 50 });
      const p1 = produce(30);
      await until(() => first.sink.attempted.size > 0, "a write attempt");
      first.pipeline.stop();
      expect((await first.done).tag).toBe("timed_out");
      p1.abort();
      expect(first.acks).toEqual([]);
      const second = start(30, { gateOpen: true });
      const p2 = produce(30);
      await stopWhen(second, () => second.sink.committed.size === 30, "30 records committed in the second run");
      p2.abort();
      for (const id of first.sink.attempted) expect(second.sink.committed.has(id)).toBe(true);
    });

    it("stops reading while the buffer is full (or rejects, per its whenFull), and goes on once there is room", async () => {
      const run = start(200, { gateOpen: false, maxRecords: 20 });
      const producer = produce(200);
      await until(() => run.sink.writeCalls > 0 && run.received() >= 20, "the buffer filled");
      const source = run.pipeline["o"].sources[0]!.source;
      if (source.whenFull === "reject") await until(() => (driver.rejections?.() ?? 0) > 0, "a producer told to retry later");
      else await new Promise((r) => setTimeout(r, 100));
      expect(run.received()).toBeLessThanOrEqual(20);
      expect(run.buffer.usage().records).toBeLessThanOrEqual(20);
      run.sink.release();
      await stopWhen(run, () => run.sink.committed.size === 200, "200 records committed");
      producer.abort();
      expect(indexes(run.sink.committed.values()).size).toBe(200);
    });

    it("loses nothing when stopped mid-run: the next run delivers the rest", async () => {
      const first = start(200, { gateOpen: true, maxRecords: 40 });
      const p1 = produce(200);
      await until(() => first.sink.committed.size >= 50, "50 records committed");
      first.pipeline.stop();
      expect(["stopped", "completed"]).toContain((await first.done).tag);
      p1.abort();
      const second = start(200, { gateOpen: true });
      const p2 = produce(200);
      await stopWhen(second, () => indexes([...first.sink.committed.values(), ...second.sink.committed.values()]).size === 200, "every record in one run or the other");
      p2.abort();
      expect(indexes([...first.sink.committed.values(), ...second.sink.committed.values()]).size).toBe(200);
    });

    it.skipIf(makeDriver("").connection === false)("reconnects after its service drops, is not ready while down, and delivers everything", async () => {
      let faulty: (Source & { connects: number }) | undefined;
      const run = start(60, {
        gateOpen: true,
        wrap: (s) => (faulty = withScriptedFaults(s, { connectFailures: 2, dropAfterChunks: 2 })),
      });
      const producer = produce(60);
      await stopWhen(run, () => indexes(run.sink.committed.values()).size === 60, "60 records committed");
      producer.abort();
      expect(faulty!.connects).toBe(4);
      expect(run.downLines[0]).toMatch(/^source src: connecting, down [\d.]+ s: ECONNREFUSED 127\.0\.0\.1:4222$/);
      expect(run.downLines[2]).toMatch(/^source src: connecting, down [\d.]+ s: connection reset by peer$/);
      const connected = run.events.filter((e) => e.type === "source_connected");
      const failed = run.events.filter((e) => e.type === "source_connect_failed");
      expect(connected).toHaveLength(2);
      expect(failed.map((e) => e.type === "source_connect_failed" && e.attempt)).toEqual([1, 2, 0]);
      expect(run.metrics.sourcesDown()).toEqual([]);
      const text = await run.metrics.registry.metrics();
      expect(text).toMatch(/sluice_source_connect_attempts_total\{source="src",outcome="lost"\} 1/);
      expect(text).toMatch(/sluice_source_up\{source="src"\} 1/);
    });
  });
}
