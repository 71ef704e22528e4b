/**
 * The waiting line of the buffers (`src/core/waiting-line.ts`): a property test through
 * `MemoryBuffer` over random pushes (waiting or not, any size, some abortable), releases and
 * aborts, checking that waiters are admitted in arrival order whatever their size, that the bound
 * is never exceeded, and that an aborted waiter leaves at once and is never admitted; then the
 * drain-rate estimate behind `expectedWait`, on the fake clock, and the durable buffer's line.
 */
import fs from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { afterEach, describe, expect, it } from "vitest";
import { MemoryBuffer, type Chunk, type PushResult } from "../../../src/core/buffer.js";
import { DurableBuffer } from "../../../src/core/durable-buffer.js";
import { silentLogger } from "../../../src/core/events.js";
import type { AckTicket } from "../../../src/core/record.js";
import { FakeClock, flush } from "../../helpers/fake-clock.js";
import { makeEntry } from "../../helpers/memory.js";

let nextId = 0;

/** A chunk of `records` records of `bytesEach` bytes, with its own ticket. */
function chunk(records: number, bytesEach = 10): Chunk {
  const ticket: AckTicket = { seq: -1, checkpoint: nextId, receivedAt: 0, records, bytes: records * bytesEach, pending: records, onDone: () => {} };
  const entries = Array.from({ length: records }, () => makeEntry(`r-${nextId++}`, { bytes: bytesEach, ticket }));
  return { records: entries, ticket };
}

type Op =
  | { readonly tag: "push"; readonly records: number; readonly bytesEach: number; readonly wait: boolean; readonly abortable: boolean }
  | { readonly tag: "release"; readonly pick: number }
  | { readonly tag: "abort"; readonly pick: number };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 5, arbitrary: fc.record({ tag: fc.constant("push" as const), records: fc.integer({ min: 1, max: 12 }), bytesEach: fc.integer({ min: 1, max: 30 }), wait: fc.boolean(), abortable: fc.boolean() }) },
  { weight: 3, arbitrary: fc.record({ tag: fc.constant("release" as const), pick: fc.nat() }) },
  { weight: 1, arbitrary: fc.record({ tag: fc.constant("abort" as const), pick: fc.nat() }) },
);

interface Push {
  readonly chunk: Chunk;
  readonly wait: boolean;
  readonly controller: AbortController | undefined;
  result: PushResult | undefined;
  aborted: boolean;
}

describe("WaitingLine, through MemoryBuffer", () => {
  it("admits waiters in arrival order whatever their size, never past the bound, and drops aborted waiters at once", async () => {
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 1, max: 20 }), fc.integer({ min: 10, max: 300 }), fc.array(opArb, { minLength: 1, maxLength: 60 }), async (maxRecords, maxBytes, ops) => {
        const buffer = new MemoryBuffer({ maxRecords, maxBytes });
        const pushes: Push[] = [];
        /** Accepted and not yet released, in the order they were accepted. */
        const held: Push[] = [];
        const waiting = () => pushes.filter((p) => p.wait && p.result === undefined);

        const check = () => {
          const u = buffer.usage();
          // The bound holds, but for one chunk larger than it, alone in the buffer.
          const alone = held.length === 1;
          if (!alone) {
            expect(u.records).toBeLessThanOrEqual(maxRecords);
            expect(u.bytes).toBeLessThanOrEqual(maxBytes);
          }
          expect(u.records).toBe(held.reduce((n, p) => n + p.chunk.ticket.records, 0));
          // Arrival order: of the waiting pushes not aborted, those admitted are a prefix.
          const line = pushes.filter((p) => p.wait && !p.aborted);
          const firstWaiting = line.findIndex((p) => p.result === undefined);
          if (firstWaiting >= 0) expect(line.slice(firstWaiting).every((p) => p.result === undefined)).toBe(true);
          // An aborted waiter is answered `closed` and never admitted.
          for (const p of pushes) if (p.aborted) expect(p.result).toBe("closed");
          // Reservation: nobody waits while the head would fit.
          const head = waiting().find((p) => !p.aborted);
          if (head !== undefined && u.records > 0) {
            const fitsNow = u.records + head.chunk.ticket.records <= maxRecords && u.bytes + head.chunk.ticket.bytes <= maxBytes;
            expect(fitsNow).toBe(false);
          }
        };

        for (const op of ops) {
          if (op.tag === "push") {
            const c = chunk(op.records, op.bytesEach);
            const controller = op.wait && op.abortable ? new AbortController() : undefined;
            const waitingBefore = waiting().length;
            const p: Push = { chunk: c, wait: op.wait, controller, result: undefined, aborted: false };
            pushes.push(p);
            void buffer.push(c, op.wait, controller?.signal).then((r) => {
              p.result = r;
              if (r === "accepted") held.push(p);
            });
            await flush();
            // A push that does not wait never passes anyone waiting.
            if (!op.wait && waitingBefore > 0) expect(p.result).toBe("full");
          } else if (op.tag === "release") {
            if (held.length === 0) continue;
            const [p] = held.splice(op.pick % held.length, 1);
            buffer.release(p!.chunk.ticket);
            await flush();
          } else {
            const candidates = waiting().filter((p) => p.controller !== undefined && !p.aborted);
            if (candidates.length === 0) continue;
            const p = candidates[op.pick % candidates.length]!;
            p.aborted = true;
            p.controller!.abort();
            await flush();
          }
          check();
        }
        // Every waiter is answered when the buffer closes.
        buffer.close();
        await flush();
        expect(pushes.every((p) => p.result !== undefined)).toBe(true);
      }),
      { numRuns: 300 },
    );
  });
});

