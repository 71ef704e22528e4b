/**
 * The redis_streams source without a server: how an entry becomes a record (payload, text,
 * envelope, metadata, malformed bodies, max_deliveries dead letters), how the replies of XPENDING
 * and XINFO GROUPS are read, and what its options accept.
 */
import { describe, expect, it } from "vitest";
import type { ServiceEnvelope, SourceHandle } from "../../../src/components/contracts.js";
import type { SluiceError } from "../../../src/core/errors.js";
import type { Entry, JsonObject } from "../../../src/core/record.js";
import { entryRecord, exhaustedRecord, parseGroupInfo, parsePending, readRecords, type ByteEntry } from "../../../src/sources/redis-streams-entries.js";
import { pipeline, sinks, sources } from "../../../src/index.js";
import { validateConfig } from "../../../src/config/schema.js";
import { definition } from "../../../src/sources/redis-streams.js";

/** What the source passed to `record` or `malformed`. */
type Call =
  | { kind: "record"; payload: JsonObject; bytes: number; position: string | number; text: string | undefined; envelope: ServiceEnvelope | undefined }
  | { kind: "malformed"; raw: string; position: string | number; error: SluiceError; envelope: ServiceEnvelope | undefined };

/** A handle that only remembers the last call. */
function recordingHandle(): { handle: SourceHandle; last: () => Call } {
  let last: Call | undefined;
  const entry = {} as Entry;
  const handle = {
    chunkSize: 10,
    record: (payload, bytes, position, text, envelope) => ((last = { kind: "record", payload, bytes, position, text, envelope }), entry),
    malformed: (raw, position, error, envelope) => ((last = { kind: "malformed", raw, position, error, envelope }), entry),
    enqueue: () => Promise.resolve("accepted"),
    waitForRoom: (n) => Promise.resolve(n),
    expectedWait: () => 0,
  } satisfies SourceHandle;
  return { handle, last: () => last! };
}

const format = { bodyKey: "body", metadataField: "_redis" };

/** A handle that remembers every call, in order. */
function callLog(): { handle: SourceHandle; calls: Call[] } {
  const calls: Call[] = [];
  const { handle } = recordingHandle();
  return {
    calls,
    handle: {
      ...handle,
      record: (payload, bytes, position, text, envelope) => (calls.push({ kind: "record", payload, bytes, position, text, envelope }), {} as Entry),
      malformed: (raw, position, error, envelope) => (calls.push({ kind: "malformed", raw, position, error, envelope }), {} as Entry),
    },
  };
}

function decode(fields: string[]): Call {
  const { handle, last } = recordingHandle();
  entryRecord(handle, "events", "1-0", fields, format);
  return last();
}

describe("redis_streams entries", () => {
  it("passes the body as the payload and as its text, with the id <stream>:<entry id> when the entry has none", () => {
    expect(decode(["body", '{"a":1}'])).toEqual({
      kind: "record",
      payload: { a: 1 },
      bytes: 11,
      position: "events:1-0",
      text: '{"a":1}',
      envelope: { id: "events:1-0", key: undefined, eventTime: undefined },
    });
  });

  it("fills the envelope from the id, key and event_time fields; an unreadable time is left out", () => {
    expect(decode(["id", "r-1", "body", "{}", "key", "k", "event_time", "2026-01-02T03:04:05.000Z"])).toMatchObject({
      payload: {},
      envelope: { id: "r-1", key: "k", eventTime: Date.parse("2026-01-02T03:04:05.000Z") },
    });
    expect(decode(["body", "{}", "event_time", "yesterday"])).toMatchObject({ envelope: { eventTime: undefined } });
  });

  it("puts other fields under the metadata field, and then passes no text (the payload is no longer the body)", () => {
    expect(decode(["body", '{"a":1}', "trace", "t", "hop", "2"])).toMatchObject({ payload: { a: 1, _redis: { trace: "t", hop: "2" } }, text: undefined });
  });

  it("makes an entry without a body field (another producer's) a payload of all its fields as strings, its id <stream>:<entry id>", () => {
    // Its id, key and event_time are that producer's data, not sluice's envelope: id_field and the others find them in the payload.
    expect(decode(["id", "x", "temp", "21.5", "key", "k", "event_time", "2026-01-02T03:04:05.000Z", "unit", "C"])).toEqual({
      kind: "record",
      payload: { id: "x", temp: "21.5", key: "k", event_time: "2026-01-02T03:04:05.000Z", unit: "C" },
      bytes: 54,
      position: "events:1-0",
      text: undefined,
      envelope: { id: "events:1-0" },
    });
  });

  it.each([
    ["not JSON", "{nope", /is not JSON/],
    ["an array", "[1]", /is not a JSON object/],
    ["null", "null", /is not a JSON object/],
    ["a number", "42", /is not a JSON object/],
  ])("dead-letters a body that is %s, located by stream and entry id, keeping its envelope", (_what, body, message) => {
    const call = decode(["id", "r-9", "body", body]);
    expect(call).toMatchObject({ kind: "malformed", raw: body, position: "events:1-0", envelope: { id: "r-9" } });
    const { error } = call as Extract<Call, { kind: "malformed" }>;
    expect(error.code).toBe("ERR_RECORD_MALFORMED");
    expect(error.message).toMatch(message);
    expect(error.location).toBe("events entry 1-0");
  });

  it("dead-letters an exhausted entry with ERR_MAX_DELIVERIES and its body, or its fields without one", () => {
    const { handle, last } = recordingHandle();
    exhaustedRecord(handle, "events", "7-0", ["id", "r-7", "body", '{"x":1}'], 10, format);
    const call = last() as Extract<Call, { kind: "malformed" }>;
    expect(call).toMatchObject({ raw: '{"x":1}', position: "events:7-0", envelope: { id: "r-7" } });
    expect(call.error.code).toBe("ERR_MAX_DELIVERIES");
    expect(call.error.message).toMatch(/delivered 10 times/);
    exhaustedRecord(handle, "events", "8-0", ["a", "1", "id", "r-8"], 3, format);
    expect(last()).toMatchObject({ raw: '{"a":"1","id":"r-8"}', envelope: { id: "events:8-0" } });
  });
});

