/**
 * The broker sinks against the machine's Redis and NATS JetStream, beyond the contract suite: a
 * redelivered batch adds nothing, partitions keep each key in one stream and in order, trimming,
 * error classes at connect and write, and the CLI running generator -> each sink with the counts
 * checked in the server. Each test writes to its own stream (random suffix) and deletes it.
 */
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { connect as tcpConnect, createServer, type AddressInfo, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DiscardPolicy, jetstream, jetstreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import type { Redis } from "ioredis";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import type { Sink } from "../../src/components/contracts.js";
import { SluiceError } from "../../src/core/errors.js";
import type { SluiceRecord } from "../../src/core/record.js";
import { definition as natsJetStream } from "../../src/sinks/nats-jetstream.js";
import { partitionStream } from "../../src/brokers/redis.js";
import { definition as redisStreams } from "../../src/sinks/redis-streams.js";
import { sinkContext } from "../contract/sink-contract.js";
import { deleteJetStream, deleteKeys, NATS_URL, natsConnect, readJetStream, readStream, REDIS_URL, redisClient, uniqueName } from "../helpers/brokers.js";
import { canStartBroker, startNatsServer, startRedisServer, type BrokerServer } from "../helpers/broker-servers.js";
import { runCli } from "../helpers/cli.js";
import { makeRecords } from "../helpers/records.js";
import { requireService } from "../helpers/services.js";

const redisAddress = new URL(REDIS_URL);
const hasRedis = await requireService("Redis", redisAddress.hostname, Number(redisAddress.port || 6379));
const natsAddress = new URL(NATS_URL);
const hasNats = await requireService("NATS", natsAddress.hostname, Number(natsAddress.port || 4222));

const signal = new AbortController().signal;
const ctx = sinkContext(tmpdir());

/** Why a connect failed, as the engine sees it. */
async function connectError(sink: Sink): Promise<SluiceError> {
  const err: unknown = await sink.connect(signal).then(
    () => undefined,
    (e: unknown) => e,
  );
  await sink.close();
  expect(err).toBeInstanceOf(SluiceError);
  return err as SluiceError;
}

/** A generator -> `sink` pipeline file in a fresh directory, for `sluice run`. */
async function pipelineDir(sinkYaml: string, count: number): Promise<{ dir: string; config: string; summary: string }> {
  const dir = await mkdtemp(join(tmpdir(), "sluice-broker-cli-"));
  const config = join(dir, "pipeline.yaml");
  await writeFile(
    config,
    `data_dir: ${join(dir, "data")}
sources:
  readings: { type: generator, count: ${count}, keys: 20 }
sinks:
  out:
${sinkYaml}
`,
  );
  return { dir, config, summary: join(dir, "summary.json") };
}

interface Summary {
  records: { received: number; delivered: number; new: number; already_present: number; dead_lettered: number };
}

describe.skipIf(!hasRedis)("redis_streams sink on the machine's Redis", () => {
  let redis: Redis;
  const prefixes: string[] = [];
  const open: Sink[] = [];

  function sink(options: Record<string, unknown>): Sink {
    const s = redisStreams.create(redisStreams.options.parse({ url: REDIS_URL, ...options }), ctx);
    open.push(s);
    return s;
  }

  function stream(): string {
    const name = uniqueName("sluice-it:");
    prefixes.push(name);
    return name;
  }

  beforeAll(() => {
    redis = redisClient();
  });
  afterEach(async () => {
    for (const s of open.splice(0)) await s.close();
  });
  afterAll(async () => {
    for (const p of prefixes) await deleteKeys(redis, p);
    await redis.quit();
  });

  it("adds no entry twice when a batch is redelivered, also through a new connection", async () => {
    const name = stream();
    const first = sink({ stream: name });
    await first.connect(signal);
    const records = makeRecords(500);
    expect(await first.write(records, signal)).toEqual({});
    expect(await redis.xlen(name)).toBe(500);
    await first.close();

    const second = sink({ stream: name });
    await second.connect(signal);
    const again = await second.write([...records.slice(200), ...makeRecords(100, { start: 500 })], signal);
    expect(again).toEqual({ failures: [], alreadyPresent: Array.from({ length: 300 }, (_, i) => i) });
    expect(await redis.xlen(name)).toBe(600);
    const ids = (await readStream(redis, name)).map((e) => e.fields.id);
    expect(new Set(ids).size).toBe(600);
  });

  it("writes a redelivery again once the dedupe window has passed (the documented limit)", async () => {
    const name = stream();
    // A fractional window, which PX does not take: the sink rounds it up.
    const s = sink({ stream: name, dedupe_window: 49.5 });
    await s.connect(signal);
    const records = makeRecords(10);
    await s.write(records, signal);
    expect((await s.write(records, signal))?.alreadyPresent).toHaveLength(10);
    await new Promise((r) => setTimeout(r, 120));
    expect(await s.write(records, signal)).toEqual({});
    expect(await redis.xlen(name)).toBe(20);
  });

  it("spreads keys over partitions: each key in one stream, in order, as partitionStream says", async () => {
    const name = stream();
    const s = sink({ stream: name, partitions: 3 });
    await s.connect(signal);
    // Several batches, so order across writes counts too.
    const records = makeRecords(1200, { keys: 12 });
    for (let i = 0; i < records.length; i += 100) expect(await s.write(records.slice(i, i + 100), signal)).toEqual({});

    const byKey = new Map<string, { stream: string; seq: number[] }>();
    let total = 0;
    const used: number[] = [];
    for (let p = 0; p < 3; p++) {
      const entries = await readStream(redis, `${name}:${p}`);
      used.push(entries.length);
      total += entries.length;
      for (const e of entries) {
        const key = e.fields.key!;
        const seen = byKey.get(key) ?? { stream: `${name}:${p}`, seq: [] };
        expect(seen.stream, `key ${key} in two streams`).toBe(`${name}:${p}`);
        seen.seq.push(Number(e.fields.id!.slice(2)));
        byKey.set(key, seen);
      }
    }
    expect(total).toBe(1200);
    expect(await redis.exists(name)).toBe(0);
    // Guards the test itself: 12 keys over 3 streams land in more than one.
    expect(used.filter((n) => n > 0).length).toBeGreaterThan(1);
    expect(byKey.size).toBe(12);
    for (const [key, { stream: where, seq }] of byKey) {
      expect(seq, `order of ${key}`).toEqual([...seq].sort((a, b) => a - b));
      expect(where).toBe(partitionStream(name, 3, { id: "", key }));
    }
  });

  it("sends keyless records to partitions by id, the same stream on every redelivery", async () => {
    const name = stream();
    const s = sink({ stream: name, partitions: 4 });
    await s.connect(signal);
    const records: SluiceRecord[] = makeRecords(200).map((r) => ({ ...r, key: undefined }));
    await s.write(records, signal);
    expect((await s.write(records, signal))?.alreadyPresent).toHaveLength(200);
    for (let p = 0; p < 4; p++) {
      for (const e of await readStream(redis, `${name}:${p}`)) expect(partitionStream(name, 4, { id: e.fields.id!, key: undefined })).toBe(`${name}:${p}`);
    }
  });

  it("trims with max_len, writes the payload under body_key, and keeps key and event_time fields", async () => {
    const name = stream();
    const s = sink({ stream: name, max_len: 100, body_key: "payload" });
    await s.connect(signal);
    for (let i = 0; i < 10; i++) await s.write(makeRecords(100, { start: i * 100 }), signal);
    const length = await redis.xlen(name);
    // MAXLEN ~ trims whole nodes only: at least the limit stays, far less than all 1,000.
    expect(length).toBeGreaterThanOrEqual(100);
    expect(length).toBeLessThan(1000);
    const [last] = (await readStream(redis, name)).slice(-1);
    const record = makeRecords(100, { start: 900 })[99]!;
    expect(last!.fields).toEqual({
      id: "r-999",
      payload: JSON.stringify(record.payload),
      key: record.key,
      event_time: new Date(record.eventTime!).toISOString(),
    });
  });

  it("reports records for a key of another type as permanent ERR_SINK_REJECTED, and writes the others", async () => {
    const name = stream();
    await redis.set(`${name}:1`, "not a stream");
    const s = sink({ stream: name, partitions: 2 });
    await s.connect(signal);
    const records = makeRecords(40, { keys: 8 });
    const result = await s.write(records, signal);
    const expectedFailed = records.flatMap((r, i) => (partitionStream(name, 2, r) === `${name}:1` ? [i] : []));
    expect(expectedFailed.length).toBeGreaterThan(0);
    expect(result?.failures?.map((f) => f.index)).toEqual(expectedFailed);
    for (const f of result!.failures!) expect([f.error.code, f.error.retryable]).toEqual(["ERR_SINK_REJECTED", false]);
    expect(await redis.xlen(`${name}:0`)).toBe(40 - expectedFailed.length);
    // The failed records were not marked as written: once the key is a stream they go in.
    await redis.del(`${name}:1`);
    expect((await s.write(records, signal))?.alreadyPresent).toHaveLength(40 - expectedFailed.length);
    expect(await redis.xlen(`${name}:1`)).toBe(expectedFailed.length);
  });

  it("writes the payload's JSON as the source read it, when the record still has it", async () => {
    const name = stream();
    const s = sink({ stream: name });
    await s.connect(signal);
    const [plain, read] = makeRecords(2);
    const text = '{ "id": "r-1",  "sensor": "sensor-1", "value": 3.70, "ts": "x" }';
    await s.write([plain!, { ...read!, text }], signal);
    expect((await readStream(redis, name)).map((e) => e.fields.body)).toEqual([JSON.stringify(plain!.payload), text]);
  });

  it("fails connect retryably when nothing listens", async () => {
    const refused = await connectError(sink({ url: "redis://127.0.0.1:1", stream: stream() }));
    expect([refused.code, refused.retryable]).toEqual(["ERR_SINK_CONNECT", true]);
  });

  it("runs generator -> redis_streams from the CLI: every record in the stream, a rerun adds none", async () => {
    const name = stream();
    const { dir, config, summary } = await pipelineDir(`    type: redis_streams\n    url: ${REDIS_URL}\n    stream: "${name}"`, 5000);
    try {
      const first = await runCli(["run", config, "--summary-json", summary, "--no-progress"], { cwd: dir });
      expect(first.code, first.stderr).toBe(0);
      expect(await redis.xlen(name)).toBe(5000);
      expect((JSON.parse(await readFile(summary, "utf8")) as Summary).records).toMatchObject({ received: 5000, delivered: 5000, new: 5000, dead_lettered: 0 });

      // Same generator seed, same ids: the rerun is a redelivery of every record.
      await rm(join(dir, "data"), { recursive: true, force: true });
      const second = await runCli(["run", config, "--summary-json", summary, "--no-progress"], { cwd: dir });
      expect(second.code, second.stderr).toBe(0);
      expect(await redis.xlen(name)).toBe(5000);
      expect((JSON.parse(await readFile(summary, "utf8")) as Summary).records).toMatchObject({ delivered: 5000, already_present: 5000 });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }, 60_000);
});

/**
 * A TCP proxy to the machine's NATS that, while denying, drops every connection and answers new
 * ones as a server refusing their credentials would: nats.js gives up (closes for good) after two
 * such answers in a row, as after a credential rotation.
 */
async function authDenyingProxy(): Promise<{ url: string; deny(): void; allow(): void; denied(): number; close(): Promise<void> }> {
  let denying = false;
  let denied = 0;
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    sockets.add(client);
    client.on("error", () => undefined);
    if (denying) {
      client.write('INFO {"server_id":"DENY","version":"2.9.10","proto":1,"headers":true,"max_payload":1048576,"auth_required":true}\r\n');
      client.once("data", () => {
        denied++;
        client.end("-ERR 'Authorization Violation'\r\n");
      });
      return;
    }
    const upstream = tcpConnect(Number(natsAddress.port || 4222), natsAddress.hostname);
    sockets.add(upstream);
    client.on("data", (d) => upstream.write(d));
    upstream.on("data", (d) => client.write(d));
    upstream.on("error", () => client.destroy());
    for (const [a, b] of [
      [client, upstream],
      [upstream, client],
    ] as const)
      a.on("close", () => b.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `nats://127.0.0.1:${(server.address() as AddressInfo).port}`,
    deny() {
      denying = true;
      for (const socket of sockets) socket.destroy();
    },
    allow: () => void (denying = false),
    denied: () => denied,
    close() {
      for (const socket of sockets) socket.destroy();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

describe.skipIf(!hasNats)("nats_jetstream sink on the machine's NATS", () => {
  let nc: NatsConnection;
  const streams: string[] = [];
  const open: Sink[] = [];

  /** A fresh stream name and its subject. */
  function names(): { name: string; subject: string } {
    const name = uniqueName("sluice_it_");
    streams.push(name);
    return { name, subject: `sluice.it.${name}` };
  }

  function sink(options: Record<string, unknown>): Sink {
    const s = natsJetStream.create(natsJetStream.options.parse({ servers: NATS_URL, ...options }), ctx);
    open.push(s);
    return s;
  }

  beforeAll(async () => {
    nc = await natsConnect();
  });
  afterEach(async () => {
    for (const s of open.splice(0)) await s.close();
  });
  afterAll(async () => {
    for (const name of streams) await deleteJetStream(nc, name);
    await nc.close();
  });

  it("creates the stream as configured, and a redelivered batch is all duplicates", async () => {
    const { name, subject } = names();
    const first = sink({ subject, create_stream: { name, storage: "file", duplicate_window: "5m" } });
    await first.connect(signal);
    const info = await (await jetstreamManager(nc)).streams.info(name);
    expect(info.config).toMatchObject({ subjects: [subject], storage: "file", num_replicas: 1, duplicate_window: 300_000_000_000 });

    const records = makeRecords(300);
    expect(await first.write(records, signal)).toEqual({});
    await first.close();
    const second = sink({ subject });
    await second.connect(signal);
    expect(await second.write(records, signal)).toEqual({ failures: [], alreadyPresent: Array.from({ length: 300 }, (_, i) => i) });
    const stored = await readJetStream(nc, name);
    expect(stored.map((r) => r.id)).toEqual(records.map((r) => r.id));
  });

  it("publishes the payload's JSON as the source read it, when the record still has it", async () => {
    const { name, subject } = names();
    const s = sink({ subject, create_stream: { name, storage: "memory" } });
    await s.connect(signal);
    const [plain, read] = makeRecords(2);
    const text = '{ "id": "r-1",  "sensor": "sensor-1", "value": 3.70, "ts": "x" }';
    await s.write([plain!, { ...read!, text }], signal);
    const consumer = await jetstream(nc).consumers.get(name);
    const bodies: string[] = [];
    for await (const m of await consumer.fetch({ max_messages: 2, expires: 2000 })) bodies.push(m.string());
    expect(bodies).toEqual([JSON.stringify(plain!.payload), text]);
  });

  it("fails connect permanently, naming the subject, when no stream stores it and create_stream is off", async () => {
    const { subject } = names();
    const err = await connectError(sink({ subject }));
    expect([err.code, err.retryable]).toEqual(["ERR_SINK_CONNECT", false]);
    expect(err.message).toContain(subject);
    expect(err.message).toContain("create_stream");
  });

  it("fails connect permanently when create_stream's subjects do not cover the subject", async () => {
    const { name, subject } = names();
    const err = await connectError(sink({ subject, create_stream: { name, subjects: [`${subject}.other`] } }));
    expect([err.code, err.retryable]).toEqual(["ERR_SINK_CONNECT", false]);
    expect(err.message).toContain(subject);
  });

  it("opens a new connection at the next write once nats.js closed its connection for good, failing retryably until then", async () => {
    const { name, subject } = names();
    const proxy = await authDenyingProxy();
    try {
      const s = sink({ servers: proxy.url, subject, create_stream: { name, storage: "memory" }, ack_timeout: "500ms" });
      await s.connect(signal);
      const records = makeRecords(20);
      expect(await s.write(records.slice(0, 10), signal)).toEqual({});
      proxy.deny();
      // nats.js reconnects, is refused twice in a row, and closes the connection for good.
      const deadline = Date.now() + 15_000;
      while (proxy.denied() < 2 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
      await new Promise((resolve) => setTimeout(resolve, 200));
      const refused: unknown = await s.write(records.slice(10), signal).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(refused).toMatchObject({ retryable: true });
      proxy.allow();
      expect(await s.write(records.slice(10), signal)).toEqual({});
      expect((await readJetStream(nc, name)).map((r) => r.id)).toEqual(records.map((r) => r.id));
    } finally {
      await proxy.close();
    }
  }, 30_000);

  it("never stores a later record of a key before an earlier one the stream refused for now, also across the batch's retry", async () => {
    const { name, subject } = names();
    const jsm = await jetstreamManager(nc);
    // Full for a1 (900 bytes), not for the small a2 behind it: a1 is refused retryably, a2 would be stored.
    await jsm.streams.add({ name, subjects: [subject], discard: DiscardPolicy.New, max_bytes: 600 });
    const s = sink({ subject });
    await s.connect(signal);
    const [a1, a2, b1] = makeRecords(3, { keys: 1 });
    const records = [
      { ...a1!, key: "a", payload: { ...a1!.payload, pad: "x".repeat(900) } },
      { ...a2!, key: "a" },
      { ...b1!, key: "b" },
    ];
    const refused: unknown = await s.write(records, signal).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(refused).toMatchObject({ code: "ERR_SINK_WRITE", retryable: true });
    // Another key goes on; nothing of key a is stored before a1.
    expect((await readJetStream(nc, name)).map((r) => r.id)).toEqual([b1!.id]);
    await jsm.streams.update(name, { max_bytes: -1 });
    expect(await s.write(records, signal)).toEqual({ failures: [], alreadyPresent: [2] });
    expect((await readJetStream(nc, name)).map((r) => r.id)).toEqual([b1!.id, a1!.id, a2!.id]);
  });

  it("ends connect at once when aborted against a server that accepts and never answers", async () => {
    const { subject } = names();
    const sockets = new Set<Socket>();
    const silent = createServer((socket) => void sockets.add(socket));
    await new Promise<void>((resolve) => silent.listen(0, "127.0.0.1", resolve));
    try {
      const s = sink({ servers: `nats://127.0.0.1:${(silent.address() as AddressInfo).port}`, subject });
      const abort = new AbortController();
      const began = Date.now();
      const attempt = s.connect(abort.signal).then(
        () => undefined,
        (e: unknown) => e,
      );
      setTimeout(() => abort.abort(), 200);
      expect(await attempt).toBeInstanceOf(SluiceError);
      expect(Date.now() - began).toBeLessThan(1_000);
    } finally {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => silent.close(resolve));
    }
  });

  it("fails connect retryably when nothing listens", async () => {
    const { subject } = names();
    const err = await connectError(sink({ servers: "nats://127.0.0.1:1", subject }));
    expect([err.code, err.retryable]).toEqual(["ERR_SINK_CONNECT", true]);
  });

  it("runs generator -> nats_jetstream from the CLI: every record in the stream, a rerun adds none", async () => {
    const { name, subject } = names();
    const yaml = `    type: nats_jetstream\n    servers: ${NATS_URL}\n    subject: ${subject}\n    create_stream: { name: ${name} }`;
    const { dir, config, summary } = await pipelineDir(yaml, 5000);
    const jsm = await jetstreamManager(nc);
    try {
      const first = await runCli(["run", config, "--summary-json", summary, "--no-progress"], { cwd: dir });
      expect(first.code, first.stderr).toBe(0);
      expect((await jsm.streams.info(name)).state.messages).toBe(5000);
      expect((JSON.parse(await readFile(summary, "utf8")) as Summary).records).toMatchObject({ received: 5000, delivered: 5000, new: 5000, dead_lettered: 0 });

      await rm(join(dir, "data"), { recursive: true, force: true });
      const second = await runCli(["run", config, "--summary-json", summary, "--no-progress"], { cwd: dir });
      expect(second.code, second.stderr).toBe(0);
      expect((await jsm.streams.info(name)).state.messages).toBe(5000);
      expect((JSON.parse(await readFile(summary, "utf8")) as Summary).records).toMatchObject({ delivered: 5000, already_present: 5000 });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }, 60_000);
});

describe.skipIf(!canStartBroker("redis-server", "redis_streams credentials test"))("redis_streams sink on a private Redis with a password", () => {
  let server: BrokerServer | undefined;

  beforeAll(async () => {
    server = await startRedisServer({ password: "right-password" });
  }, 30_000);
  afterAll(async () => {
    await server?.stop();
  });

  const connectWith = (url: string) => connectError(redisStreams.create(redisStreams.options.parse({ url, stream: uniqueName("sluice-it:") }), ctx));

  it("fails connect permanently, without the password in the message, on a wrong or missing password", async () => {
    const wrong = await connectWith(`redis://:wrong-password@127.0.0.1:${server!.port}`);
    expect([wrong.code, wrong.retryable]).toEqual(["ERR_SINK_CONNECT", false]);
    expect(wrong.message).toMatch(/WRONGPASS/);
    expect(wrong.message).not.toContain("wrong-password");
    const missing = await connectWith(`redis://127.0.0.1:${server!.port}`);
    expect([missing.code, missing.retryable]).toEqual(["ERR_SINK_CONNECT", false]);
    expect(missing.message).toMatch(/NOAUTH/);
  });

  it("fails a batch retryably when Redis is out of memory, and the retry after room is made writes each record once, in order", async () => {
    const redis = redisClient(server!.url);
    const s = redisStreams.create(redisStreams.options.parse({ url: server!.url, stream: "oom" }), ctx);
    await s.connect(signal);
    try {
      const records = makeRecords(1500);
      expect(await s.write(records.slice(0, 500), signal)).toEqual({});
      const used = Number(/used_memory:(\d+)/.exec(await redis.info("memory"))![1]);
      await redis.config("SET", "maxmemory-policy", "noeviction");
      await redis.config("SET", "maxmemory", String(Math.floor(used / 2)));
      const err: unknown = await s.write(records, signal).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(SluiceError);
      expect([(err as SluiceError).code, (err as SluiceError).retryable]).toEqual(["ERR_SINK_WRITE", true]);
      expect((err as SluiceError).message).toMatch(/OOM/);
      expect(await redis.xlen("oom")).toBe(500);

      await redis.config("SET", "maxmemory", "0");
      const retry = await s.write(records, signal);
      expect(retry).toEqual({ failures: [], alreadyPresent: Array.from({ length: 500 }, (_, i) => i) });
      const ids = (await readStream(redis, "oom")).map((e) => e.fields.id);
      expect(ids).toEqual(records.map((r) => r.id));
    } finally {
      await redis.config("SET", "maxmemory", "0");
      await s.close();
      redis.disconnect();
    }
  });

  it("closes within a few seconds when Redis stopped answering (SIGSTOP): QUIT is bounded, then the socket dropped", async () => {
    const s = redisStreams.create(redisStreams.options.parse({ url: server!.url, stream: "hung" }), ctx);
    await s.connect(signal);
    expect(await s.write(makeRecords(3), signal)).toEqual({});
    server!.signal("SIGSTOP");
    try {
      const started = Date.now();
      await s.close();
      expect(Date.now() - started).toBeLessThan(5_000);
    } finally {
      server!.signal("SIGCONT");
    }
  });

  it("fails connect permanently on an ACL without XADD, and a write after XADD was taken away is retryable, not the records' fault", async () => {
    const redis = redisClient(server!.url);
    const user = (name: string) => `redis://${name}:pw@127.0.0.1:${server!.port}`;
    try {
      await redis.acl("SETUSER", "no-xadd", "on", ">pw", "~*", "+@all", "-xadd");
      const refused = await connectWith(user("no-xadd"));
      expect([refused.code, refused.retryable]).toEqual(["ERR_SINK_CONNECT", false]);
      expect(refused.message).toMatch(/NOPERM .*XADD/);

      await redis.acl("SETUSER", "writer", "on", ">pw", "~*", "+@all");
      const s = redisStreams.create(redisStreams.options.parse({ url: user("writer"), stream: "acl" }), ctx);
      await s.connect(signal);
      try {
        expect(await s.write(makeRecords(5), signal)).toEqual({});
        await redis.acl("SETUSER", "writer", "-xadd");
        const err: unknown = await s.write(makeRecords(10, { start: 5 }), signal).then(
          () => undefined,
          (e: unknown) => e,
        );
        expect(err).toBeInstanceOf(SluiceError);
        expect([(err as SluiceError).code, (err as SluiceError).retryable]).toEqual(["ERR_SINK_WRITE", true]);
        expect((err as SluiceError).message).toMatch(/the ACL does not allow the sink to write/);
      } finally {
        await s.close();
      }
    } finally {
      await redis.acl("DELUSER", "no-xadd", "writer");
      redis.disconnect();
    }
  });

  it("connects and writes with the password in the URL, also after the script cache was flushed (NOSCRIPT)", async () => {
    const s = redisStreams.create(redisStreams.options.parse({ url: server!.url, stream: "s" }), ctx);
    const redis = redisClient(server!.url);
    await s.connect(signal);
    try {
      expect(await s.write(makeRecords(50), signal)).toEqual({});
      // Only on this private server: SCRIPT FLUSH would break other users of a shared one.
      await redis.script("FLUSH");
      expect(await s.write(makeRecords(100, { start: 25 }), signal)).toEqual({ failures: [], alreadyPresent: Array.from({ length: 25 }, (_, i) => i) });
      const ids = (await readStream(redis, "s")).map((e) => e.fields.id);
      expect(ids).toEqual(makeRecords(125).map((r) => r.id));
    } finally {
      await s.close();
      redis.disconnect();
    }
  });
});

describe.skipIf(!canStartBroker("nats-server", "nats_jetstream credentials test"))("nats_jetstream sink on a private NATS with a user and password", () => {
  let server: BrokerServer | undefined;

  beforeAll(async () => {
    server = await startNatsServer({ user: "sluice", password: "right-password" });
  }, 30_000);
  afterAll(async () => {
    await server?.stop();
  });

  const sinkWith = (auth: Record<string, string>) =>
    natsJetStream.create(natsJetStream.options.parse({ servers: server!.url, subject: "in", create_stream: { name: "IN" }, ...auth }), ctx);

  it("fails connect permanently, without the password in the message, on a wrong or missing password", async () => {
    const wrong = await connectError(sinkWith({ user: "sluice", password: "wrong-password" }));
    expect([wrong.code, wrong.retryable]).toEqual(["ERR_SINK_CONNECT", false]);
    expect(wrong.message).not.toContain("wrong-password");
    const missing = await connectError(sinkWith({}));
    expect([missing.code, missing.retryable]).toEqual(["ERR_SINK_CONNECT", false]);
  });

  it("connects, creates its stream and writes with the right password", async () => {
    const s = sinkWith({ user: "sluice", password: "right-password" });
    await s.connect(signal);
    try {
      expect(await s.write(makeRecords(5), signal)).toEqual({});
    } finally {
      await s.close();
    }
  });
});
