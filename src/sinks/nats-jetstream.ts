/**
 * The `nats_jetstream` sink: one JetStream message per record, published with `Nats-Msg-Id` = the
 * record id so the stream's duplicate window absorbs a redelivery; a batch's publishes are all
 * outstanding at once, but a key's next one only once the last was stored, and the write resolves
 * when every ack arrived.
 */
import type { JetStreamClient, PubAck } from "@nats-io/jetstream";
import type { MsgHdrs, NatsConnection } from "@nats-io/transport-node";
import { z } from "zod";
import {
  checkNatsCredentials,
  classifyNatsError,
  connectOptions,
  EVENT_TIME_HEADER,
  headerValue,
  isStreamNotFound,
  KEY_HEADER,
  loadNats,
  natsConnectionOptions,
  serverList,
  unlessAborted,
  type NatsModules,
} from "../brokers/nats.js";
import { SluiceError } from "../core/errors.js";
import type { SluiceRecord } from "../core/record.js";
import { defineComponent, writeResult, type RecordFailure, type Sink, type WriteResult } from "../components/contracts.js";
import { duration } from "../components/options.js";

/** Batches the sink takes at once; each has all its publishes outstanding. */
const MAX_IN_FLIGHT = 4;


const streamOptions = z.strictObject({
  name: z.string().min(1).describe("Stream name"),
  subjects: z.array(z.string().min(1)).min(1).optional().describe("Subjects the stream stores; default: [subject]"),
  storage: z.enum(["file", "memory"]).default("file").describe("file: messages survive a server restart; memory: they do not"),
  replicas: z.number().int().min(1).max(5).default(1).describe("Copies in a JetStream cluster; 3 survives the loss of one server"),
  duplicate_window: duration()
    .default(120_000)
    .describe("How long the stream remembers a Nats-Msg-Id: a redelivery within it is a duplicate, not a new message; default 2m"),
});

const options = z
  .strictObject({
    servers: natsConnectionOptions.servers,
    subject: z.string().min(1).describe("Subject every record is published to; a stream must store it"),
    user: natsConnectionOptions.user,
    password: natsConnectionOptions.password,
    token: natsConnectionOptions.token,
    ack_timeout: duration()
      .default(10_000)
      .refine((ms) => ms >= 1, "must be at least 1 ms")
      .describe("How long a publish waits for the stream's ack before the batch is retried; default 10s"),
    create_stream: streamOptions
      .optional()
      .describe("Create this stream at connect when it is missing; without it a stream must already store subject, else connect fails"),
  })
  .superRefine(checkNatsCredentials);

/** A stream the sink creates when missing. */
export interface JetStreamStreamSettings {
  readonly name: string;
  readonly subjects: readonly string[];
  readonly storage: "file" | "memory";
  readonly replicas: number;
  /** ms */
  readonly duplicateWindowMs: number;
}

/** Everything a {@link createNatsJetStreamSink} needs; the definition builds it from validated options. */
export interface NatsJetStreamSinkSettings {
  readonly servers: readonly string[];
  readonly subject: string;
  readonly user?: string | undefined;
  /** Never put into messages. */
  readonly password?: string | undefined;
  /** Never put into messages. */
  readonly token?: string | undefined;
  /** ms */
  readonly ackTimeoutMs: number;
  readonly createStream?: JetStreamStreamSettings | undefined;
}

/** The headers of one record's message. Throws RangeError for an invalid event time. */
function messageHeaders(headers: () => MsgHdrs, record: SluiceRecord): MsgHdrs {
  const h = headers();
  if (record.key !== undefined) h.set(KEY_HEADER, headerValue(record.key));
  if (record.eventTime !== undefined) h.set(EVENT_TIME_HEADER, new Date(record.eventTime).toISOString());
  return h;
}

/** A `nats_jetstream` sink's settings from its validated options; the stream to create listens on `subject` unless it names its subjects. */
function settingsFrom(opts: z.output<typeof options>): NatsJetStreamSinkSettings {
  const stream = opts.create_stream;
  return {
    servers: serverList(opts.servers),
    subject: opts.subject,
    user: opts.user,
    password: opts.password,
    token: opts.token,
    ackTimeoutMs: opts.ack_timeout,
    createStream:
      stream === undefined
        ? undefined
        : {
            name: stream.name,
            subjects: stream.subjects ?? [opts.subject],
            storage: stream.storage,
            replicas: stream.replicas,
            duplicateWindowMs: stream.duplicate_window,
          },
  };
}

