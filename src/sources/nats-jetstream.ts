/**
 * The `nats_jetstream` source: a durable pull consumer on a JetStream stream. It fetches only what
 * the buffer has room for, hands each fetch over as it arrives, acks every message once its chunk
 * is committed, tells the server `working()` for chunks in flight, and dead-letters a message the
 * server delivered more than `max_deliver` times.
 */
import type { Consumer, JetStreamManager, JsMsg } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { z } from "zod";
import { checkNatsCredentials, classifyNatsError, connectOptions, CONNECT_TIMEOUT_MS, loadNats, natsConnectionOptions, serverList, unlessAborted, type NatsModules } from "../brokers/nats.js";
import { SluiceError } from "../core/errors.js";
import { DEFAULTS } from "../config/defaults.js";
import type { Entry } from "../core/record.js";
import { defineComponent, type ComponentContext, type Source, type SourceHandle } from "../components/contracts.js";
import { duration } from "../components/options.js";
import { RecordSizeEstimate } from "../components/record-size.js";
import { floorOf, setUpConsumer, type AckWait, type ConsumerSettings, type MaxAckPending } from "./nats-jetstream/consumer.js";
import { addMessage, type JetStreamChunk } from "./nats-jetstream/messages.js";
import { RedeliveryPacing } from "./nats-jetstream/pacing.js";

/** Most messages one pull asks for; also the slack `max_ack_pending` has over the buffer by default. */
const MAX_PULL = 1000;
/**
 * How long a pull waits on the server for messages it has not got yet, ms. Messages are handed on
 * as they arrive, so this adds no latency; it sets the idle heartbeat (half of it), and a pull that
 * misses two ends `run` as a lost connection: short values misfire on a busy machine.
 */
const PULL_EXPIRES_MS = 5000;
/** How often the consumer's backlog is read for the metrics, ms. */
const BACKLOG_INTERVAL_MS = 5000;
/** nats.js's pause between its own reconnect attempts, ms (see `connect` for who owns reconnecting). */
const RECONNECT_WAIT_MS = 250;
/** `ack_wait` when not set, ms: the consumer's is raised to it, never lowered. */
const DEFAULT_ACK_WAIT_MS = 30_000;

const options = z
  .strictObject({
    servers: natsConnectionOptions.servers,
    stream: z.string().min(1).describe("Stream to read; it must exist (the nats_jetstream sink's create_stream can create it)"),
    consumer: z
      .string()
      .regex(/^[^.*>\s]+$/, "a consumer name has no '.', '*', '>' or white space")
      .default("sluice")
      .describe("Durable pull consumer name, shared by every worker of the fleet; created (or updated) when missing unless bind"),
    bind: z.boolean().default(false).describe("true: the consumer must already exist and is used as it is (a permanent error otherwise)"),
    filter_subject: z.string().min(1).optional().describe("Only messages on this subject (wildcards allowed), when creating the consumer"),
    deliver: z
      .enum(["all", "new"])
      .default("all")
      .describe(
        "Where a new consumer starts: all (everything in the stream) or new (only messages stored from now); one deleted under a run is created again from its ack floor",
      ),
    ack_wait: duration()
      .refine((ms) => ms >= 1000, "must be at least 1s")
      .optional()
      .describe(
        "How long the server waits for an ack before it redelivers; working() is sent every ack_wait/3 for chunks in flight. Set: exactly this on the consumer. Default: at least 30s, never lowering the consumer's",
      ),
    max_deliver: z
      .number()
      .int()
      .min(1)
      .default(10)
      .describe("A message delivered more times than this is dead-lettered (ERR_MAX_DELIVERIES) and terminated; default 10"),
    max_ack_pending: z
      .number()
      .int()
      .min(1)
      .optional()
      .describe(
        `Most messages delivered and not yet acked, over every worker of the consumer; set exactly. Default: at least buffer.max_records + ${MAX_PULL} (one pull), never lowering the consumer's`,
      ),
    user: natsConnectionOptions.user,
    password: natsConnectionOptions.password,
    token: natsConnectionOptions.token,
  })
  .superRefine(checkNatsCredentials);

/** Everything a {@link createNatsJetStreamSource} needs; the definition builds it from validated options. */
export interface NatsJetStreamSourceSettings extends Pick<ConsumerSettings, "stream" | "consumer" | "bind" | "filterSubject" | "deliver" | "maxDeliver"> {
  readonly servers: readonly string[];
  /** ms; set exactly. Undefined: at least {@link DEFAULT_ACK_WAIT_MS} (see {@link AckWait}). */
  readonly ackWaitMs?: number | undefined;
  /** Set exactly; undefined: at least the buffer's `max_records` + {@link MAX_PULL} (see {@link MaxAckPending}). */
  readonly maxAckPending?: number | undefined;
  readonly user?: string | undefined;
  readonly password?: string | undefined;
  readonly token?: string | undefined;
}

