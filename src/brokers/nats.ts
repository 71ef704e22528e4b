/**
 * What the NATS JetStream source and sink share: nats.js loaded on first use, the headers that
 * carry a record's envelope, and the classification of its errors.
 */
import type { NodeConnectionOptions } from "@nats-io/transport-node";
import { z } from "zod";
import { classify, SluiceError, type ErrorCode } from "../core/errors.js";

/** The two nats.js modules sluice uses, once {@link loadNats} has loaded them. */
export interface NatsModules {
  readonly core: typeof import("@nats-io/transport-node");
  readonly js: typeof import("@nats-io/jetstream");
}

/** nats.js, imported on first use only: a pipeline without a NATS source or sink never pays for loading it. */
let natsModules: Promise<NatsModules> | undefined;
/** The loaded modules, for classifying errors synchronously; undefined until {@link loadNats} resolved. */
let loadedNats: NatsModules | undefined;

/** Imports `@nats-io/transport-node` and `@nats-io/jetstream` once (later calls share the same promise). */
export function loadNats(): Promise<NatsModules> {
  natsModules ??= Promise.all([import("@nats-io/transport-node"), import("@nats-io/jetstream")]).then(([core, js]) => (loadedNats = { core, js }));
  return natsModules;
}

/** The connection options of the `nats_jetstream` source and sink: where the servers are and how to log in. */
export const natsConnectionOptions = {
  servers: z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]).describe("Server URL(s), nats://host:4222; several for a cluster"),
  user: z.string().min(1).optional().describe("User name, with password"),
  password: z.string().optional().describe("Password of user; write ${NATS_PASSWORD} to keep it out of the file"),
  token: z.string().min(1).optional().describe("Authentication token, instead of user and password"),
};

/** Checks the credentials of {@link natsConnectionOptions}: a token or a user and password, not both, and never half a pair. */
export function checkNatsCredentials(o: { user?: string | undefined; password?: string | undefined; token?: string | undefined }, ctx: z.RefinementCtx): void {
  if (o.token !== undefined && o.user !== undefined) ctx.addIssue({ code: "custom", path: ["token"], message: "give token or user and password, not both" });
  if ((o.user === undefined) !== (o.password === undefined)) {
    ctx.addIssue({ code: "custom", path: [o.user === undefined ? "user" : "password"], message: "user and password go together" });
  }
}

/** `servers` as a list. */
export function serverList(servers: string | readonly string[]): readonly string[] {
  return typeof servers === "string" ? [servers] : servers;
}

/** Header with the record's key (percent-encoded), absent for a keyless record. */
export const KEY_HEADER = "Sluice-Key";
/** Header with the record's event time (ISO 8601), absent when it has none. */
export const EVENT_TIME_HEADER = "Sluice-Event-Time";

/** JetStream API codes of a stream at its limits with `discard: new`: consumers make room again. */
const STREAM_FULL_CODES = new Set([10077, 10078, 10047]);

/**
 * A string as a header value: `%` and every byte outside printable ASCII percent-encoded, from
 * UTF-8. Injective, so distinct ids stay distinct message ids, and safe for a header, which cannot
 * hold a line break and loses leading and trailing spaces. `decodeURIComponent` reverses it. Lone
 * surrogates become U+FFFD first, as in any UTF-8 text.
 */
export function headerValue(text: string): string {
  if (/^[\x21-\x24\x26-\x7e]*$/.test(text)) return text;
  let out = "";
  for (const byte of Buffer.from(text, "utf8")) {
    out += byte >= 0x21 && byte <= 0x7e && byte !== 0x25 ? String.fromCharCode(byte) : `%${byte.toString(16).toUpperCase().padStart(2, "0")}`;
  }
  return out;
}

/**
 * Wraps a nats.js error as a {@link SluiceError}: bad credentials, a permission violation, an
 * invalid subject or argument, JetStream not enabled are a permanent `code`; a JetStream API error
 * is retryable when the stream is at its limits or the server answers 503, else permanent
 * ERR_SINK_REJECTED; anything else (connection refused or lost, a timeout, no responders while a
 * stream leader is elected) is retryable `code`. A programmer error stays a permanent ERR_INTERNAL.
 */
export function classifyNatsError(err: unknown, code: ErrorCode, location: string): SluiceError {
  if (err instanceof SluiceError) return err;
  const message = `nats: ${err instanceof Error ? err.message : String(err)}`;
  // Before nats.js is loaded no error can be one of its classes: only the generic checks apply.
  const core = loadedNats?.core;
  if (
    (core !== undefined &&
      (err instanceof core.AuthorizationError ||
        err instanceof core.UserAuthenticationExpiredError ||
        err instanceof core.PermissionViolationError ||
        err instanceof core.InvalidSubjectError ||
        err instanceof core.InvalidArgumentError)) ||
    // The package does not export the class of this one; its name is set and stable.
    (err instanceof Error && err.name === "JetStreamNotEnabled")
  ) {
    return new SluiceError(code, message, { cause: err, retryable: false, location });
  }
  if (loadedNats !== undefined && err instanceof loadedNats.js.JetStreamApiError) {
    if (err.status === 503 || STREAM_FULL_CODES.has(err.code)) return new SluiceError(code, message, { cause: err, retryable: true, location });
    return new SluiceError(code === "ERR_SINK_WRITE" ? "ERR_SINK_REJECTED" : code, message, { cause: err, retryable: false, location });
  }
  const wrapped = classify(err, code);
  if (wrapped.code === "ERR_INTERNAL") return wrapped;
  return new SluiceError(code, message, { cause: err, retryable: true, location });
}

/**
 * `work`, unless `signal` aborts first: then a rejection with `ERR_ABORTED` at once (nats.js calls
 * take no signal, and a server that accepts and never answers holds them for their whole timeout).
 * What `work` resolves to after that is passed to `late` (a connection to close); a later rejection
 * is ignored.
 */
export function unlessAborted<T>(work: Promise<T>, signal: AbortSignal, location: string, late?: (value: T) => void): Promise<T> {
  const aborted = () => new SluiceError("ERR_ABORTED", "nats: aborted", { cause: signal.reason, location });
  if (signal.aborted) {
    work.then(late, () => undefined);
    return Promise.reject(aborted());
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => {
      work.then(late, () => undefined);
      reject(aborted());
    };
    signal.addEventListener("abort", onAbort, { once: true });
    work.then(
      (value) => {
        signal.removeEventListener("abort", onAbort);
        resolve(value);
      },
      (err: unknown) => {
        signal.removeEventListener("abort", onAbort);
        reject(err);
      },
    );
  });
}

/** Whether `err` is the JetStream API's answer that the stream does not exist. */
export function isStreamNotFound(err: unknown): boolean {
  const js = loadedNats?.js;
  return js !== undefined && err instanceof js.JetStreamApiError && err.code === js.JetStreamApiCodes.StreamNotFound;
}

/** How long `connect` waits for the server, in ms. */
export const CONNECT_TIMEOUT_MS = 10_000;

/**
 * The connection options the source and the sink share. Once connected, nats.js reconnects for
 * ever on its own: a write or pull while it does times out, and the engine retries it.
 */
export function connectOptions(s: { readonly servers: readonly string[]; readonly user?: string | undefined; readonly password?: string | undefined; readonly token?: string | undefined }): NodeConnectionOptions {
  return { servers: [...s.servers], name: "sluice", user: s.user, pass: s.password, token: s.token, timeout: CONNECT_TIMEOUT_MS, maxReconnectAttempts: -1 };
}