/**
 * Builds a JetStream sink (what the `nats_jetstream` definition's factory returns).
 *
 * `connect` opens the connection (nats.js then reconnects on its own) and checks that a stream
 * stores `subject`, creating `createStream` when it is missing. A write publishes the records of
 * the batch at once, except that a record with a key is published only once the key's previous
 * record in the batch was stored (and never when that one failed), and waits for all their acks; a
 * duplicate ack (the id was published within the stream's `duplicate_window`) is reported as
 * already present. A publish that times out, finds no stream or meets a full stream fails the
 * batch (retryable) rather than the record; since nothing of its key after it was sent, no later
 * record of its key is stored before it (with all outstanding at once, a refused a1 and a stored a2
 * made the retry store a1 after a2, the retry of a2 being a duplicate); the retry's duplicates
 * are absorbed by the window.
 */
export function createNatsJetStreamSink(settings: NatsJetStreamSinkSettings): Sink {
  const location = `nats subject ${settings.subject}`;
  let nc: NatsConnection | undefined;
  let js: JetStreamClient | undefined;
  /** A {@link reopen} under way. */
  let reopening: Promise<void> | undefined;
  /** `headers` of the loaded transport, set with `js`. */
  let newHeaders: (() => MsgHdrs) | undefined;

  /** Creates `createStream` when missing, then finds the stream that stores the subject; permanent when there is none. */
  async function checkStream({ core, js: jetstream }: NatsModules, conn: NatsConnection): Promise<void> {
    const jsm = await jetstream.jetstreamManager(conn, { timeout: settings.ackTimeoutMs });
    const create = settings.createStream;
    if (create !== undefined) {
      const exists = await jsm.streams.info(create.name).then(
        () => true,
        (err: unknown) => {
          if (isStreamNotFound(err)) return false;
          throw err;
        },
      );
      if (!exists) {
        await jsm.streams.add({
          name: create.name,
          subjects: [...create.subjects],
          storage: create.storage === "file" ? jetstream.StorageType.File : jetstream.StorageType.Memory,
          num_replicas: create.replicas,
          duplicate_window: core.nanos(create.duplicateWindowMs),
        });
      }
    }
    // Also after creating: an existing stream of that name, or subjects that miss `subject`, would
    // leave every publish without a stream to answer it, retried until the records are dead-lettered.
    try {
      await jsm.streams.find(settings.subject);
    } catch (err) {
      if (!isStreamNotFound(err)) throw err;
      throw new SluiceError("ERR_SINK_CONNECT", `nats: no JetStream stream stores subject ${settings.subject}; create one, or set create_stream`, {
        cause: err,
        retryable: false,
        location,
      });
    }
  }

  /**
   * Opens the connection and checks the stream, unless a connection nats.js has not closed is
   * there: nats.js reconnects one on its own, but closes it for good in some cases (credentials
   * refused twice in a row, as after a rotation), and then only a new connection helps.
   */
  async function open(signal: AbortSignal): Promise<void> {
    // A closed connection stays until it is replaced: the next write tries again.
    if (nc !== undefined && !nc.isClosed()) return;
    const nats = await loadNats();
    let conn: NatsConnection | undefined;
    try {
      // Raced with the signal: nats.js takes none, and a server that accepts and never answers holds each call for its timeout.
      const attempt = nats.core.connect(connectOptions(settings));
      conn = await unlessAborted(attempt, signal, location, (late) => void late.close().catch(() => undefined));
      await unlessAborted(checkStream(nats, conn), signal, location);
    } catch (err) {
      await conn?.close().catch(() => undefined);
      throw classifyNatsError(err, "ERR_SINK_CONNECT", location);
    }
    nc = conn;
    js = nats.js.jetstream(conn, { timeout: settings.ackTimeoutMs });
    newHeaders = nats.core.headers;
  }

  /**
   * A new connection in place of one nats.js closed for good, shared by the writes in flight. The
   * engine connects a sink once, so this is the only way back; a failure (even a refused password:
   * it may be rotated back) is retryable, so the batch is retried and the sink reported failing.
   */
  function reopen(signal: AbortSignal): Promise<void> {
    reopening ??= open(signal)
      .catch((err: unknown) => {
        const e = classifyNatsError(err, "ERR_SINK_WRITE", location);
        throw new SluiceError("ERR_SINK_WRITE", `nats: connection closed, and opening a new one failed: ${e.message}`, { cause: e, retryable: true, location });
      })
      .finally(() => (reopening = undefined));
    return reopening;
  }

  return {
    maxInFlight: MAX_IN_FLIGHT,

    connect: open,

    async write(records, signal): Promise<WriteResult | void> {
      if (nc?.isClosed() === true) await reopen(signal);
      const client = js;
      const headers = newHeaders;
      if (client === undefined || headers === undefined) throw new SluiceError("ERR_INTERNAL", "nats_jetstream sink: write before connect", { location });
      if (signal.aborted) throw new SluiceError("ERR_ABORTED", "nats_jetstream sink: aborted before writing", { cause: signal.reason, location });
      if (records.length === 0) return {};

      const failures: RecordFailure[] = [];
      const indexes: number[] = [];
      const acks: Promise<PubAck>[] = [];
      /** Each key's last publish in this batch: the next of its key is sent once that one is stored, never if it failed. */
      const lastOfKey = new Map<string, Promise<PubAck>>();
      records.forEach((record, index) => {
        let body: string;
        let h: MsgHdrs;
        try {
          // The JSON as the source read it, when no transform changed the payload: no second serialization.
          body = record.text ?? JSON.stringify(record.payload);
          h = messageHeaders(headers, record);
        } catch (err) {
          // A payload JSON cannot represent (a cycle, a BigInt) or an invalid event time: only this record is bad.
          const message = `nats_jetstream sink: record ${record.id} cannot be published: ${(err as Error).message}`;
          failures.push({ index, error: new SluiceError("ERR_SINK_REJECTED", message, { cause: err, location }) });
          return;
        }
        indexes.push(index);
        const send = () => client.publish(settings.subject, body, { msgID: headerValue(record.id), headers: h, timeout: settings.ackTimeoutMs });
        const before = record.key === undefined ? undefined : lastOfKey.get(record.key);
        const ack = before === undefined ? send() : before.then(send);
        if (record.key !== undefined) lastOfKey.set(record.key, ack);
        acks.push(ack);
      });

      const settled = await Promise.allSettled(acks);
      const present: number[] = [];
      let retry: SluiceError | undefined;
      for (let i = 0; i < settled.length; i++) {
        const outcome = settled[i]!;
        const index = indexes[i]!;
        if (outcome.status === "fulfilled") {
          if (outcome.value.duplicate) present.push(index);
          continue;
        }
        const error = classifyNatsError(outcome.reason, "ERR_SINK_WRITE", location);
        // A lost connection or a full stream is not this record's fault: the whole batch goes back for retry.
        if (error.retryable || error.code === "ERR_INTERNAL") retry ??= error;
        else failures.push({ index, error });
      }
      if (retry !== undefined) throw retry;
      return writeResult(failures, present);
    },

    async close() {
      const conn = nc;
      nc = undefined;
      js = undefined;
      newHeaders = undefined;
      // Every write waited for its acks: nothing is left to flush.
      await conn?.close();
    },
  };
}

/**
 * The `nats_jetstream` sink: one message per record on `subject` (body: the payload as JSON;
 * headers `Nats-Msg-Id` = the record id, `Sluice-Key`, `Sluice-Event-Time`), idempotent within the
 * stream's duplicate window, the stream optionally created.
 */
export const definition = defineComponent<typeof options, Sink>({
  type: "nats_jetstream",
  summary: "Publishes records to a NATS JetStream stream, idempotent by id within its duplicate window",
  options,
  create: (opts) => createNatsJetStreamSink(settingsFrom(opts)),
});