/** A `nats_jetstream` source's settings from its validated options. */
function settingsFrom(opts: z.output<typeof options>): NatsJetStreamSourceSettings {
  return {
    servers: serverList(opts.servers),
    stream: opts.stream,
    consumer: opts.consumer,
    bind: opts.bind,
    filterSubject: opts.filter_subject,
    deliver: opts.deliver,
    ackWaitMs: opts.ack_wait,
    maxDeliver: opts.max_deliver,
    maxAckPending: opts.max_ack_pending,
    user: opts.user,
    password: opts.password,
    token: opts.token,
  };
}

/**
 * Builds a JetStream source (what the `nats_jetstream` definition's factory returns).
 *
 * Reconnecting: nats.js keeps reconnecting the one connection on its own (so the acks and
 * `working()` of chunks in flight across a server restart are buffered and sent on the same
 * connection once it is back, instead of being lost and every in-flight message redelivered after
 * `ack_wait`), but the engine owns the outage: a disconnect ends `run` with a retryable
 * `ERR_SOURCE_CONNECT` at once, so `/health/ready` turns false and the loss is counted, and each
 * engine `connect` attempt waits up to {@link CONNECT_TIMEOUT_MS} for the connection to be back
 * (a failed attempt when it is not), then checks the stream and consumer again. A connection
 * nats.js gave up on (closed) is replaced by a new one.
 */
