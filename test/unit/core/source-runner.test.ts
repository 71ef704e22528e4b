/**
 * The engine's side of the source contract, on the fake clock: connect retried with backoff,
 * a lost connection reconnected, a permanent error ending the run, individual acks with a waiting
 * source (a broker's shape), and the `inProgress` ticks of chunks in flight.
 */
import { describe, expect, it } from "vitest";
import { SluiceError } from "../../../src/core/errors.js";
import type { JsonObject } from "../../../src/core/record.js";
import type { Source, SourceHandle } from "../../../src/components/contracts.js";
import { sleep } from "../../../src/core/clock.js";
import { runSource } from "../../../src/core/source-runner.js";
import { FakeClock } from "../../helpers/fake-clock.js";
import { makePipeline, MemorySink, MemorySource } from "../../helpers/memory.js";

function payloads(n: number): JsonObject[] {
  return Array.from({ length: n }, (_, i): JsonObject => ({ id: `r-${i}`, v: i }));
}

describe("a source with connect", () => {
  it("is connected before it runs, retried with backoff while refused, named in readiness meanwhile", async () => {
    const source = new MemorySource(payloads(20), { connectFailures: 3 });
    const tp = makePipeline({ sources: [source], chunkSize: 5 });
    const t0 = tp.clock.now();
    const running = tp.start();
    await tp.drive(() => tp.events.some((e) => e.type === "source_connect_failed"));
    expect(tp.metrics.sourcesDown()).toEqual(["source src: connecting, down 0 s: ECONNREFUSED 127.0.0.1:6379"]);
    expect(source.runs).toBe(0);
    const status = await tp.run(running);
    expect(status).toEqual({ tag: "completed" });
    expect(source.connects).toBe(4);
    expect(source.runs).toBe(1);
    const failed = tp.events.filter((e) => e.type === "source_connect_failed");
    expect(failed.map((e) => e.type === "source_connect_failed" && [e.attempt, e.downSince === t0])).toEqual([
      [1, true],
      [2, true],
      [3, true],
    ]);
    expect(tp.events.filter((e) => e.type === "source_connected")).toEqual([{ type: "source_connected", source: "src", attempt: 4 }]);
    expect(tp.metrics.sourcesDown()).toEqual([]);
    expect(tp.sink.committed.size).toBe(20);
    expect(source.ackCalls.at(-1)).toBe(20);
  });

  it("reconnects after the connection drops mid-run and delivers everything; the run does not fail", async () => {
    const source = new MemorySource(payloads(40), { connectFailures: 0, dropAfterChunks: 2, gapMs: 10 });
    const tp = makePipeline({ sources: [source], chunkSize: 5 });
    const status = await tp.run();
    expect(status).toEqual({ tag: "completed" });
    expect(source.connects).toBe(2);
    expect(source.runs).toBe(2);
    const lost = tp.events.filter((e) => e.type === "source_connect_failed");
    expect(lost).toMatchObject([{ attempt: 0, code: "ERR_SOURCE_CONNECT", message: "connection reset by peer", retryable: true }]);
    expect(tp.sink.committed.size).toBe(40);
    expect(source.violations).toEqual([]);
    const text = await tp.metrics.registry.metrics();
    expect(text).toContain('sluice_source_connect_attempts_total{source="src",outcome="connected"} 2');
    expect(text).toContain('sluice_source_connect_attempts_total{source="src",outcome="lost"} 1');
  });

  it("waits longer after each consecutive lost connection of a source that flaps, and starts over after a run that stayed up", async () => {
    const clock = new FakeClock();
    const connectedAt: number[] = [];
    /** How long each run stays up before its connection drops, by run. */
    const upFor = [0, 0, 0, 0, 0, 0, 20_000, 0, 0];
    const source: Source = {
      acks: "individual",
      whenFull: "wait",
      async connect() {
        connectedAt.push(clock.now());
      },
      async run() {
        const ms = upFor[connectedAt.length - 1] ?? 0;
        if (ms > 0) await new Promise<void>((resolve) => clock.setTimer(ms, resolve));
        throw new SluiceError("ERR_SOURCE_CONNECT", "connection reset by peer");
      },
      async ack() {},
      async close() {},
    };
    const stop = new AbortController();
    const backoff = { initialMs: 100, maxMs: 10_000, multiplier: 2, jitter: "none" as const };
    const running = runSource({} as SourceHandle, { name: "src", source, backoff, clock, random: () => 0.5, emit: () => {}, signal: stop.signal });
    while (connectedAt.length < upFor.length) await clock.advanceAsync(10);
    stop.abort();
    await clock.advanceAsync(10_000);
    await running;
    const waits = connectedAt.slice(1).map((t, i) => t - connectedAt[i]! - upFor[i]!);
    // 100, 200, 400 ... while it flaps; back to 100 after the run that stayed up 20 s (longer than max 10 s).
    expect(waits.map((w) => Math.round(w / 10) * 10)).toEqual([100, 200, 400, 800, 1600, 3200, 100, 200]);
  });

  it("ends the run failed, at once, on a permanent connect error, with a message naming the source", async () => {
    const source = new MemorySource(payloads(5), { connectError: new SluiceError("ERR_SOURCE_CONNECT", "WRONGPASS invalid username-password pair", { retryable: false }) });
    const tp = makePipeline({ sources: [source], shutdownTimeoutMs: 60_000 });
    const t0 = tp.clock.now();
    const status = await tp.run();
    expect(status).toMatchObject({ tag: "failed", error: { code: "ERR_SOURCE_CONNECT", message: "source src cannot connect: WRONGPASS invalid username-password pair", retryable: false } });
    expect(source.connects).toBe(1);
    expect(source.runs).toBe(0);
    expect(tp.clock.now() - t0).toBeLessThan(1000);
  });

  it("keeps retrying until stopped: the stop ends the wait at once and the run is stopped", async () => {
    const source = new MemorySource(payloads(5), { connectFailures: Number.POSITIVE_INFINITY });
    const tp = makePipeline({ sources: [source] });
    const running = tp.start();
    await tp.drive(() => source.connects >= 10);
    tp.pipeline.stop();
    expect(await tp.run(running)).toEqual({ tag: "stopped" });
    expect(source.runs).toBe(0);
  });

  it("without connect, a rejected run still fails the pipeline (not a lost connection)", async () => {
    const source = new MemorySource(payloads(20), { failAfterChunks: 1, failWith: new SluiceError("ERR_SOURCE_CONNECT", "reset") });
    const tp = makePipeline({ sources: [source], chunkSize: 5 });
    expect(await tp.run()).toMatchObject({ tag: "failed", error: { code: "ERR_SOURCE_CONNECT" } });
    expect(tp.events.some((e) => e.type === "source_connect_failed")).toBe(false);
  });
});

