/**
 * The source contract suite against the machine's Redis, plain and with `ordered: true` (one
 * worker at a time takes the stream's lease and first claims what the last run left): each test
 * reads its own stream (random suffix), written as the redis_streams sink writes it, and deletes it
 * (with its lease and registry keys) after.
 */
import { describe } from "vitest";
import type { JsonObject } from "../../src/core/record.js";
import { definition as redisStreams } from "../../src/sources/redis-streams.js";
import { deleteKeys, REDIS_URL, redisClient, uniqueName } from "../helpers/brokers.js";
import { requireService } from "../helpers/services.js";
import { runSourceContract, type SourceDriver } from "./source-contract.js";

const address = new URL(REDIS_URL);
const hasRedis = await requireService("Redis", address.hostname, Number(address.port || 6379));

/** A driver of the source with these options on top of the suite's. */
function driver(extra: Record<string, unknown>): SourceDriver {
  const stream = uniqueName("sluice-src-contract-");
  const redis = redisClient();
  let produced = false;
  return {
    // A new consumer name per run, as a restarted worker gets: what an earlier run left pending is
    // reclaimed from the old one after claim_idle (ordered: at once, by the run that takes the lease).
    create: (ctx) =>
      redisStreams.create(redisStreams.options.parse({ url: REDIS_URL, stream, group: "contract", consumer: uniqueName("c-"), claim_idle: 100, block: 200, ...extra }), ctx),
    // The stream keeps what one run did not ack for the next: only the first run adds entries.
    // Even records carry an `id` field as the sink writes it; odd ones do not, so their ids come
    // from the stream and entry id.
    produce: async (total) => {
      if (produced) return;
      produced = true;
      const pipeline = redis.pipeline();
      for (let n = 0; n < total; n++) {
        const fields = n % 2 === 0 ? ["id", `r-${n}`, "body", JSON.stringify({ n })] : ["body", JSON.stringify({ n })];
        pipeline.xadd(stream, "*", ...fields);
      }
      await pipeline.exec();
    },
    indexOf: (payload: JsonObject) => payload.n as number,
    dispose: async () => {
      await deleteKeys(redis, stream);
      await redis.quit();
    },
  };
}

describe.skipIf(!hasRedis)("redis_streams source", () => {
  runSourceContract("redis_streams", () => driver({}));
  runSourceContract("redis_streams (ordered)", () => driver({ ordered: true, lease_ttl: "1s" }));
});
