/**
 * The source contract suite against the `nats_jetstream` source, on the machine's NATS JetStream:
 * each test its own stream (and consumer in it), deleted at the end.
 */
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { afterAll, beforeAll, describe } from "vitest";
import type { JsonObject } from "../../src/core/record.js";
import { definition } from "../../src/sources/nats-jetstream.js";
import { deleteJetStream, NATS_URL, natsConnect, uniqueName } from "../helpers/brokers.js";
import { requireService } from "../helpers/services.js";
import { runSourceContract } from "./source-contract.js";

const address = new URL(NATS_URL);
const hasNats = await requireService("NATS", address.hostname, Number(address.port || 4222));

describe.skipIf(!hasNats)("nats_jetstream source", () => {
  let nc: NatsConnection;
  const streams = new Set<string>();

  beforeAll(async () => {
    nc = await natsConnect();
  });

  afterAll(async () => {
    for (const stream of streams) await deleteJetStream(nc, stream);
    await nc.close();
  });

  runSourceContract("nats_jetstream", () => {
    const stream = uniqueName("sluice_src_contract_");
    const subject = `sluice.src.${stream}`;
    let published = false;
    return {
      setup: async () => {
        streams.add(stream);
        const jsm = await jetstreamManager(nc);
        await jsm.streams.add({ name: stream, subjects: [subject] });
      },
      // ack_wait 1 s: what a stopped run left un-acked comes back to the next one after it.
      create: (ctx) => definition.create(definition.options.parse({ servers: NATS_URL, stream, consumer: "contract", ack_wait: "1s" }), ctx),
      // Published once: a later run gets what was not acked from the broker, as a worker would.
      // No `id` in the payload: ids come from Nats-Msg-Id, which redelivery must keep.
      produce: async (total) => {
        if (published) return;
        published = true;
        const js = jetstream(nc);
        await Promise.all(
          Array.from({ length: total }, (_, n) => js.publish(subject, JSON.stringify({ n }), { msgID: `m-${n}` })),
        );
      },
      indexOf: (payload: JsonObject) => payload.n as number,
      dispose: async () => {
        await deleteJetStream(nc, stream);
        streams.delete(stream);
      },
    };
  });
});
