/**
 * The `redis_streams` source's options (the config schema, with defaults), what the factory is
 * given, and the combinations it refuses.
 */
import { hostname } from "node:os";
import { z } from "zod";
import type { OptionConflict, PipelineShape } from "../components/contracts.js";
import { duration } from "../components/options.js";
import { ENVELOPE_FIELDS, partitionsOption } from "../brokers/redis.js";
import type { EntryFormat } from "./redis-streams-entries.js";

/** `lease_ttl` when `ordered` is on and it is not given, in ms. */
const DEFAULT_LEASE_TTL_MS = 10_000;

/** The source's config keys. */
export const options = z
  .strictObject({
    url: z
      .string()
      .min(1)
      .describe("Server URL: redis://[user:password@]host:6379[/db], rediss:// for TLS; write ${REDIS_URL} to keep the password out of the file"),
    stream: z.string().min(1).describe("Stream key to read; with partitions, the prefix of <stream>:0 .. <stream>:<partitions - 1> (as the redis_streams sink writes them)"),
    group: z.string().min(1).default("sluice").describe("Consumer group, created when missing (with the stream, MKSTREAM); every worker of a fleet names the same one"),
    start: z
      .union([z.enum(["0", "$"]), z.literal(0).transform(() => "0" as const)])
      .default("0")
      .describe('Where a group created by this source starts: "0" (everything already in the stream) or "$" (only entries added from then on)'),
    consumer: z.string().min(1).optional().describe("This worker's consumer name in the group; default <host name>-<pid>, unique per worker"),
    body_key: z
      .string()
      .min(1)
      .default("body")
      .describe("Entry field holding the payload as JSON; an entry without it becomes a payload of its fields (as strings)"),
    metadata_field: z
      .string()
      .min(1)
      .default("_redis")
      .describe("Payload field the entry's other fields (besides the body, id, key and event_time) go under, when it has any"),
    partitions: partitionsOption("Read <stream>:0 .. <stream>:<partitions - 1> in one group (what the redis_streams sink writes with partitions); 1 reads stream itself"),
    block: duration()
      .default(2_000)
      .refine((ms) => ms >= 1 && ms <= 60_000, "must be between 1 ms and 60 s")
      .describe("Longest one XREADGROUP waits for new entries (BLOCK); default 2s"),
    claim_idle: duration()
      .default(60_000)
      .refine((ms) => ms >= 10, "must be at least 10 ms")
      .describe("An entry pending this long with a consumer that is not working on it (it died or stalled) is claimed by this one; default 60s"),
    max_deliveries: z
      .number()
      .int()
      .positive()
      .default(10)
      .describe("An entry delivered this many times and still not acked goes to the dead letters (ERR_MAX_DELIVERIES) and is acked"),
    ordered: z
      .boolean()
      .default(false)
      .describe("Each partition stream is read by one worker of the fleet at a time (a lease in Redis), which first claims what the previous one left unacked: records of one key reach the sinks in order across workers"),
    lease_ttl: duration()
      .refine((ms) => ms >= 1_000 && ms <= 600_000, "must be between 1s and 10m")
      .optional()
      .describe("ordered: how long a partition's lease outlives a worker that stopped renewing it (renewed every third of it); default 10s"),
  })
  .superRefine((o, ctx) => {
    if (o.lease_ttl !== undefined && !o.ordered) ctx.addIssue({ code: "custom", path: ["lease_ttl"], message: "lease_ttl applies only to ordered: true" });
    for (const key of ["body_key", "metadata_field"] as const) {
      if ((ENVELOPE_FIELDS as readonly string[]).includes(o[key])) {
        ctx.addIssue({ code: "custom", path: [key], message: `"${o[key]}" is an envelope field (${ENVELOPE_FIELDS.join(", ")})` });
      }
    }
  });

/** Everything a {@link createRedisStreamsSource} needs; the definition builds it from validated options. */
export interface RedisStreamsSourceSettings extends EntryFormat {
  /** Server URL. Never put into messages: it may hold a password. */
  readonly url: string;
  /** Every stream of the source (`stream`, or its partitions): groups are created on each. */
  readonly streams: readonly string[];
  readonly group: string;
  readonly start: "0" | "$";
  readonly consumer: string;
  /** ms */
  readonly blockMs: number;
  /** ms */
  readonly claimIdleMs: number;
  readonly maxDeliveries: number;
  /**
   * Ordered fleet: each stream is read only under a lease, and only while it is held. `stream`
   * names the fleet's registry; `ttlMs` is the lease time to live.
   */
  readonly lease?: { readonly stream: string; readonly ttlMs: number };
}

/**
 * Why `ordered` cannot work in this pipeline: with the durable buffer, entries are acked once on
 * this worker's disk, and a lease can no longer say who still holds older entries of a key.
 */
export function orderedConflicts(opts: z.output<typeof options>, pipeline: PipelineShape): OptionConflict[] {
  if (!opts.ordered || !pipeline.durableBuffer) return [];
  return [
    {
      key: "ordered",
      message:
        "ordered: true cannot keep order through buffer.durable: the durable buffer acks entries once they are on this worker's disk, so after a crash or a lost lease the next owner of the partition reads newer entries while older ones wait in this worker's buffer; use the memory buffer (Redis keeps what is not acked)",
    },
  ];
}

/** A `redis_streams` source's settings from its validated options: one stream per partition, durations in whole ms. */
export function settingsFrom(opts: z.output<typeof options>): RedisStreamsSourceSettings {
  return {
    url: opts.url,
    streams: opts.partitions === 1 ? [opts.stream] : Array.from({ length: opts.partitions }, (_, i) => `${opts.stream}:${i}`),
    ...(opts.ordered && { lease: { stream: opts.stream, ttlMs: Math.round(opts.lease_ttl ?? DEFAULT_LEASE_TTL_MS) } }),
    group: opts.group,
    start: opts.start,
    consumer: opts.consumer ?? defaultConsumer(),
    bodyKey: opts.body_key,
    metadataField: opts.metadata_field,
    blockMs: Math.max(1, Math.round(opts.block)),
    claimIdleMs: Math.round(opts.claim_idle),
    maxDeliveries: opts.max_deliveries,
  };
}

/** The default consumer name: unique per worker process on a host. */
function defaultConsumer(): string {
  return `${hostname()}-${process.pid}`;
}
