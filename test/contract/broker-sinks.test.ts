/**
 * The sink contract suite against the broker sinks, on the machine's Redis and NATS JetStream:
 * each test its own stream (named after its temp directory), deleted at the end.
 */
import { basename } from "node:path";
import type { NatsConnection } from "@nats-io/transport-node";
import type { Redis } from "ioredis";
import { afterAll, beforeAll, describe } from "vitest";
import { definition as natsJetStream } from "../../src/sinks/nats-jetstream.js";
import { definition as redisStreams } from "../../src/sinks/redis-streams.js";
import { deleteJetStream, deleteKeys, NATS_URL, natsConnect, readJetStream, readStream, REDIS_URL, redisClient, storedFromEntry } from "../helpers/brokers.js";
import { requireService } from "../helpers/services.js";
import { runSinkContract } from "./sink-contract.js";

const redisAddress = new URL(REDIS_URL);
const hasRedis = await requireService("Redis", redisAddress.hostname, Number(redisAddress.port || 6379));
const natsAddress = new URL(NATS_URL);
const hasNats = await requireService("NATS", natsAddress.hostname, Number(natsAddress.port || 4222));

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
