/**
 * The `nats_jetstream` source: a durable pull consumer on a JetStream stream. It fetches only what
 * the buffer has room for, hands each fetch over as it arrives, acks every message once its chunk
 * is committed, tells the server `working()` for chunks in flight, and dead-letters a message the
 * server delivered more than `max_deliver` times.
 */
import type { Consumer, ConsumerConfig, ConsumerInfo, JetStreamManager, JsMsg } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { z } from "zod";
import { checkNatsCredentials, classifyNatsError, EVENT_TIME_HEADER, isStreamNotFound, KEY_HEADER, loadNats, natsConnectionOptions, serverList, type NatsModules } from "../brokers/nats.js";
import { SluiceError } from "../core/errors.js";
import type { Entry, JsonObject } from "../core/record.js";
import { defineComponent, type ComponentContext, type ServiceEnvelope, type Source, type SourceHandle } from "../components/contracts.js";
import { duration } from "../components/options.js";

/** How long `connect` waits for the server (a first connection, or nats.js reconnecting), and each JetStream API call, in ms. */
const CONNECT_TIMEOUT_MS = 10_000;
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
/** `buffer.max_records` when the context does not say (a source built outside a pipeline). */
const DEFAULT_BUFFER_RECORDS = 10_000;

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
    deliver: z.enum(["all", "new"]).default("all").describe("Where a new consumer starts: all (everything in the stream) or new (only messages stored from now)"),
    ack_wait: duration()
      .default(30_000)
      .refine((ms) => ms >= 1000, "must be at least 1s")
      .describe("How long the server waits for an ack before it redelivers; working() is sent every ack_wait/3 for chunks in flight; default 30s"),
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
      .describe(`Most messages delivered and not yet acked; default buffer.max_records + ${MAX_PULL} (one pull)`),
    user: natsConnectionOptions.user,
    password: natsConnectionOptions.password,
    token: natsConnectionOptions.token,
  })
  .superRefine(checkNatsCredentials);

/** Everything a {@link createNatsJetStreamSource} needs; the definition builds it from validated options. */
export interface NatsJetStreamSourceSettings {
  readonly servers: readonly string[];
  readonly stream: string;
  readonly consumer: string;
  readonly bind: boolean;
  readonly filterSubject?: string | undefined;
  readonly deliver: "all" | "new";
  /** ms */
  readonly ackWaitMs: number;
  readonly maxDeliver: number;
  /** Undefined: the buffer's `max_records` + {@link MAX_PULL}. */
  readonly maxAckPending?: number | undefined;
  readonly user?: string | undefined;
  readonly password?: string | undefined;
  readonly token?: string | undefined;
}

/**
 * What a chunk's checkpoint holds: its messages, and which of them were dead-lettered for having
 * been delivered too often (terminated rather than acked once the dead letter is committed).
 */
interface JetStreamChunk {
  readonly messages: JsMsg[];
  /** Indexes into `messages`; undefined when none. */
  terminate: number[] | undefined;
}

/** A header value as the sink wrote it (percent-encoded); as it is when it is not valid percent-encoding (another producer's). */
function decodeHeader(value: string): string {
  try {
    return decodeURIComponent(value);
  } catch {
    return value;
  }
}

