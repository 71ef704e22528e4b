/**
 * Backpressure of the http source: while the sink is stalled, concurrent producers that keep
 * posting get 429 with Retry-After, the buffer stays within its bound, and the heap does not grow
 * with the refused bodies; once the sink recovers, every request that got 202 and every request
 * retried with its Idempotency-Key after a 429 is in SQLite, each record exactly once.
 */
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { expect, it } from "vitest";
import { keyedId, send, startHttpPipeline, waitUntil, type Answer } from "../helpers/http-pipeline.js";

// A rough heap check needs a collection first, or garbage would read as growth.
setFlagsFromString("--expose-gc");
const gc = runInNewContext("gc") as () => void;

/** JS heap plus memory outside it (Buffers live there), after a full collection. */
function memory(): number {
  gc();
  const m = process.memoryUsage();
  return m.heapUsed + m.external;
}

const MAX_RECORDS = 60;
const CLIENTS = 16;
const REQUESTS_PER_CLIENT = 12;
const RECORDS_PER_REQUEST = 5;
/** Each record carries this much padding, so refused bodies that were kept would show on the heap. */
const PAD = "x".repeat(8 * 1024);
/** 429s to collect while stalled: about 80 MB of refused bodies. */
const REFUSALS = 2000;

it("a stalled sink: 429 + Retry-After, buffer and heap bounded; after recovery everything accepted is delivered exactly once", async () => {
  const p = await startHttpPipeline({ gated: true, buffer: { maxRecords: MAX_RECORDS }, source: { retry_after: "1s" } });
  const gate = p.gate!;
  let maxUsage = 0;
  const sample = () => (maxUsage = Math.max(maxUsage, p.pipeline.bufferUsage().records));
  const sampler = setInterval(sample, 2);
  try {
    let released = false;
    let refusedWhileStalled = 0;
    const refusalsByStatus = new Map<number, number>();
    const acceptedKeys: string[] = [];
    const retriedKeys = new Set<string>();
    const unexpected: string[] = [];

    const bodyOf = (key: string) => Array.from({ length: RECORDS_PER_REQUEST }, (_, i) => JSON.stringify({ key, i, pad: PAD })).join("\n");
    const post = (key: string): Promise<Answer> => {
      const body = bodyOf(key);
      return send(`${p.base}/v1/events`, { method: "POST", headers: { "content-type": "application/x-ndjson", "idempotency-key": key }, body });
    };

    /** One producer: posts its requests in turn; on 429 it retries the same request with the same key. */
    const client = async (c: number) => {
      for (let r = 0; r < REQUESTS_PER_CLIENT; r++) {
        const key = `c${c}-r${r}`;
        for (;;) {
          const a = await post(key);
          sample();
          if (a.status === 202) {
            if (JSON.stringify(a.body) !== JSON.stringify({ accepted: RECORDS_PER_REQUEST })) unexpected.push(`${key}: 202 ${a.text}`);
            acceptedKeys.push(key);
            break;
          }
          if (a.status !== 429 || a.headers["retry-after"] !== "1") unexpected.push(`${key}: ${a.status} retry-after=${a.headers["retry-after"]} ${a.text}`);
          refusalsByStatus.set(a.status, (refusalsByStatus.get(a.status) ?? 0) + 1);
          if (!released) refusedWhileStalled++;
          retriedKeys.add(key);
          // The client's backoff; far below Retry-After, so the test does not take minutes.
          await new Promise((resolve) => setTimeout(resolve, 5));
        }
      }
    };

    const clients = Array.from({ length: CLIENTS }, (_, c) => client(c));
    await gate.stalled;
    // Warm-up: the buffer fills and the first refusals come back; measure the heap from here.
    await waitUntil("the first refusals", () => refusedWhileStalled >= 50, 30_000);
    const heapBefore = memory();
    await waitUntil(`${REFUSALS} refusals while stalled`, () => refusedWhileStalled >= REFUSALS, 60_000);
    const heapGrowth = memory() - heapBefore;

    // Nothing got through while stalled: every accepted request is still waiting for its 202.
    expect(acceptedKeys).toEqual([]);
    expect(gate.committed).toEqual([]);
    expect(p.pipeline.bufferUsage().records).toBeGreaterThan(MAX_RECORDS - RECORDS_PER_REQUEST);
    // ~80 MB of bodies were refused; had they been kept, memory would show it (the noise is a few MB).
    expect(heapGrowth).toBeLessThan(32 * 1024 * 1024);

    released = true;
    gate.release();
    await Promise.all(clients);
    clearInterval(sampler);

    expect(unexpected).toEqual([]);
    expect([...refusalsByStatus.keys()]).toEqual([429]);
    expect(maxUsage).toBeGreaterThan(0);
    expect(maxUsage).toBeLessThanOrEqual(MAX_RECORDS);

    const allKeys = Array.from({ length: CLIENTS * REQUESTS_PER_CLIENT }, (_, i) => `c${Math.floor(i / REQUESTS_PER_CLIENT)}-r${i % REQUESTS_PER_CLIENT}`);
    expect([...acceptedKeys].sort()).toEqual([...allKeys].sort());
    expect(retriedKeys.size).toBeGreaterThan(0);
    const expectedIds = allKeys.flatMap((k) => Array.from({ length: RECORDS_PER_REQUEST }, (_, i) => keyedId(k, bodyOf(k), i))).sort();
    // Exactly once: the sink committed each id one time (no redelivery), and SQLite has each row.
    expect([...gate.committed].sort()).toEqual(expectedIds);
    const rows = p.rows();
    expect([...rows.keys()].sort()).toEqual(expectedIds);
    for (const key of retriedKeys) expect(rows.get(keyedId(key, bodyOf(key), 0))).toMatchObject({ key, i: 0 });
    expect(p.pipeline.bufferUsage()).toEqual({ records: 0, bytes: 0 });
  } finally {
    clearInterval(sampler);
    await p.close();
  }
});
