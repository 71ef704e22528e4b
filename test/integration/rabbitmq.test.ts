/**
 * The `rabbitmq` source and sink against the machine's RabbitMQ, beyond the contract suites: ids,
 * keys and event times from what a message carries, a queue bound to an exchange, dead letters
 * rejected into the queue's dead-letter exchange, max_deliveries on a quorum queue, the prefetch as
 * the buffer's bound (in records, and in bytes with large messages), a dropped connection (through a local TCP relay the test cuts), publisher
 * confirms, returns and nacks, permanent errors (exit 1) and `sluice validate`, and a CLI round trip
 * (generator -> rabbitmq sink, rabbitmq source -> sqlite). Each test its own queues and exchanges,
 * deleted at the end.
 */
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { createConnection, createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { ChannelModel } from "amqplib";
import Database from "better-sqlite3";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import type { Sink, WriteResult } from "../../src/components/contracts.js";
import { MemoryBuffer } from "../../src/core/buffer.js";
import { systemClock } from "../../src/core/clock.js";
import { SluiceError } from "../../src/core/errors.js";
import { silentLogger, type InternalEvent } from "../../src/core/events.js";
import { Pipeline, type PipelineStatus } from "../../src/core/pipeline.js";
import type { JsonObject, SluiceRecord } from "../../src/core/record.js";
import { definition as sinkDefinition } from "../../src/sinks/rabbitmq.js";
import { definition as sourceDefinition } from "../../src/sources/rabbitmq/source.js";
import { uniqueName } from "../helpers/brokers.js";
import { killClis, runCli, startCli } from "../helpers/cli.js";
import { MemoryDeadLetterStore } from "../helpers/memory.js";
import { GatedSink, until } from "../helpers/nats-source.js";
import { declareQueue, deleteQueues, hasRabbitmq, peekQueue, publishAll, rabbitConnect, RABBITMQ_URL, readyCount } from "../helpers/rabbitmq.js";
import { makeRecords } from "../helpers/records.js";

const available = await hasRabbitmq();
const signal = new AbortController().signal;

/** A TCP relay to RabbitMQ whose connections the test can cut, as a network failure would. */
async function relay(): Promise<{ url: string; cut: () => void; stall: () => void; close: () => Promise<void> }> {
  const target = new URL(RABBITMQ_URL);
  const sockets = new Set<Socket>();
  const pipes: [Socket, Socket][] = [];
  const server: Server = createServer((client) => {
    const upstream = createConnection({ host: target.hostname, port: Number(target.port || 5672) });
    pipes.push([client, upstream]);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on("error", () => undefined);
      s.on("close", () => sockets.delete(s));
    }
    client.pipe(upstream).pipe(client);
    client.on("close", () => upstream.destroy());
    upstream.on("close", () => client.destroy());
  });
  await new Promise<void>((done) => server.listen(0, "127.0.0.1", done));
  const port = (server.address() as { port: number }).port;
  const url = new URL(RABBITMQ_URL);
  url.port = String(port);
  return {
    url: url.toString(),
    cut: () => {
      for (const s of sockets) s.destroy();
    },
    // The broker stops reading (a blocked connection, a hung broker): what the client sends piles up in the socket buffers.
    stall: () => {
      for (const [client, upstream] of pipes) {
        client.unpipe(upstream);
        client.pause();
      }
    },
    close: () => new Promise<void>((done) => server.close(() => done())),
  };
}

/** A sink that commits every record but those whose payload says `bad`: those fail permanently. */
class PickySink implements Sink {
  readonly maxInFlight = 1;
  readonly committed = new Map<string, SluiceRecord>();
  async connect(): Promise<void> {}
  async write(records: readonly SluiceRecord[]): Promise<WriteResult> {
    const failures = records.flatMap((r, index) => (r.payload.bad === true ? [{ index, error: new SluiceError("ERR_SINK_REJECTED", `record ${r.id} is bad`) }] : []));
    for (const r of records) if (r.payload.bad !== true) this.committed.set(r.id, r);
    return { failures };
  }
  async close(): Promise<void> {}
}

interface Run {
  readonly pipeline: Pipeline;
  readonly done: Promise<PipelineStatus>;
  readonly events: InternalEvent[];
  readonly deadLetters: MemoryDeadLetterStore;
}

