import { describe, expect, it } from "vitest";
import type { Source } from "../../../src/components/contracts.js";
import type { JsonObject } from "../../../src/core/record.js";
import { definition } from "../../../src/sources/generator.js";
import { FakeClock, flush } from "../../helpers/fake-clock.js";
import { SourceHarness, testContext } from "../../helpers/source-harness.js";

function makeGenerator(raw: Record<string, unknown>, clock = new FakeClock()): Source {
  const opts = definition.options.parse(raw);
  return definition.create(opts, testContext({ name: "gen", dataDir: "/nonexistent", baseDir: "/nonexistent", clock }));
}

async function runToEnd(raw: Record<string, unknown>, chunkSize = 100): Promise<SourceHarness> {
  const harness = new SourceHarness({ chunkSize });
  await makeGenerator(raw).run(harness, new AbortController().signal);
  return harness;
}

describe("generator options", () => {
  it("applies defaults and rejects unknown keys and bad values", () => {
    expect(definition.options.parse({})).toEqual({ keys: 10, seed: 1, payload_bytes: 0 });
    expect(definition.options.safeParse({ counts: 5 }).success).toBe(false);
    expect(definition.options.safeParse({ count: -1 }).success).toBe(false);
    expect(definition.options.safeParse({ count: 1.5 }).success).toBe(false);
    expect(definition.options.safeParse({ rate: 0 }).success).toBe(false);
    expect(definition.options.safeParse({ keys: 0 }).success).toBe(false);
  });

  it("describes every option", () => {
    for (const [key, schema] of Object.entries(definition.options.shape)) {
      expect(schema.description, key).toBeTruthy();
    }
  });
});

