/**
 * The `mqtt` source: subscribes to topics on an MQTT broker with a persistent session and
 * acknowledges each message (PUBACK for QoS 1, PUBREC for QoS 2) only once its record is committed
 * by every sink, so a message in flight when sluice dies is redelivered by the broker.
 */
import { hostname } from "node:os";
import { z } from "zod";
import { SluiceError } from "../../core/errors.js";
import { DEFAULTS } from "../../config/defaults.js";
import type { Entry } from "../../core/record.js";
import { Wakeup } from "../../core/wakeup.js";
import { defineComponent, type ComponentContext, type Source } from "../../components/contracts.js";
import { duration } from "../../components/options.js";
import { MAX_RECEIVE_MAXIMUM, openMqttConnection, type MqttConnection, type MqttConnectionSettings } from "./client.js";
import { messageEntry, type MqttChunk, type MqttMessage } from "./messages.js";

/** How long `close` waits for the DISCONNECT to be sent, ms. */
const CLOSE_TIMEOUT_MS = 5_000;
/** MQTT 5's Session Expiry Interval meaning "never". */
const NEVER_EXPIRES = 0xffff_ffff;

const options = z
  .strictObject({
    url: z.string().min(1).describe("Broker URL: mqtt://host:1883, mqtts://host:8883 for TLS, ws:// or wss:// for WebSocket"),
    topics: z
      .union([z.string().min(1), z.array(z.string().min(1)).min(1)])
      .describe("Topic filter(s) to subscribe to; + and # wildcards allowed"),
    qos: z.union([z.literal(1), z.literal(2)]).default(1).describe("Subscription QoS: 1 (at least once, default) or 2; a message published with a lower QoS arrives with that QoS"),
    client_id: z.string().min(1).optional().describe("The session's client id; required with clean: false (the default), and unique per broker: two clients with one id take the session from each other"),
    clean: z.boolean().default(false).describe("false (default): a persistent session, so the broker keeps what sluice has not acknowledged while it is away; true: a new session at each connect, and what was sent while away is lost"),
    session_expiry: z
      .union([z.literal("never"), duration()])
      .default("never")
      .describe("How long the broker keeps the session after sluice disconnects (MQTT 5 Session Expiry Interval): never (default) or a duration such as 24h"),
    receive_maximum: z
      .number()
      .int()
      .min(1)
      .max(MAX_RECEIVE_MAXIMUM)
      .optional()
      .describe(`Most QoS 1 and 2 messages the broker sends without an acknowledgement (MQTT 5 Receive Maximum); default buffer.max_records, at most ${MAX_RECEIVE_MAXIMUM}`),
    topic_field: z.string().min(1).optional().describe("Payload field the message's topic is written to; absent: the topic is only the record's key"),
    keepalive: duration().default(30_000).describe("Keep-alive interval (ping when idle; the broker drops the connection after 1.5 times this without a packet); default 30s"),
    username: z.string().min(1).optional().describe("User name"),
    password: z.string().optional().describe("Password; write ${MQTT_PASSWORD} to keep it out of the file"),
    tls: z
      .strictObject({
        ca: z.string().min(1).optional().describe("CA certificate file (PEM) the broker's certificate is checked against; default the system's"),
        cert: z.string().min(1).optional().describe("Client certificate file (PEM), with key"),
        key: z.string().min(1).optional().describe("Client private key file (PEM), with cert"),
        reject_unauthorized: z.boolean().default(true).describe("false: accept a broker certificate that does not verify (testing only)"),
      })
      .optional()
      .describe("TLS files (relative to the working directory); use an mqtts:// or wss:// url"),
  })
  .superRefine((o, ctx) => {
    if (!o.clean && o.client_id === undefined) {
      ctx.addIssue({ code: "custom", path: ["client_id"], message: "a persistent session (clean: false, the default) needs a client_id the broker can find it by" });
    }
    if (o.password !== undefined && o.username === undefined) ctx.addIssue({ code: "custom", path: ["username"], message: "a password needs a username" });
    if (o.tls !== undefined && (o.tls.cert === undefined) !== (o.tls.key === undefined)) {
      ctx.addIssue({ code: "custom", path: ["tls", o.tls.cert === undefined ? "cert" : "key"], message: "cert and key go together" });
    }
  });

/** Everything a {@link createMqttSource} needs; the definition builds it from validated options. */
export interface MqttSourceSettings extends Omit<MqttConnectionSettings, "receiveMaximum"> {
  /** undefined: the buffer's `max_records`, at most {@link MAX_RECEIVE_MAXIMUM}. */
  readonly receiveMaximum?: number | undefined;
  readonly topicField?: string | undefined;
}

/** An `mqtt` source's settings from its validated options: durations in the seconds MQTT counts in, the default client id. */
function settingsFrom(opts: z.output<typeof options>): MqttSourceSettings {
  return {
    url: opts.url,
    topics: typeof opts.topics === "string" ? [opts.topics] : opts.topics,
    qos: opts.qos,
    clientId: opts.client_id ?? `sluice-${hostname()}-${process.pid}`,
    clean: opts.clean,
    sessionExpirySeconds: opts.session_expiry === "never" ? NEVER_EXPIRES : Math.ceil(opts.session_expiry / 1000),
    receiveMaximum: opts.receive_maximum,
    keepaliveSeconds: Math.max(1, Math.round(opts.keepalive / 1000)),
    username: opts.username,
    password: opts.password,
    tls: opts.tls === undefined ? undefined : { ca: opts.tls.ca, cert: opts.tls.cert, key: opts.tls.key, rejectUnauthorized: opts.tls.reject_unauthorized },
    topicField: opts.topic_field,
  };
}