describe("redis_streams reads (entries as bytes)", () => {
  /** What readRecords makes of entries (given as strings), next to what entryRecord makes of each. */
  function both(entries: [string, string[] | null][]): { read: Call[]; alone: Call[]; ids: string[] } {
    const bytes: ByteEntry[] = entries.map(([id, fields]) => [Buffer.from(id), fields === null ? null : fields.map((f) => Buffer.from(f))]);
    const read = callLog();
    const records: Entry[] = [];
    const ids = readRecords(read.handle, "events", bytes, format, Buffer.from(format.bodyKey), records);
    expect(records).toHaveLength(entries.length);
    const alone = callLog();
    for (const [id, fields] of entries) entryRecord(alone.handle, "events", id, fields ?? [], format);
    return { read: read.calls, alone: alone.calls, ids };
  }

  it("parses a read whose entries hold only a body at once, each record as entryRecord makes it", () => {
    const { read, alone, ids } = both([
      ["1-0", ["body", '{"a":1}']],
      ["1-1", ["body", '{"id":"r-2","t":"\u00e9t\u00e9 ✓","n":{"x":[1,2]}}']],
      ["2-0", ["body", "{}"]],
    ]);
    expect(ids).toEqual(["1-0", "1-1", "2-0"]);
    expect(read).toEqual(alone.map((c) => ({ ...c, envelope: { id: c.envelope!.id } })));
    expect(read[1]).toMatchObject({ payload: { t: "été ✓" }, text: '{"id":"r-2","t":"\u00e9t\u00e9 ✓","n":{"x":[1,2]}}' });
  });

  it("parses at once a read of entries as the redis_streams sink writes them (id, key, event_time beside the body)", () => {
    const { read, alone } = both([
      ["1-0", ["id", "r-1", "body", '{"a":1}', "key", "k-1", "event_time", "2026-01-02T03:04:05.000Z"]],
      ["1-1", ["id", "r-2", "body", '{"a":2}']],
      ["1-2", ["body", '{"a":3}', "event_time", "yesterday", "key", "ké"]],
      ["1-3", ["body", '{"a":4}']],
    ]);
    expect(read).toEqual(alone);
    expect(read[0]).toMatchObject({ bytes: 56, envelope: { id: "r-1", key: "k-1", eventTime: Date.parse("2026-01-02T03:04:05.000Z") } });
    expect(read[2]).toMatchObject({ envelope: { id: "events:1-2", key: "ké", eventTime: undefined } });
  });

  it.each([
    ["a body that is not JSON", [["1-0", ["body", '{"a":1}']], ["1-1", ["body", "{nope}"]], ["1-2", ["body", '{"b":2}']]]],
    ["a body that is two objects (a top-level comma)", [["1-0", ["body", '{"a":1},{"b":2}']], ["1-1", ["body", '{"c":3}']]]],
    ["bodies that are valid only together", [["1-0", ["body", '{"a":[{"b":1}']], ["1-1", ["body", '{"c":2}]}']], ["1-2", ["body", '{"d":1}']]]],
    ["a body with a line break (valid only once joined by commas)", [["1-0", ["body", '{"a":1\n"b":2}']], ["1-1", ["body", "{}"]]]],
    ["a body that is an array", [["1-0", ["body", "[1]"]], ["1-1", ["body", "{}"]]]],
    ["an entry with envelope fields and metadata", [["1-0", ["id", "r-1", "body", '{"a":1}', "key", "k", "trace", "t"]], ["1-1", ["body", "{}"]]]],
    ["an entry without a body field", [["1-0", ["temp", "21.5"]], ["1-1", ["body", "{}"]]]],
    ["a body field under another name", [["1-0", ["bodx", "{}"]]]],
    ["two body fields", [["1-0", ["body", '{"a":1}', "id", "r", "body", '{"a":2}']], ["1-1", ["body", "{}"]]]],
    ["an entry deleted while pending", [["1-0", null], ["1-1", ["body", "{}"]]]],
  ] as [string, [string, string[] | null][]][])("takes a read with %s entry by entry: the same records, a bad body found alone", (_what, entries) => {
    const { read, alone, ids } = both(entries);
    expect(read).toEqual(alone);
    expect(ids).toEqual(entries.map(([id]) => id));
  });

  it("reads nothing from an empty read", () => {
    expect(both([])).toEqual({ read: [], alone: [], ids: [] });
  });
});

