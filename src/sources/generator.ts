/**
 * The `generator` source: the seed tutorial's sensor readings, deterministic for a given seed.
 * Used by the demo, benchmarks and tests; it needs no external system.
 */
import { setImmediate as yieldToEventLoop } from "node:timers/promises";
import { z } from "zod";
import { sleep, type Clock } from "../core/clock.js";
import { mulberry32 } from "../core/random.js";
import type { Entry, JsonObject } from "../core/record.js";
import { defineComponent, type ComponentContext, type Source, type SourceHandle } from "../components/contracts.js";

const options = z.strictObject({
  count: z
    .number()
    .int()
    .nonnegative()
    .optional()
    .describe("Records to emit before the source finishes; absent = never finishes"),
  rate: z
    .number()
    .positive()
    .optional()
    .describe("Records per second; absent = as fast as the buffer takes them"),
  keys: z.number().int().positive().default(10).describe("Number of distinct sensors (payload `sensor` is `sensor-<k>`)"),
  seed: z.number().int().default(1).describe("Seed of the pseudo-random sensor choice and values; same seed, same records"),
  payload_bytes: z
    .number()
    .int()
    .nonnegative()
    .default(0)
    .describe("Pads each payload with a `pad` string so its JSON is about this many bytes; 0 = no padding"),
});

/** Validated options of the `generator` source. */
export type GeneratorOptions = z.output<typeof options>;

/** The checkpoint a generator hands to `enqueue`: records emitted so far, i.e. the `seq` of the chunk's last record. */
export type GeneratorCheckpoint = number;

// JSON of a payload but its id, sensor and seq: the rest of {"id":"","sensor":"","value":,"unit":"C","ts":"","seq":}
// is 56 bytes, its ISO timestamp (years 1970-9999) always 24, and its value, rounded to 2 decimals
// in [10, 40), typically 5 ("21.53").
const BASE_JSON_BYTES = 56 + 24 + 5;
// `,"pad":""` added when padding.
const PAD_OVERHEAD_BYTES = 9;
// Sensor names are cached up to this many keys; past it they are built per record.
const MAX_CACHED_SENSORS = 65_536;
// With a rate, a chunk waits for at most this much time's worth of records, so records are not
// held back for long at low rates while high rates still get full chunks.
const RATE_TICK_MS = 10;

/**
 * A token bucket that paces chunks instead of single records: one timer per chunk keeps high
 * rates (1e5+/s) accurate, where a sleep per record would be bounded by timer resolution.
 */
class ChunkPacer {
  private tokens = 0;
  private last: number;
  /** Records a chunk should wait for: ~RATE_TICK_MS worth, at least 1, at most a chunk. */
  readonly target: number;
  private readonly capacity: number;

  constructor(
    private readonly clock: Clock,
    private readonly rate: number,
    chunkSize: number,
  ) {
    this.last = clock.now();
    this.target = Math.max(1, Math.min(chunkSize, Math.floor((rate * RATE_TICK_MS) / 1000)));
    // Room for a late timer's worth of tokens (so lateness does not lower the rate) but not for a
    // long burst after the buffer blocked us.
    this.capacity = Math.max(this.target * 2, Math.ceil(rate / 10));
  }

  /** Waits until at least `min(want, target)` records may go, then takes and returns how many may (≤ want). */
  async take(want: number, signal: AbortSignal): Promise<number> {
    this.refill();
    const need = Math.min(want, this.target);
    if (this.tokens < need) {
      await sleep(this.clock, Math.ceil(((need - this.tokens) * 1000) / this.rate), signal);
      this.refill();
    }
    const n = Math.min(want, Math.floor(this.tokens));
    this.tokens -= n;
    return n;
  }

  private refill(): void {
    const now = this.clock.now();
    this.tokens = Math.min(this.capacity, this.tokens + ((now - this.last) * this.rate) / 1000);
    this.last = now;
  }
}

class GeneratorSource implements Source {
  readonly acks = "ordered";
  readonly whenFull = "wait";
  private readonly sensors: string[] = [];

  constructor(
    private readonly opts: GeneratorOptions,
    private readonly ctx: ComponentContext,
  ) {
    const cached = Math.min(opts.keys, MAX_CACHED_SENSORS);
    for (let k = 1; k <= cached; k++) this.sensors.push(`sensor-${k}`);
  }

  async run(handle: SourceHandle, signal: AbortSignal): Promise<void> {
    const { count, rate, keys, payload_bytes: payloadBytes } = this.opts;
    const random = mulberry32(this.opts.seed);
    const pacer = rate === undefined ? undefined : new ChunkPacer(this.ctx.clock, rate, handle.chunkSize);
    const idPrefix = `${this.ctx.name}-`;
    const pad = payloadBytes > 0 ? "x".repeat(payloadBytes) : "";
    let n = 0;

    while (!signal.aborted && (count === undefined || n < count)) {
      let size = count === undefined ? handle.chunkSize : Math.min(handle.chunkSize, count - n);
      if (pacer) {
        try {
          size = await pacer.take(size, signal);
        } catch {
          return; // aborted while waiting for the rate
        }
        if (size === 0) continue; // float rounding left the bucket a hair short; wait again
      }
      // One timestamp per chunk: a chunk is built within microseconds, and toISOString per record
      // would be a measurable share of the hot path.
      const ts = new Date(this.ctx.clock.now()).toISOString();
      const chunk: Entry[] = new Array(size);
      for (let i = 0; i < size; i++) {
        n++;
        const seqText = String(n);
        const id = idPrefix + seqText;
        const k = Math.floor(random() * keys);
        const sensor = k < this.sensors.length ? this.sensors[k]! : `sensor-${k + 1}`;
        // Each sensor hovers around its own baseline, like the tutorial's readings.
        const value = Math.round((15 + (k % 10) + random() * 5) * 100) / 100;
        const payload: JsonObject = { id, sensor, value, unit: "C", ts, seq: n };
        let bytes = BASE_JSON_BYTES + id.length + sensor.length + seqText.length;
        if (payloadBytes > 0) {
          const padLength = Math.max(0, payloadBytes - bytes - PAD_OVERHEAD_BYTES);
          payload.pad = pad.slice(0, padLength);
          bytes += PAD_OVERHEAD_BYTES + padLength;
        }
        chunk[i] = handle.record(payload, bytes, n);
      }
      const outcome = await handle.enqueue(chunk, n satisfies GeneratorCheckpoint);
      if (outcome === "stopping") return;
      // When the buffer has room, enqueue resolves without a macrotask; yield so timers, signals
      // and I/O still run while an unpaced generator spins.
      if (!pacer) await yieldToEventLoop();
    }
  }

  ack(_checkpoint: unknown): void {
    // Nothing to persist: a generator does not resume, it starts again from its seed.
  }

  async close(): Promise<void> {}
}

/**
 * The `generator` source: sensor readings `{ id, sensor, value, unit, ts, seq }` with `id` =
 * `<source name>-<seq>` and `seq` counting from 1.
 *
 * Gotchas: `ts` is the clock's time when the record's chunk was built (shared by the chunk).
 * The checkpoint is the number of records emitted; `ack` ignores it, so a restarted pipeline
 * emits the same ids again (sinks dedupe by id). The byte estimate is computed from the known
 * shape (the value's length is assumed), not by serializing.
 */
export const definition = defineComponent({
  type: "generator",
  summary: "Generates sensor readings (deterministic per seed), optionally rate-limited and padded",
  options,
  create: (opts, ctx): Source => new GeneratorSource(opts, ctx),
});