/**
 * Builds an MQTT source (what the `mqtt` definition's factory returns). Each engine `connect`
 * opens a new connection (ending the previous one), and the broker resends on it what no earlier
 * connection acknowledged; chunks read on an earlier connection acknowledge nothing (see
 * {@link MqttChunk}). Acks are `ordered`: MQTT asks a client to send PUBACKs in the order the
 * messages came, and the contiguous checkpoint gives exactly that order.
 */
export function createMqttSource(settings: MqttSourceSettings, ctx: ComponentContext): Source {
  const location = `mqtt ${settings.url} client ${settings.clientId}`;
  const connectionSettings: MqttConnectionSettings = {
    ...settings,
    receiveMaximum: settings.receiveMaximum ?? Math.min(ctx.bufferRecords ?? DEFAULTS.buffer.max_records, MAX_RECEIVE_MAXIMUM),
  };
  let connection: MqttConnection | undefined;
  /** Messages of the current connection not yet handed to the buffer (at most Receive Maximum of QoS 1 and 2). */
  let waiting: MqttMessage[] = [];
  /** Wakes `run` when messages arrive or the connection drops. */
  const wakeup = new Wakeup();
  let connectedBefore = false;
  /**
   * The current connection's chunks handed to the buffer and not acknowledged, oldest first. An
   * `ordered` ack names only the newest chunk done with all before it, and acknowledges them all.
   */
  const unanswered: MqttChunk<MqttConnection>[] = [];

  const poke = () => wakeup.poke();

  const lost = (c: MqttConnection) => new SluiceError("ERR_SOURCE_CONNECT", `mqtt: ${c.down() ?? "connection lost"}`, { retryable: true, location });

  return {
    acks: "ordered",
    whenFull: "wait",

    async connect(signal) {
      const previous = connection;
      connection = undefined;
      waiting = [];
      unanswered.length = 0;
      if (previous !== undefined) await previous.end(false);
      let fresh: MqttConnection | undefined = undefined;
      const arrived: MqttMessage[] = [];
      const c = await openMqttConnection(
        connectionSettings,
        ctx.baseDir,
        location,
        (m) => {
          if (fresh === undefined) arrived.push(m);
          else if (connection === fresh) waiting.push(m);
          poke();
        },
        signal,
      );
      c.client.on("close", poke);
      fresh = c;
      connection = c;
      waiting = arrived;
      if (connectedBefore && !c.sessionPresent && !settings.clean) {
        ctx.logger.warn(
          { component: ctx.name, code: "ERR_SOURCE_CONNECT", client_id: settings.clientId },
          "mqtt: the broker had no session for this client id; what was published while sluice was away was not kept",
        );
      }
      connectedBefore = true;
    },

    async run(handle, signal) {
      const c = connection;
      if (c === undefined) throw new SluiceError("ERR_INTERNAL", "mqtt source: run before connect", { location });
      await wakeup.loop(signal, async () => {
        if (c.down() !== undefined) throw lost(c);
        if (waiting.length === 0) return wakeup.sleep();
        const taken = waiting.length <= handle.chunkSize ? waiting : waiting.slice(0, handle.chunkSize);
        waiting = taken === waiting ? [] : waiting.slice(handle.chunkSize);
        const chunk: MqttChunk<MqttConnection> = { connection: c, puback: [], pubrec: [] };
        const records: Entry[] = [];
        for (const m of taken) {
          records.push(messageEntry(handle, m, settings.topicField));
          if (m.packetId === undefined) continue;
          if (m.qos === 2) chunk.pubrec.push(m.packetId);
          else chunk.puback.push(m.packetId);
        }
        // In line before the enqueue: a chunk dropped by policy is acked from inside it.
        unanswered.push(chunk);
        if ((await handle.enqueue(records, chunk)) === "stopping") {
          // Never acknowledged, so the broker redelivers them.
          unanswered.splice(unanswered.indexOf(chunk), 1);
          return "stop";
        }
      });
    },

    ack(checkpoint) {
      // A chunk of an earlier connection is not in line: its messages come again on this one.
      const upTo = unanswered.indexOf(checkpoint as MqttChunk<MqttConnection>);
      if (upTo < 0) return;
      const done = unanswered.splice(0, upTo + 1);
      // All of one connection: `connect` empties the line.
      done[0]!.connection.acknowledge(done);
    },

    async close() {
      const c = connection;
      connection = undefined;
      waiting = [];
      unanswered.length = 0;
      if (c === undefined) return;
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([c.end(true), new Promise<void>((resolve) => (timer = setTimeout(resolve, CLOSE_TIMEOUT_MS)))]);
      clearTimeout(timer);
    },
  };
}

/**
 * The `mqtt` source: an MQTT 5 subscription in a persistent session; each message acknowledged
 * (PUBACK, or PUBREC for QoS 2) once committed. Record ids from the payload, else
 * `<source>:<topic>:<hash of the payload>`; the topic is the record's key.
 */
export const definition = defineComponent<typeof options, Source>({
  type: "mqtt",
  summary: "Subscribes to MQTT topics in a persistent session; each message acknowledged once committed",
  options,
  create: (opts, ctx) => createMqttSource(settingsFrom(opts), ctx),
});
