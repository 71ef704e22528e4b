import { describe, expect, it } from "vitest";
import { MemoryBuffer, type Chunk, type PushResult } from "../../../src/core/buffer.js";
import type { AckTicket } from "../../../src/core/record.js";
import { flush } from "../../helpers/fake-clock.js";
import { makeEntry } from "../../helpers/memory.js";

let nextId = 0;

/** A chunk of `records` records of `bytesEach` bytes, with its own ticket. */
function chunk(records: number, bytesEach = 10): Chunk {
  const ticket: AckTicket = { seq: -1, checkpoint: nextId, receivedAt: 0, records, bytes: records * bytesEach, pending: records, onDone: () => {} };
  const entries = Array.from({ length: records }, () => makeEntry(`r-${nextId++}`, { bytes: bytesEach, ticket }));
  return { records: entries, ticket };
}

/** Tracks a push's promise so a test can see whether (and how) it settled. */
function track(p: Promise<PushResult>): { result: PushResult | undefined } {
  const t: { result: PushResult | undefined } = { result: undefined };
  void p.then((r) => (t.result = r));
  return t;
}

describe("MemoryBuffer", () => {
  it("admits chunks while they fit in max_records and counts them until released", async () => {
    const buffer = new MemoryBuffer({ maxRecords: 10, maxBytes: 1_000_000 });
    const a = chunk(4);
    const b = chunk(6);
    expect(await buffer.push(a, false)).toBe("accepted");
    expect(await buffer.push(b, false)).toBe("accepted");
    expect(buffer.usage()).toEqual({ records: 10, bytes: 100 });
    expect(await buffer.push(chunk(1), false)).toBe("full");

    // Pulling a chunk does not free it: records being processed still count.
    expect(await buffer.pull()).toBe(a);
    expect(buffer.usage().records).toBe(10);
    expect(await buffer.push(chunk(1), false)).toBe("full");

    buffer.release(a.ticket);
    expect(buffer.usage()).toEqual({ records: 6, bytes: 60 });
    expect(await buffer.push(chunk(4), false)).toBe("accepted");
  });

  it("bounds bytes as well as records", async () => {
    const buffer = new MemoryBuffer({ maxRecords: 1000, maxBytes: 100 });
    expect(await buffer.push(chunk(3, 30), false)).toBe("accepted");
    expect(await buffer.push(chunk(1, 11), false)).toBe("full");
    expect(await buffer.push(chunk(1, 10), false)).toBe("accepted");
    expect(buffer.usage()).toEqual({ records: 4, bytes: 100 });
  });

  it("tells the room for records of a given size under the byte bound, also when empty", async () => {
    const buffer = new MemoryBuffer({ maxRecords: 1000, maxBytes: 100 });
    expect(buffer.room()).toBe(Infinity);
    expect(buffer.room(20)).toBe(5);
    // One record larger than the whole bound still fits an empty buffer.
    expect(buffer.room(500)).toBe(1);
    expect(await buffer.push(chunk(2, 10), false)).toBe("accepted");
    // Without a size, the records held tell it; with one, the source's estimate does.
    expect(buffer.room()).toBe(8);
    expect(buffer.room(40)).toBe(2);
    expect(buffer.room(500)).toBe(0);
  });

  it("with wait, blocks until room is released and admits waiters in FIFO order", async () => {
    const buffer = new MemoryBuffer({ maxRecords: 4, maxBytes: 1_000_000 });
    const first = chunk(4);
    await buffer.push(first, true);
    expect(await buffer.pull()).toBe(first);
    const big = chunk(3);
    const small = chunk(1);
    const bigPush = track(buffer.push(big, true));
    // `small` would fit once one record is free, but must not overtake `big`, which waits ahead of it.
    const smallPush = track(buffer.push(small, true));
    await flush();
    expect([bigPush.result, smallPush.result]).toEqual([undefined, undefined]);

    // A chunk pushed without waiting may not jump the queue either.
    expect(await buffer.push(chunk(1), false)).toBe("full");

    buffer.release(first.ticket);
    await flush();
    expect([bigPush.result, smallPush.result]).toEqual(["accepted", "accepted"]);
    expect(buffer.usage().records).toBe(4);
    expect(await buffer.pull()).toBe(big);
    expect(await buffer.pull()).toBe(small);
  });

  it("keeps a later waiter blocked while the head waiter still does not fit", async () => {
    const buffer = new MemoryBuffer({ maxRecords: 4, maxBytes: 1_000_000 });
    const a = chunk(2);
    const b = chunk(2);
    await buffer.push(a, true);
    await buffer.push(b, true);
    const head = track(buffer.push(chunk(4), true));
    const tail = track(buffer.push(chunk(1), true));
    buffer.release(a.ticket);
    await flush();
    expect([head.result, tail.result]).toEqual([undefined, undefined]);
    buffer.release(b.ticket);
    await flush();
    expect(head.result).toBe("accepted");
    expect(tail.result).toBeUndefined();
  });

  it("admits a chunk larger than the whole bound when the buffer is empty, and only then", async () => {
    const buffer = new MemoryBuffer({ maxRecords: 3, maxBytes: 50 });
    const small = chunk(1);
    await buffer.push(small, false);
    expect(await buffer.push(chunk(5), false)).toBe("full");
    const oversize = chunk(5, 100);
    const pushed = track(buffer.push(oversize, true));
    await flush();
    expect(pushed.result).toBeUndefined();
    buffer.release(small.ticket);
    await flush();
    expect(pushed.result).toBe("accepted");
    expect(buffer.usage()).toEqual({ records: 5, bytes: 500 });
    expect(await buffer.push(chunk(1), false)).toBe("full");
  });

  it("close resolves waiting pushes with `closed`, refuses new ones, and lets pull drain then end", async () => {
    const buffer = new MemoryBuffer({ maxRecords: 2, maxBytes: 1_000_000 });
    const queued = chunk(2);
    await buffer.push(queued, true);
    const waiting = track(buffer.push(chunk(1), true));
    buffer.close();
    await flush();
    expect(waiting.result).toBe("closed");
    expect(await buffer.push(chunk(1), true)).toBe("closed");
    expect(await buffer.pull()).toBe(queued);
    expect(await buffer.pull()).toBeUndefined();
  });

  it("close ends a pull that is already waiting on an empty buffer", async () => {
    const buffer = new MemoryBuffer({ maxRecords: 2, maxBytes: 1_000_000 });
    let pulled: Chunk | undefined | "pending" = "pending";
    void buffer.pull().then((c) => (pulled = c));
    await flush();
    expect(pulled).toBe("pending");
    buffer.close();
    await flush();
    expect(pulled).toBeUndefined();
  });

  it("a waiting pull gets the next pushed chunk", async () => {
    const buffer = new MemoryBuffer({ maxRecords: 2, maxBytes: 1_000_000 });
    const pull = buffer.pull();
    const c = chunk(1);
    await buffer.push(c, false);
    expect(await pull).toBe(c);
  });

  it("an aborted signal resolves a waiting push `closed` and lets the waiter behind it in", async () => {
    const buffer = new MemoryBuffer({ maxRecords: 4, maxBytes: 1_000_000 });
    const held = chunk(3);
    await buffer.push(held, true);
    const controller = new AbortController();
    const blocked = track(buffer.push(chunk(4), true, controller.signal));
    const behind = track(buffer.push(chunk(1), true));
    await flush();
    expect([blocked.result, behind.result]).toEqual([undefined, undefined]);
    controller.abort();
    await flush();
    expect(blocked.result).toBe("closed");
    expect(behind.result).toBe("accepted");
    expect(buffer.usage().records).toBe(4);

    expect(await buffer.push(chunk(1), true, controller.signal)).toBe("closed");
  });

  it("whenEmpty resolves once every accepted chunk is released", async () => {
    const buffer = new MemoryBuffer({ maxRecords: 10, maxBytes: 1_000_000 });
    let empty = false;
    await buffer.whenEmpty();
    const a = chunk(2);
    const b = chunk(3);
    await buffer.push(a, false);
    await buffer.push(b, false);
    void buffer.whenEmpty().then(() => (empty = true));
    buffer.release(b.ticket);
    await flush();
    expect(empty).toBe(false);
    buffer.release(a.ticket);
    await flush();
    expect(empty).toBe(true);
    expect(buffer.usage()).toEqual({ records: 0, bytes: 0 });
  });

  it("whenEmpty waits for a chunk admitted from the waiting line by the last release", async () => {
    const buffer = new MemoryBuffer({ maxRecords: 2, maxBytes: 1_000_000 });
    const a = chunk(2);
    await buffer.push(a, true);
    const b = chunk(2);
    const pushed = track(buffer.push(b, true));
    let empty = false;
    void buffer.whenEmpty().then(() => (empty = true));
    buffer.release(a.ticket);
    await flush();
    expect(pushed.result).toBe("accepted");
    expect(empty).toBe(false);
    buffer.release(b.ticket);
    await flush();
    expect(empty).toBe(true);
  });
});

