import { Writable } from "node:stream";
import { describe, expect, it } from "vitest";
import { SluiceError } from "../../../src/core/errors.js";
import { createStdoutSink, definition } from "../../../src/sinks/stdout.js";
import { flush } from "../../helpers/fake-clock.js";
import { makeRecords } from "../../helpers/records.js";

const signal = new AbortController().signal;

/** A writable whose writes complete only when the test calls `release()`. */
function heldStream(highWaterMark: number) {
  const chunks: string[] = [];
  const held: (() => void)[] = [];
  const stream = new Writable({
    highWaterMark,
    write(chunk: Buffer, _encoding, callback) {
      chunks.push(chunk.toString("utf8"));
      held.push(() => callback());
    },
  });
  return {
    stream,
    chunks,
    release: () => {
      for (const cb of held.splice(0)) cb();
    },
  };
}

describe("stdout sink", () => {
  it("prints one NDJSON line per record, or the payload alone", async () => {
    const records = makeRecords(2);
    for (const format of ["ndjson", "payload"] as const) {
      const { stream, chunks, release } = heldStream(1 << 20);
      const sink = createStdoutSink(stream, format);
      await sink.connect(signal);
      const writing = sink.write(records, signal);
      release();
      expect(await writing).toEqual({});
      const lines = chunks.join("").split("\n");
      expect(lines.pop()).toBe("");
      const parsed = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
      if (format === "payload") {
        expect(parsed).toEqual(records.map((r) => r.payload));
      } else {
        expect(parsed[0]).toEqual({
          id: "r-0",
          key: "sensor-0",
          event_time: "2023-12-31T23:59:59.000Z",
          received_at: "2024-01-01T00:00:00.000Z",
          source: "test",
          payload: records[0]!.payload,
        });
      }
      await sink.close();
    }
  });

  it("resolves a write only once the stream has taken it and drained (backpressure)", async () => {
    const { stream, release } = heldStream(16);
    const sink = createStdoutSink(stream);
    await sink.connect(signal);
    let done = false;
    const writing = sink.write(makeRecords(5), signal).then(() => (done = true));
    await flush();
    await flush();
    expect(done).toBe(false);
    expect(stream.writableNeedDrain).toBe(true);
    release();
    await writing;
    expect(done).toBe(true);
    expect(stream.writableNeedDrain).toBe(false);
  });

  it("also waits for drain when another writer's data is still queued behind its own", async () => {
    const { stream, chunks, release } = heldStream(16);
    const sink = createStdoutSink(stream);
    await sink.connect(signal);
    let done = false;
    const writing = sink.write(makeRecords(1), signal).then(() => (done = true));
    // Another writer (a logger sharing stdout) queues a chunk after ours.
    stream.write("x".repeat(100));
    release(); // our chunk is taken; the logger's is now in flight
    await flush();
    await flush();
    expect(chunks).toHaveLength(2);
    expect(done).toBe(false);
    release();
    await writing;
    expect(done).toBe(true);
  });

  it("gives up waiting on abort with ERR_ABORTED", async () => {
    const { stream, release } = heldStream(16);
    const sink = createStdoutSink(stream);
    await sink.connect(signal);
    stream.write("x".repeat(100));
    const controller = new AbortController();
    const writing = sink.write(makeRecords(1), controller.signal);
    await flush();
    controller.abort();
    await expect(writing).rejects.toMatchObject({ code: "ERR_ABORTED" });
    release();
    await expect(sink.write(makeRecords(1), AbortSignal.abort())).rejects.toMatchObject({ code: "ERR_ABORTED" });
  });

  it("turns a broken pipe into a permanent ERR_SINK_WRITE instead of an uncaught error", async () => {
    const stream = new Writable({
      write(_chunk, _encoding, callback) {
        callback(Object.assign(new Error("write EPIPE"), { code: "EPIPE" }));
      },
    });
    const sink = createStdoutSink(stream);
    await sink.connect(signal);
    const err = await sink.write(makeRecords(1), signal).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(SluiceError);
    expect(err).toMatchObject({ code: "ERR_SINK_WRITE", retryable: false });
    await expect(sink.write(makeRecords(1), signal)).rejects.toMatchObject({ code: "ERR_SINK_WRITE" });
    await sink.close();
  });

  it("has a strict format option defaulting to ndjson", () => {
    expect(definition.options.parse({})).toEqual({ format: "ndjson" });
    expect(definition.options.safeParse({ format: "csv" }).success).toBe(false);
    expect(definition.options.safeParse({ pretty: true }).success).toBe(false);
  });
});
