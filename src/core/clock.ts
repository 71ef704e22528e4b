/**
 * Time as the engine sees it. Everything that waits (batch max_wait, retry backoff, shutdown
 * deadline) goes through a Clock so tests can run on a fake one and never sleep.
 */
export interface Clock {
  /** Milliseconds since the Unix epoch. */
  now(): number;
  /** Calls `fn` once after `ms`; the returned function cancels it. */
  setTimer(ms: number, fn: () => void): () => void;
}

/**
 * The real clock: `Date.now` and `setTimeout`. Timers keep the process alive on purpose: a retry
 * backoff may be the only thing pending, and the run must not end under it.
 */
export const systemClock: Clock = {
  now: () => Date.now(),
  setTimer(ms, fn) {
    const t = setTimeout(fn, ms);
    return () => clearTimeout(t);
  },
};

/**
 * Resolves after `ms` on `clock`, or rejects with the signal's reason as soon as `signal`
 * aborts, so a retry wait never outlives a shutdown deadline.
 */
export function sleep(clock: Clock, ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = () => {
      cancel();
      reject(signal?.reason);
    };
    const cancel = clock.setTimer(ms, () => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    });
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/**
 * A span of time for people, in seconds: `45 s`, `2.5 s`. Tenths only under 10 s, where they
 * still tell something; used in the messages about a sink that is down.
 */
export function formatSeconds(ms: number): string {
  const s = Math.max(0, ms) / 1000;
  return `${s < 10 ? Math.floor(s * 10) / 10 : Math.floor(s)} s`;
}
