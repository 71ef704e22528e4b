import { mkdir, readdir, readFile, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { Sink } from "../../../src/components/contracts.js";
import type { SluiceRecord } from "../../../src/core/record.js";
import { ndjsonLine } from "../../../src/components/ndjson-lines.js";
import { createFileSink, definition, type FileSinkSettings } from "../../../src/sinks/file.js";
import { sinkContext, tempDir } from "../../contract/sink-contract.js";
import { FakeClock } from "../../helpers/fake-clock.js";
import { makeRecords } from "../../helpers/records.js";

const signal = new AbortController().signal;

let dir: string;
let remove: () => Promise<void>;
let clock: FakeClock;
const sinks: Sink[] = [];

beforeEach(async () => {
  ({ dir, remove } = await tempDir("sluice-file-sink-"));
  clock = new FakeClock(Date.UTC(2024, 0, 2, 3, 4, 5, 678));
});

afterEach(async () => {
  for (const sink of sinks.splice(0)) await sink.close().catch(() => undefined);
  await remove();
});

async function connect(settings: Partial<FileSinkSettings> = {}): Promise<Sink> {
  const sink = createFileSink({
    dir: join(dir, "out"),
    prefix: "records",
    rotateBytes: 64 * 1024 ** 2,
    rotateAfterMs: 60_000,
    fsync: true,
    clock,
    ...settings,
  });
  await sink.connect(signal);
  sinks.push(sink);
  return sink;
}

async function listing(): Promise<{ finished: string[]; temp: string[] }> {
  const names = (await readdir(join(dir, "out"))).sort();
  return {
    finished: names.filter((n) => /^records-.*\.ndjson$/.test(n)),
    temp: names.filter((n) => n.endsWith(".tmp")),
  };
}

async function ids(name: string): Promise<string[]> {
  const text = await readFile(join(dir, "out", name), "utf8");
  expect(text.endsWith("\n")).toBe(true);
  return text
    .trimEnd()
    .split("\n")
    .map((line) => (JSON.parse(line) as { id: string }).id);
}

function lineBytes(records: readonly SluiceRecord[]): number {
  return records.reduce((n, r) => n + Buffer.byteLength(ndjsonLine(r)) + 1, 0);
}

describe("file sink: temp name, then rename", () => {
  it("writes into a hidden temp segment and renames it to its final name on close", async () => {
    const sink = await connect();
    const records = makeRecords(10);
    await sink.write(records, signal);

    const during = await listing();
    expect(during.finished).toEqual([]);
    expect(during.temp).toEqual([".records-20240102T030405678Z-000000.ndjson.tmp"]);
    // Durable before the rename: the resolved write is already in the temp file.
    expect(await ids(during.temp[0]!)).toEqual(records.map((r) => r.id));

    await sink.close();
    const after = await listing();
    expect(after.temp).toEqual([]);
    expect(after.finished).toEqual(["records-20240102T030405678Z-000000.ndjson"]);
    expect(await ids(after.finished[0]!)).toEqual(records.map((r) => r.id));
  });

  it("writes each record as one line with the documented shape", async () => {
    const sink = await connect();
    const [record] = makeRecords(1);
    const noTime = { ...makeRecords(1, { start: 1, eventTime: false })[0]!, key: undefined, payload: { text: "a\nb\u2028c" } };
    await sink.write([record!, noTime], signal);
    await sink.close();
    const { finished } = await listing();
    const lines = (await readFile(join(dir, "out", finished[0]!), "utf8")).split("\n");
    expect(lines).toHaveLength(3);
    expect(lines[2]).toBe("");
    expect(JSON.parse(lines[0]!)).toEqual({
      id: "r-0",
      key: "sensor-0",
      event_time: "2023-12-31T23:59:59.000Z",
      received_at: "2024-01-01T00:00:00.000Z",
      source: "test",
      payload: record!.payload,
    });
    expect(Object.keys(JSON.parse(lines[0]!) as object)).toEqual(["id", "key", "event_time", "received_at", "source", "payload"]);
    expect(JSON.parse(lines[1]!)).toMatchObject({ id: "r-1", key: null, event_time: null, payload: { text: "a\nb\u2028c" } });
  });

  it("does not create a segment for an empty batch", async () => {
    const sink = await connect();
    await sink.write([], signal);
    await sink.close();
    expect(await readdir(join(dir, "out"))).toEqual([]);
  });

  it("reports a record that cannot be encoded by index and writes the rest", async () => {
    const sink = await connect();
    const records = makeRecords(3);
    const cyclic: Record<string, unknown> = { id: "cyclic" };
    cyclic.self = cyclic;
    const batch = [records[0]!, { ...records[1]!, payload: cyclic as never }, records[2]!];
    const result = await sink.write(batch, signal);
    expect(result?.failures?.map((f) => [f.index, f.error.code, f.error.retryable])).toEqual([[1, "ERR_SINK_REJECTED", false]]);
    await sink.close();
    expect(await ids((await listing()).finished[0]!)).toEqual(["r-0", "r-2"]);
  });
});

describe("file sink: rotation by size", () => {
  it("starts a new segment before a batch would overflow one, never splitting a batch", async () => {
    const batches = [makeRecords(10), makeRecords(10, { start: 10 }), makeRecords(10, { start: 20 })];
    const batchBytes = lineBytes(batches[0]!);
    // Room for two batches but not three.
    const sink = await connect({ rotateBytes: Math.floor(batchBytes * 2.5) });
    for (const batch of batches) await sink.write(batch, signal);

    const during = await listing();
    expect(during.finished).toHaveLength(1);
    expect(during.temp).toHaveLength(1);
    expect(await ids(during.finished[0]!)).toEqual([...batches[0]!, ...batches[1]!].map((r) => r.id));

    await sink.close();
    const { finished } = await listing();
    expect(finished).toEqual(["records-20240102T030405678Z-000000.ndjson", "records-20240102T030405678Z-000001.ndjson"]);
    expect(await ids(finished[1]!)).toEqual(batches[2]!.map((r) => r.id));
    for (const name of finished) expect((await stat(join(dir, "out", name))).size).toBeLessThanOrEqual(batchBytes * 2.5);
  });

  it("finishes a segment as soon as it reaches rotate_bytes, and a single oversized batch gets its own", async () => {
    const small = makeRecords(2);
    const sink = await connect({ rotateBytes: lineBytes(small) });
    await sink.write(small, signal);
    expect((await listing()).finished).toHaveLength(1);
    expect((await listing()).temp).toEqual([]);

    const big = makeRecords(50, { start: 2 });
    await sink.write(big, signal);
    const { finished, temp } = await listing();
    expect(temp).toEqual([]);
    expect(finished).toHaveLength(2);
    expect(await ids(finished[1]!)).toEqual(big.map((r) => r.id));
  });
});

describe("file sink: rotation by age", () => {
  it("finishes a segment rotate_after after it started, without another write", async () => {
    const sink = await connect({ rotateAfterMs: 60_000 });
    await sink.write(makeRecords(5), signal);
    clock.advance(30_000);
    await sink.write(makeRecords(5, { start: 5 }), signal);

    clock.advance(29_999);
    await sink.write([], signal); // waits for any rotation the timer started
    expect((await listing()).finished).toEqual([]);

    clock.advance(1);
    await sink.write([], signal);
    const { finished, temp } = await listing();
    expect(temp).toEqual([]);
    expect(finished).toEqual(["records-20240102T030405678Z-000000.ndjson"]);
    expect(await ids(finished[0]!)).toHaveLength(10);

    // The next write opens a new segment, named by the time it started, with its own timer.
    await sink.write(makeRecords(1, { start: 10 }), signal);
    expect((await listing()).temp).toEqual([".records-20240102T030505678Z-000001.ndjson.tmp"]);
    expect(clock.pendingTimers).toBe(1);
    clock.advance(60_000);
    await sink.write([], signal);
    expect((await listing()).finished).toHaveLength(2);
  });

  it("sets no timer with rotate_after 0, and cancels the timer of a segment finished early", async () => {
    const never = await connect({ rotateAfterMs: 0 });
    await never.write(makeRecords(1), signal);
    expect(clock.pendingTimers).toBe(0);
    await never.close();

    const sink = await connect({ rotateAfterMs: 60_000, rotateBytes: 1 });
    await sink.write(makeRecords(1, { start: 1 }), signal);
    expect(clock.pendingTimers).toBe(0);
  });
});

describe("file sink: restarts", () => {
  it("finishes a crashed run's temp segment, cutting its torn last line, and continues the sequence", async () => {
    const out = join(dir, "out");
    await mkdir(out, { recursive: true });
    const [a, b] = makeRecords(2).map((r) => ndjsonLine(r));
    await writeFile(join(out, ".records-20240101T000000000Z-000007.ndjson.tmp"), `${a}\n${b}\n{"id":"torn","pay`);
    await writeFile(join(out, ".records-20240101T000000000Z-000008.ndjson.tmp"), "");
    await writeFile(join(out, "unrelated.txt"), "keep me");

    const sink = await connect();
    expect(await readdir(out)).toEqual(expect.arrayContaining(["records-20240101T000000000Z-000007.ndjson", "unrelated.txt"]));
    expect((await listing()).temp).toEqual([]);
    expect(await ids("records-20240101T000000000Z-000007.ndjson")).toEqual(["r-0", "r-1"]);
    expect(await readFile(join(out, "unrelated.txt"), "utf8")).toBe("keep me");

    await sink.write(makeRecords(1, { start: 2 }), signal);
    expect((await listing()).temp).toEqual([".records-20240102T030405678Z-000009.ndjson.tmp"]);
  });

  it("never reuses a segment name after a restart at the same clock time", async () => {
    const first = await connect();
    await first.write(makeRecords(3), signal);
    await first.close();
    const second = await connect();
    await second.write(makeRecords(3, { start: 3 }), signal);
    await second.close();
    const { finished } = await listing();
    expect(finished).toHaveLength(2);
    expect([...(await ids(finished[0]!)), ...(await ids(finished[1]!))]).toEqual(["r-0", "r-1", "r-2", "r-3", "r-4", "r-5"]);
  });
});

describe("file sink definition", () => {
  it("applies defaults and resolves the directory against ctx.baseDir", async () => {
    const opts = definition.options.parse({ path: "landing" });
    expect(opts).toEqual({ path: "landing", prefix: "records", rotate_bytes: 64 * 1024 ** 2, rotate_after: 60_000, fsync: true });
    const sink = definition.create(opts, sinkContext(dir, clock));
    sinks.push(sink);
    await sink.connect(signal);
    await sink.write(makeRecords(1), signal);
    await sink.close();
    expect((await readdir(join(dir, "landing"))).filter((n) => n.startsWith("records-"))).toHaveLength(1);
  });

  it("rejects unknown keys and a prefix that could escape the directory", () => {
    expect(definition.options.safeParse({ path: "x", rotate: 1 }).success).toBe(false);
    expect(definition.options.safeParse({ path: "x", prefix: "../evil" }).success).toBe(false);
    expect(definition.options.parse({ path: "x", rotate_bytes: "1KiB", rotate_after: "5s", fsync: false })).toMatchObject({
      rotate_bytes: 1024,
      rotate_after: 5000,
      fsync: false,
    });
  });
});
