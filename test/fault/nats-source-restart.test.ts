/**
 * The `nats_jetstream` source through a NATS server crash: a private `nats-server -js` (its own
 * temp directory and port, never the machine's) is SIGKILLed and started again on the same data
 * while the source reads 20,000 messages, with chunks in flight at that moment. The source must
 * report the loss (not ready while down), reconnect, and deliver every message (by id: exactly the
 * set published), leaving nothing un-acked. And a wrong password makes `sluice run` exit 1 at once,
 * saying why. Skipped with a printed reason when there is no nats-server binary, unless
 * SLUICE_REQUIRE_SERVICES=1.
 */
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { NatsConnection } from "@nats-io/transport-node";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { canStartBroker, startNatsServer, type BrokerServer } from "../helpers/broker-servers.js";
import { natsConnect } from "../helpers/brokers.js";
import { killClis, runCli } from "../helpers/cli.js";
import { consumerInfo, createStream, GatedSink, publish, runSource, until } from "../helpers/nats-source.js";

const TOTAL = 20_000;
const hasServer = canStartBroker("nats-server", "nats_jetstream source restart tests");

describe.skipIf(!hasServer)("nats_jetstream source and a NATS server that crashes", () => {
  let server: BrokerServer | undefined;
  let nc: NatsConnection | undefined;

  afterEach(async () => {
    await nc?.close().catch(() => undefined);
    nc = undefined;
    await server?.stop();
    server = undefined;
  });

  afterAll(() => killClis());

  it("is not ready while the server is down, reconnects, and delivers every message once acked", async () => {
    server = await startNatsServer();
    nc = await natsConnect(server.url);
    await createStream(nc, "EVENTS", "events");
    const ids = Array.from({ length: TOTAL }, (_, i) => `e-${i}`);
    await publish(
      nc,
      "events",
      ids.map((id, n) => ({ body: JSON.stringify({ n }), msgId: id })),
    );
    await nc.close();
    nc = undefined;

    const sink = new GatedSink();
    const downLines: string[][] = [];
    const run = runSource({
      source: { servers: server.url, stream: "EVENTS", consumer: "workers", ack_wait: "2s" },
      sink,
      maxRecords: 2000,
      chunkSize: 200,
      onEvent: (e, metrics) => {
        if (e.type === "source_connect_failed") downLines.push(metrics.sourcesDown());
      },
    });
    // A quarter in, hold the sink so chunks are in flight (delivered, not acked) when the server dies.
    await until(() => sink.committed.size >= TOTAL / 4, "a quarter of the messages committed", 30_000);
    sink.hold();
    await until(() => run.buffer.usage().records >= 1000, "chunks in flight", 10_000);
    await server.restart();
    await until(() => run.events.filter((e) => e.type === "source_connected").length >= 2, "the source connected again", 30_000);
    sink.release();

    nc = await natsConnect(server.url);
    const conn = nc;
    await until(() => sink.committed.size === TOTAL, `all ${TOTAL} messages committed`, 60_000);
    await until(async () => {
      const info = await consumerInfo(conn, "EVENTS", "workers");
      return info.num_ack_pending === 0 && info.num_pending === 0;
    }, "nothing left un-acked at the server", 30_000);

    expect([...sink.committed.keys()].sort()).toEqual([...ids].sort());
    const lost = run.events.filter((e) => e.type === "source_connect_failed" && e.attempt === 0);
    expect(lost.length).toBeGreaterThanOrEqual(1);
    // The engine saw the loss: the source was named not ready from then until it connected again.
    expect(downLines[0]).toEqual([expect.stringMatching(/^source js: connecting, down [\d.]+ s: nats: connection to .* lost; reconnecting$/)]);
    expect(run.metrics.sourcesDown()).toEqual([]);
    const text = await run.metrics.registry.metrics();
    expect(text).toMatch(/sluice_source_connect_attempts_total\{source="js",outcome="lost"\} [1-9]/);
    expect(text).toMatch(/sluice_source_up\{source="js"\} 1/);
    run.pipeline.stop();
    expect((await run.done).tag).toBe("stopped");
  }, 180_000);

  it("makes `sluice run` exit 1 at once, saying why, on a wrong password", async () => {
    server = await startNatsServer({ user: "sluice", password: "right-password" });
    const dir = await mkdtemp(join(tmpdir(), "sluice-nats-auth-"));
    try {
      const config = join(dir, "pipeline.yaml");
      await writeFile(
        config,
        `data_dir: ${join(dir, "data")}
sources:
  js: { type: nats_jetstream, servers: ${server.url}, stream: EVENTS, user: sluice, password: wrong-password }
sinks:
  out: { type: blackhole }
`,
      );
      const started = Date.now();
      const r = await runCli(["run", config, "--no-progress"], { cwd: dir });
      expect(r.code, r.stderr).toBe(1);
      expect(Date.now() - started).toBeLessThan(15_000);
      expect(r.stderr).toMatch(/source js cannot connect: nats: .*(auth|Authorization)/i);
      expect(r.stderr).not.toContain("wrong-password");
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }, 60_000);
});
