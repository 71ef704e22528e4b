/**
 * Authentication of ingest requests: bearer tokens (several, for rotation) and HMAC-SHA256
 * webhook signatures with a timestamp inside a replay window. Everything but the signature itself
 * is checked from the headers, before the body is read; the signature is computed while the body
 * streams in. Comparisons take constant time.
 */
import { createHash, createHmac, timingSafeEqual, type Hmac } from "node:crypto";
import type { IncomingHttpHeaders } from "node:http";
import { HttpError } from "./http-body.js";

/** Validated `auth` options of the http source. */
export interface AuthOptions {
  /** Accepted bearer tokens (`Authorization: Bearer <token>`). */
  readonly tokens: readonly string[];
  readonly hmac?: {
    /** Accepted secrets: a signature by any of them passes. */
    readonly secrets: readonly string[];
    /** Header carrying `sha256=<hex>` of HMAC-SHA256(secret, {@link signedPrefix} + raw body). */
    readonly signature_header: string;
    /** Header carrying the signing time in seconds since the epoch. */
    readonly timestamp_header: string;
    /** Largest difference between the signing time and now, ms: older (or future) signatures are refused. */
    readonly tolerance: number;
  };
}

/**
 * What is signed before the raw body: `<timestamp>.` without an Idempotency-Key, and
 * `<timestamp>:<idempotency-key>\n` with one. The two forms differ at the first byte after the
 * digits, and a header value cannot hold a newline, so no signed string reads two ways: a
 * signature cannot be moved to another key, nor a body's first line turned into a key.
 */
export function signedPrefix(timestamp: string, idempotencyKey: string | undefined): string {
  return idempotencyKey === undefined ? `${timestamp}.` : `${timestamp}:${idempotencyKey}\n`;
}

/** A fixed-length digest, so `timingSafeEqual` neither throws on nor leaks a length difference. */
function digest(s: string | Buffer): Buffer {
  return createHash("sha256").update(s).digest();
}

function header(headers: IncomingHttpHeaders, name: string): string | undefined {
  const v = headers[name];
  return Array.isArray(v) ? v[0] : v;
}

/**
 * The signature check of one request, fed the raw body as it arrives ({@link update}), decided
 * by {@link verify} once it ended: no copy of the body is kept for it.
 */
export class SignatureCheck {
  private readonly macs: Hmac[];

  constructor(
    secrets: readonly string[],
    prefix: string,
    /** The signature sent, lower-case hex: with the timestamp, it names the signed request (replay memory). */
    readonly signature: string,
    /** When the signature stops being accepted, ms since the epoch. */
    readonly expiresAt: number,
  ) {
    this.macs = secrets.map((s) => createHmac("sha256", s).update(prefix));
  }

  update(chunk: Buffer): void {
    for (const m of this.macs) m.update(chunk);
  }

  /** Throws 401 unless a secret's HMAC of everything fed matches the signature. */
  verify(): void {
    const given = digest(Buffer.from(this.signature, "hex"));
    // Every secret is compared, so the time taken says nothing about which one matched.
    let ok = false;
    for (const m of this.macs) ok = timingSafeEqual(given, digest(m.digest())) || ok;
    if (!ok) throw new HttpError(401, "signature does not match the body");
  }
}

/** Checks requests against the configured methods. With none configured, every request passes. */
export class Authenticator {
  private readonly tokens: Buffer[];
  private readonly secrets: readonly string[];

  constructor(
    private readonly o: AuthOptions,
    private readonly now: () => number,
  ) {
    this.tokens = o.tokens.map(digest);
    this.secrets = o.hmac?.secrets ?? [];
  }

  /** True when any method is configured. */
  get enabled(): boolean {
    return this.tokens.length > 0 || this.secrets.length > 0;
  }

  /**
   * Checks what can be checked before the body is read: the token, or the signature's form and
   * its timestamp. Returns `"ok"`, or the {@link SignatureCheck} to feed the raw body when the
   * request signs it; throws 401.
   */
  checkHeaders(headers: IncomingHttpHeaders, idempotencyKey: string | undefined): "ok" | SignatureCheck {
    if (!this.enabled) return "ok";
    const authorization = header(headers, "authorization");
    if (authorization !== undefined && this.tokens.length > 0) {
      const m = /^Bearer\s+(.+)$/i.exec(authorization);
      if (!m) throw new HttpError(401, "Authorization must be `Bearer <token>`");
      const given = digest(m[1]!.trim());
      let ok = false;
      for (const t of this.tokens) ok = timingSafeEqual(given, t) || ok;
      if (!ok) throw new HttpError(401, "bearer token not accepted");
      return "ok";
    }
    const h = this.o.hmac;
    const signature = h && header(headers, h.signature_header);
    if (!h || signature === undefined) {
      throw new HttpError(401, h ? `missing credentials: a bearer token or the ${h.signature_header} header` : "missing credentials: Authorization: Bearer <token>");
    }
    const timestamp = header(headers, h.timestamp_header);
    if (timestamp === undefined || !/^\d{1,12}$/.test(timestamp)) throw new HttpError(401, `${h.timestamp_header} must be the signing time in seconds since the epoch`);
    const signedAt = Number(timestamp) * 1000;
    if (Math.abs(this.now() - signedAt) > h.tolerance) throw new HttpError(401, `signature timestamp outside the replay window of ${h.tolerance / 1000} s`);
    const m = /^sha256=([0-9a-f]{64})$/i.exec(signature.trim());
    if (!m) throw new HttpError(401, `${h.signature_header} must be sha256=<64 hex digits>`);
    return new SignatureCheck(this.secrets, signedPrefix(timestamp, idempotencyKey), m[1]!.toLowerCase(), signedAt + h.tolerance);
  }
}
