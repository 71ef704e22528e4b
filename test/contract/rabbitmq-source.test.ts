/**
 * The source contract suite against the `rabbitmq` source, on the machine's RabbitMQ: each test its
 * own quorum queue, declared before the test and deleted after it.
 */
import type { ChannelModel } from "amqplib";
import { afterAll, beforeAll, describe } from "vitest";
import type { JsonObject } from "../../src/core/record.js";
import { definition } from "../../src/sources/rabbitmq/source.js";
import { uniqueName } from "../helpers/brokers.js";
import { declareQueue, deleteQueues, hasRabbitmq, publishAll, rabbitConnect, RABBITMQ_URL } from "../helpers/rabbitmq.js";
import { runSourceContract } from "./source-contract.js";

const available = await hasRabbitmq();

describe.skipIf(!available)("rabbitmq source", () => {
  let conn: ChannelModel;

  beforeAll(async () => {
    conn = await rabbitConnect();
  });

  afterAll(async () => {
    await conn.close();
  });

  runSourceContract("rabbitmq", () => {
    const queue = uniqueName("sluice-src-contract-");
    let published = false;
    return {
      setup: () => declareQueue(conn, queue),
      create: (ctx) => definition.create(definition.options.parse({ url: RABBITMQ_URL, queue }), ctx),
      // Published once: a later run gets what was not acked from the broker, as a worker would.
      // No `id` and no message_id: ids come from a hash of the body, which redelivery keeps.
      produce: async (total) => {
        if (published) return;
        published = true;
        await publishAll(conn, { queue }, Array.from({ length: total }, (_, n) => ({ n })));
      },
      indexOf: (payload: JsonObject) => payload.n as number,
      dispose: () => deleteQueues(conn, [queue]),
    };
  });
});
