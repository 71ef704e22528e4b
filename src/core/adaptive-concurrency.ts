/**
 * Adaptive concurrency: an AIMD limit on a sink's batches in flight, driven by the latency and the
 * errors the sink shows, after Vector's Adaptive Request Concurrency
 * (vectordotdev/vector `src/sinks/util/adaptive_concurrency/`). Pure: no timers, no I/O; the
 * clock is injected and only read.
 */
import type { Clock } from "./clock.js";

/** `concurrency: adaptive` as the engine takes it (the YAML keys, camelCased, defaults applied). */
export interface AdaptiveSettings {
  readonly tag: "adaptive";
  /** The limit at start. Clamped to [1, max]. */
  readonly initial: number;
  /** The highest the limit goes. The sink runner creates this many lanes, capped by the sink's `maxInFlight`. */
  readonly max: number;
  /** On back pressure or a latency rise the limit becomes `floor(limit * decreaseRatio)`: at least one lower, never below 1. In (0, 1). */
  readonly decreaseRatio: number;
  /** Weight of each new window in the moving average (and variance) of past latency. In (0, 1]. */
  readonly ewmaAlpha: number;
  /** A window's mean latency above `past mean + rttDeviationScale * past deviation` counts as a rise. At least 0. */
  readonly rttDeviationScale: number;
}

/**
 * How many batches a sink may have in flight: a fixed number (that many lanes, all usable at once)
 * or {@link AdaptiveSettings} (`max` lanes, of which an AIMD limit may be in flight at once).
 */
export type Concurrency = number | AdaptiveSettings;

/**
 * What one write attempt says about the sink's load, reported when it ends.
 * - `ok`: the sink answered (records committed, or rejected for good one by one): its duration
 *   is a latency sample.
 * - `back_pressure`: a retryable error, whole batch or per record (connection, lock, timeout,
 *   overload): the sink is struggling, the limit goes down.
 * - `rejected`: a permanent error of the whole batch (bad data, a bug): says nothing about load.
 */
export interface WriteOutcome {
  readonly tag: "ok" | "back_pressure" | "rejected";
  /** When the attempt started, on the controller's clock. */
  readonly startedAt: number;
}

/** The limit before an increase and the latency measured at it. */
interface Probe {
  readonly limit: number;
  readonly rtt: number;
}

/** Moving mean and variance of past window latencies, in ms. */
interface PastRtt {
  mean: number;
  variance: number;
}

/**
 * The limiter and its controller. Callers take a slot with {@link tryAcquire} before starting a
 * batch, report every write attempt with {@link observe}, and give the slot back with
 * {@link release} when the batch is done (committed or dead-lettered).
 *
 * The controller works in windows. A window lasts at least the past mean latency and closes at
 * the first report after that once it holds back pressure or a latency sample from every slot
 * (`limit` samples: one full round, not just the batches that happened to finish first). Then,
 * at most one change per window:
 * 1. back pressure in the window: the limit becomes `floor(limit * decreaseRatio)`;
 * 2. the previous window raised the limit from L and this one shows the increase did not pay:
 *    batches per ms (limit / latency, Little's law) rose by less than half of the ideal
 *    (L + 1) / L. Latency grew with the limit, so the extra batch only queued in the sink: back to L;
 * 3. the window's mean latency is more than `rttDeviationScale` standard deviations above the
 *    past mean (the sink got slower): multiplicative decrease as in 1;
 * 4. every slot was in use (there was demand for more) and the latency is not above the past
 *    mean: the limit grows by one, and the next window checks the increase (2);
 * 5. otherwise it holds: noise inside the band moves nothing.
 * The window's mean then joins the moving mean and variance of past latency (weight `ewmaAlpha`),
 * except when rule 2 or 3 judged an increase: that window measured a limit just left, and
 * learning its latency as normal would let the next increase pass.
 *
 * 1, 3, 4 and 5 are Vector's controller. Rule 2 and the full rounds are not: without them, on a
 * sink whose latency grows in proportion to the limit past its capacity (throughput flat, work
 * queued), each increase raises latency by a step the moving average soon absorbs, and the limit
 * creeps up to `max`. Also unlike Vector, a report of an attempt that started before the last
 * change is ignored: its error was already answered (a burst of failures of batches in flight
 * together costs one decrease, not one each) and its latency measured the old limit. After a
 * decrease, latency counts only from the first batch admitted under the lower limit: until the
 * batches above it drain, the sink is as busy as before.
 *
 * Gotcha: a lower limit does not cancel batches already in flight; new ones wait until fewer
 * than `limit` are.
 */
export class AdaptiveConcurrency {
  private current: number;
  private held = 0;
  private past: PastRtt | undefined;
  private windowEnd = Number.NEGATIVE_INFINITY;
  private changedAt = Number.NEGATIVE_INFINITY;
  /** Latency samples count only from attempts started at or after this. */
  private measureFrom = Number.NEGATIVE_INFINITY;
  /** Set by an increase: the limit and window latency before it, for the next window to compare with. */
  private probe: Probe | undefined;
  private rttSum = 0;
  private rttCount = 0;
  private backPressure = false;
  private reachedLimit = false;

  constructor(
    private readonly settings: AdaptiveSettings,
    private readonly clock: Pick<Clock, "now">,
  ) {
    this.current = Math.min(Math.max(1, Math.floor(settings.initial)), this.max);
  }

