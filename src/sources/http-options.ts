/**
 * The `http` source's definition: its options (the config schema, with defaults) and the factory,
 * which loads the server (`http.ts`, node:http and the body, auth and limit helpers) only when a
 * pipeline has an http source.
 */
import { z } from "zod";
import { byteSize, duration } from "../components/options.js";
import { defineLazyComponent, type Source } from "../components/contracts.js";

/** The source's config keys. */
export const options = z
  .strictObject({
    listen: z.string().regex(/^[^:]+:\d+$/, "use host:port").default("127.0.0.1:8080").describe("host:port to listen on; loopback by default"),
    path: z.string().startsWith("/").default("/v1/events").describe("Path that takes POSTed records"),
    max_body: byteSize().default(1024 * 1024).describe("Largest body, enforced while reading and again after gzip inflation"),
    max_depth: z.number().int().positive().max(1000).default(32).describe("Deepest JSON nesting of a record"),
    max_records: z.number().int().positive().default(10_000).describe("Most records in one request (413 beyond)"),
    header_timeout: duration().default(10_000).describe("A client must send its headers within this time"),
    request_timeout: duration().default(30_000).describe("A client must send its whole request within this time"),
    body_timeout: duration().default(5_000).describe("Longest pause between two parts of a body (408 and the connection closed past it), so a stalled body gives its bytes of the body budget back"),
    keep_alive_timeout: duration().default(5_000).describe("An idle keep-alive connection is closed after this time"),
    ack_timeout: duration()
      .default(30_000)
      .describe("Longest a request waits: for room in the buffer (in line; 429 past it), then, without a durable buffer, for the sinks to commit its records (503 past it)"),
    retry_after: duration().default(1000).describe("Retry-After sent with 429 and 503 (rounded up to whole seconds)"),
    max_connections: z.number().int().positive().default(1024).describe("Most open connections; past it a new connection is closed at once and counted"),
    max_body_bytes_in_flight: byteSize()
      .optional()
      .describe("Most bytes of request bodies held at once, across all requests (503 past it); default a quarter of buffer.max_bytes, at least 2 x max_body"),
    auth: z
      .strictObject({
        tokens: z.array(z.string().min(16, "a token needs at least 16 characters")).default([]).describe("Accepted bearer tokens; use ${ENV} to read them from the environment"),
        hmac: z
          .strictObject({
            secrets: z.array(z.string().min(16, "a secret needs at least 16 characters")).min(1).describe("Accepted signing secrets"),
            signature_header: z
              .string()
              .toLowerCase()
              .default("x-sluice-signature")
              .describe("Header with sha256=<hex HMAC of `<timestamp>.<raw body>`, or of `<timestamp>:<idempotency-key>\\n<raw body>` when the request has an Idempotency-Key>"),
            timestamp_header: z.string().toLowerCase().default("x-sluice-timestamp").describe("Header with the signing time, seconds since the epoch"),
            tolerance: duration().default(300_000).describe("Replay window: signatures older or newer than this are refused; within it a repeated signature gets the first answer again"),
          })
          .optional(),
        public_metrics: z.boolean().default(false).describe("Serve /metrics without authentication (the health endpoints always are)"),
      })
      .optional()
      .describe("Bearer tokens and/or HMAC webhook signatures; absent = no authentication"),
  })
  .refine((o) => o.header_timeout <= o.request_timeout, { path: ["header_timeout"], message: "must not exceed request_timeout" })
  .refine((o) => o.max_body_bytes_in_flight === undefined || o.max_body_bytes_in_flight >= o.max_body, {
    path: ["max_body_bytes_in_flight"],
    message: "must be at least max_body, or a body of max_body bytes could never be taken",
  });

/** Validated options of the `http` source. */
export type HttpSourceOptions = z.output<typeof options>;

/**
 * The `http` source: an ingest endpoint. Record ids come from the payload's `id_field`; without
 * one, from the `Idempotency-Key` header, a digest of the body and the record's index in the
 * request (so a client's retry of the same request does not duplicate, and another body under a
 * key sluice forgot takes ids of its own), else from a random request id.
 *
 * Gotchas: without a durable buffer, the 202 waits for every sink to commit (up to
 * `ack_timeout`); with one, only for the disk. A request that does not fit a full buffer waits
 * in line, first come first served whatever its size, when the buffer expects to take it within
 * `ack_timeout` at the pace it drained lately and the waiting bodies hold less than half the
 * body budget; else it gets 429 at once, whatever `when_full` says (except `drop_newest`, which
 * answers 202 with `dropped`). A sink that stalled drains nothing, so then nobody waits. While
 * the pipeline drains after a stop, the server keeps listening: `/health/ready` and new requests
 * answer 503. A request of more records than `buffer.chunk_size` goes in as several chunks; once
 * one is taken the others wait for room (up to `ack_timeout`, then 503, and the chunks taken are
 * still delivered, which a retry with the same Idempotency-Key absorbs).
 * A concurrent repeat of a request (same Idempotency-Key and body, or same signature) waits for
 * the first and gets its answer; a repeat of one answered 202 gets that 202 without a second
 * enqueue. Bytes of bodies are counted as they arrive (never by the declared length): once
 * `max_body_bytes_in_flight` are held, a body's next part is answered 503, and a body that sends
 * nothing for `body_timeout` is answered 408, its bytes given back.
 */
export const definition = defineLazyComponent({
  type: "http",
  summary: "HTTP ingest endpoint: POST JSON, JSON arrays or NDJSON (gzip ok); 202 once durable",
  options,
  async create(opts, ctx): Promise<Source> {
    const { HttpSource } = await import("./http.js");
    return new HttpSource(opts, ctx);
  },
});
