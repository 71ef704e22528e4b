/**
 * Randomness as the engine sees it: a function returning uniform numbers in [0, 1), like
 * `Math.random`. Injected wherever a decision is random (backoff jitter, chaos) so a seed makes
 * a run repeatable.
 */

/** A source of uniform random numbers in [0, 1). `Math.random` is one. */
export type Random = () => number;

/**
 * A small seeded PRNG (mulberry32, by Tommy Ettinger): the same seed yields the same sequence on
 * every platform and Node version.
 *
 * Use it for repeatable tests and for chaos with a `seed`. Not cryptographic. Only the low 32
 * bits of `seed` matter, so seeds that differ by a multiple of 2^32 give the same sequence.
 */
export function mulberry32(seed: number): Random {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
