/**
 * The one retry helper: every retry loop of the engine (sink connect, sink writes, dead-letter
 * writes, durable-buffer reads, source connect) decides and waits through a {@link Retry}, so
 * backoff, bounds, classification and aborts mean the same everywhere.
 */
import { backoffDelay, type BackoffPolicy } from "./backoff.js";
import { sleep, type Clock } from "./clock.js";
import { classify, type ErrorCode, type SluiceError } from "./errors.js";

/** When a {@link Retry} gives up, and how long it waits in between. */
export interface RetryPolicy {
  readonly backoff: BackoffPolicy;
  /** Attempts in all, the first included; default unbounded. */
  readonly maxAttempts?: number;
  /** Longest time the retries may take, ms (see {@link elapsed}); default unbounded. */
  readonly maxElapsedMs?: number;
  /**
   * What `maxElapsedMs` bounds. `next_attempt` (default): no attempt starts once that long has
   * passed since the first started, the wait before it counted (a batch's retries). `failing`:
   * the retries end once the operation has been failing that long (a dead-letter write "failing
   * for `max_elapsed`"), so the last wait may end past it.
   */
  readonly elapsed?: "next_attempt" | "failing";
  /** Shortest wait, ms; default 0. A floor of 1 keeps a zero delay from retrying within the same timer turn. */
  readonly minDelayMs?: number;
  /**
   * `classified` (default): a permanent error ({@link SluiceError.retryable} false) ends the
   * retries at once. `all`: every error is retried, for stores whose failures all may pass (a dead
   * letter is never dropped, a log entry on disk is never given up).
   */
  readonly retry?: "classified" | "all";
}

/** What the loop runs on: injected, so tests drive it with a fake clock and a fixed random. */
export interface RetryEnv {
  readonly clock: Clock;
  readonly random: () => number;
  /** Aborts the wait (and, in {@link retry}, the loop): a shutdown never waits for a backoff. */
  readonly signal: AbortSignal;
}

/** What to do after a failed attempt. */
export type RetryDecision =
  | { readonly tag: "retry"; readonly delayMs: number }
  | { readonly tag: "give_up"; readonly reason: "permanent" | "exhausted"; readonly elapsedMs: number };

/**
 * The state of one operation's retries: how many attempts started, since when, and what comes
 * after a failure. Use it directly where a loop does more per attempt than call one function (a
 * sink write commits part of a batch and retries the rest); otherwise use {@link retry}.
 */
export class Retry {
  private started = 0;
  /** When the first attempt started (clock ms). */
  readonly startedAt: number;

  constructor(
    private readonly policy: RetryPolicy,
    private readonly env: RetryEnv,
  ) {
    this.startedAt = env.clock.now();
  }

  /** Counts an attempt starting; returns its number (1-based). */
  begin(): number {
    return ++this.started;
  }

  /** Number of the attempt running or last run (0 before the first). */
  get attempt(): number {
    return this.started;
  }

  /** After the current attempt failed with `error`: wait and retry, or give up (permanent, or out of attempts or time). */
  decide(error: SluiceError): RetryDecision {
    const { policy, env } = this;
    const now = env.clock.now();
    if (!error.retryable && policy.retry !== "all") return { tag: "give_up", reason: "permanent", elapsedMs: now - this.startedAt };
    const lastAttempt = this.started >= (policy.maxAttempts ?? Number.POSITIVE_INFINITY);
    const delay = lastAttempt ? 0 : Math.max(policy.minDelayMs ?? 0, backoffDelay(policy.backoff, this.started, env.random));
    const until = policy.elapsed === "failing" ? now : now + delay;
    if (lastAttempt || until - this.startedAt >= (policy.maxElapsedMs ?? Number.POSITIVE_INFINITY)) {
      return { tag: "give_up", reason: "exhausted", elapsedMs: now - this.startedAt };
    }
    return { tag: "retry", delayMs: delay };
  }

  /** Waits `ms` on the clock; false when the signal aborted first (the loop should end). */
  async wait(ms: number): Promise<boolean> {
    try {
      await sleep(this.env.clock, ms, this.env.signal);
      return true;
    } catch {
      return false;
    }
  }
}

/** How a {@link retry} loop ended. */
export type RetryOutcome<T> =
  | { readonly tag: "done"; readonly value: T; readonly attempts: number }
  /** Permanent error, or out of attempts or time; `error` is the last failure. */
  | { readonly tag: "gave_up"; readonly error: SluiceError; readonly attempts: number; readonly elapsedMs: number; readonly reason: "permanent" | "exhausted" }
  /** The signal aborted; `error` is the last real failure before it, if any. An attempt cut off by the abort is not one. */
  | { readonly tag: "aborted"; readonly error: SluiceError | undefined; readonly attempts: number };

/** Options of {@link retry}. */
export interface RetryLoopOptions extends RetryPolicy, RetryEnv {
  /** Code given to errors that are not {@link SluiceError}s (see {@link classify}). */
  readonly fallback: ErrorCode;
  /** Called after each failed attempt that was not cut off by the abort, before the wait (events, logs). */
  readonly onFailure?: (error: SluiceError, attempt: number, decision: RetryDecision) => void;
}

/**
 * Runs `op` until it resolves, retrying failures with backoff (full jitter) per the policy, until
 * it gives up or `signal` aborts. Errors go through the one classifier with `fallback`.
 */
export async function retry<T>(op: (attempt: number) => Promise<T>, o: RetryLoopOptions): Promise<RetryOutcome<T>> {
  const r = new Retry(o, o);
  let last: SluiceError | undefined;
  while (!o.signal.aborted) {
    const attempt = r.begin();
    try {
      return { tag: "done", value: await op(attempt), attempts: attempt };
    } catch (err) {
      if (o.signal.aborted) break;
      last = classify(err, o.fallback);
      const decision = r.decide(last);
      o.onFailure?.(last, attempt, decision);
      if (decision.tag === "give_up") return { tag: "gave_up", error: last, attempts: attempt, elapsedMs: decision.elapsedMs, reason: decision.reason };
      if (!(await r.wait(decision.delayMs))) break;
    }
  }
  return { tag: "aborted", error: last, attempts: r.attempt };
}