/** Starts a pipeline: the `rabbitmq` source (named `rmq`) -> `sink`. */
function runSource(source: Record<string, unknown>, sink: Sink, maxRecords = 10_000, maxBytes = 64 * 1024 * 1024): Run {
  const events: InternalEvent[] = [];
  const deadLetters = new MemoryDeadLetterStore();
  const emit = (e: InternalEvent) => events.push(e);
  const created = sourceDefinition.create(sourceDefinition.options.parse(source), { name: "rmq", dataDir: "", baseDir: "", clock: systemClock, logger: silentLogger, emit, bufferRecords: maxRecords, bufferBytes: maxBytes });
  const pipeline = new Pipeline({
    sources: [{ name: "rmq", source: created, connectBackoff: { initialMs: 20, maxMs: 200, multiplier: 2 } }],
    transforms: [],
    sinks: [
      {
        name: "out",
        sink,
        batch: { maxRecords: 50, maxBytes: 4 * 1024 * 1024, maxWaitMs: 5 },
        retry: { maxAttempts: 3, maxElapsedMs: 60_000, backoff: { initialMs: 10, maxMs: 100, multiplier: 2 } },
        concurrency: 2,
      },
    ],
    deadLetter: deadLetters,
    buffer: new MemoryBuffer({ maxRecords, maxBytes }),
    whenFull: "block",
    chunkSize: 50,
    shutdownTimeoutMs: 5_000,
    logger: silentLogger,
    emit,
  });
  return { pipeline, done: pipeline.run(), events, deadLetters };
}

async function stop(run: Run): Promise<PipelineStatus> {
  run.pipeline.stop();
  return run.done;
}