export function createNatsJetStreamSource(settings: NatsJetStreamSourceSettings, ctx: ComponentContext): Source {
  const { stream, maxDeliver } = settings;
  const location = `nats stream ${stream} consumer ${settings.consumer}`;
  const ackWait: AckWait = settings.ackWaitMs === undefined ? { tag: "at_least", ms: DEFAULT_ACK_WAIT_MS } : { tag: "exactly", ms: settings.ackWaitMs };
  const maxAckPending: MaxAckPending =
    settings.maxAckPending === undefined ? { tag: "at_least", value: (ctx.bufferRecords ?? DEFAULTS.buffer.max_records) + MAX_PULL } : { tag: "exactly", value: settings.maxAckPending };
  let nc: NatsConnection | undefined;
  let consumer: Consumer | undefined;
  let jsm: JetStreamManager | undefined;
  /** The consumer's ack floor (a stream sequence) as last read; undefined until the source had a consumer. See `resumeAt` in consumer.ts. */
  let ackFloor: number | undefined;
  /** Why the connection is down now; undefined while it is up. */
  let down: string | undefined;
  /** Called on every change of `down`, and on every ack (see {@link RedeliveryPacing}). */
  const watchers = new Set<() => void>();
  /** The messages' average size: a pull must fit the byte bound too (what does not fit waits, ageing toward ack_wait, while sluice is full). */
  const sizes = new RecordSizeEstimate();

  /** Pull sizes and messages in flight while redeliveries are about (a worker that crashed on a record). */
  const pacing = new RedeliveryPacing(MAX_PULL, maxDeliver);

  const notify = () => {
    for (const w of [...watchers]) w();
  };
  const changed = (why: string | undefined) => {
    down = why;
    notify();
  };

  /** Follows a connection's status: a disconnect marks it down until nats.js reconnected it; closing marks it down for good. */
  function watch(conn: NatsConnection): void {
    void (async () => {
      for await (const s of conn.status()) {
        if (nc !== conn) return;
        if (s.type === "disconnect") changed(`connection to ${s.server} lost; reconnecting`);
        else if (s.type === "reconnect") changed(undefined);
      }
    })();
    void conn.closed().then((err) => {
      if (nc === conn) changed(`connection closed${err instanceof Error ? `: ${err.message}` : ""}`);
    });
  }

  /** Resolves once `cond` holds, `ms` passed or `signal` aborted, whichever is first. */
  function waitFor(cond: () => boolean, ms: number, signal: AbortSignal): Promise<void> {
    if (cond() || signal.aborted) return Promise.resolve();
    return new Promise((resolve) => {
      const finish = () => {
        watchers.delete(check);
        signal.removeEventListener("abort", finish);
        cancel();
        resolve();
      };
      const check = () => {
        if (cond()) finish();
      };
      const cancel = ctx.clock.setTimer(ms, finish);
      watchers.add(check);
      signal.addEventListener("abort", finish, { once: true });
    });
  }

  /** A new connection; nats.js reconnects it on its own from then on (see above). */
  async function open(nats: NatsModules, signal: AbortSignal): Promise<NatsConnection> {
    const attempt = nats.core.connect({ ...connectOptions(settings), reconnectTimeWait: RECONNECT_WAIT_MS });
    return unlessAborted(attempt, signal, location, (late) => void late.close().catch(() => undefined));
  }

  /** Emits the consumer's backlog every {@link BACKLOG_INTERVAL_MS}; returns the function that stops it. */
  function reportBacklog(c: Consumer): () => void {
    let cancel = () => {};
    let stopped = false;
    const tick = () => {
      cancel = ctx.clock.setTimer(BACKLOG_INTERVAL_MS, () => {
        c.info()
          .then((info) => {
            ackFloor = floorOf(info, ackFloor);
            if (!stopped) ctx.emit({ type: "source_backlog", source: ctx.name, pending: info.num_ack_pending, lag: info.num_pending });
          })
          .catch(() => undefined)
          .finally(() => {
            if (!stopped) tick();
          });
      });
    };
    tick();
    return () => {
      stopped = true;
      cancel();
    };
  }

  /**
   * Applies `fn` to every message, even past one that throws (a closed connection), and then
   * throws the first error: the messages not answered are redelivered after `ack_wait`.
   */
  function each(messages: readonly JsMsg[], what: string, fn: (m: JsMsg, i: number) => void): void {
    let first: unknown;
    messages.forEach((m, i) => {
      try {
        fn(m, i);
      } catch (err) {
        first ??= err;
      }
    });
    if (first !== undefined) throw classifyNatsError(first, "ERR_SOURCE_CONNECT", `${location}: ${what}`);
  }

  /**
   * One pull of up to `n` messages, handed to the buffer as they arrive: a chunk is enqueued
   * whenever nothing more is queued yet (or it is full), so a slow trickle is not held until the
   * pull expires. Resolves false when the pipeline stops taking records. Messages pulled but not
   * handed over are left to the server, which redelivers them after `ack_wait`: not `nak()`ed, as
   * nats-server 2.9 then redelivers the last message delivered with its delivery count reset,
   * and a message that keeps a worker from stopping in time would never reach `max_deliver`.
   */
  async function pull(handle: SourceHandle, c: Consumer, n: number, signal: AbortSignal): Promise<boolean> {
    const messages = await c.fetch({ max_messages: n, expires: PULL_EXPIRES_MS });
    let count = 0;
    let most = 0;
    const onStop = () => messages.stop();
    signal.addEventListener("abort", onStop, { once: true });
    let chunk: JetStreamChunk = { messages: [], terminate: undefined };
    let records: Entry[] = [];
    let redelivered = 0;
    const flush = async (): Promise<boolean> => {
      const handing = chunk;
      const entries = records;
      chunk = { messages: [], terminate: undefined };
      records = [];
      if (redelivered > 0) {
        ctx.emit({ type: "records_reclaimed", source: ctx.name, count: redelivered });
        redelivered = 0;
      }
      sizes.observe(entries);
      pacing.handed(handing.messages.length);
      return (await handle.enqueue(entries, handing)) !== "stopping";
    };
    try {
      for await (const m of messages) {
        if (signal.aborted) break;
        if (m.info.deliveryCount > 1) redelivered++;
        count++;
        most = Math.max(most, m.info.deliveryCount);
        addMessage(handle, chunk, records, m, stream, maxDeliver);
        if ((messages.getPending() === 0 || records.length >= handle.chunkSize) && !(await flush())) {
          messages.stop();
          return false;
        }
      }
      return records.length === 0 || (await flush());
    } finally {
      signal.removeEventListener("abort", onStop);
      pacing.pulled(count, most);
    }
  }

  /** The error `run` rejects with once the connection was lost. */
  const lost = () => new SluiceError("ERR_SOURCE_CONNECT", `nats: ${down ?? "connection lost"}`, { retryable: true, location });

  return {
    acks: "individual",
    whenFull: "wait",
    workingIntervalMs: Math.max(1, Math.floor(ackWait.ms / 3)),

    async connect(signal) {
      const nats = await loadNats();
      if (nc?.isClosed() === true) {
        nc = undefined;
        jsm = undefined;
      }
      if (nc === undefined) {
        let conn: NatsConnection | undefined;
        try {
          conn = await open(nats, signal);
        } catch (err) {
          throw classifyNatsError(err, "ERR_SOURCE_CONNECT", location);
        }
        nc = conn;
        down = undefined;
        watch(conn);
      } else if (down !== undefined) {
        const conn = nc;
        await waitFor(() => down === undefined || conn.isClosed(), CONNECT_TIMEOUT_MS, signal);
        if (down !== undefined) throw lost();
      }
      try {
        jsm ??= await unlessAborted(nats.js.jetstreamManager(nc, { timeout: CONNECT_TIMEOUT_MS }), signal, location);
        const resumeAt = ackFloor === undefined ? undefined : ackFloor + 1;
        const info = await setUpConsumer(nats, jsm, { ...settings, ackWait, maxAckPending, resumeAt }, { logger: ctx.logger, component: ctx.name, signal });
        ackFloor = floorOf(info, ackFloor);
        consumer = nats.js.jetstream(nc, { timeout: CONNECT_TIMEOUT_MS }).consumers.getConsumerFromInfo(info);
        pacing.connected();
      } catch (err) {
        throw classifyNatsError(err, "ERR_SOURCE_CONNECT", location);
      }
    },

    async run(handle, signal) {
      const c = consumer;
      if (c === undefined) throw new SluiceError("ERR_INTERNAL", "nats_jetstream source: run before connect", { location });
      if (down !== undefined) throw lost();
      const stop = new AbortController();
      const halt = () => stop.abort();
      const onChange = () => {
        if (down !== undefined) halt();
      };
      signal.addEventListener("abort", halt, { once: true });
      watchers.add(onChange);
      const stopBacklog = reportBacklog(c);
      try {
        while (!stop.signal.aborted) {
          if (pacing.full()) await waitFor(() => !pacing.full(), ackWait.ms, stop.signal);
          const n = await sizes.room(handle, pacing.next(Math.min(handle.chunkSize, MAX_PULL)), stop.signal);
          if (n === 0) break;
          if (!(await pull(handle, c, n, stop.signal))) break;
        }
      } catch (err) {
        if (signal.aborted) return;
        if (down !== undefined) throw lost();
        throw classifyNatsError(err, "ERR_SOURCE_CONNECT", location);
      } finally {
        stopBacklog();
        watchers.delete(onChange);
        signal.removeEventListener("abort", halt);
      }
      if (!signal.aborted && down !== undefined) throw lost();
    },

    ack(checkpoint) {
      const chunk = checkpoint as JetStreamChunk;
      const terminate = chunk.terminate === undefined ? undefined : new Set(chunk.terminate);
      pacing.answered(chunk.messages.length);
      notify();
      // Plain acks (one publish each, written out together), not ackAck round trips: an ack lost
      // on the way only means a redelivery, which the record's stable id absorbs.
      each(chunk.messages, "ack", (m, i) => {
        // Without a reason: nats-server 2.9 does not know `+TERM <reason>` and ignores it.
        if (terminate?.has(i) === true) m.term();
        else m.ack();
      });
    },

    inProgress(checkpoint) {
      // nats.js holds what is published while it reconnects, without bound: acks are needed once
      // each, but ticks for every chunk in flight would pile up for as long as the server is away.
      if (down !== undefined) return;
      each((checkpoint as JetStreamChunk).messages, "working()", (m) => m.working());
    },

    async close() {
      const conn = nc;
      nc = undefined;
      consumer = undefined;
      jsm = undefined;
      if (conn === undefined || conn.isClosed()) return;
      // The acks of the last chunks may still be queued on the connection: a flush sends them
      // first, unless the server is away (then they are lost, and the messages redelivered).
      if (down === undefined) {
        let cancel = () => {};
        const timedOut = new Promise<void>((resolve) => (cancel = ctx.clock.setTimer(CONNECT_TIMEOUT_MS, resolve)));
        await Promise.race([conn.flush().catch(() => undefined), timedOut]);
        cancel();
      }
      await conn.close();
    },
  };

}

/**
 * The `nats_jetstream` source: a durable pull consumer (created or updated when missing unless
 * `bind`), each message acked once committed, `working()` for slow chunks, `max_deliver` enforced
 * with a dead letter. Record ids from the payload, else `Nats-Msg-Id`, else `<stream>:<sequence>`.
 */
export const definition = defineComponent<typeof options, Source>({
  type: "nats_jetstream",
  summary: "Reads a NATS JetStream stream through a durable pull consumer; each message acked once committed",
  options,
  create: (opts, ctx) => createNatsJetStreamSource(settingsFrom(opts), ctx),
});
