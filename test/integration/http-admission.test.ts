/**
 * How a request that does not fit waits in the buffer's line (issue 12, point 10): it leaves the
 * line when its client disconnects, when `ack_timeout` passes (429, nothing taken, key free),
 * and when sluice stops (503); the waiting bodies' share of the body budget bounds the line
 * (429 past it); and a stalled sink that never drained makes nobody wait (429 at once).
 */
import { describe, expect, it } from "vitest";
import { keyedId, send, startHttpPipeline, waitUntil, type Answer, type HttpPipeline } from "../helpers/http-pipeline.js";

/** The NDJSON body {@link post} sends: `records` records `{key, i}`. */
const bodyOf = (key: string, records: number): string => Array.from({ length: records }, (_, i) => JSON.stringify({ key, i })).join("\n");

const post = (q: HttpPipeline, key: string, records: number, signal?: AbortSignal): Promise<Answer> => {
  const body = bodyOf(key, records);
  return send(`${q.base}/v1/events`, { method: "POST", headers: { "content-type": "application/x-ndjson", "idempotency-key": key }, body, ...(signal ? { signal } : {}) });
};

/** Tracks a request's answer so a test can see whether it came. */
function track(p: Promise<Answer>): { answer: Answer | undefined; done: Promise<Answer> } {
  const t: { answer: Answer | undefined; done: Promise<Answer> } = { answer: undefined, done: p };
  void p.then((a) => (t.answer = a));
  return t;
}

/**
 * A pipeline whose sink drained 50 records (so the buffer knows its pace), then stalls with its
 * buffer of 10 records full: the next request that does not fit waits, expected in well under
 * `ack_timeout`.
 */
async function stalledAfterDraining(source: Record<string, unknown> = {}): Promise<HttpPipeline> {
  const q = await startHttpPipeline({ gated: true, buffer: { maxRecords: 10 }, source: { ack_timeout: "2s", ...source } });
  q.gate!.release();
  for (let i = 0; i < 5; i++) expect((await post(q, `warm${i}`, 10)).status).toBe(202);
  q.gate!.hold();
  void post(q, "fill", 10);
  await waitUntil("the buffer full", () => q.pipeline.bufferUsage().records === 10);
  return q;
}

const settle = () => new Promise((r) => setTimeout(r, 300));

describe("http source: waiting in line for room", () => {
  it("a waiter is admitted in its turn once room frees: a large one before a small one that came after it", async () => {
    const q = await stalledAfterDraining();
    try {
      const large = track(post(q, "large", 10));
      await settle();
      const small = track(post(q, "small", 1));
      await settle();
      expect([large.answer, small.answer]).toEqual([undefined, undefined]);
      q.gate!.release();
      expect((await large.done).status).toBe(202);
      expect((await small.done).status).toBe(202);
      const order = q.gate!.committed;
      expect(order.indexOf(keyedId("large", bodyOf("large", 10), 9))).toBeLessThan(order.indexOf(keyedId("small", bodyOf("small", 1), 0)));
    } finally {
      await q.close();
    }
  });

  it("a waiter whose turn does not come within ack_timeout gets 429, nothing taken, its key free for other records", async () => {
    const q = await stalledAfterDraining();
    try {
      const started = Date.now();
      const a = await post(q, "late", 5);
      expect(a.status, a.text).toBe(429);
      expect(a.body).toMatchObject({ error: expect.stringMatching(/^buffer had no room for the request within 2000 ms/) });
      expect(a.headers["retry-after"]).toBe("1");
      expect(Date.now() - started).toBeGreaterThanOrEqual(1900);
      q.gate!.release();
      const other = await post(q, "late", 2);
      expect(other.status, other.text).toBe(202);
      expect([...q.rows().keys()].filter((id) => id.startsWith("web:late:")).sort()).toEqual([0, 1].map((i) => keyedId("late", bodyOf("late", 2), i)));
    } finally {
      await q.close();
    }
  });

  it("a waiter whose client disconnects leaves the line: its records are never taken", async () => {
    const q = await stalledAfterDraining();
    try {
      const client = new AbortController();
      const gone = post(q, "gone", 5, client.signal).catch((err: unknown) => err);
      await settle();
      client.abort();
      await gone;
      await settle();
      const after = track(post(q, "after", 5));
      q.gate!.release();
      expect((await after.done).status).toBe(202);
      await waitUntil("the buffer empty", () => q.pipeline.bufferUsage().records === 0);
      const rows = q.rows();
      expect(rows.has(keyedId("after", bodyOf("after", 5), 0))).toBe(true);
      expect([...rows.keys()].filter((id) => id.startsWith("web:gone:"))).toEqual([]);
    } finally {
      await q.close();
    }
  });

  it("a waiter gets 503 when sluice stops", async () => {
    const q = await stalledAfterDraining();
    try {
      const waiting = track(post(q, "w", 5));
      await settle();
      expect(waiting.answer).toBeUndefined();
      q.pipeline.stop();
      const a = await waiting.done;
      expect(a.status, a.text).toBe(503);
      expect(a.body).toMatchObject({ error: expect.stringMatching(/^sluice is stopping/) });
    } finally {
      await q.close();
    }
  });

  it("the line holds at most half the body budget of bodies: past it, 429 at once", async () => {
    // max_body 1000, budget 2000: waiting bodies may hold 1000 bytes.
    const q = await stalledAfterDraining({ max_body: 1000, max_body_bytes_in_flight: 2000 });
    try {
      const body = (key: string) => Array.from({ length: 5 }, (_, i) => JSON.stringify({ key, i, pad: "p".repeat(100) })).join("\n");
      const postBody = (key: string) => send(`${q.base}/v1/events`, { method: "POST", headers: { "content-type": "application/x-ndjson", "idempotency-key": key }, body: body(key) });
      expect(body("a").length).toBeGreaterThan(500);
      const first = track(postBody("a"));
      await settle();
      const second = await postBody("b");
      expect(second.status, second.text).toBe(429);
      expect(second.body).toMatchObject({ error: expect.stringMatching(/^buffer is full/) });
      expect(first.answer).toBeUndefined();
      q.gate!.release();
      expect((await first.done).status).toBe(202);
    } finally {
      await q.close();
    }
  });

  it("a sink stalled from the start: nothing drained, so nobody waits (429 at once)", async () => {
    const q = await startHttpPipeline({ gated: true, buffer: { maxRecords: 10 }, source: { ack_timeout: "5s" } });
    try {
      void post(q, "fill", 10);
      await waitUntil("the buffer full", () => q.pipeline.bufferUsage().records === 10);
      const started = Date.now();
      const a = await post(q, "x", 1);
      expect(a.status, a.text).toBe(429);
      expect(a.body).toMatchObject({ error: expect.stringMatching(/^buffer is full/) });
      expect(Date.now() - started).toBeLessThan(1000);
    } finally {
      await q.close();
    }
  });
});
