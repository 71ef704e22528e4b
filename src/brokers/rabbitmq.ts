/**
 * What the RabbitMQ source and sink share: amqplib loaded on first use, the connection (opened
 * abortably, its URL shown without the password), the queue they declare or find, the headers that
 * carry a record's envelope, and the classification of amqplib's errors.
 */
import type { Channel, ChannelModel } from "amqplib";
import { z } from "zod";
import { classify, SluiceError, type ErrorCode } from "../core/errors.js";
import { duration } from "../components/options.js";

/** amqplib, imported on first use only: a pipeline without a RabbitMQ source or sink never pays for loading it. */
let amqpModule: Promise<typeof import("amqplib")> | undefined;

/** Imports amqplib once (later calls share the same promise). */
export function loadAmqp(): Promise<typeof import("amqplib")> {
  amqpModule ??= import("amqplib");
  return amqpModule;
}

/** Header with the record's key, absent for a keyless record. */
export const KEY_HEADER = "sluice-key";
/** Header with the record's event time (ISO 8601), absent when it has none. */
export const EVENT_TIME_HEADER = "sluice-event-time";
/** Longest AMQP short string (`message_id` is one), in UTF-8 bytes. */
export const MAX_SHORT_STRING = 255;
/** How long the source's and the sink's `close` wait for the connection to close, ms. */
export const CLOSE_TIMEOUT_MS = 5_000;

/**
 * AMQP reply codes no retry clears: access refused (403), not found (404: a queue or exchange
 * that must exist), precondition failed (406: a queue declared with other arguments), invalid
 * path (402), not allowed (530: a vhost the user may not use), not implemented (540).
 */
const PERMANENT_REPLY_CODES = new Set([402, 403, 404, 406, 530, 540]);

/**
 * The options the `rabbitmq` source and sink share: the connection, and how a queue that does not
 * exist yet is declared (an existing one is used as it is, unless `queue_arguments` is given).
 */
export const rabbitmqOptions = {
  url: z
    .string()
    .min(1)
    .describe("Broker URL: amqp://user:password@host:5672/vhost (amqps:// for TLS); write ${RABBITMQ_URL} to keep the password out of the file"),
  heartbeat: duration()
    .default(30_000)
    .describe("AMQP heartbeat: a connection silent for twice this long is taken as lost; default 30s (a heartbeat in the url wins)"),
  queue_type: z
    .enum(["quorum", "classic"])
    .optional()
    .describe("Type of the queue when sluice creates it: quorum (default: replicated, counts deliveries) or classic; an existing queue keeps its type"),
  queue_arguments: z
    .record(z.string(), z.union([z.string(), z.number(), z.boolean()]))
    .optional()
    .describe(
      "Arguments of the queue (x-dead-letter-exchange, x-delivery-limit, x-max-length, ...): used when creating it, and checked against an existing queue (a difference is a permanent error)",
    ),
};

/** A queue as the source and sink declare it. */
export interface QueueSettings {
  readonly name: string;
  /** undefined: quorum when creating, an existing queue's type accepted. */
  readonly type?: "quorum" | "classic" | undefined;
  readonly arguments?: Readonly<Record<string, string | number | boolean>> | undefined;
}

/** The URL with the password left out, for messages and locations. */
export function safeUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password !== "") u.password = "***";
    return u.toString();
  } catch {
    return "<invalid url>";
  }
}

/** The URL with `heartbeat` (seconds) added unless it already says one. */
function withHeartbeat(url: string, heartbeatMs: number): string {
  try {
    const u = new URL(url);
    if (!u.searchParams.has("heartbeat")) u.searchParams.set("heartbeat", String(Math.max(1, Math.round(heartbeatMs / 1000))));
    return u.toString();
  } catch {
    return url;
  }
}

/** The reply code of an amqplib error: its `code`, or the one in a handshake refusal's message ("... 403 (ACCESS-REFUSED) ..."). */
function replyCode(err: unknown): number | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code === "number") return code;
  const m = err instanceof Error ? /\b(\d{3}) \([A-Z-]+\)/.exec(err.message) : null;
  return m === null ? undefined : Number(m[1]);
}

/**
 * Wraps an amqplib error as a {@link SluiceError} with `code`: a reply code in
 * {@link PERMANENT_REPLY_CODES} (bad credentials, a missing exchange, a queue declared with other
 * arguments, a vhost the user may not use) is permanent, and so is a connection the server closes
 * during its opening (a vhost that does not exist); anything else (refused, reset, a broker
 * shutting down, a channel closed under a write) is retryable. A programmer error stays ERR_INTERNAL.
 */
