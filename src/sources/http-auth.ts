/**
 * Authentication of ingest requests: bearer tokens (several, for rotation) and HMAC-SHA256
 * webhook signatures over the raw body with a timestamp inside a replay window. Comparisons take
 * constant time.
 */
import { createHash, createHmac, timingSafeEqual } from "node:crypto";
import type { IncomingHttpHeaders } from "node:http";
import { HttpError } from "./http-body.js";

/** Validated `auth` options of the http source. */
export interface AuthOptions {
  /** Accepted bearer tokens (`Authorization: Bearer <token>`). */
  readonly tokens: readonly string[];
  readonly hmac?: {
    /** Accepted secrets: a signature by any of them passes. */
    readonly secrets: readonly string[];
    /** Header carrying `sha256=<hex>` of HMAC-SHA256(secret, `<timestamp>.<raw body>`). */
    readonly signature_header: string;
    /** Header carrying the signing time in seconds since the epoch. */
    readonly timestamp_header: string;
    /** Largest difference between the signing time and now, ms: older (or future) signatures are refused. */
    readonly tolerance: number;
  };
}

/** A fixed-length digest, so `timingSafeEqual` neither throws on nor leaks a length difference. */
function digest(s: string | Buffer): Buffer {
  return createHash("sha256").update(s).digest();
}

function header(headers: IncomingHttpHeaders, name: string): string | undefined {
  const v = headers[name];
  return Array.isArray(v) ? v[0] : v;
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
   * Checks what can be checked before the body is read. Returns `"body"` when the request signs
   * its body, which {@link checkSignature} verifies once read; throws 401 otherwise.
   */
  checkHeaders(headers: IncomingHttpHeaders): "ok" | "body" {
    if (!this.enabled) return "ok";
    const authorization = header(headers, "authorization");
    if (authorization !== undefined && this.tokens.length > 0) {
      const m = /^Bearer\s+(.+)$/i.exec(authorization);
      if (!m) throw new HttpError(401, "Authorization must be `Bearer <token>`");
      const given = digest(m[1]!.trim());
      // Every token is compared, so the time taken says nothing about which one matched.
      let ok = false;
      for (const t of this.tokens) ok = timingSafeEqual(given, t) || ok;
      if (!ok) throw new HttpError(401, "bearer token not accepted");
      return "ok";
    }
    if (this.o.hmac && header(headers, this.o.hmac.signature_header) !== undefined) return "body";
    throw new HttpError(401, this.o.hmac ? `missing credentials: a bearer token or the ${this.o.hmac.signature_header} header` : "missing credentials: Authorization: Bearer <token>");
  }

  /** Verifies the HMAC signature of the raw (still encoded) body and its timestamp; throws 401. */
  checkSignature(headers: IncomingHttpHeaders, raw: Buffer): void {
    const h = this.o.hmac!;
    const signature = header(headers, h.signature_header) ?? "";
    const timestamp = header(headers, h.timestamp_header);
    if (timestamp === undefined || !/^\d{1,12}$/.test(timestamp)) throw new HttpError(401, `${h.timestamp_header} must be the signing time in seconds since the epoch`);
    const skew = Math.abs(this.now() - Number(timestamp) * 1000);
    if (skew > h.tolerance) throw new HttpError(401, `signature timestamp outside the replay window of ${h.tolerance / 1000} s`);
    const m = /^sha256=([0-9a-f]{64})$/i.exec(signature.trim());
    if (!m) throw new HttpError(401, `${h.signature_header} must be sha256=<64 hex digits>`);
    const given = digest(Buffer.from(m[1]!.toLowerCase(), "hex"));
    let ok = false;
    for (const secret of this.secrets) {
      const expected = createHmac("sha256", secret).update(`${timestamp}.`).update(raw).digest();
      ok = timingSafeEqual(given, digest(expected)) || ok;
    }
    if (!ok) throw new HttpError(401, "signature does not match the body");
  }
}
