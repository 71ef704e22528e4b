/**
 * The sink contract suite against the broker sinks, on the machine's Redis, NATS JetStream and
 * RabbitMQ: each test its own stream or queue (named after its temp directory), deleted at the end.
 */
import { basename } from "node:path";
import type { NatsConnection } from "@nats-io/transport-node";
import type { Redis } from "ioredis";
import { afterAll, beforeAll, describe } from "vitest";
import type { ChannelModel } from "amqplib";
import { definition as natsJetStream } from "../../src/sinks/nats-jetstream.js";
import { definition as rabbitmq } from "../../src/sinks/rabbitmq.js";
import { definition as redisStreams } from "../../src/sinks/redis-streams.js";
import { deleteJetStream, deleteKeys, NATS_URL, natsConnect, readJetStream, readStream, REDIS_URL, redisClient, storedFromEntry } from "../helpers/brokers.js";
import { deleteQueues, hasRabbitmq, peekQueue, rabbitConnect, RABBITMQ_URL, storedFromMessage } from "../helpers/rabbitmq.js";
import { requireService } from "../helpers/services.js";
import { runSinkContract } from "./sink-contract.js";

const redisAddress = new URL(REDIS_URL);
const hasRedis = await requireService("Redis", redisAddress.hostname, Number(redisAddress.port || 6379));
const natsAddress = new URL(NATS_URL);
const hasNats = await requireService("NATS", natsAddress.hostname, Number(natsAddress.port || 4222));
const hasRabbit = await hasRabbitmq();

/** One name per test: its temp directory's name is unique. */
const suffix = (dir: string) => basename(dir).replace(/[^a-z0-9]/gi, "_").toLowerCase();

describe.skipIf(!hasRedis)("redis_streams", () => {
  let redis: Redis;
  const streams = new Set<string>();
  const streamOf = (dir: string) => {
    const stream = `sluice-contract:${suffix(dir)}`;
    streams.add(stream);
    return stream;
  };

  beforeAll(() => {
    redis = redisClient();
  });

  afterAll(async () => {
    for (const stream of streams) await deleteKeys(redis, stream);
    await redis.quit();
  });

  runSinkContract(
    "redis_streams",
    ({ dir, ctx }) => redisStreams.create(redisStreams.options.parse({ url: REDIS_URL, stream: streamOf(dir) }), ctx),
    async ({ dir }) => (await readStream(redis, streamOf(dir))).map((e) => storedFromEntry(e)),
  );
});

describe.skipIf(!hasNats)("nats_jetstream", () => {
  let nc: NatsConnection;
  const streams = new Set<string>();
  const nameOf = (dir: string) => {
    const name = `sluice_contract_${suffix(dir)}`;
    streams.add(name);
    return name;
  };

  beforeAll(async () => {
    nc = await natsConnect();
  });

  afterAll(async () => {
    for (const name of streams) await deleteJetStream(nc, name);
    await nc.close();
  });

  runSinkContract(
    "nats_jetstream",
    ({ dir, ctx }) =>
      natsJetStream.create(
        natsJetStream.options.parse({
          servers: NATS_URL,
          subject: `sluice.contract.${suffix(dir)}`,
          create_stream: { name: nameOf(dir) },
        }),
        ctx,
      ),
    ({ dir }) => readJetStream(nc, nameOf(dir)),
  );
});

describe.skipIf(!hasRabbit)("rabbitmq", () => {
  let conn: ChannelModel;
  const queues = new Set<string>();
  const queueOf = (dir: string) => {
    const queue = `sluice-contract-${suffix(dir)}`;
    queues.add(queue);
    return queue;
  };

  beforeAll(async () => {
    conn = await rabbitConnect();
  });

  afterAll(async () => {
    await deleteQueues(conn, queues);
    await conn.close();
  });

  // A queue keeps every message published: no idempotent publish in AMQP, so at-least-once.
  runSinkContract(
    "rabbitmq",
    ({ dir, ctx }) => rabbitmq.create(rabbitmq.options.parse({ url: RABBITMQ_URL, queue: queueOf(dir) }), ctx),
    async ({ dir }) => (await peekQueue(conn, queueOf(dir))).map(storedFromMessage),
    { idempotent: false },
  );
});