export function classifyAmqpError(err: unknown, code: ErrorCode, location: string): SluiceError {
  if (err instanceof SluiceError) return err;
  const wrapped = classify(err, code);
  if (wrapped.code === "ERR_INTERNAL") return wrapped;
  const text = err instanceof Error ? err.message : String(err);
  const reply = replyCode(err);
  if (/got <ConnectionClose/.test(text)) {
    const message = `rabbitmq: the server closed the connection while opening it: the vhost does not exist or the user may not use it (${text})`;
    return new SluiceError(code, message, { cause: err, retryable: false, location });
  }
  const permanent = reply !== undefined && PERMANENT_REPLY_CODES.has(reply);
  return new SluiceError(code, `rabbitmq: ${text}`, { cause: err, retryable: !permanent, location });
}

/**
 * Opens a connection, unless `signal` aborts first: amqplib takes no signal, and a connection that
 * opens after the abort is closed. Its `error` events are kept from crashing the process (each
 * also closes it, which its owner watches through `close`).
 */
export async function openAmqpConnection(url: string, heartbeatMs: number, signal: AbortSignal, location: string, code: ErrorCode): Promise<ChannelModel> {
  const amqp = await loadAmqp();
  if (signal.aborted) throw new SluiceError("ERR_ABORTED", "rabbitmq: aborted", { cause: signal.reason, location });
  const attempt = amqp.connect(withHeartbeat(url, heartbeatMs), { clientProperties: { connection_name: "sluice" } });
  return new Promise<ChannelModel>((resolve, reject) => {
    const onAbort = () => {
      attempt.then((late) => void late.close().catch(() => undefined), () => undefined);
      reject(new SluiceError("ERR_ABORTED", "rabbitmq: aborted", { cause: signal.reason, location }));
    };
    signal.addEventListener("abort", onAbort, { once: true });
    attempt.then(
      (conn) => {
        signal.removeEventListener("abort", onAbort);
        conn.on("error", () => undefined);
        resolve(conn);
      },
      (err: unknown) => {
        signal.removeEventListener("abort", onAbort);
        reject(classifyAmqpError(err, code, location));
      },
    );
  });
}

/** A channel whose `error` events cannot crash the process (amqplib emits one before each server-side close). */
export async function quietChannel<C extends Channel>(make: () => Promise<C>): Promise<C> {
  const ch = await make();
  ch.on("error", () => undefined);
  return ch;
}

/**
 * Makes sure `queue` exists: found by a passive declare and used as it is, or, when missing,
 * declared durable (quorum unless `type` says classic) with its `arguments`. An existing queue is
 * declared again when `type` or `arguments` are given (its type taken to be quorum unless `type`
 * says classic), so a difference fails with 406 (PRECONDITION_FAILED), permanent. A passive declare of a missing queue closes its channel, so
 * this opens its own channels on `conn` and closes them.
 */
export async function ensureQueue(conn: ChannelModel, queue: QueueSettings, location: string, code: ErrorCode): Promise<void> {
  const args: Record<string, string | number | boolean> = { ...queue.arguments };
  let exists = true;
  const probe = await quietChannel(() => conn.createChannel());
  try {
    await probe.checkQueue(queue.name);
  } catch (err) {
    if (replyCode(err) !== 404) throw classifyAmqpError(err, code, location);
    exists = false;
  }
  await probe.close().catch(() => undefined);
  if (exists && queue.arguments === undefined && queue.type === undefined) return;
  args["x-queue-type"] = queue.type ?? "quorum";
  const ch = await quietChannel(() => conn.createChannel());
  try {
    await ch.assertQueue(queue.name, { durable: true, arguments: args });
  } catch (err) {
    const e = classifyAmqpError(err, code, location);
    if (replyCode(err) !== 406) throw e;
    throw new SluiceError(code, `rabbitmq: queue ${queue.name} exists with other arguments than the config gives (${(err as Error).message}); change the config or delete the queue`, {
      cause: err,
      retryable: false,
      location,
    });
  } finally {
    await ch.close().catch(() => undefined);
  }
}

/** Checks that `exchange` exists (a permanent error when it does not), on a channel of its own (a missing one closes it). */
export async function checkExchange(conn: ChannelModel, exchange: string, location: string, code: ErrorCode): Promise<void> {
  const ch = await quietChannel(() => conn.createChannel());
  try {
    await ch.checkExchange(exchange);
  } catch (err) {
    if (replyCode(err) !== 404) throw classifyAmqpError(err, code, location);
    throw new SluiceError(code, `rabbitmq: exchange ${exchange} does not exist; declare it first (${(err as Error).message})`, { cause: err, retryable: false, location });
  } finally {
    await ch.close().catch(() => undefined);
  }
}

/** Binds `queue` to `exchange` with `routingKey`; the exchange must exist (a permanent error otherwise). */
export async function bindQueue(conn: ChannelModel, queue: string, exchange: string, routingKey: string, location: string, code: ErrorCode): Promise<void> {
  await checkExchange(conn, exchange, location, code);
  const ch = await quietChannel(() => conn.createChannel());
  try {
    await ch.bindQueue(queue, exchange, routingKey);
  } catch (err) {
    throw classifyAmqpError(err, code, location);
  } finally {
    await ch.close().catch(() => undefined);
  }
}