describe("generator source", () => {
  it("emits exactly `count` records in chunks of chunkSize, checkpointing the records emitted so far", async () => {
    const harness = await runToEnd({ count: 250 }, 100);
    expect(harness.chunks.map((c) => c.records.length)).toEqual([100, 100, 50]);
    expect(harness.chunks.map((c) => c.checkpoint)).toEqual([100, 200, 250]);
    const payloads = harness.payloads;
    expect(payloads.map((p) => p.seq)).toEqual(Array.from({ length: 250 }, (_, i) => i + 1));
    expect(payloads[0]!.id).toBe("gen-1");
    expect(harness.entries.map((e) => e.id)).toEqual(payloads.map((p) => p.id));
    expect(new Set(harness.entries.map((e) => e.id)).size).toBe(250);
  });

  it("emits nothing for count 0", async () => {
    const harness = await runToEnd({ count: 0 });
    expect(harness.chunks).toHaveLength(0);
  });

  it("builds the seed tutorial's sensor readings with the clock's time", async () => {
    const clock = new FakeClock(Date.UTC(2024, 4, 1, 12, 0, 0));
    const harness = new SourceHarness();
    await makeGenerator({ count: 3 }, clock).run(harness, new AbortController().signal);
    for (const p of harness.payloads) {
      expect(Object.keys(p)).toEqual(["id", "sensor", "value", "unit", "ts", "seq"]);
      expect(p.unit).toBe("C");
      expect(p.ts).toBe("2024-05-01T12:00:00.000Z");
      expect(typeof p.value).toBe("number");
      expect(p.sensor).toMatch(/^sensor-\d+$/);
    }
  });

  it("uses exactly `keys` distinct sensors", async () => {
    const harness = await runToEnd({ count: 500, keys: 3 });
    const sensors = new Set(harness.payloads.map((p) => p.sensor));
    expect([...sensors].sort()).toEqual(["sensor-1", "sensor-2", "sensor-3"]);
  });

  it("handles more keys than it caches sensor names for", async () => {
    const harness = await runToEnd({ count: 2000, keys: 1_000_000 });
    const ks = harness.payloads.map((p) => Number(String(p.sensor).slice("sensor-".length)));
    expect(ks.every((k) => Number.isInteger(k) && k >= 1 && k <= 1_000_000)).toBe(true);
    expect(ks.some((k) => k > 65_536)).toBe(true);
  });

  it("is deterministic per seed and differs between seeds", async () => {
    const pick = (ps: JsonObject[]) => ps.map((p) => [p.sensor, p.value]);
    const a = pick((await runToEnd({ count: 200, seed: 42 })).payloads);
    const b = pick((await runToEnd({ count: 200, seed: 42 })).payloads);
    const c = pick((await runToEnd({ count: 200, seed: 43 })).payloads);
    expect(a).toEqual(b);
    expect(c).not.toEqual(a);
  });

  it.each([0, 200, 1000, 4096])("sizes payloads to about payload_bytes=%i and estimates bytes without serializing", async (target) => {
    const harness = await runToEnd({ count: 300, payload_bytes: target });
    for (const e of harness.entries) {
      const actual = Buffer.byteLength(JSON.stringify(e.payload));
      // The estimate assumes a 5-character value; real values are 2 to 5 characters.
      expect(Math.abs(e.bytes - actual)).toBeLessThanOrEqual(3);
      if (target > 0) {
        expect(Math.abs(actual - target)).toBeLessThanOrEqual(3);
        expect(typeof e.payload.pad).toBe("string");
      } else {
        expect(e.payload.pad).toBeUndefined();
      }
    }
  });

  it("keeps the shape when payload_bytes is smaller than the unpadded payload", async () => {
    const harness = await runToEnd({ count: 5, payload_bytes: 10 });
    for (const p of harness.payloads) expect(p.pad).toBe("");
  });

  it("paces a low rate one small chunk at a time on the clock", async () => {
    const clock = new FakeClock();
    const harness = new SourceHarness({ chunkSize: 100 });
    const done = makeGenerator({ count: 50, rate: 100 }, clock).run(harness, new AbortController().signal);
    await flush();
    expect(harness.entries).toHaveLength(0);
    await clock.advanceAsync(250);
    expect(harness.entries.length).toBeGreaterThanOrEqual(24);
    expect(harness.entries.length).toBeLessThanOrEqual(26);
    await clock.advanceAsync(250);
    await done;
    expect(harness.entries).toHaveLength(50);
    // At 100/s a chunk holds about 10 ms worth: one record.
    expect(Math.max(...harness.chunks.map((c) => c.records.length))).toBe(1);
  });

  it("stays accurate at a high rate with one timer per chunk, not per record", async () => {
    const clock = new FakeClock();
    const harness = new SourceHarness({ chunkSize: 100 });
    const controller = new AbortController();
    const done = makeGenerator({ rate: 20_000 }, clock).run(harness, controller.signal);
    for (let i = 0; i < 10; i++) await clock.advanceAsync(100);
    const emitted = harness.entries.length;
    expect(emitted).toBeGreaterThanOrEqual(19_800);
    expect(emitted).toBeLessThanOrEqual(20_200);
    expect(harness.chunks.length).toBeLessThanOrEqual(Math.ceil(20_200 / 100));
    controller.abort();
    await done;
  });

  it("does not burst after the buffer held it for a long time", async () => {
    const clock = new FakeClock();
    const harness = new SourceHarness({ chunkSize: 10 });
    let release: () => void = () => {};
    harness.onEnqueue = (chunk) => (chunk.seq === 0 ? new Promise<void>((r) => (release = r)) : undefined);
    const controller = new AbortController();
    const done = makeGenerator({ rate: 100 }, clock).run(harness, controller.signal);
    await clock.advanceAsync(10);
    expect(harness.chunks).toHaveLength(1);
    await clock.advanceAsync(60_000); // held for a minute
    release();
    await clock.advanceAsync(0);
    // A bucket without a cap would now emit 6000 records at once; ours allows ~0.1 s worth.
    expect(harness.entries.length).toBeLessThanOrEqual(1 + 10 + 1);
    controller.abort();
    await done;
  });

  it("stops pulling while enqueue waits (backpressure)", async () => {
    const harness = new SourceHarness({ chunkSize: 10 });
    let release: () => void = () => {};
    harness.onEnqueue = (chunk) => (chunk.seq === 1 ? new Promise<void>((r) => (release = r)) : undefined);
    harness.outcome = "accepted";
    const done = makeGenerator({ count: 40 }).run(harness, new AbortController().signal);
    for (let i = 0; i < 5; i++) await flush();
    expect(harness.chunks).toHaveLength(2);
    release();
    await done;
    expect(harness.chunks).toHaveLength(4);
  });

  it("runs until aborted without a count, and stops on a `stopping` outcome", async () => {
    const controller = new AbortController();
    const harness = new SourceHarness({ chunkSize: 10 });
    harness.onEnqueue = (chunk) => {
      if (chunk.seq === 2) controller.abort();
    };
    await makeGenerator({}).run(harness, controller.signal);
    expect(harness.chunks).toHaveLength(3);

    const stopping = new SourceHarness({ chunkSize: 10 });
    stopping.outcome = "stopping";
    await makeGenerator({}).run(stopping, new AbortController().signal);
    expect(stopping.chunks).toHaveLength(1);
  });

  it("resolves promptly when aborted while waiting for the rate", async () => {
    const clock = new FakeClock();
    const controller = new AbortController();
    const harness = new SourceHarness();
    const done = makeGenerator({ rate: 1 }, clock).run(harness, controller.signal);
    await flush();
    expect(clock.pendingTimers).toBe(1);
    controller.abort();
    await done;
    expect(harness.entries).toHaveLength(0);
  });

  it("accepts acks and closes without state", async () => {
    const source = makeGenerator({ count: 20 });
    const harness = new SourceHarness({ chunkSize: 10 });
    await source.run(harness, new AbortController().signal);
    await harness.ackThrough(source, 0);
    await harness.ackThrough(source);
    await expect(source.close()).resolves.toBeUndefined();
    // A new instance starts over: the generator does not resume.
    const again = new SourceHarness({ chunkSize: 10 });
    await makeGenerator({ count: 20 }).run(again, new AbortController().signal);
    expect(again.entries.map((e) => e.id)).toEqual(harness.entries.map((e) => e.id));
  });
});