describe("MemoryBuffer: split parts (grow, shrink, hasRoom, whenPartRoom)", () => {
  it("counts grown parts against the bound until shrunk: pushes wait, hasRoom says whether one more fits", async () => {
    const buffer = new MemoryBuffer({ maxRecords: 10, maxBytes: 1_000_000 });
    const a = chunk(4);
    expect(await buffer.push(a, false)).toBe("accepted");
    expect(await buffer.pull()).toBe(a);
    expect(buffer.hasRoom(6, 60)).toBe(true);
    expect(buffer.hasRoom(7, 70)).toBe(false);

    buffer.grow(5, 50);
    expect(buffer.usage()).toEqual({ records: 9, bytes: 90 });
    expect(buffer.hasRoom(1, 10)).toBe(true);
    expect(buffer.hasRoom(2, 10)).toBe(false);
    expect(await buffer.push(chunk(2), false)).toBe("full");
    const waiting = track(buffer.push(chunk(2), true));

    buffer.grow(5, 50);
    let freed = false;
    void buffer.whenPartRoom().then(() => (freed = true));
    buffer.shrink(5, 50);
    await flush();
    expect(freed).toBe(true);
    expect(waiting.result).toBeUndefined(); // 9 + 2 > 10: the push still waits
    buffer.shrink(5, 50);
    await flush();
    expect(waiting.result).toBe("accepted");
    expect(buffer.usage()).toEqual({ records: 6, bytes: 60 });
  });

  it("checks bytes as well as records, and wakes whenPartRoom on a release too", async () => {
    const buffer = new MemoryBuffer({ maxRecords: 100, maxBytes: 100 });
    const a = chunk(3);
    await buffer.push(a, false);
    await buffer.pull();
    expect(buffer.hasRoom(1, 70)).toBe(true);
    expect(buffer.hasRoom(1, 71)).toBe(false);
    let freed = false;
    void buffer.whenPartRoom().then(() => (freed = true));
    buffer.release(a.ticket);
    await flush();
    expect(freed).toBe(true);
    expect(buffer.hasRoom(1, 100)).toBe(true);
  });
});
