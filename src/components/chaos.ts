/**
 * The `chaos` block of a sink: injected latency, transient batch failures and permanent
 * per-record failures, so retry, dead-lettering and backpressure can be exercised on purpose
 * (the seed tutorial's "flaky sink", made explicit and repeatable).
 */
import { z } from "zod";
import { sleep, type Clock } from "../core/clock.js";
import { SluiceError } from "../core/errors.js";
import { mulberry32, type Random } from "../core/random.js";
import type { SluiceRecord } from "../core/record.js";
import { writeResult, type RecordFailure, type Sink, type WriteResult } from "./contracts.js";
import { duration } from "./options.js";

const rate = () => z.number().min(0).max(1);

/**
 * The options of a sink's `chaos` block, strict. `latency` is normalized to `{ min, max }` in
 * milliseconds (a single duration gives `min == max`).
 */
export const chaosOptions = z.strictObject({
  failure_rate: rate()
    .default(0)
    .describe("Probability (0..1) that a whole write fails before anything is written, with retryable ERR_CHAOS_TRANSIENT"),
  permanent_failure_rate: rate()
    .default(0)
    .describe("Probability (0..1) that each record fails on its own with permanent ERR_CHAOS_PERMANENT (dead-lettered)"),
  latency: z
    .union([duration(), z.strictObject({ min: duration(), max: duration() })])
    .transform((value) => (typeof value === "number" ? { min: value, max: value } : value))
    .refine((value) => value.min <= value.max, "latency.min must not exceed latency.max")
    .default({ min: 0, max: 0 })
    .describe("Delay added before every write: a duration, or { min, max } for a uniform delay"),
  seed: z.number().int().optional().describe("Seed of the random choices; the same seed repeats the same failures"),
});

/** Validated chaos options, as {@link withChaos} takes them. */
export type ChaosOptions = z.output<typeof chaosOptions>;

/**
 * Wraps a sink with injected faults. Per write, in this order: wait the latency (abort-aware, on
 * `clock`); then with probability `failure_rate` throw a retryable `ERR_CHAOS_TRANSIENT` without
 * calling the inner sink; then fail each record independently with probability
 * `permanent_failure_rate` (permanent `ERR_CHAOS_PERMANENT`, reported by index in the result) and
 * pass only the others to the inner sink, mapping its failures and already-present records back to
 * the original indexes.
 *
 * `random` is used only when `options.seed` is absent; with a seed the wrapper draws from its own
 * {@link mulberry32} generator, so the same seed and the same sequence of writes give the same
 * faults. Each enabled feature draws on every write, in the order above (one draw per record for
 * `permanent_failure_rate`); a feature set to 0 draws nothing, so turning one on shifts the others.
 *
 * Gotcha: a batch whose records all fail permanently never reaches the inner sink; an empty batch
 * does, unchanged.
 */
export function withChaos(sink: Sink, options: ChaosOptions, clock: Clock, random: Random = Math.random): Sink {
  const draw = options.seed === undefined ? random : mulberry32(options.seed);
  const { failure_rate: failureRate, permanent_failure_rate: permanentRate, latency } = options;

  return {
    maxInFlight: sink.maxInFlight,
    preferredWrite: sink.preferredWrite,
    connect: (signal) => sink.connect(signal),
    close: () => sink.close(),
    async write(records: readonly SluiceRecord[], signal: AbortSignal): Promise<WriteResult | void> {
      const delay = latency.max > latency.min ? latency.min + draw() * (latency.max - latency.min) : latency.min;
      // A zero delay must not schedule a timer: on a fake clock it would hang until someone advances.
      if (delay > 0) await sleep(clock, delay, signal);

      if (failureRate > 0 && draw() < failureRate) {
        throw new SluiceError("ERR_CHAOS_TRANSIENT", `chaos: injected transient failure of a batch of ${records.length}`);
      }
      if (permanentRate === 0) return sink.write(records, signal);

      const failures: RecordFailure[] = [];
      const kept: SluiceRecord[] = [];
      const keptIndex: number[] = [];
      records.forEach((record, index) => {
        if (draw() < permanentRate) {
          failures.push({
            index,
            error: new SluiceError("ERR_CHAOS_PERMANENT", `chaos: injected permanent failure of record ${record.id}`),
          });
        } else {
          kept.push(record);
          keptIndex.push(index);
        }
      });
      if (kept.length === 0 && records.length > 0) return { failures };

      const inner = await sink.write(kept, signal);
      for (const failure of inner?.failures ?? []) {
        const index = keptIndex[failure.index];
        if (index === undefined) {
          throw new SluiceError(
            "ERR_INTERNAL",
            `chaos: inner sink reported failure index ${failure.index} for a batch of ${kept.length}`,
          );
        }
        failures.push({ index, error: failure.error });
      }
      return writeResult(failures, (inner?.alreadyPresent ?? []).map((i) => keptIndex[i]!));
    },
  };
}