describe("redis_streams replies", () => {
  it("reads XPENDING's extended form", () => {
    expect(parsePending([["1-0", "c1", 5000, 3]])).toEqual([{ id: "1-0", consumer: "c1", deliveries: 3 }]);
    expect(parsePending(null)).toEqual([]);
  });

  it("finds the group in XINFO GROUPS with its last delivered id; lag is undefined when the server gives none", () => {
    const reply = [
      ["name", "other", "consumers", 1, "pending", 9, "last-delivered-id", "0-0", "entries-read", 0, "lag", 4],
      ["name", "g", "consumers", 2, "pending", 3, "last-delivered-id", "5-0", "entries-read", 5, "lag", null],
    ];
    expect(parseGroupInfo(reply, "g")).toEqual({ pending: 3, lag: undefined, delivered: "5-0" });
    expect(parseGroupInfo(reply, "other")).toEqual({ pending: 9, lag: 4, delivered: "0-0" });
    expect(parseGroupInfo(reply, "missing")).toBeUndefined();
  });
});

describe("redis_streams options", () => {
  const parse = (o: Record<string, unknown>) => definition.options.safeParse({ url: "redis://127.0.0.1:6379", stream: "events", ...o });

  it("has the agreed defaults", () => {
    expect(parse({}).data).toEqual({
      url: "redis://127.0.0.1:6379",
      stream: "events",
      group: "sluice",
      start: "0",
      body_key: "body",
      metadata_field: "_redis",
      partitions: 1,
      block: 2_000,
      claim_idle: 60_000,
      max_deliveries: 10,
      ordered: false,
    });
  });

  it('takes start 0 written as a number, and "$"', () => {
    expect(parse({ start: 0 }).data?.start).toBe("0");
    expect(parse({ start: "$" }).data?.start).toBe("$");
    expect(parse({ start: "5-0" }).success).toBe(false);
  });

  it.each([
    [{ body_key: "id" }, "body_key"],
    [{ metadata_field: "event_time" }, "metadata_field"],
    [{ block: 0 }, "block"],
    [{ block: "2m" }, "block"],
    [{ claim_idle: "5ms" }, "claim_idle"],
    [{ max_deliveries: 0 }, "max_deliveries"],
    [{ partitions: 0 }, "partitions"],
    [{ ordred: true }, ""],
    [{ lease_ttl: "10s" }, "lease_ttl"],
    [{ ordered: true, lease_ttl: "500ms" }, "lease_ttl"],
  ])("refuses %j", (o, path) => {
    const result = parse(o);
    expect(result.success).toBe(false);
    expect(result.error!.issues.map((i) => i.path.join("."))).toContain(path);
  });
});

describe("redis_streams ordered with the durable buffer", () => {
  const config = (buffer: Record<string, unknown>, ordered: boolean) => ({
    buffer,
    sources: { q: { type: "redis_streams", url: "redis://127.0.0.1:6379", stream: "events", partitions: 4, ordered } },
    sinks: { out: { type: "blackhole" } },
  });

  it("is refused by the config, naming the key and why", () => {
    const { issues } = validateConfig(config({ durable: {} }, true));
    expect(issues).toHaveLength(1);
    expect(issues[0]!.path).toBe("sources.q.ordered");
    expect(issues[0]!.message).toMatch(/durable buffer acks entries once they are on this worker's disk/);
    expect(validateConfig(config({}, true)).issues).toEqual([]);
    expect(validateConfig(config({ durable: {} }, false)).issues).toEqual([]);
  });

  it("is refused by the library's build() before anything is created", async () => {
    const built = pipeline({ buffer: { durable: {} }, data_dir: "/nonexistent/never-created" })
      .source("q", sources.redisStreams({ url: "redis://127.0.0.1:6379", stream: "events", partitions: 4, ordered: true }))
      .sink("out", sinks.blackhole())
      .build();
    await expect(built).rejects.toMatchObject({ code: "ERR_CONFIG_INVALID", message: expect.stringMatching(/^sources\.q\.ordered: ordered: true cannot keep order/) });
  });
});
