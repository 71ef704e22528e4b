/**
 * What the http source remembers of requests it took, to answer their repeats: Idempotency-Keys
 * bound to a digest of their body, and signatures of signed requests with their answer. A
 * request is claimed synchronously, before any await, so two concurrent requests of one key
 * cannot both pass as the first.
 */

/** An answer to an ingest request: what a repeat of it is sent too. */
export interface Reply {
  readonly status: number;
  readonly body: object;
}

/** What {@link RequestMemory.claim} tells a request. */
export type Claim =
  /** The request goes ahead; it must call `settle` with its answer, whatever it is. */
  | { readonly tag: "first"; readonly settle: (reply: Reply, taken: boolean) => void }
  /** The same request is in flight: answer what it answers. */
  | { readonly tag: "wait"; readonly reply: Promise<Reply> }
  /** Taken before and answered 2xx: answer it again, enqueue nothing. */
  | { readonly tag: "answered"; readonly reply: Reply }
  /** The name is bound to another body. */
  | { readonly tag: "conflict" };

interface Slot {
  readonly sum: string;
  /** Records were taken under this name, so it stays bound to `sum`. */
  bound: boolean;
  inflight: Promise<Reply> | undefined;
  reply: Reply | undefined;
  readonly expiresAt: number;
}

/**
 * Requests by name (an Idempotency-Key, a signature), each bound to the digest of its body.
 * A repeat of a request answered 2xx gets that answer again, and nothing is enqueued twice. A
 * request whose records were not taken at all (refused whole: 429, 503 before its first chunk)
 * leaves its name unbound, so the client may retry it with other records; one refused after
 * some of its records were taken (503) stays bound, and its retry is taken again (same ids, so
 * the sinks keep each record once). Concurrent repeats get whatever the first gets.
 */
export class RequestMemory {
  private readonly slots = new Map<string, Slot>();

  constructor(
    /** Most names remembered; past it the oldest is forgotten. */
    private readonly max: number,
    private readonly now: () => number,
  ) {}

  /** Claims `name` for a body with digest `sum`, remembered until `expiresAt` (ms since the epoch). */
  claim(name: string, sum: string, expiresAt = Infinity): Claim {
    let slot = this.slots.get(name);
    if (slot !== undefined && slot.expiresAt <= this.now()) {
      this.slots.delete(name);
      slot = undefined;
    }
    if (slot === undefined) {
      slot = { sum, bound: false, inflight: undefined, reply: undefined, expiresAt };
      this.slots.set(name, slot);
      this.evict();
    } else if (slot.sum !== sum) return { tag: "conflict" };
    else if (slot.inflight !== undefined) return { tag: "wait", reply: slot.inflight };
    else if (slot.reply !== undefined) return { tag: "answered", reply: slot.reply };
    return this.start(name, slot);
  }

  private start(name: string, slot: Slot): Claim {
    let resolve!: (reply: Reply) => void;
    slot.inflight = new Promise<Reply>((r) => (resolve = r));
    const settle = (reply: Reply, taken: boolean) => {
      slot.inflight = undefined;
      slot.bound ||= taken;
      if (taken && reply.status >= 200 && reply.status < 300) slot.reply = reply;
      if (!slot.bound && this.slots.get(name) === slot) this.slots.delete(name);
      resolve(reply);
    };
    return { tag: "first", settle };
  }

  /**
   * Forgets expired names, then the oldest past `max`: names come in about the order they expire.
   * A slot whose request is in flight is never forgotten: its waiters hold its promise, and a
   * request of the same name with another body coming then would find no slot, pass as the first,
   * and run alongside it. In-flight slots are bounded by the open connections
   * (`max_connections`), so the map holds at most `max` plus that many.
   */
  private evict(): void {
    const now = this.now();
    for (const [name, slot] of this.slots) {
      if (this.slots.size <= this.max && slot.expiresAt > now) break;
      if (slot.inflight === undefined) this.slots.delete(name);
    }
  }
}
