/** Settings of exponential backoff with full jitter (AWS Architecture Blog, "Exponential Backoff And Jitter"). */
export interface BackoffPolicy {
  /** Delay cap of the first retry, in ms. */
  initialMs: number;
  /** Upper bound of any one delay, in ms. */
  maxMs: number;
  /** Growth factor of the cap per attempt. */
  multiplier: number;
  /** `full` (default): a delay uniform in [0, cap]. `none`: the cap itself, for a lone retrier (a log read) with nobody to spread apart from. */
  jitter?: "full" | "none";
}

/**
 * The delay before retry number `retry` (1-based): uniform in [0, min(max, initial * multiplier^(retry-1))],
 * or that cap itself without jitter.
 * Full jitter spreads retries of many lanes apart instead of letting them hit a recovering sink together.
 * `random` is injected so tests are deterministic.
 */
export function backoffDelay(policy: BackoffPolicy, retry: number, random: () => number): number {
  const cap = Math.min(policy.maxMs, policy.initialMs * policy.multiplier ** Math.max(0, retry - 1));
  return policy.jitter === "none" ? cap : Math.floor(random() * cap);
}