describe("expectedWait", () => {
  it("is 0 when a chunk fits, the room needed over the recent drain rate when not, Infinity while nothing drains", async () => {
    const clock = new FakeClock();
    const buffer = new MemoryBuffer({ maxRecords: 100, maxBytes: 1_000_000 }, clock);
    expect(buffer.expectedWait(100, 1000)).toBe(0);
    const chunks = Array.from({ length: 10 }, () => chunk(10));
    for (const c of chunks) expect(await buffer.push(c, false)).toBe("accepted");
    // Full, and nothing freed yet: no rate to wait on.
    expect(buffer.expectedWait(1, 10)).toBe(Infinity);
    // 10 records released every 100 ms for 20 s: about 100 records/s.
    for (let t = 0; t < 200; t++) {
      clock.advance(100);
      const c = chunks.shift()!;
      buffer.release(c.ticket);
      const next = chunk(10);
      expect(await buffer.push(next, false)).toBe("accepted");
      chunks.push(next);
    }
    // 50 records past the bound, at ~100 records/s.
    expect(buffer.expectedWait(50, 500)).toBeGreaterThan(400);
    expect(buffer.expectedWait(50, 500)).toBeLessThan(600);
    // A waiter ahead counts: 50 of its records and 50 of one's own.
    const ahead = buffer.push(chunk(50), true);
    expect(buffer.expectedWait(50, 500)).toBeGreaterThan(900);
    expect(buffer.expectedWait(50, 500)).toBeLessThan(1100);
    // A chunk larger than the whole bound waits for the buffer to empty, no more.
    expect(buffer.expectedWait(1000, 10_000)).toBeLessThan(1600);
    // The sink stalls: the estimate grows, past any ack_timeout within a minute.
    clock.advance(60_000);
    expect(buffer.expectedWait(50, 500)).toBeGreaterThan(100_000);
    buffer.close();
    expect(await ahead).toBe("closed");
  });
});

describe("DurableBuffer's line", () => {
  const dirs: string[] = [];
  afterEach(() => {
    for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
  });

  /** A chunk whose entry has the same size whenever it is built: ids of one length. */
  let serial = 0;
  function fixed(records: number): Chunk {
    const ticket: AckTicket = { seq: -1, checkpoint: undefined, receivedAt: 0, records, bytes: records * 20, pending: records, onDone: () => {} };
    const entries = Array.from({ length: records }, () => makeEntry(`x${String(serial++).padStart(8, "0")}`, { bytes: 20, ticket }));
    return { records: entries, ticket };
  }

  async function open(maxBytes: number): Promise<DurableBuffer> {
    const dir = fs.mkdtempSync(join(tmpdir(), "sluice-line-"));
    dirs.push(dir);
    const buffer = new DurableBuffer({ path: dir, maxBytes, fsync: false, memory: { maxRecords: 1000, maxBytes: 1 << 20 }, emit: () => {}, logger: silentLogger });
    await buffer.open();
    return buffer;
  }

  /** The log bytes of an entry of `records` records (at a one-digit seq). */
  async function sizeOf(records: number): Promise<number> {
    const scratch = await open(1 << 20);
    await scratch.push(fixed(records), false);
    const { bytes } = scratch.usage();
    await scratch.shutdown();
    return bytes;
  }

  it("keeps a large waiter's place ahead of small ones, drops an aborted waiter, and answers the rest `closed` on close", async () => {
    const [S, F, L] = [await sizeOf(1), await sizeOf(10), await sizeOf(20)];
    // Two entries of 10 fill it; the large one needs both released, a small one only one.
    const maxBytes = 2 * F + 5;
    expect(L + F).toBeGreaterThan(maxBytes);
    expect(L + S).toBeGreaterThan(maxBytes);
    const buffer = await open(maxBytes);
    try {
      expect(await buffer.push(fixed(10), false)).toBe("accepted");
      expect(buffer.expectedWait(10, 200)).toBe(0);
      expect(await buffer.push(fixed(10), false)).toBe("accepted");
      const results: string[] = [];
      const abortable = new AbortController();
      const large = buffer.push(fixed(20), true).then((r) => results.push(`large ${r}`));
      const aborted = buffer.push(fixed(1), true, abortable.signal).then((r) => results.push(`aborted ${r}`));
      const small = buffer.push(fixed(1), true).then((r) => results.push(`small ${r}`));
      // Nothing freed yet: no rate to wait on.
      expect(buffer.expectedWait(1, 20)).toBe(Infinity);
      abortable.abort();
      await aborted;
      expect(results).toEqual(["aborted closed"]);

      const a = await buffer.pull();
      // Releasing one entry frees room the small one would fit in; the large one, ahead, keeps it.
      a!.ticket.onDone(a!.ticket);
      // Admission is synchronous: a waiter let in now would already count in the log.
      expect(buffer.usage().records).toBe(10);
      await flush();
      expect(results).toEqual(["aborted closed"]);
      // A push that does not wait may not take it either.
      expect(await buffer.push(fixed(1), false)).toBe("full");
      // Room was freed lately: a wait has an estimate now.
      expect(buffer.expectedWait(1, 20)).toBeGreaterThan(0);
      expect(buffer.expectedWait(1, 20)).toBeLessThan(Infinity);
      const b = await buffer.pull();
      b!.ticket.onDone(b!.ticket);
      expect(buffer.usage().records).toBe(20);
      await large;
      expect(results).toEqual(["aborted closed", "large accepted"]);
      expect(buffer.usage().bytes).toBeLessThanOrEqual(maxBytes);
      buffer.close();
      await small;
      expect(results).toEqual(["aborted closed", "large accepted", "small closed"]);
    } finally {
      await buffer.shutdown();
    }
  });
});
