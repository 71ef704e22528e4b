/**
 * The wait of a push source's `run` loop: it sleeps until a delivery, an ack or a lost connection
 * pokes it, or its signal aborts.
 */

/**
 * Wakes one sleeper. Pokes are joined: one wake per turn of the event loop, so the messages of one
 * socket read make one chunk. A poke with nobody asleep is dropped: the sleeper looks at its state
 * before it sleeps.
 */
export class Wakeup {
  #wake: (() => void) | undefined;
  #scheduled = false;

  /** Wakes the sleeper on the next turn of the event loop. */
  poke(): void {
    if (this.#scheduled || this.#wake === undefined) return;
    this.#scheduled = true;
    setImmediate(() => {
      this.#scheduled = false;
      this.#now();
    });
  }

  /** Resolves at the next poke, when the signal given to {@link loop} aborts, or after `ms`. */
  sleep(ms = Number.POSITIVE_INFINITY): Promise<void> {
    return new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(timer);
        resolve();
      };
      const timer = Number.isFinite(ms)
        ? setTimeout(() => {
            if (this.#wake === done) this.#wake = undefined;
            resolve();
          }, ms)
        : undefined;
      this.#wake = done;
    });
  }

  /**
   * A push source's `run` loop: calls `turn` again and again until `signal` aborts or `turn`
   * resolves "stop"; the abort wakes a {@link sleep} of `turn` at once. Rejects with what `turn` throws.
   */
  async loop(signal: AbortSignal, turn: () => Promise<"stop" | void>): Promise<void> {
    const onAbort = () => this.#now();
    signal.addEventListener("abort", onAbort, { once: true });
    try {
      while (!signal.aborted) if ((await turn()) === "stop") return;
    } finally {
      signal.removeEventListener("abort", onAbort);
      this.#wake = undefined;
    }
  }

  #now(): void {
    const w = this.#wake;
    this.#wake = undefined;
    w?.();
  }
}
