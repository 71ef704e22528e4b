/**
 * Repeats of an ingest request, against a real pipeline (http -> durable buffer -> SQLite; the
 * durable buffer's enqueue waits for a disk write, which is where two requests interleaved):
 * concurrent requests of one Idempotency-Key (the race of issue 11, point 1: a 202 whose records
 * were then dropped as a redelivery), and replays of a signed request (point 4).
 */
import { createHmac, randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { makeTempDir } from "../helpers/source-harness.js";
import { keyedId, send, startHttpPipeline, waitUntil, type Answer, type HttpPipeline } from "../helpers/http-pipeline.js";

const TOKEN = "token-0123456789abcdef";
const SECRET = "hmac-secret-0123456789";

let p: HttpPipeline;

beforeAll(async () => {
  p = await startHttpPipeline({ durable: true, source: { auth: { tokens: [TOKEN], hmac: { secrets: [SECRET], tolerance: "60s" } } } });
});

afterAll(async () => {
  await p?.close();
});

function post(body: string, headers: Record<string, string>): Promise<Answer> {
  return send(`${p.base}/v1/events`, { method: "POST", headers: { "content-type": "application/json", ...headers }, body });
}

const withToken = (key: string) => ({ authorization: `Bearer ${TOKEN}`, "idempotency-key": key });

/** Signature headers over `<timestamp>.<body>`, or `<timestamp>:<key>\n<body>` with a key. */
function sign(body: string, timestamp: number, key?: string): Record<string, string> {
  const prefix = key === undefined ? `${timestamp}.` : `${timestamp}:${key}\n`;
  const sig = createHmac("sha256", SECRET).update(prefix).update(body).digest("hex");
  return { "x-sluice-signature": `sha256=${sig}`, "x-sluice-timestamp": String(timestamp), ...(key === undefined ? {} : { "idempotency-key": key }) };
}

/**
 * The sink's rows of one test run, once `n` are there: with a durable buffer a 202 means on disk,
 * and the sink commits a moment later. Fewer within 5 s (records lost) fails the wait.
 */
async function rowsOf(run: string, n: number): Promise<Map<string, Record<string, unknown>>> {
  const of = () => new Map([...p.rows()].filter(([, r]) => r.run === run));
  await waitUntil(`${n} rows of run ${run} in the sink`, () => of().size >= n, 5000);
  return of();
}

/** Records received by the source so far, from its metrics. */
async function received(): Promise<number> {
  const m = await send(`${p.base}/metrics`, { headers: { authorization: `Bearer ${TOKEN}` } });
  return Number(/^sluice_records_received_total\{source="web"\} (\d+)$/m.exec(m.text)?.[1] ?? 0);
}

describe("http source: concurrent requests of one Idempotency-Key", () => {
  it("50 concurrent pairs with different bodies (records without id): every record of every 2xx answer is in the sink; the other side gets 422", async () => {
    const run = randomUUID();
    const pairs = Array.from({ length: 50 }, (_, i) => ({
      key: `race-${run}-${i}`,
      bodies: (["a", "b"] as const).map((side) => [{ run, pair: i, side, n: 0 }, { run, pair: i, side, n: 1 }]),
    }));
    // Every request of every pair in flight at once.
    const answers = await Promise.all(pairs.map((pair) => Promise.all(pair.bodies.map((body) => post(JSON.stringify(body), withToken(pair.key))))));
    const rows = await rowsOf(run, 100);
    let accepted = 0;
    pairs.forEach((pair, i) => {
      const statuses = answers[i]!.map((a) => a.status).sort();
      // One side is taken, the other refused: never both 202 (one of them would be dropped).
      expect(statuses, answers[i]!.map((a) => a.text).join(" | ")).toEqual([202, 422]);
      answers[i]!.forEach((a, side) => {
        if (a.status !== 202) return;
        accepted++;
        expect(a.body).toEqual({ accepted: 2 });
        pair.bodies[side]!.forEach((record, n) => expect(rows.get(keyedId(pair.key, JSON.stringify(pair.bodies[side]), n))).toEqual(record));
      });
    });
    expect(accepted).toBe(50);
    expect(rows.size).toBe(100);
  });

  it("50 concurrent pairs with the same body: both get the same answer, each record once, enqueued once", async () => {
    const run = randomUUID();
    const before = await received();
    const pairs = Array.from({ length: 50 }, (_, i) => ({ key: `same-${run}-${i}`, body: JSON.stringify([{ run, pair: i, n: 0 }, { run, pair: i, n: 1 }, { run, pair: i, n: 2 }]) }));
    const answers = await Promise.all(pairs.map((pair) => Promise.all([post(pair.body, withToken(pair.key)), post(pair.body, withToken(pair.key))])));
    for (const [first, second] of answers) {
      expect(first!.status, first!.text).toBe(202);
      expect(second!.status).toBe(first!.status);
      expect(second!.body).toEqual(first!.body);
      expect(first!.body).toEqual({ accepted: 3 });
    }
    expect((await rowsOf(run, 150)).size).toBe(150);
    // The second of each pair waited for the first's answer instead of enqueueing its records again.
    expect((await received()) - before).toBe(150);
  });

  it("a different body while the first request is in flight gets 422 at once; the same body waits and gets the first's answer", async () => {
    const q = await startHttpPipeline({ gated: true });
    try {
      const key = `inflight-${randomUUID()}`;
      const postQ = (body: unknown) => send(`${q.base}/v1/events`, { method: "POST", headers: { "content-type": "application/json", "idempotency-key": key }, body: JSON.stringify(body) });
      const first = postQ([{ n: 1 }, { n: 2 }]);
      await q.gate!.stalled;
      const same = postQ([{ n: 1 }, { n: 2 }]);
      // Answered while the first still waits for its sink: no waiting behind it.
      const other = await postQ([{ n: 3 }]);
      expect(other.status, other.text).toBe(422);
      expect(other.body).toMatchObject({ error: expect.stringMatching(/was used before for a different body/) });
      expect(q.gate!.committed).toHaveLength(0);
      q.gate!.release();
      const [a, b] = await Promise.all([first, same]);
      expect(a.status, a.text).toBe(202);
      expect(b.status).toBe(202);
      expect(b.body).toEqual(a.body);
      const sent = JSON.stringify([{ n: 1 }, { n: 2 }]);
      expect(q.gate!.committed.sort()).toEqual([keyedId(key, sent, 0), keyedId(key, sent, 1)]);
    } finally {
      await q.close();
    }
  });

  it("when the first is refused whole (429), its concurrent repeat gets the same 429, and the key stays free for other records", async () => {
    const q = await startHttpPipeline({ gated: true, buffer: { maxRecords: 4 } });
    try {
      const postQ = (body: unknown, key: string) => send(`${q.base}/v1/events`, { method: "POST", headers: { "content-type": "application/json", "idempotency-key": key }, body: JSON.stringify(body) });
      const fill = postQ([{ n: 1 }, { n: 2 }, { n: 3 }], "fill");
      await q.gate!.stalled;
      const both = await Promise.all([postQ([{ n: 4 }, { n: 5 }], "k"), postQ([{ n: 4 }, { n: 5 }], "k")]);
      for (const a of both) {
        expect(a.status, a.text).toBe(429);
        expect(a.headers["retry-after"]).toBe("1");
      }
      q.gate!.release();
      expect((await fill).status).toBe(202);
      const retried = await postQ([{ n: 4 }, { n: 5 }, { n: 6 }], "k");
      expect(retried.status, retried.text).toBe(202);
      expect(retried.body).toEqual({ accepted: 3 });
    } finally {
      await q.close();
    }
  });
});

describe("http source: an Idempotency-Key the source no longer remembers", () => {
  it("after a restart on the same sink, key K with another body is taken as new records: both bodies' records are in the sink", async () => {
    const dir = await makeTempDir("sluice-http-restart-");
    try {
      const key = `restart-${randomUUID()}`;
      const bodyA = JSON.stringify([{ side: "a", n: 0 }, { side: "a", n: 1 }]);
      const bodyB = JSON.stringify([{ side: "b", n: 0 }, { side: "b", n: 1 }]);
      const postTo = (q: HttpPipeline, body: string) => send(`${q.base}/v1/events`, { method: "POST", headers: { "content-type": "application/json", "idempotency-key": key }, body });
      const first = await startHttpPipeline({ dir: dir.path });
      expect((await postTo(first, bodyA)).status).toBe(202);
      await first.close();
      // A new source instance: the key's binding to body A was in the first one's memory only.
      const second = await startHttpPipeline({ dir: dir.path });
      try {
        const b = await postTo(second, bodyB);
        expect(b.status, b.text).toBe(202);
        // This instance now binds K to body B: body A again is refused, and its records are in already.
        const again = await postTo(second, bodyA);
        expect(again.status, again.text).toBe(422);
        await waitUntil("both bodies' records in the sink", () => second.rows().size === 4, 5000);
        const rows = second.rows();
        for (const [body, side] of [[bodyA, "a"], [bodyB, "b"]] as const) {
          for (const n of [0, 1]) expect(rows.get(keyedId(key, body, n))).toEqual({ side, n });
        }
      } finally {
        await second.close();
      }
    } finally {
      await dir.remove();
    }
  });
});

describe("http source: replayed signed requests", () => {
  it("the same signed request 5 times (in turn and at once): one set of records, enqueued once, the same answer each time", async () => {
    const run = randomUUID();
    const body = JSON.stringify([{ run, n: 0 }, { run, n: 1 }]);
    const headers = sign(body, Math.floor(Date.now() / 1000));
    const before = await received();
    const answers: Answer[] = [];
    for (let i = 0; i < 5; i++) answers.push(await post(body, headers));
    answers.push(...(await Promise.all(Array.from({ length: 5 }, () => post(body, headers)))));
    for (const a of answers) {
      expect(a.status, a.text).toBe(202);
      expect(a.body).toEqual({ accepted: 2 });
    }
    expect((await rowsOf(run, 2)).size).toBe(2);
    expect((await received()) - before).toBe(2);
  });

  it("a signed request with an Idempotency-Key: replays get the first answer; the signature does not pass with another key, nor without one", async () => {
    const run = randomUUID();
    const body = JSON.stringify({ run });
    const ts = Math.floor(Date.now() / 1000);
    const key = `signed-${run}`;
    const headers = sign(body, ts, key);
    const before = await received();
    for (let i = 0; i < 5; i++) {
      const a = await post(body, headers);
      expect(a.status, a.text).toBe(202);
      expect(a.body).toEqual({ accepted: 1 });
    }
    expect((await rowsOf(run, 1)).get(keyedId(key, body, 0))).toEqual({ run });
    expect((await received()) - before).toBe(1);

    // The replay of a captured request under a new key (which would give its records new ids).
    const newKey = await post(body, { ...headers, "idempotency-key": `${key}-again` });
    expect(newKey.status, newKey.text).toBe(401);
    expect(newKey.body).toMatchObject({ error: "signature does not match the body" });
    const { "idempotency-key": _dropped, ...withoutKey } = headers;
    const noKey = await post(body, withoutKey);
    expect(noKey.status, noKey.text).toBe(401);
    // Signed the old way (`<timestamp>.<body>`) but sent with a key: the key is not covered.
    const oldForm = await post(body, { ...sign(body, ts), "idempotency-key": `${key}-old` });
    expect(oldForm.status, oldForm.text).toBe(401);
    expect((await rowsOf(run, 1)).size).toBe(1);
    expect((await received()) - before).toBe(1);
  });
});