describe("acks: individual with whenFull: wait (a broker's shape)", () => {
  it("closes an individual-ack source only after its acks settled, even when they resolve late", async () => {
    const source = new MemorySource(payloads(20), { acks: "individual" });
    const tp = makePipeline({ sources: [source], chunkSize: 5 });
    let settled = 0;
    let settledAfterClose = 0;
    source.ackHook = async () => {
      await sleep(tp.clock, 1_000);
      settled++;
      if (source.closed) settledAfterClose++;
    };
    expect(await tp.run()).toEqual({ tag: "completed" });
    expect(settled).toBe(4);
    expect(settledAfterClose).toBe(0);
  });

  it("acks each chunk as soon as it is done, not held back by a slow earlier chunk, and waits for room even under when_full: reject", async () => {
    const source = new MemorySource(payloads(30), { acks: "individual", whenFull: "wait" });
    // The first batch (chunk 0) is slow; keyless chunks take turns over the two lanes, so chunk 1 goes past it.
    const sink = new MemorySink({ maxInFlight: 2, schedule: (call) => (call.ids.includes("r-0") && call.n === 0 ? { delayMs: 5_000, then: "ok" } : "ok") });
    const tp = makePipeline({ sources: [source], sinks: [sink], chunkSize: 10, concurrency: 2, limits: { maxRecords: 20 }, whenFull: "reject" });
    const running = tp.start();
    await tp.drive(() => source.ackCalls.length >= 1);
    expect(source.ackCalls).not.toContain(10);
    expect(await tp.run(running)).toEqual({ tag: "completed" });
    expect(source.outcomes.map((o) => o.outcome)).toEqual(["accepted", "accepted", "accepted"]);
    expect([...source.ackCalls].sort()).toEqual([10, 20, 30]);
    expect(source.ackCalls[0]).toBe(20);
  });
});

