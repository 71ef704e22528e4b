import { describe, expect, it } from "vitest";
import { RequestMemory, type Claim, type Reply } from "../../../src/sources/http-idempotency.js";
import { BodyBudget, BodyHold } from "../../../src/sources/http-limits.js";

const ok: Reply = { status: 202, body: { accepted: 1 } };
const full: Reply = { status: 429, body: { error: "buffer is full" } };

function first(c: Claim): Extract<Claim, { tag: "first" }> {
  expect(c.tag).toBe("first");
  return c as Extract<Claim, { tag: "first" }>;
}

describe("RequestMemory", () => {
  it("a repeat while the first is in flight waits for its answer; another body is a conflict at once", async () => {
    const m = new RequestMemory(10, () => 0);
    const a = first(m.claim("k", "1"));
    const b = m.claim("k", "1");
    expect(b.tag).toBe("wait");
    expect(m.claim("k", "2").tag).toBe("conflict");
    a.settle(ok, true);
    expect(await (b as Extract<Claim, { tag: "wait" }>).reply).toBe(ok);
    expect(m.claim("k", "1")).toEqual({ tag: "answered", reply: ok });
    expect(m.claim("k", "2").tag).toBe("conflict");
  });

  it("a request refused whole leaves the name free; its waiters get the same refusal", async () => {
    const m = new RequestMemory(10, () => 0);
    const a = first(m.claim("k", "1"));
    const b = m.claim("k", "1") as Extract<Claim, { tag: "wait" }>;
    a.settle(full, false);
    expect(await b.reply).toBe(full);
    first(m.claim("k", "2")).settle(ok, true);
    expect(m.claim("k", "2").tag).toBe("answered");
  });

  it("a failure after records were taken keeps the name bound to the body, and its retry is taken again", () => {
    const m = new RequestMemory(10, () => 0);
    first(m.claim("k", "1")).settle({ status: 503, body: {} }, true);
    expect(m.claim("k", "2").tag).toBe("conflict");
    first(m.claim("k", "1")).settle(ok, true);
    expect(m.claim("k", "1").tag).toBe("answered");
  });

  it("forgets a name when it expires, and the oldest past the bound", () => {
    let now = 0;
    const m = new RequestMemory(3, () => now);
    first(m.claim("a", "1", 100)).settle(ok, true);
    now = 100;
    expect(m.claim("a", "1", 200).tag).toBe("first");
    const n = new RequestMemory(3, () => 0);
    for (const k of ["a", "b", "c", "d"]) first(n.claim(k, "1")).settle(ok, true);
    expect(n.claim("b", "2").tag).toBe("conflict");
    expect(n.claim("d", "2").tag).toBe("conflict");
    expect(n.claim("a", "2").tag).toBe("first");
  });

  it("never forgets a name whose request is in flight, even past the bound: another body under it stays a conflict", () => {
    const m = new RequestMemory(2, () => 0);
    const a = first(m.claim("a", "1"));
    for (const k of ["b", "c"]) first(m.claim(k, "1")).settle(ok, true);
    expect(m.claim("a", "2").tag).toBe("conflict");
    a.settle(ok, true);
    expect(m.claim("a", "1")).toEqual({ tag: "answered", reply: ok });
  });
});

describe("BodyBudget", () => {
  it("holds at most its total, unverified bodies at most their share; a hold gives back what it took", () => {
    const b = new BodyBudget(100, 50, 50);
    const signed = new BodyHold(b, true);
    expect(signed.take(40)).toBe(true);
    expect(signed.take(20)).toBe(false);
    const token = new BodyHold(b, false);
    expect(token.take(60)).toBe(true);
    expect(token.take(1)).toBe(false);
    signed.release();
    expect(new BodyHold(b, false).take(41)).toBe(false);
    token.release();
    token.release();
    const all = new BodyHold(b, false);
    expect(all.take(100)).toBe(true);
    all.release();
  });

  it("bodies waiting in line hold at most their share, given back on release", () => {
    const b = new BodyBudget(100, 50, 50);
    const first = new BodyHold(b, false);
    expect(first.take(30)).toBe(true);
    expect(first.queue()).toBe(true);
    const second = new BodyHold(b, false);
    expect(second.take(30)).toBe(true);
    // 60 bytes would wait: past the share, so this one cannot, though the budget has them.
    expect(second.queue()).toBe(false);
    first.release();
    expect(second.queue()).toBe(true);
    second.release();
    const third = new BodyHold(b, false);
    expect(third.take(50)).toBe(true);
    expect(third.queue()).toBe(true);
    third.release();
  });
});