describe.skipIf(!available)("rabbitmq source and sink on the machine's RabbitMQ", () => {
  let conn: ChannelModel;
  const queues = new Set<string>();
  const exchanges = new Set<string>();
  const newQueue = (prefix = "sluice-it-") => {
    const q = uniqueName(prefix);
    queues.add(q);
    return q;
  };
  const newExchange = async (type: "topic" | "direct" | "fanout") => {
    const e = uniqueName("sluice-it-x-");
    exchanges.add(e);
    const ch = await conn.createChannel();
    await ch.assertExchange(e, type, { durable: false });
    await ch.close();
    return e;
  };

  beforeAll(async () => {
    conn = await rabbitConnect();
  });

  afterEach(async () => {
    await deleteQueues(conn, queues, exchanges);
    queues.clear();
    exchanges.clear();
  });

  afterAll(async () => {
    killClis();
    await conn.close();
  });

  it("takes ids from id_field, else message_id, else a hash of the body; key and event time from the sink's headers", async () => {
    const queue = newQueue();
    await declareQueue(conn, queue);
    await publishAll(conn, { queue }, [{ id: "from-payload", n: 0 }, { n: 1 }, { n: 2 }, { n: 2 }], (i) =>
      i === 0 ? { messageId: "ignored" } : i === 1 ? { messageId: "from-message-id", headers: { "sluice-key": "k-1", "sluice-event-time": "2026-01-02T03:04:05.000Z" } } : {},
    );
    const sink = new GatedSink();
    const run = runSource({ url: RABBITMQ_URL, queue }, sink);
    await until(() => sink.commitLog.length === 4, "4 records committed");
    expect((await stop(run)).tag).toBe("stopped");
    const ids = [...sink.committed.keys()].sort();
    // Two equal bodies without an id are one record: the README says what dedupes.
    expect(ids).toHaveLength(3);
    expect(ids).toContain("from-payload");
    expect(ids).toContain("from-message-id");
    expect(ids.find((id) => id.startsWith("rmq:"))).toMatch(/^rmq:[\w-]{22}$/);
    expect(sink.committed.get("from-message-id")!.key).toBe("k-1");
    expect(sink.committed.get("from-message-id")!.eventTime).toBe(Date.parse("2026-01-02T03:04:05.000Z"));
    expect(await readyCount(conn, queue)).toBe(0);
  });

  it("declares a missing queue and binds it to an exchange with routing_key: only matching messages arrive", async () => {
    const exchange = await newExchange("topic");
    const queue = newQueue();
    const sink = new GatedSink();
    const run = runSource({ url: RABBITMQ_URL, queue, exchange, routing_key: "sensors.*" }, sink);
    await until(() => run.events.some((e) => e.type === "source_connected"), "the source connected");
    await publishAll(conn, { exchange, routingKey: "sensors.a" }, [{ id: "a-1" }, { id: "a-2" }]);
    await publishAll(conn, { exchange, routingKey: "other.b" }, [{ id: "b-1" }]);
    await until(() => sink.committed.size === 2, "2 records committed");
    await new Promise((r) => setTimeout(r, 100));
    await stop(run);
    expect([...sink.committed.keys()].sort()).toEqual(["a-1", "a-2"]);
    // Declared by the source: a durable quorum queue that outlives the run.
    expect(await readyCount(conn, queue)).toBe(0);
    const ch = await conn.createChannel();
    await expect(ch.checkQueue(queue)).resolves.toMatchObject({ queue });
    await ch.close();
  });

  it("rejects dead-lettered messages (malformed, refused by a sink, delivered too often) into the queue's dead-letter exchange, and acks the rest", async () => {
    const dlx = await newExchange("fanout");
    const parked = newQueue("sluice-it-parked-");
    const queue = newQueue();
    const ch = await conn.createChannel();
    await ch.assertQueue(parked, { durable: true });
    await ch.bindQueue(parked, dlx, "");
    await ch.close();
    await declareQueue(conn, queue, "quorum", { "x-dead-letter-exchange": dlx });
    // "again" delivered and put back twice before sluice runs (alone in the queue then): a quorum queue counts it.
    await publishAll(conn, { queue }, [{ id: "again" }]);
    const other = await conn.createChannel();
    let returnedTimes = 0;
    await new Promise<void>((resolve) => {
      void other.consume(queue, (m) => {
        if (m === null) return;
        other.nack(m, false, true);
        if (++returnedTimes === 2) resolve();
      });
    });
    await other.close();
    await publishAll(conn, { queue }, [{ id: "good-1" }, "not json", { id: "bad-1", bad: true }, { id: "good-2" }]);
    const sink = new PickySink();
    const run = runSource({ url: RABBITMQ_URL, queue, max_deliveries: 2 }, sink);
    await until(() => sink.committed.size === 2 && run.deadLetters.entries.length === 3, "2 committed, 3 dead-lettered");
    await until(async () => (await readyCount(conn, parked)) === 3, "3 messages in the dead-letter queue");
    await stop(run);
    expect([...sink.committed.keys()].sort()).toEqual(["good-1", "good-2"]);
    expect(run.deadLetters.entries.map((e) => e.code).sort()).toEqual(["ERR_MAX_DELIVERIES", "ERR_RECORD_MALFORMED", "ERR_SINK_REJECTED"]);
    const inDlx = (await peekQueue(conn, parked)).map((m) => m.body).sort();
    expect(inDlx).toEqual([JSON.stringify({ id: "again" }), JSON.stringify({ id: "bad-1", bad: true }), "not json"].sort());
    expect(await readyCount(conn, queue)).toBe(0);
  });

  it("dead-letters a message that is not valid UTF-8 instead of storing its bytes replaced by U+FFFD", async () => {
    const queue = newQueue();
    await declareQueue(conn, queue, "classic");
    const ch = await conn.createConfirmChannel();
    ch.sendToQueue(queue, Buffer.concat([Buffer.from('{"id":"latin1","name":"Z'), Buffer.from([0xfc]), Buffer.from('rich"}')]), { persistent: true });
    ch.sendToQueue(queue, Buffer.from(JSON.stringify({ id: "utf8", name: "Zürich" })), { persistent: true });
    await ch.waitForConfirms();
    await ch.close();
    const sink = new PickySink();
    const run = runSource({ url: RABBITMQ_URL, queue }, sink);
    await until(() => sink.committed.size + run.deadLetters.entries.length === 2, "both messages done");
    await stop(run);
    expect([...sink.committed.keys()]).toEqual(["utf8"]);
    expect(sink.committed.get("utf8")!.payload.name).toBe("Zürich");
    expect(run.deadLetters.entries.map((e) => [e.code, e.message.includes("UTF-8")])).toEqual([["ERR_RECORD_MALFORMED", true]]);
  });

  it("never has more messages unacked than the buffer holds (the prefetch), and goes on as the sink commits", async () => {
    const queue = newQueue();
    await declareQueue(conn, queue, "classic");
    await publishAll(conn, { queue }, Array.from({ length: 300 }, (_, n) => ({ id: `m-${n}` })));
    const sink = new GatedSink(true);
    const run = runSource({ url: RABBITMQ_URL, queue, prefetch: 500 }, sink, 20);
    await until(() => sink.attempted.length > 0, "a write started");
    await new Promise((r) => setTimeout(r, 200));
    // prefetch 500 is capped at buffer.max_records (20): the broker holds back the rest.
    expect(await readyCount(conn, queue)).toBe(280);
    sink.release();
    await until(() => sink.committed.size === 300, "300 records committed");
    await stop(run);
    expect(await readyCount(conn, queue)).toBe(0);
  });

  it("with large messages, never has more unacked than buffer.max_bytes holds (the prefetch by bytes), and goes on as the sink commits", async () => {
    const queue = newQueue();
    await declareQueue(conn, queue);
    const size = 256 * 1024;
    const total = 120;
    await publishAll(conn, { queue }, Array.from({ length: total }, (_, n) => ({ id: `big-${n}`, blob: "x".repeat(size) })));
    const sink = new GatedSink(true);
    const maxBytes = 2 * 1024 * 1024;
    // max_records 10,000 and prefetch 5,000: by count alone the broker would deliver all 120 (30 MiB).
    const run = runSource({ url: RABBITMQ_URL, queue, prefetch: 5_000 }, sink, 10_000, maxBytes);
    await until(() => sink.attempted.length > 0, "a write started");
    let most = 0;
    for (let i = 0; i < 10; i++) {
      await new Promise((r) => setTimeout(r, 100));
      most = Math.max(most, total - (await readyCount(conn, queue)));
    }
    // Everything delivered and not acked is held by sluice, in its buffer or waiting for room in it.
    expect(most * size).toBeLessThanOrEqual(maxBytes);
    expect(most).toBeGreaterThan(1);
    sink.release();
    await until(() => sink.committed.size === total, `${total} records committed`);
    await stop(run);
    expect(await readyCount(conn, queue)).toBe(0);
  });

  it("reconnects after its connection drops and delivers everything; what was in flight comes again with the same id", async () => {
    const proxy = await relay();
    try {
      const queue = newQueue();
      await declareQueue(conn, queue);
      await publishAll(conn, { queue }, Array.from({ length: 500 }, (_, n) => ({ n })));
      const sink = new GatedSink();
      const run = runSource({ url: proxy.url, queue }, sink, 100);
      await until(() => sink.committed.size >= 100, "100 records committed");
      proxy.cut();
      await until(() => sink.committed.size === 500, "500 records committed", 30_000);
      // What was delivered and not acked when the connection dropped is back in the queue, and read again.
      await until(async () => (await readyCount(conn, queue)) === 0, "the queue read to its end");
      const count = (type: "records_received" | "records_completed") =>
        run.events.reduce((n, e) => n + (e.type === "records_received" && type === e.type ? e.count : e.type === "records_completed" && type === e.type ? e.delivered + e.deadLettered : 0), 0);
      await until(async () => {
        const received = count("records_received");
        await new Promise((r) => setTimeout(r, 100));
        return received === count("records_received") && received === count("records_completed");
      }, "every record received acked");
      expect(count("records_received")).toBeGreaterThan(500);
      await stop(run);
      expect(run.events.filter((e) => e.type === "source_connected").length).toBeGreaterThanOrEqual(2);
      expect(await readyCount(conn, queue)).toBe(0);
    } finally {
      await proxy.close();
    }
  });

  it("sink: persistent messages with message_id = record id through an exchange; unroutable ones are permanent failures", async () => {
    const exchange = await newExchange("direct");
    const queue = newQueue();
    const bound = sinkDefinition.create(sinkDefinition.options.parse({ url: RABBITMQ_URL, exchange, routing_key: "r", queue }), {} as never);
    await bound.connect(signal);
    const records = makeRecords(5);
    expect(await bound.write(records, signal)).toEqual({});
    await bound.close();
    const stored = await peekQueue(conn, queue);
    expect(stored.map((m) => m.messageId).sort()).toEqual(records.map((r) => r.id).sort());
    expect(stored.every((m) => m.persistent)).toBe(true);

    const nowhere = sinkDefinition.create(sinkDefinition.options.parse({ url: RABBITMQ_URL, exchange, routing_key: "nobody-listens" }), {} as never);
    await nowhere.connect(signal);
    const result = await nowhere.write(makeRecords(3), signal);
    await nowhere.close();
    expect(result!.failures!.map((f) => [f.index, f.error.code, f.error.retryable])).toEqual([
      [0, "ERR_SINK_REJECTED", false],
      [1, "ERR_SINK_REJECTED", false],
      [2, "ERR_SINK_REJECTED", false],
    ]);
    expect(result!.failures![0]!.error.message).toContain("unroutable");
  });

  it("sink: a publish the queue refuses (nack) fails the batch retryably; a missing exchange is a permanent connect error", async () => {
    const queue = newQueue();
    const sink = sinkDefinition.create(
      sinkDefinition.options.parse({ url: RABBITMQ_URL, queue, queue_type: "classic", queue_arguments: { "x-max-length": 5, "x-overflow": "reject-publish" } }),
      {} as never,
    );
    await sink.connect(signal);
    const err = await sink.write(makeRecords(10), signal).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(SluiceError);
    expect([(err as SluiceError).code, (err as SluiceError).retryable]).toEqual(["ERR_SINK_WRITE", true]);
    expect((err as SluiceError).message).toContain("nacked");
    await sink.close();

    const missing = sinkDefinition.create(sinkDefinition.options.parse({ url: RABBITMQ_URL, exchange: uniqueName("sluice-none-"), routing_key: "r" }), {} as never);
    const refused = await missing.connect(signal).then(
      () => undefined,
      (e: unknown) => e as SluiceError,
    );
    expect([refused?.code, refused?.retryable]).toEqual(["ERR_SINK_CONNECT", false]);
    expect(refused?.message).toMatch(/exchange .* does not exist/);
  });

  it("sink: its queue deleted mid-run fails the write retryably (not dead-lettered as unroutable), and the next write declares it again", async () => {
    const queue = newQueue();
    const sink = sinkDefinition.create(sinkDefinition.options.parse({ url: RABBITMQ_URL, queue }), {} as never);
    await sink.connect(signal);
    expect(await sink.write(makeRecords(3), signal)).toEqual({});
    const ch = await conn.createChannel();
    await ch.deleteQueue(queue);
    await ch.close();
    const err = await sink.write(makeRecords(3, { start: 3 }), signal).then(
      (result) => result,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(SluiceError);
    expect([(err as SluiceError).code, (err as SluiceError).retryable]).toEqual(["ERR_SINK_WRITE", true]);
    expect(await sink.write(makeRecords(3, { start: 3 }), signal)).toEqual({});
    await sink.close();
    expect((await peekQueue(conn, queue)).map((m) => m.messageId).sort()).toEqual(makeRecords(3, { start: 3 }).map((r) => r.id).sort());
  });

  it("sink: a write into a broker that stopped reading fails within confirm_timeout instead of waiting for drain for ever", async () => {
    const proxy = await relay();
    try {
      const queue = newQueue();
      const sink = sinkDefinition.create(sinkDefinition.options.parse({ url: proxy.url, queue, confirm_timeout: "500ms" }), {} as never);
      await sink.connect(signal);
      proxy.stall();
      const big = "x".repeat(16 * 1024);
      const records = makeRecords(2000).map((r) => ({ ...r, payload: { ...r.payload, big }, text: undefined }));
      const started = Date.now();
      const outcome = await Promise.race([
        sink.write(records, signal).then(
          () => "written",
          (e: unknown) => e,
        ),
        new Promise((r) => setTimeout(() => r("still waiting"), 15_000)),
      ]);
      expect(outcome).toBeInstanceOf(SluiceError);
      expect([(outcome as SluiceError).code, (outcome as SluiceError).retryable]).toEqual(["ERR_SINK_WRITE", true]);
      // 500 ms of confirm_timeout after encoding 32 MiB, which takes seconds on a loaded 2-core machine.
      expect(Date.now() - started).toBeLessThan(8_000);
      proxy.cut();
      // Its connection is cut: closing it would only wait out the close timeout.
      void sink.close();
    } finally {
      proxy.cut();
      await proxy.close();
    }
  });

  it("sink: a write after the connection dropped opens a new one", async () => {
    const proxy = await relay();
    try {
      const queue = newQueue();
      const sink = sinkDefinition.create(sinkDefinition.options.parse({ url: proxy.url, queue }), {} as never);
      await sink.connect(signal);
      expect(await sink.write(makeRecords(10), signal)).toEqual({});
      proxy.cut();
      await new Promise((r) => setTimeout(r, 100));
      expect(await sink.write(makeRecords(10, { start: 10 }), signal)).toEqual({});
      await sink.close();
      expect(await readyCount(conn, queue)).toBe(20);
    } finally {
      await proxy.close();
    }
  });

  describe("through the CLI", () => {
    let dir: string;
    beforeAll(async () => {
      dir = await mkdtemp(join(tmpdir(), "sluice-rabbitmq-cli-"));
    });
    afterAll(async () => {
      await rm(dir, { recursive: true, force: true });
    });

    it("generator -> rabbitmq sink, then rabbitmq source -> sqlite: every record once, ids kept; validate connects both", async () => {
      const queue = newQueue();
      const env = { ...process.env, RABBITMQ_URL };
      await writeFile(
        join(dir, "publish.yaml"),
        `data_dir: ./data-publish\nsources:\n  gen: { type: generator, count: 2000 }\nsinks:\n  rmq: { type: rabbitmq, url: "\${RABBITMQ_URL}", queue: ${queue} }\n`,
      );
      const checked = await runCli(["validate", "publish.yaml"], { cwd: dir, env });
      expect(checked.code, checked.stdout + checked.stderr).toBe(0);
      expect(checked.stdout).toMatch(/sink +rmq \(rabbitmq\) +ok \(connected in \d+ ms\)/);
      const published = await runCli(["run", "publish.yaml", "--no-progress"], { cwd: dir, env });
      expect(published.code, published.stderr).toBe(0);
      expect(await readyCount(conn, queue)).toBe(2000);

      // id_field names no field of the payload: the ids come from message_id, which the sink set to the generator's ids.
      const config = `data_dir: ./data-read\nsources:\n  rmq: { type: rabbitmq, url: "\${RABBITMQ_URL}", queue: ${queue}, id_field: no_such_field }\nsinks:\n  db: { type: sqlite, path: ./out.db }\n`;
      await writeFile(join(dir, "read.yaml"), config);
      const validated = await runCli(["validate", "read.yaml"], { cwd: dir, env });
      expect(validated.code, validated.stdout + validated.stderr).toBe(0);
      expect(validated.stdout).toMatch(/source rmq \(rabbitmq\) +ok \(connected in \d+ ms\)/);

      const reader = startCli(join(dir, "read.yaml"), join(dir, "summary.json"), dir, { RABBITMQ_URL });
      const count = () => {
        try {
          const db = new Database(join(dir, "out.db"), { readonly: true, fileMustExist: true });
          try {
            return (db.prepare("SELECT count(*) AS n FROM records").get() as { n: number }).n;
          } finally {
            db.close();
          }
        } catch {
          return 0;
        }
      };
      await until(() => count() === 2000, "2000 rows", 60_000);
      reader.process.kill("SIGTERM");
      expect((await reader.exited).code, reader.output()).toBe(0);
      const db = new Database(join(dir, "out.db"), { readonly: true });
      const ids = (db.prepare("SELECT id FROM records ORDER BY id").all() as { id: string }[]).map((r) => r.id);
      db.close();
      expect(ids).toEqual(Array.from({ length: 2000 }, (_, n) => `gen-${n + 1}`).sort());
      // Every ack reached the broker before sluice closed its connection.
      // Every ack reached the queue before sluice closed (without the consumer's cancel awaited at
      // close, runs beside the other rabbitmq test files left hundreds of acked messages behind).
      const left = await peekQueue(conn, queue);
      for (const m of left) expect(ids).toContain(m.messageId);
      expect(left).toHaveLength(0);
    });

    it("dead-letters only the record that crashes the worker, not the messages delivered with it (quorum queue)", async () => {
      const queue = newQueue();
      await declareQueue(conn, queue);
      const total = 60;
      await publishAll(conn, { queue }, Array.from({ length: total }, (_, n): JsonObject => (n === 20 ? { n, poison: true } : { n })), (n) => ({ messageId: `m-${n}` }));
      const work = join(dir, "poison");
      await writeFile(
        join(dir, "poison.yaml"),
        `data_dir: ${join(work, "data")}
sources:
  rmq: { type: rabbitmq, url: "${RABBITMQ_URL}", queue: ${queue}, max_deliveries: 3 }
transforms:
  - { type: module, path: ${join(import.meta.dirname, "../fixtures/transforms/kills-itself.mjs")} }
sinks:
  db: { type: sqlite, path: ${join(work, "out.db")} }
`,
      );
      const rows = () => {
        try {
          const db = new Database(join(work, "out.db"), { readonly: true, fileMustExist: true });
          try {
            return (db.prepare("SELECT id FROM records").all() as { id: string }[]).map((r) => r.id);
          } finally {
            db.close();
          }
        } catch {
          return [];
        }
      };
      const deadLetters = () => {
        try {
          const db = new Database(join(work, "data", "dlq.db"), { readonly: true, fileMustExist: true });
          try {
            return (db.prepare("SELECT count(*) AS n FROM dead_letters").get() as { n: number }).n;
          } finally {
            db.close();
          }
        } catch {
          return 0;
        }
      };
      // A supervisor restarting the worker after each crash, until the queue is done.
      let crashes = 0;
      for (let attempt = 0; attempt < 10; attempt++) {
        const cli = startCli(join(dir, "poison.yaml"), join(work, "summary.json"), dir);
        // Settled: every other record in SQLite, the poison dead-lettered, nothing left in the queue
        // (the poison in flight counts as not ready: without the dead letter this raced its kill).
        const finished = until(async () => rows().length === total - 1 && deadLetters() === 1 && (await readyCount(conn, queue)) === 0, "every message settled", 30_000).then(
          () => undefined,
        );
        const exited = await Promise.race([cli.exited, finished]);
        if (exited === undefined) {
          cli.process.kill("SIGTERM");
          expect((await cli.exited).code, `after ${crashes} crashes: ${cli.output()}`).toBe(0);
          break;
        }
        expect(`${exited.code} ${exited.signal}`, cli.output()).toBe("null SIGKILL");
        crashes++;
      }
      expect(crashes).toBe(3);
      const dlq = new Database(join(work, "data", "dlq.db"), { readonly: true });
      const dead = dlq.prepare("SELECT record_id, code FROM dead_letters").all();
      dlq.close();
      expect(dead).toEqual([{ record_id: "m-20", code: "ERR_MAX_DELIVERIES" }]);
      expect(new Set(rows())).toEqual(new Set(Array.from({ length: total }, (_, n) => `m-${n}`).filter((id) => id !== "m-20")));
      expect(await readyCount(conn, queue)).toBe(0);
    }, 120_000);

    it("exits 1 with a clear message on refused credentials and on a queue declared with other arguments", async () => {
      const queue = newQueue();
      await declareQueue(conn, queue, "classic");
      const wrong = new URL(RABBITMQ_URL);
      wrong.password = "not-the-password";
      await writeFile(join(dir, "refused.yaml"), `data_dir: ./data-refused\nsources:\n  rmq: { type: rabbitmq, url: "${wrong.toString()}", queue: ${queue} }\nsinks:\n  out: { type: blackhole }\n`);
      const refused = await runCli(["run", "refused.yaml", "--no-progress"], { cwd: dir });
      expect(refused.code).toBe(1);
      expect(refused.stderr).toMatch(/ACCESS.REFUSED/);
      expect(refused.stderr).not.toContain("not-the-password");

      await writeFile(join(dir, "other.yaml"), `data_dir: ./data-other\nsources:\n  rmq: { type: rabbitmq, url: "${RABBITMQ_URL}", queue: ${queue}, queue_type: quorum }\nsinks:\n  out: { type: blackhole }\n`);
      const other = await runCli(["run", "other.yaml", "--no-progress"], { cwd: dir });
      expect(other.code).toBe(1);
      expect(other.stderr).toContain(`queue ${queue} exists with other arguments`);
    });
  });
});
