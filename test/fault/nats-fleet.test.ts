/**
 * The fleet scenario of test/fault/fleet-scenario.ts on NATS JetStream: three workers
 * (nats_jetstream -> postgres) on one durable consumer, a random worker SIGKILLed and started
 * again every few seconds: every preloaded record in PostgreSQL exactly once, nothing pending or
 * unread on the consumer at the end, and a record that kills every worker that takes it
 * dead-lettered after max_deliver. Then the same for half as many records with the NATS server
 * itself killed and restarted (file storage) while they flow.
 *
 * NATS is the test's own `nats-server -js` (test/helpers/broker-servers.ts); PostgreSQL is the
 * machine's, one table per test, dropped after. Skipped with a printed reason when either is
 * missing, unless SLUICE_REQUIRE_SERVICES=1.
 */
import { jetstreamManager } from "@nats-io/jetstream";
import { headers, type NatsConnection } from "@nats-io/transport-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { canStartBroker, startNatsServer, type BrokerServer } from "../helpers/broker-servers.js";
import { natsConnect } from "../helpers/brokers.js";
import { publish } from "../helpers/nats-source.js";
import { requireService } from "../helpers/services.js";
import { MAX_DELIVERIES, PG_URL, POISON_BODY, POISON_ID, preloadRecord, runFleetScenario, type Scenario } from "./fleet-scenario.js";

const TOTAL = 300_000;
/** Records of the run with the server restarted: half, to keep CI short; the restart comes at 30%, with kills before and after it. */
const RESTART_TOTAL = 150_000;
const STREAM = "READINGS";
const SUBJECT = "readings";
const CONSUMER = "fleet";

const pgAddress = new URL(PG_URL);
const hasPostgres = await requireService("PostgreSQL", pgAddress.hostname, Number(pgAddress.port || 5432));

/**
 * A new stream (file storage) holding the records, each with its id as Nats-Msg-Id as the
 * nats_jetstream sink writes it. Plain publishes, flushed every 10,000 (one acked publish at a
 * time would take a loaded machine a minute), then a check that the stream holds them all.
 */
async function preload(nc: NatsConnection, total: number): Promise<void> {
  const jsm = await jetstreamManager(nc);
  await jsm.streams.delete(STREAM).catch(() => undefined);
  await jsm.streams.add({ name: STREAM, subjects: [SUBJECT] });
  for (let i = 0; i < total; i++) {
    const { id, body } = preloadRecord(i);
    const h = headers();
    h.set("Nats-Msg-Id", id);
    nc.publish(SUBJECT, body, { headers: h });
    if (i % 10_000 === 9_999) await nc.flush();
  }
  await nc.flush();
  const deadline = Date.now() + 30_000;
  while ((await jsm.streams.info(STREAM)).state.messages < total && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  expect((await jsm.streams.info(STREAM)).state.messages).toBe(total);
}

/** The scenario's NATS part, against `server`; `connection()` is a connection to it (opened again after a restart). */
function natsScenario(name: string, server: BrokerServer, connection: () => Promise<NatsConnection>, total: number, restart: boolean): Scenario {
  return {
    name,
    total,
    sourceYaml: `  queue:
    type: nats_jetstream
    servers: ${server.url}
    stream: ${STREAM}
    consumer: ${CONSUMER}
    ack_wait: 2s
    max_deliver: ${MAX_DELIVERIES}`,
    async addPoison() {
      await publish(await connection(), SUBJECT, [{ body: POISON_BODY, msgId: POISON_ID }]);
    },
    async pending() {
      const info = await (await jetstreamManager(await connection())).consumers.info(STREAM, CONSUMER);
      return info.num_ack_pending + info.num_pending;
    },
    killEveryMs: 2000,
    ...(restart ? { restart: { server, at: 0.3 } } : {}),
    timeoutMs: 150_000,
  };
}

describe.skipIf(!hasPostgres || !canStartBroker("nats-server", "NATS fleet fault test"))("a fleet of workers on one JetStream consumer, killed at random", () => {
  let server: BrokerServer;
  let nc: NatsConnection | undefined;
  /** A connection to the test's server; a new one when the last was closed by a restart. */
  const connection = async () => {
    if (nc === undefined || nc.isClosed()) nc = await natsConnect(server.url);
    return nc;
  };
  beforeAll(async () => {
    server = await startNatsServer();
  });
  afterAll(async () => {
    await nc?.close().catch(() => undefined);
    await server?.stop();
  });

  it(`puts ${TOTAL.toLocaleString("en-US")} records in PostgreSQL exactly once, leaves nothing pending, dead-letters a record that kills its worker`, async () => {
    const t = Date.now();
    await preload(await connection(), TOTAL);
    console.log(`nats-fleet: preloaded ${TOTAL} messages in ${((Date.now() - t) / 1000).toFixed(1)} s`);
    await runFleetScenario(natsScenario("nats", server, connection, TOTAL, false));
  }, 240_000);

  it(`does the same for ${RESTART_TOTAL.toLocaleString("en-US")} records with the NATS server killed and restarted while they flow`, async () => {
    await preload(await connection(), RESTART_TOTAL);
    await runFleetScenario(natsScenario("nats_restart", server, connection, RESTART_TOTAL, true));
  }, 240_000);
});
