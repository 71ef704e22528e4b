/**
 * The `nats_jetstream` source against the machine's NATS JetStream, beyond the contract suite:
 * the consumer it creates, updates or binds to; ids, keys and event times across redelivery; acks
 * only after commit; what it has in flight bounded by the buffer; `working()` keeping a slow chunk
 * from redelivery; `max_deliver` and malformed messages dead-lettered; and the CLI reading what the
 * `nats_jetstream` sink wrote. Each test reads its own stream (random suffix) and deletes it.
 */
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { connect, createServer, type AddressInfo, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Database from "better-sqlite3";
import { AckPolicy, jetstreamManager } from "@nats-io/jetstream";
import { nanos, type NatsConnection } from "@nats-io/transport-node";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { headerValue } from "../../src/brokers/nats.js";
import { systemClock } from "../../src/core/clock.js";
import { SluiceError } from "../../src/core/errors.js";
import { silentLogger } from "../../src/core/events.js";
import { definition } from "../../src/sources/nats-jetstream.js";
import { deleteJetStream, NATS_URL, natsConnect, uniqueName } from "../helpers/brokers.js";
import { killClis, runCli, startCli } from "../helpers/cli.js";
import { FakeClock } from "../helpers/fake-clock.js";
import { MemorySink } from "../helpers/memory.js";
import { consumerInfo, createStream, GatedSink, publish, runSource, until, type SourceRun, type SourceRunOptions } from "../helpers/nats-source.js";
import { requireService } from "../helpers/services.js";

const address = new URL(NATS_URL);

/** A TCP proxy to host:port that, once frozen, passes nothing more either way (a server that stopped answering, the socket still open). */
async function freezingProxy(host: string, port: number): Promise<{ url: string; freeze(): void; close(): Promise<void> }> {
  let frozen = false;
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    const upstream = connect(port, host);
    for (const [from, to] of [
      [client, upstream],
      [upstream, client],
    ] as const) {
      sockets.add(from);
      from.on("data", (d) => frozen || to.write(d));
      from.on("error", () => to.destroy());
      from.on("close", () => to.destroy());
    }
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `nats://127.0.0.1:${(server.address() as AddressInfo).port}`,
    freeze: () => void (frozen = true),
    close: () => {
      for (const s of sockets) s.destroy();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}
const hasNats = await requireService("NATS", address.hostname, Number(address.port || 4222));

describe.skipIf(!hasNats)("nats_jetstream source on the machine's NATS", () => {
  let nc: NatsConnection;
  const streams: string[] = [];
  const runs: SourceRun[] = [];

  beforeAll(async () => {
    nc = await natsConnect();
  });

  afterEach(async () => {
    for (const r of runs.splice(0)) {
      r.pipeline.stop();
      await r.done;
    }
  });

  afterAll(async () => {
    killClis();
    for (const s of streams) await deleteJetStream(nc, s);
    await nc.close();
  });

  /** A fresh stream storing its own subject and the subjects below it. */
  async function stream(): Promise<{ name: string; subject: string }> {
    const name = uniqueName("sluice_src_it_");
    const subject = `sluice.it.${name}`;
    await createStream(nc, name, [subject, `${subject}.>`]);
    streams.push(name);
    return { name, subject };
  }

  function start(o: SourceRunOptions): SourceRun {
    const r = runSource(o);
    runs.push(r);
    return r;
  }

  /** Stops a run and waits for its end (it is then no longer stopped after the test). */
  async function stop(r: SourceRun) {
    runs.splice(runs.indexOf(r), 1);
    r.pipeline.stop();
    return r.done;
  }

  const bodies = (from: number, to: number) => Array.from({ length: to - from }, (_, i) => ({ body: JSON.stringify({ n: from + i }) }));
  const received = (r: SourceRun) => r.events.reduce((n, e) => n + (e.type === "records_received" ? e.count : 0), 0);
  const reclaimed = (r: SourceRun) => r.events.reduce((n, e) => n + (e.type === "records_reclaimed" ? e.count : 0), 0);
  const settled = async (name: string, consumer: string) => {
    const info = await consumerInfo(nc, name, consumer);
    return info.num_ack_pending === 0 && info.num_pending === 0;
  };

  /** Why `connect` of a source with these options failed. */
  async function connectError(options: Record<string, unknown>): Promise<SluiceError> {
    const source = definition.create(definition.options.parse({ servers: NATS_URL, ...options }), {
      name: "js",
      dataDir: "",
      baseDir: "",
      clock: systemClock,
      logger: silentLogger,
      emit: () => {},
    });
    const err: unknown = await source.connect!(new AbortController().signal).then(
      () => undefined,
      (e: unknown) => e,
    );
    await source.close();
    expect(err).toBeInstanceOf(SluiceError);
    return err as SluiceError;
  }

  it("creates its consumer when missing: explicit acks, ack_wait, deliver, filter, max_ack_pending from the buffer, no server max_deliver", async () => {
    const { name, subject } = await stream();
    await publish(nc, subject, [{ body: JSON.stringify({ id: "before" }) }]);
    const sink = new GatedSink();
    const r = start({ source: { servers: NATS_URL, stream: name, consumer: "fresh", filter_subject: subject, deliver: "new", ack_wait: "5s", max_deliver: 4 }, sink, maxRecords: 200 });
    await until(() => r.events.some((e) => e.type === "source_connected"), "the source connected");
    const info = await consumerInfo(nc, name, "fresh");
    expect(info.config).toMatchObject({
      durable_name: "fresh",
      ack_policy: AckPolicy.Explicit,
      ack_wait: nanos(5000),
      deliver_policy: "new",
      filter_subject: subject,
      max_ack_pending: 200 + 1000,
      max_deliver: -1,
    });
    expect(info.config.deliver_subject).toBeUndefined();
    await publish(nc, subject, [{ body: JSON.stringify({ id: "after" }) }]);
    await until(() => sink.committed.has("after"), "the message published after the consumer was created");
    expect(sink.committed.has("before")).toBe(false);
  });

  it("updates an existing consumer's ack_wait and max_ack_pending to its own, unless bound", async () => {
    const { name, subject } = await stream();
    const jsm = await jetstreamManager(nc);
    await jsm.consumers.add(name, { durable_name: "old", ack_policy: AckPolicy.Explicit, ack_wait: nanos(60_000), max_ack_pending: 7 });
    await publish(nc, subject, bodies(0, 20));
    const sink = new GatedSink();
    const r = start({ source: { servers: NATS_URL, stream: name, consumer: "old", ack_wait: "2s" }, sink, maxRecords: 50 });
    await until(() => sink.committed.size === 20, "20 records committed");
    expect((await consumerInfo(nc, name, "old")).config).toMatchObject({ ack_wait: nanos(2000), max_ack_pending: 1050, max_deliver: -1 });
    await stop(r);
  });

  it("never lowers a fleet's max_ack_pending to its own buffer bound by default, and sets a configured one exactly", async () => {
    const { name } = await stream();
    const jsm = await jetstreamManager(nc);
    // Set by a worker with a larger buffer, or by an operator for the whole fleet.
    await jsm.consumers.add(name, { durable_name: "fleet", ack_policy: AckPolicy.Explicit, max_ack_pending: 30_000 });
    const connectOnly = async (options: Record<string, unknown>) => {
      const source = definition.create(definition.options.parse({ servers: NATS_URL, stream: name, consumer: "fleet", ...options }), {
        name: "js",
        dataDir: "",
        baseDir: "",
        clock: systemClock,
        logger: silentLogger,
        emit: () => {},
        bufferRecords: 50,
      });
      await source.connect!(new AbortController().signal);
      await source.close();
      return (await consumerInfo(nc, name, "fleet")).config.max_ack_pending;
    };
    expect(await connectOnly({})).toBe(30_000);
    expect(await connectOnly({ max_ack_pending: 300 })).toBe(300);
    expect(await connectOnly({})).toBe(1_050);
    await jsm.consumers.update(name, "fleet", { max_ack_pending: -1 });
    expect(await connectOnly({})).toBe(-1);
  });

  it("never lowers a fleet's ack_wait by default, raises a shorter one, and sets a configured one exactly", async () => {
    const { name } = await stream();
    const jsm = await jetstreamManager(nc);
    await jsm.consumers.add(name, { durable_name: "waits", ack_policy: AckPolicy.Explicit, ack_wait: nanos(60_000) });
    const connectOnly = async (options: Record<string, unknown>) => {
      const source = definition.create(definition.options.parse({ servers: NATS_URL, stream: name, consumer: "waits", ...options }), {
        name: "js",
        dataDir: "",
        baseDir: "",
        clock: systemClock,
        logger: silentLogger,
        emit: () => {},
      });
      await source.connect!(new AbortController().signal);
      await source.close();
      return (await consumerInfo(nc, name, "waits")).config.ack_wait;
    };
    // Set by a worker (or an operator) that holds chunks longer: a worker with the default leaves it.
    expect(await connectOnly({})).toBe(nanos(60_000));
    expect(await connectOnly({ ack_wait: "5s" })).toBe(nanos(5_000));
    expect(await connectOnly({})).toBe(nanos(30_000));
  });

  it("refuses an existing consumer that filters when filter_subject is not set, unless bound", async () => {
    const { name, subject } = await stream();
    const jsm = await jetstreamManager(nc);
    await jsm.consumers.add(name, { durable_name: "part", ack_policy: AckPolicy.Explicit, filter_subject: `${subject}.a` });
    const err = await connectError({ stream: name, consumer: "part" });
    expect(err).toMatchObject({ code: "ERR_SOURCE_CONNECT", retryable: false });
    expect(err.message).toMatch(new RegExp(`filters ${subject}\\.a, and filter_subject is not set \\(the whole stream\\); set filter_subject to it, or bind: true`));
    await publish(nc, `${subject}.a`, [{ body: JSON.stringify({ n: 1 }), msgId: "a-1" }]);
    await publish(nc, `${subject}.b`, [{ body: JSON.stringify({ n: 2 }), msgId: "b-1" }]);
    const sink = new GatedSink();
    // Bound, it is used as it is: its subject only.
    start({ source: { servers: NATS_URL, stream: name, consumer: "part", bind: true }, sink });
    await until(() => sink.committed.has("a-1"), "the message of the filtered subject");
    expect(sink.committed.has("b-1")).toBe(false);
  });

  it("waits for the last acks' flush at close for 10 s of its clock, not of real time, when the server stops answering", async () => {
    const { name } = await stream();
    const proxy = await freezingProxy(address.hostname, Number(address.port || 4222));
    try {
      const clock = new FakeClock();
      const source = definition.create(definition.options.parse({ servers: proxy.url, stream: name, consumer: "frozen" }), {
        name: "js",
        dataDir: "",
        baseDir: "",
        clock,
        logger: silentLogger,
        emit: () => {},
      });
      await source.connect!(new AbortController().signal);
      proxy.freeze();
      let closed = false;
      const closing = source.close().then(() => (closed = true));
      await until(() => clock.pendingTimers > 0, "close waiting on its clock");
      await new Promise((r) => setTimeout(r, 100));
      expect(closed).toBe(false);
      clock.advance(10_000);
      await until(() => closed, "close done", 2_000);
      await closing;
    } finally {
      await proxy.close();
    }
  });

  it("stops at once when stopped while connecting to a server that accepts and never answers", async () => {
    const sockets = new Set<Socket>();
    const silent = createServer((socket) => void sockets.add(socket));
    await new Promise<void>((resolve) => silent.listen(0, "127.0.0.1", resolve));
    try {
      const url = `nats://127.0.0.1:${(silent.address() as AddressInfo).port}`;
      const r = start({ source: { servers: url, stream: "never", consumer: "silent" }, sink: new GatedSink(), shutdownTimeoutMs: 5_000 });
      await until(() => sockets.size > 0, "the source connecting");
      await new Promise((resolve) => setTimeout(resolve, 200));
      const began = Date.now();
      const status = await stop(r);
      expect(status.tag).toBe("stopped");
      expect(Date.now() - began).toBeLessThan(1_000);
    } finally {
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => silent.close(resolve));
    }
  });

  it("gives up its JetStream API calls at once when connect is aborted and the server stopped answering", async () => {
    const { name } = await stream();
    const proxy = await freezingProxy(address.hostname, Number(address.port || 4222));
    const source = definition.create(definition.options.parse({ servers: proxy.url, stream: name, consumer: "api" }), {
      name: "js",
      dataDir: "",
      baseDir: "",
      clock: systemClock,
      logger: silentLogger,
      emit: () => {},
    });
    try {
      await source.connect!(new AbortController().signal);
      proxy.freeze();
      // Connected: this attempt goes straight to the stream and consumer checks, which the server never answers.
      const abort = new AbortController();
      const began = Date.now();
      const attempt = source.connect!(abort.signal).then(
        () => undefined,
        (e: unknown) => e,
      );
      setTimeout(() => abort.abort(), 100);
      expect(await attempt).toBeInstanceOf(SluiceError);
      expect(Date.now() - began).toBeLessThan(1_000);
    } finally {
      await proxy.close();
      await source.close();
    }
  });

  it("binds to an existing consumer and leaves it as it is", async () => {
    const { name, subject } = await stream();
    const jsm = await jetstreamManager(nc);
    await jsm.consumers.add(name, { durable_name: "ops", ack_policy: AckPolicy.Explicit, ack_wait: nanos(60_000), max_ack_pending: 500, max_deliver: 50 });
    const before = (await consumerInfo(nc, name, "ops")).config;
    await publish(nc, subject, bodies(0, 30));
    const sink = new GatedSink();
    start({ source: { servers: NATS_URL, stream: name, consumer: "ops", bind: true, ack_wait: "30s" }, sink });
    await until(() => sink.committed.size === 30, "30 records committed");
    expect((await consumerInfo(nc, name, "ops")).config).toEqual(before);
    await until(() => settled(name, "ops"), "every message acked");
  });

  it("fails for good, saying why, on a missing stream, a missing consumer with bind, and a consumer it cannot use", async () => {
    const { name, subject } = await stream();
    const missingStream = await connectError({ stream: uniqueName("sluice_src_none_") });
    expect(missingStream).toMatchObject({ code: "ERR_SOURCE_CONNECT", retryable: false });
    expect(missingStream.message).toMatch(/stream sluice_src_none_\w+ does not exist/);

    const missingConsumer = await connectError({ stream: name, consumer: "nobody", bind: true });
    expect(missingConsumer).toMatchObject({ code: "ERR_SOURCE_CONNECT", retryable: false });
    expect(missingConsumer.message).toMatch(/consumer nobody of stream \w+ does not exist, and bind: true does not create it/);
    const jsm = await jetstreamManager(nc);
    await expect(jsm.consumers.info(name, "nobody")).rejects.toThrow();

    await jsm.consumers.add(name, { durable_name: "short", ack_policy: AckPolicy.Explicit, ack_wait: nanos(1000) });
    const shortWait = await connectError({ stream: name, consumer: "short", bind: true, ack_wait: "30s" });
    expect(shortWait).toMatchObject({ code: "ERR_SOURCE_CONNECT", retryable: false });
    expect(shortWait.message).toMatch(/ack_wait 1000 ms, less than this source's ack_wait 30000 ms/);

    await jsm.consumers.add(name, { durable_name: "noack", ack_policy: AckPolicy.None });
    expect((await connectError({ stream: name, consumer: "noack" })).message).toMatch(/needs explicit acks/);
    await jsm.consumers.add(name, { durable_name: "push", ack_policy: AckPolicy.Explicit, deliver_subject: `push.${name}` });
    expect((await connectError({ stream: name, consumer: "push" })).message).toMatch(/is a push consumer; sluice needs a pull consumer/);
    await jsm.consumers.add(name, { durable_name: "filtered", ack_policy: AckPolicy.Explicit, filter_subject: `${subject}.a` });
    expect((await connectError({ stream: name, consumer: "filtered", filter_subject: `${subject}.b` })).message).toMatch(
      new RegExp(`filters ${subject}\\.a, not ${subject}\\.b; delete it or use another consumer name`),
    );

    // Through the engine: the run ends at once, failed, with that message.
    const r = start({ source: { servers: NATS_URL, stream: name, consumer: "nobody", bind: true }, sink: new GatedSink() });
    const status = await r.done;
    expect(status.tag).toBe("failed");
    expect(status.tag === "failed" && status.error.message).toMatch(/^source js cannot connect: nats: consumer nobody/);
  });

  it("creates its consumer again when it is deleted under a run, and goes on", async () => {
    const { name, subject } = await stream();
    await publish(nc, subject, bodies(0, 50));
    const sink = new GatedSink();
    const r = start({ source: { servers: NATS_URL, stream: name, consumer: "gone" }, sink });
    await until(() => sink.committed.size === 50, "50 records committed");
    await until(() => settled(name, "gone"), "every message acked");
    await (await jetstreamManager(nc)).consumers.delete(name, "gone");
    await until(() => r.events.filter((e) => e.type === "source_connected").length >= 2, "the source connected again", 20_000);
    await publish(nc, subject, bodies(50, 60));
    await until(() => sink.committed.size === 60, "the 10 records published after");
    await until(() => settled(name, "gone"), "every message acked");
    const lost = r.events.filter((e) => e.type === "source_connect_failed" && e.attempt === 0);
    // Reported like a lost connection (the engine connects again, which creates the consumer), and counted.
    expect(lost.map((e) => e.type === "source_connect_failed" && e.message)).toContain("nats: consumer deleted");
    // The new consumer starts after the ack floor last read, not over (deliver: all is for the first creation): at most the 50 again, under the ids they had.
    expect(sink.committed.size).toBe(60);
    expect(sink.commitLog.length).toBeLessThanOrEqual(110);
  });

  it("with deliver: new, creates a deleted consumer again from where it was, not from new: the backlog is still delivered", async () => {
    const { name, subject } = await stream();
    await publish(nc, subject, bodies(0, 5));
    const sink = new GatedSink(true);
    const r = start({ source: { servers: NATS_URL, stream: name, consumer: "gone-new", deliver: "new" }, sink, maxRecords: 2, chunkSize: 1, batch: 1 });
    await until(() => r.events.some((e) => e.type === "source_connected"), "the source connected");
    // Published after the consumer was created: the 10 it must deliver; the buffer holds 2 of them.
    await publish(nc, subject, bodies(5, 15));
    await until(() => received(r) >= 2, "the buffer full");
    await (await jetstreamManager(nc)).consumers.delete(name, "gone-new");
    // The next pull finds the consumer gone.
    sink.release();
    await until(() => r.events.filter((e) => e.type === "source_connected").length >= 2, "the source connected again", 20_000);
    await until(() => sink.committed.size === 10, "the 10 records published after the first creation", 20_000).catch(() => undefined);
    expect([...sink.committed.values()].map((rec) => (rec.payload as { n: number }).n).sort((a, b) => a - b)).toEqual(Array.from({ length: 10 }, (_, i) => i + 5));
    await until(() => settled(name, "gone-new"), "every message acked");
  });

  it("keeps ids, keys and event times from the message across redelivery", async () => {
    const { name, subject } = await stream();
    await publish(nc, subject, [
      { body: JSON.stringify({ n: 0 }) },
      { body: JSON.stringify({ n: 1 }), msgId: headerValue("id with space and 100%") },
      { body: JSON.stringify({ n: 2 }), msgId: "k-2", headers: { "Sluice-Key": headerValue("key ü"), "Sluice-Event-Time": "2024-01-02T03:04:05.678Z" } },
      { body: JSON.stringify({ n: 3, id: "from-payload" }), msgId: "from-header" },
    ]);
    const source = { servers: NATS_URL, stream: name, consumer: "ids", ack_wait: "1s" };
    const first = start({ source, sink: new GatedSink(true), shutdownTimeoutMs: 100 });
    const held = first;
    await until(() => received(held) === 4, "4 records received");
    expect((await stop(first)).tag).toBe("timed_out");

    const sink = new GatedSink();
    const second = start({ source, sink });
    await until(() => sink.committed.size === 4, "4 records committed in the second run");
    expect([...sink.committed.keys()].sort()).toEqual([`${name}:1`, "from-payload", "id with space and 100%", "k-2"].sort());
    expect(sink.committed.get("k-2")).toMatchObject({ key: "key ü", eventTime: Date.parse("2024-01-02T03:04:05.678Z") });
    expect(sink.committed.get(`${name}:1`)).toMatchObject({ key: undefined, eventTime: undefined, text: '{"n":0}' });
    // The first run left them un-acked: redelivered after ack_wait, counted as reclaimed.
    expect(reclaimed(second)).toBe(4);
    await until(() => settled(name, "ids"), "every message acked");
  });

  it("acks a message only once its record is committed, and reports the backlog", async () => {
    const { name, subject } = await stream();
    await publish(nc, subject, bodies(0, 300));
    const sink = new GatedSink(true);
    const r = start({ source: { servers: NATS_URL, stream: name, consumer: "acks" }, sink });
    await until(() => received(r) === 300, "300 records received");
    await until(async () => (await consumerInfo(nc, name, "acks")).num_ack_pending === 300, "300 messages pending at the server");
    // Every 5 s the source reads its consumer's backlog: all 300 delivered and pending, none left.
    await until(() => r.events.some((e) => e.type === "source_backlog" && e.pending === 300 && e.lag === 0), "a backlog report", 12_000);
    const text = await r.metrics.registry.metrics();
    expect(text).toMatch(/sluice_source_pending\{source="js"\} 300/);
    expect((await consumerInfo(nc, name, "acks")).num_ack_pending).toBe(300);
    sink.release();
    await until(() => settled(name, "acks"), "every message acked");
    expect(sink.committed.size).toBe(300);
  });

  it("has at most the buffer's bound plus one chunk delivered and not acked", async () => {
    const { name, subject } = await stream();
    await publish(nc, subject, bodies(0, 3000));
    const sink = new MemorySink({ clock: systemClock, schedule: () => ({ delayMs: 3, then: "ok" }) });
    const r = start({ source: { servers: NATS_URL, stream: name, consumer: "bound" }, sink, maxRecords: 100, chunkSize: 20, batch: 20 });
    let most = 0;
    await until(async () => {
      const info = await consumerInfo(nc, name, "bound").catch(() => undefined);
      if (info === undefined) return false;
      most = Math.max(most, info.num_ack_pending);
      return info.num_ack_pending === 0 && info.num_pending === 0;
    }, "every message acked", 60_000);
    expect(sink.committed.size).toBe(3000);
    expect(most).toBeGreaterThan(20);
    expect(most).toBeLessThanOrEqual(100 + 20);
    expect(r.buffer.usage().records).toBe(0);
  });

  it("pulls no more messages than the buffer's byte bound holds, sized by the messages read so far", async () => {
    const { name, subject } = await stream();
    // About 510 bytes per message: the byte bound holds 10 of them, the record bound 10,000.
    const pad = "x".repeat(500);
    await publish(nc, subject, Array.from({ length: 300 }, (_, n) => ({ body: JSON.stringify({ n, pad }) })));
    const sink = new GatedSink(true);
    const r = start({ source: { servers: NATS_URL, stream: name, consumer: "bytes" }, sink, maxBytes: 5_300, chunkSize: 100, batch: 100 });
    let most = 0;
    const sample = async () => {
      const info = await consumerInfo(nc, name, "bytes").catch(() => undefined);
      most = Math.max(most, info?.num_ack_pending ?? 0);
      return info;
    };
    await until(async () => (await sample(), sink.attempted.length > 0), "the buffer filling");
    for (let i = 0; i < 30; i++) {
      await sample();
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    expect(most).toBeLessThanOrEqual(11);
    sink.release();
    await until(async () => {
      const info = await sample();
      return info !== undefined && info.num_ack_pending === 0 && info.num_pending === 0;
    }, "every message acked", 60_000);
    expect(sink.committed.size).toBe(300);
    expect(most).toBeLessThanOrEqual(11);
    expect(r.buffer.usage().records).toBe(0);
  });

  it("keeps a chunk held longer than ack_wait from redelivery with working()", async () => {
    const { name, subject } = await stream();
    await publish(nc, subject, bodies(0, 50));
    const sink = new GatedSink(true);
    const r = start({ source: { servers: NATS_URL, stream: name, consumer: "slow", ack_wait: "1s" }, sink });
    await until(() => received(r) === 50, "50 records received");
    // Three times ack_wait: without working() the server would have redelivered every message twice.
    await new Promise((resolve) => setTimeout(resolve, 3000));
    sink.release();
    await until(() => settled(name, "slow"), "every message acked");
    const info = await consumerInfo(nc, name, "slow");
    expect(info.num_redelivered).toBe(0);
    expect(info.delivered.consumer_seq).toBe(50);
    expect(received(r)).toBe(50);
    expect(reclaimed(r)).toBe(0);
    expect(sink.commitLog).toHaveLength(50);
  });

  it("dead-letters a message delivered more than max_deliver times with ERR_MAX_DELIVERIES, and terminates it", async () => {
    const { name, subject } = await stream();
    await publish(nc, subject, [{ body: JSON.stringify({ poison: true }), msgId: "poison-1" }]);
    const source = { servers: NATS_URL, stream: name, consumer: "poison", ack_wait: "1s", max_deliver: 2 };
    // Two workers take it and stop before committing it: the server redelivers it after ack_wait.
    for (let delivery = 1; delivery <= 2; delivery++) {
      const r = start({ source, sink: new GatedSink(true), shutdownTimeoutMs: 50 });
      await until(() => received(r) === 1, `delivery ${delivery}`);
      expect(r.deadLetters.entries).toEqual([]);
      expect((await stop(r)).tag).toBe("timed_out");
    }
    const terminated: string[] = [];
    const advisories = nc.subscribe(`$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.${name}.poison`, {
      callback: (_err, m) => {
        terminated.push(m.string());
      },
    });
    const sink = new GatedSink();
    const r = start({ source, sink });
    await until(() => r.deadLetters.entries.length === 1, "the dead letter");
    const dead = r.deadLetters.entries[0]!;
    expect(dead).toMatchObject({ code: "ERR_MAX_DELIVERIES", sink: "source:js", raw: '{"poison":true}' });
    expect(dead.record.id).toBe("poison-1");
    expect(dead.message).toBe(`nats: message delivered 3 times, more than max_deliver 2, without being committed (at ${name} seq 1)`);
    await until(() => settled(name, "poison"), "the message settled");
    await until(() => terminated.length === 1, "the server's termination advisory");
    expect(JSON.parse(terminated[0]!)).toMatchObject({ stream_seq: 1, deliveries: 3 });
    advisories.unsubscribe();
    // Settled for good: never delivered again, also after ack_wait.
    await new Promise((resolve) => setTimeout(resolve, 1500));
    expect(received(r)).toBe(1);
    expect(sink.committed.size).toBe(0);
  });

  it("dead-letters only the record that crashes the worker, not the messages delivered with it", async () => {
    const dir = await mkdtemp(join(tmpdir(), "sluice-nats-poison-"));
    const { name, subject } = await stream();
    try {
      const total = 60;
      await publish(
        nc,
        subject,
        Array.from({ length: total }, (_, n) => ({ body: JSON.stringify(n === 20 ? { n, poison: true } : { n }), msgId: `m-${n}` })),
      );
      const config = join(dir, "worker.yaml");
      const db = join(dir, "out.db");
      await writeFile(
        config,
        `data_dir: ${join(dir, "data")}
sources:
  js: { type: nats_jetstream, servers: ${NATS_URL}, stream: ${name}, consumer: crashy, ack_wait: 1s, max_deliver: 3 }
transforms:
  - { type: module, path: ${join(import.meta.dirname, "../fixtures/transforms/kills-itself.mjs")} }
sinks:
  db: { type: sqlite, path: ${db} }
`,
      );
      // A supervisor restarting the worker after each crash (once ack_wait has passed) until the stream is done.
      let crashes = 0;
      for (let run = 0; run < 10; run++) {
        const cli = startCli(config, join(dir, "summary.json"), dir);
        const exited = await Promise.race([cli.exited, until(() => settled(name, "crashy").catch(() => false), "every message settled", 30_000).then(() => undefined)]);
        if (exited === undefined) {
          cli.process.kill("SIGTERM");
          expect((await cli.exited).code, cli.output()).toBe(0);
          break;
        }
        expect(exited.signal, cli.output()).toBe("SIGKILL");
        crashes++;
        await new Promise((resolve) => setTimeout(resolve, 1100));
      }
      expect(crashes).toBe(3);
      expect(await settled(name, "crashy")).toBe(true);
      const dlq = new Database(join(dir, "data", "dlq.db"), { readonly: true });
      const dead = dlq.prepare("SELECT record_id, code FROM dead_letters").all();
      dlq.close();
      expect(dead).toEqual([{ record_id: "m-20", code: "ERR_MAX_DELIVERIES" }]);
      const out = new Database(db, { readonly: true });
      const ids = (out.prepare("SELECT id FROM records").all() as { id: string }[]).map((row) => row.id);
      out.close();
      expect(new Set(ids)).toEqual(new Set(Array.from({ length: total }, (_, n) => `m-${n}`).filter((id) => id !== "m-20")));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }, 120_000);

  it("dead-letters messages that are not JSON objects, with the stream sequence as location, and acks them", async () => {
    const { name, subject } = await stream();
    await publish(nc, subject, [{ body: "not json" }, { body: "[1,2]" }, { body: "42" }, { body: JSON.stringify({ n: "good" }) }]);
    const sink = new GatedSink();
    const r = start({ source: { servers: NATS_URL, stream: name, consumer: "bad" }, sink });
    await until(() => r.deadLetters.entries.length === 3 && sink.committed.size === 1, "3 dead letters and 1 record");
    const dead = r.deadLetters.entries.map((d) => ({ code: d.code, raw: d.raw, id: d.record.id }));
    expect(dead.map((d) => d.code)).toEqual(["ERR_RECORD_MALFORMED", "ERR_RECORD_MALFORMED", "ERR_RECORD_MALFORMED"]);
    expect(dead.map((d) => d.raw)).toEqual(["not json", "[1,2]", "42"]);
    expect(dead.map((d) => d.id)).toEqual([`${name}:1`, `${name}:2`, `${name}:3`]);
    expect(r.deadLetters.entries.map((d) => d.message)).toEqual([
      expect.stringMatching(new RegExp(`^message is not valid JSON: .* \\(at ${name} seq 1\\)$`)),
      `message is not a JSON object (at ${name} seq 2)`,
      `message is not a JSON object (at ${name} seq 3)`,
    ]);
    await until(() => settled(name, "bad"), "every message acked");
  });

  it("reads with `sluice run` what the nats_jetstream sink wrote, ids and all, into SQLite", async () => {
    const dir = await mkdtemp(join(tmpdir(), "sluice-nats-src-cli-"));
    const name = uniqueName("sluice_src_cli_");
    streams.push(name);
    try {
      const subject = `sluice.cli.${name}`;
      const ingest = join(dir, "ingest.yaml");
      await writeFile(
        ingest,
        `data_dir: ${join(dir, "ingest-data")}
sources:
  readings: { type: generator, count: 2000, keys: 20 }
sinks:
  js: { type: nats_jetstream, servers: ${NATS_URL}, subject: ${subject}, create_stream: { name: ${name} } }
`,
      );
      const first = await runCli(["run", ingest, "--no-progress"], { cwd: dir });
      expect(first.code, first.stderr).toBe(0);

      const worker = join(dir, "worker.yaml");
      const db = join(dir, "out.db");
      await writeFile(
        worker,
        `data_dir: ${join(dir, "worker-data")}
sources:
  js: { type: nats_jetstream, servers: ${NATS_URL}, stream: ${name}, consumer: workers, key_field: sensor }
sinks:
  db: { type: sqlite, path: ${db} }
`,
      );
      const summary = join(dir, "summary.json");
      const cli = startCli(worker, summary, dir);
      await until(async () => (await consumerInfo(nc, name, "workers").catch(() => undefined))?.delivered.stream_seq === 2000, "2000 messages delivered", 60_000);
      await until(() => settled(name, "workers"), "every message acked", 30_000);
      cli.process.kill("SIGTERM");
      const exit = await cli.exited;
      expect(exit.code, cli.output()).toBe(0);
      const s = JSON.parse(await readFile(summary, "utf8")) as { records: { received: number; delivered: number; dead_lettered: number } };
      expect(s.records).toMatchObject({ received: 2000, delivered: 2000, dead_lettered: 0 });
      const sqlite = new Database(db, { readonly: true });
      const rows = sqlite.prepare("select id, key from records").all() as { id: string; key: string }[];
      sqlite.close();
      expect(rows).toHaveLength(2000);
      expect(new Set(rows.map((row) => row.id)).size).toBe(2000);
      expect(rows.every((row) => /^sensor-\d+$/.test(row.key))).toBe(true);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }, 120_000);
});