  /** The current limit: batches that may be in flight at once. Between 1 and `max`. */
  get limit(): number {
    return this.current;
  }

  /** Slots held right now (batches in flight, retry waits included). */
  get inFlight(): number {
    return this.held;
  }

  /** Whether {@link tryAcquire} would succeed now. */
  get available(): boolean {
    return this.held < this.current;
  }

  private get max(): number {
    return Math.max(1, Math.floor(this.settings.max));
  }

  /** Takes a slot if fewer than `limit` are held. A refusal counts as demand above the limit. */
  tryAcquire(): boolean {
    if (this.held >= this.current) {
      this.reachedLimit = true;
      return false;
    }
    this.held++;
    if (this.held >= this.current) this.reachedLimit = true;
    // The first batch admitted after a decrease is the first to run under the lower limit.
    if (this.measureFrom === Number.POSITIVE_INFINITY) this.measureFrom = this.clock.now();
    return true;
  }

  /** Gives a slot back. */
  release(): void {
    if (this.held > 0) this.held--;
  }

  /**
   * Reports one write attempt. Returns true when this closed a window and the limit changed.
   */
  observe(outcome: WriteOutcome): boolean {
    if (outcome.startedAt < this.changedAt) return false;
    const now = this.clock.now();
    const rtt = Math.max(0, now - outcome.startedAt);
    if (outcome.tag === "back_pressure") this.backPressure = true;
    else if (outcome.tag === "ok" && outcome.startedAt >= this.measureFrom) {
      this.rttSum += rtt;
      this.rttCount++;
    }
    if (now <= this.windowEnd || (this.rttCount < this.current && !this.backPressure)) return false;

    const before = this.current;
    const windowRtt = this.rttCount > 0 ? this.rttSum / this.rttCount : undefined;
    const probe = this.probe;
    this.probe = undefined;
    let fold = windowRtt !== undefined;
    if (this.past !== undefined) {
      const verdict = this.adjust(this.past, windowRtt, probe);
      // A window that measured an increase and found it did not pay describes a limit we just
      // left: folding it in would teach the average that its higher latency is normal, and the
      // next increase would pass against it (the limit creeps up a step at a time).
      if (probe !== undefined && verdict === "rise") fold = false;
    }
    // With no latency measured yet there is nothing to compare with, but back pressure is still a reason to back off.
    else if (this.backPressure) this.decrease();
    if (fold) this.remember(windowRtt!);

    // Before any latency is known, the failed attempt's own duration paces the next window.
    this.windowEnd = now + (this.past?.mean ?? rtt);
    this.rttSum = 0;
    this.rttCount = 0;
    this.backPressure = false;
    // Batches still holding every slot are demand the next window inherits; without this a
    // window in which no batch happened to start would never count as fully used.
    this.reachedLimit = this.held >= this.current;
    if (this.current === before) return false;
    this.changedAt = now;
    // After an increase, batches admitted from now on see the new limit. After a decrease the
    // batches still in flight above it keep the sink as busy as before; only those admitted once
    // they have drained (see tryAcquire) measure the lower limit.
    this.measureFrom = this.current > before ? now : Number.POSITIVE_INFINITY;
    return true;
  }

  private adjust(past: PastRtt, windowRtt: number | undefined, probe: Probe | undefined): "back_pressure" | "rise" | "grow" | "hold" {
    const threshold = Math.sqrt(past.variance) * this.settings.rttDeviationScale;
    // Latencies are differences of (possibly fractional) ms timestamps: equal ones can differ in
    // the last bits, and a flat latency must not read as a rise.
    const slack = past.mean * 1e-9;
    if (this.backPressure) {
      this.decrease();
      return "back_pressure";
    }
    if (windowRtt === undefined) return "hold";
    // Rule 2: (L + 1) / windowRtt >= (L / probe.rtt) * (1 + 1 / (2L)), multiplied out.
    if (probe !== undefined && this.reachedLimit && windowRtt * (probe.limit + 0.5) > probe.rtt * (probe.limit + 1) + slack) {
      this.current = probe.limit;
      return "rise";
    }
    if (windowRtt > past.mean + threshold + slack) {
      this.decrease();
      return "rise";
    }
    if (this.reachedLimit && windowRtt <= past.mean + slack && this.current < this.max) {
      this.probe = { limit: this.current, rtt: windowRtt };
      this.current++;
      return "grow";
    }
    return "hold";
  }

  private decrease(): void {
    // The epsilon keeps 10 * 0.9 from landing on 8.999...; the cap keeps a ratio near 1 from stalling.
    const next = Math.min(this.current - 1, Math.floor(this.current * this.settings.decreaseRatio + 1e-9));
    this.current = Math.max(1, next);
  }

  /** Exponentially weighted mean and variance (Finch, "Incremental calculation of weighted mean and variance", 2009). */
  private remember(rtt: number): void {
    if (this.past === undefined) {
      this.past = { mean: rtt, variance: 0 };
      return;
    }
    const a = this.settings.ewmaAlpha;
    const diff = rtt - this.past.mean;
    const inc = a * diff;
    this.past.mean += inc;
    this.past.variance = (1 - a) * (this.past.variance + diff * inc);
  }
}