describe("inProgress", () => {
  it("is ticked every workingIntervalMs for each chunk in flight, on the clock, and stops once the chunk is acked", async () => {
    const source = new MemorySource(payloads(10), { acks: "individual", whenFull: "wait", workingIntervalMs: 1_000 });
    const sink = new MemorySink({ schedule: [{ delayMs: 3_500, then: "ok" }] });
    const tp = makePipeline({ sources: [source], sinks: [sink], chunkSize: 10, batch: { maxRecords: 10 } });
    const t0 = tp.clock.now();
    expect(await tp.run()).toEqual({ tag: "completed" });
    expect(source.inProgressCalls.map((c) => [c.checkpoint, c.at - t0])).toEqual([
      [10, 1_000],
      [10, 2_000],
      [10, 3_000],
    ]);
    expect(source.ackCalls).toEqual([10]);
    expect(tp.clock.pendingTimers).toBe(0);
  });
  it("is ticked for a chunk that waits for room in enqueue too: it ages at its broker while it waits", async () => {
    const source = new MemorySource(payloads(20), { acks: "individual", whenFull: "wait", workingIntervalMs: 1_000 });
    const sink = new MemorySink({ schedule: [{ delayMs: 3_500, then: "ok" }] });
    const tp = makePipeline({ sources: [source], sinks: [sink], chunkSize: 10, batch: { maxRecords: 10 }, limits: { maxRecords: 10 } });
    const t0 = tp.clock.now();
    expect(await tp.run()).toEqual({ tag: "completed" });
    // Chunk 20 waited in enqueue until chunk 10 was committed at 3.5 s: ticked meanwhile, and done when acked.
    expect(source.inProgressCalls.filter((c) => c.checkpoint === 20).map((c) => c.at - t0)).toEqual([1_000, 2_000, 3_000]);
    expect([...source.ackCalls].sort()).toEqual([10, 20]);
    expect(tp.clock.pendingTimers).toBe(0);
  });
});

describe("waitForRoom", () => {
  it("makes a source wait for room before it fetches, and grants at most the room there is", async () => {
    const source = new MemorySource(payloads(40), { roomFirst: true });
    const sink = new MemorySink({ schedule: () => ({ delayMs: 1_000, then: "ok" }) });
    const tp = makePipeline({ sources: [source], sinks: [sink], chunkSize: 10, limits: { maxRecords: 25 }, batch: { maxRecords: 10 } });
    const t0 = tp.clock.now();
    expect(await tp.run()).toEqual({ tag: "completed" });
    expect(source.roomGranted.slice(0, 3).map((g) => [g.may, g.at - t0])).toEqual([
      [10, 0],
      [10, 0],
      [5, 0],
    ]);
    // The fourth chunk is fetched only once the first was committed and released its room.
    expect(source.roomGranted[3]!.at - t0).toBeGreaterThanOrEqual(1_000);
    expect(tp.sink.committed.size).toBe(40);
  });

  it("grants no more records than the byte bound holds, sized like the records held", async () => {
    // 100-byte records: 5 fit the byte bound, though the record bound would take 1,000.
    const source = new MemorySource(payloads(20), { roomFirst: true, bytesOf: () => 100 });
    const sink = new MemorySink({ schedule: () => ({ delayMs: 1_000, then: "ok" }) });
    const tp = makePipeline({ sources: [source], sinks: [sink], chunkSize: 4, limits: { maxRecords: 1_000, maxBytes: 500 }, batch: { maxRecords: 4 } });
    const t0 = tp.clock.now();
    expect(await tp.run()).toEqual({ tag: "completed" });
    // An empty buffer takes a whole chunk; then only the one record the bytes leave room for.
    expect(source.roomGranted.slice(0, 2).map((g) => [g.may, g.at - t0])).toEqual([
      [4, 0],
      [1, 0],
    ]);
    expect(source.roomGranted[2]!.at - t0).toBeGreaterThanOrEqual(1_000);
    expect(source.outcomes.every((o) => o.outcome === "accepted")).toBe(true);
    expect(tp.sink.committed.size).toBe(20);
  });

  it("grants no more records than the byte bound holds at the size the source tells, also into an empty buffer", async () => {
    const source = new MemorySource(payloads(20), { roomFirst: true, bytesOf: () => 100, recordBytes: 100 });
    const sink = new MemorySink({ schedule: () => ({ delayMs: 1_000, then: "ok" }) });
    const tp = makePipeline({ sources: [source], sinks: [sink], chunkSize: 8, limits: { maxRecords: 1_000, maxBytes: 500 }, batch: { maxRecords: 8 } });
    const t0 = tp.clock.now();
    expect(await tp.run()).toEqual({ tag: "completed" });
    // 5 of the 8 wanted fit the empty buffer's bytes; the next grant waits for the first chunk's commit.
    expect(source.roomGranted[0]).toEqual({ may: 5, at: t0 });
    expect(source.roomGranted[1]!.at - t0).toBeGreaterThanOrEqual(1_000);
    expect(tp.sink.committed.size).toBe(20);
  });

  it("answers 0 at once when the pipeline stops while the source waits for room", async () => {
    const source = new MemorySource(payloads(40), { roomFirst: true });
    const sink = new MemorySink({ schedule: () => "hang" });
    const tp = makePipeline({ sources: [source], sinks: [sink], chunkSize: 10, limits: { maxRecords: 10 }, shutdownTimeoutMs: 1_000 });
    const running = tp.start();
    await tp.drive(() => sink.writes.length > 0);
    tp.pipeline.stop();
    expect((await tp.run(running)).tag).toBe("timed_out");
    expect(source.roomGranted).toHaveLength(1);
  });
});