/** The envelope a message carries in its headers; its id is `<stream>:<sequence>` when it has no `Nats-Msg-Id`. */
function envelopeOf(m: JsMsg, stream: string): ServiceEnvelope {
  const h = m.headers;
  if (h === undefined) return { id: `${stream}:${m.seq}` };
  const id = h.get("Nats-Msg-Id");
  const key = h.get(KEY_HEADER);
  const time = h.get(EVENT_TIME_HEADER);
  const eventTime = time === "" ? Number.NaN : Date.parse(time);
  return {
    id: id === "" ? `${stream}:${m.seq}` : decodeHeader(id),
    key: h.has(KEY_HEADER) ? decodeHeader(key) : undefined,
    eventTime: Number.isNaN(eventTime) ? undefined : eventTime,
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
  const maxAckPending = settings.maxAckPending ?? (ctx.bufferRecords ?? DEFAULT_BUFFER_RECORDS) + MAX_PULL;
  let nc: NatsConnection | undefined;
  let consumer: Consumer | undefined;
  let jsm: JetStreamManager | undefined;
  /** Why the connection is down now; undefined while it is up. */
  let down: string | undefined;
  /** Called on every change of `down`. */
  const watchers = new Set<() => void>();

  const changed = (why: string | undefined) => {
    down = why;
    for (const w of [...watchers]) w();
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

  /** A permanent connect error about the stream or consumer. */
  const refuse = (message: string, cause?: unknown) => new SluiceError("ERR_SOURCE_CONNECT", `nats: ${message}`, { cause, retryable: false, location });

  /** The consumer's config as this source creates it. */
  function wanted(nats: NatsModules): Partial<ConsumerConfig> {
    return {
      durable_name: settings.consumer,
      ack_policy: nats.js.AckPolicy.Explicit,
      ack_wait: nats.core.nanos(settings.ackWaitMs),
      deliver_policy: settings.deliver === "all" ? nats.js.DeliverPolicy.All : nats.js.DeliverPolicy.New,
      ...(settings.filterSubject === undefined ? {} : { filter_subject: settings.filterSubject }),
      max_ack_pending: maxAckPending,
      // The server never gives up on a message: sluice does, after max_deliver deliveries, with a
      // dead letter. A server limit would leave a message that reached it un-acked and never
      // delivered again, neither delivered nor dead-lettered.
      max_deliver: -1,
    };
  }

  /** Checks the stream, then gets, creates or updates the consumer (see the options); permanent errors for what no retry fixes. */
  async function setUp(nats: NatsModules, conn: NatsConnection): Promise<Consumer> {
    jsm ??= await nats.js.jetstreamManager(conn, { timeout: CONNECT_TIMEOUT_MS });
    try {
      await jsm.streams.info(stream);
    } catch (err) {
      if (isStreamNotFound(err)) throw refuse(`stream ${stream} does not exist; create it (the nats_jetstream sink's create_stream can)`, err);
      throw err;
    }
    let info: ConsumerInfo | undefined;
    try {
      info = await jsm.consumers.info(stream, settings.consumer);
    } catch (err) {
      if (!(err instanceof nats.js.JetStreamApiError && err.code === nats.js.JetStreamApiCodes.ConsumerNotFound)) throw err;
    }
    const config = wanted(nats);
    if (info === undefined) {
      if (settings.bind) throw refuse(`consumer ${settings.consumer} of stream ${stream} does not exist, and bind: true does not create it`);
      info = await jsm.consumers.add(stream, config);
    } else {
      const c = info.config;
      if (c.deliver_subject !== undefined && c.deliver_subject !== "") throw refuse(`consumer ${settings.consumer} of stream ${stream} is a push consumer; sluice needs a pull consumer`);
      if (c.ack_policy !== nats.js.AckPolicy.Explicit) throw refuse(`consumer ${settings.consumer} of stream ${stream} has ack_policy ${c.ack_policy}; sluice needs explicit acks`);
      if (settings.bind) {
        // The working() ticks are ack_wait/3 apart on our side: a shorter wait there would redeliver chunks still in flight.
        // The server's default when a consumer has none set.
        const ackWait = c.ack_wait ?? nats.core.nanos(30_000);
        if (ackWait < config.ack_wait!) {
          throw refuse(`consumer ${settings.consumer} has ack_wait ${ackWait / 1e6} ms, less than this source's ack_wait ${settings.ackWaitMs} ms; set ack_wait to at most the consumer's`);
        }
        if (c.max_deliver !== undefined && c.max_deliver > 0 && c.max_deliver <= maxDeliver) {
          ctx.logger.warn(
            { component: ctx.name, consumer_max_deliver: c.max_deliver, max_deliver: maxDeliver },
            "the bound consumer stops redelivering before max_deliver: a message that reaches its limit is neither delivered nor dead-lettered",
          );
        }
      } else {
        if (settings.filterSubject !== undefined && (c.filter_subject ?? "") !== settings.filterSubject) {
          throw refuse(`consumer ${settings.consumer} of stream ${stream} filters ${c.filter_subject || "nothing"}, not ${settings.filterSubject}; delete it or use another consumer name`);
        }
        if (c.ack_wait !== config.ack_wait || c.max_ack_pending !== config.max_ack_pending || c.max_deliver !== config.max_deliver) {
          info = await jsm.consumers.update(stream, settings.consumer, { ack_wait: config.ack_wait, max_ack_pending: config.max_ack_pending, max_deliver: config.max_deliver });
        }
      }
    }
    return nats.js.jetstream(conn, { timeout: CONNECT_TIMEOUT_MS }).consumers.getConsumerFromInfo(info);
  }

  /** A new connection; nats.js reconnects it on its own from then on (see above). */
  async function open(nats: NatsModules, signal: AbortSignal): Promise<NatsConnection> {
    const attempt = nats.core.connect({
      servers: [...settings.servers],
      name: "sluice",
      user: settings.user,
      pass: settings.password,
      token: settings.token,
      timeout: CONNECT_TIMEOUT_MS,
      maxReconnectAttempts: -1,
      reconnectTimeWait: RECONNECT_WAIT_MS,
    });
    const abort = () => void attempt.then((c) => c.close()).catch(() => undefined);
    signal.addEventListener("abort", abort, { once: true });
    try {
      return await attempt;
    } finally {
      signal.removeEventListener("abort", abort);
    }
  }

  /** The record (or dead letter) for one message; notes in `chunk` a message to terminate. */
  function toEntry(handle: SourceHandle, m: JsMsg, chunk: JetStreamChunk): Entry {
    const seq = m.seq;
    const envelope = envelopeOf(m, stream);
    const text = m.string();
    const where = `${stream} seq ${seq}`;
    const deliveries = m.info.deliveryCount;
    if (deliveries > maxDeliver) {
      (chunk.terminate ??= []).push(chunk.messages.length);
      const error = new SluiceError("ERR_MAX_DELIVERIES", `nats: message delivered ${deliveries} times, more than max_deliver ${maxDeliver}, without being committed`, {
        location: where,
      });
      return handle.malformed(text, seq, error, envelope);
    }
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (err) {
      return handle.malformed(text, seq, new SluiceError("ERR_RECORD_MALFORMED", `message is not valid JSON: ${(err as Error).message}`, { location: where }), envelope);
    }
    if (typeof value !== "object" || value === null || Array.isArray(value)) {
      return handle.malformed(text, seq, new SluiceError("ERR_RECORD_MALFORMED", "message is not a JSON object", { location: where }), envelope);
    }
    return handle.record(value as JsonObject, m.data.length, seq, text, envelope);
  }

  /** Emits the consumer's backlog every {@link BACKLOG_INTERVAL_MS}; returns the function that stops it. */
  function reportBacklog(c: Consumer): () => void {
    let cancel = () => {};
    let stopped = false;
    const tick = () => {
      cancel = ctx.clock.setTimer(BACKLOG_INTERVAL_MS, () => {
        c.info()
          .then((info) => {
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

  /** The error `run` rejects with once the connection was lost. */
  const lost = () => new SluiceError("ERR_SOURCE_CONNECT", `nats: ${down ?? "connection lost"}`, { retryable: true, location });

  return {
    acks: "individual",
    whenFull: "wait",
    workingIntervalMs: Math.max(1, Math.floor(settings.ackWaitMs / 3)),

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
        consumer = await setUp(nats, nc);
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
          const n = await handle.waitForRoom(Math.min(handle.chunkSize, MAX_PULL), stop.signal);
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
      // Plain acks (one publish each, written out together), not ackAck round trips: an ack lost
      // on the way only means a redelivery, which the record's stable id absorbs.
      each(chunk.messages, "ack", (m, i) => {
        // Without a reason: nats-server 2.9 does not know `+TERM <reason>` and ignores it.
        if (terminate?.has(i) === true) m.term();
        else m.ack();
      });
    },

    inProgress(checkpoint) {
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
      if (down === undefined) await Promise.race([conn.flush().catch(() => undefined), new Promise((r) => setTimeout(r, CONNECT_TIMEOUT_MS).unref())]);
      await conn.close();
    },
  };

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
      return (await handle.enqueue(entries, handing)) !== "stopping";
    };
    try {
      for await (const m of messages) {
        if (signal.aborted) break;
        if (m.info.deliveryCount > 1) redelivered++;
        records.push(toEntry(handle, m, chunk));
        chunk.messages.push(m);
        if ((messages.getPending() === 0 || records.length >= handle.chunkSize) && !(await flush())) {
          messages.stop();
          return false;
        }
      }
      return records.length === 0 || (await flush());
    } finally {
      signal.removeEventListener("abort", onStop);
    }
  }
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
  create(opts, ctx) {
    return createNatsJetStreamSource(
      {
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
      },
      ctx,
    );
  },
});
