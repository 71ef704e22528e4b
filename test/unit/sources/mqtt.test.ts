/**
 * The `mqtt` source's options (defaults, what is refused), its record ids and entries, and the
 * classification of its errors; no broker needed (nothing connects before `connect`).
 */
import { describe, expect, it } from "vitest";
import { systemClock } from "../../../src/core/clock.js";
import { SluiceError } from "../../../src/core/errors.js";
import { silentLogger } from "../../../src/core/events.js";
import { RecordEntry, type Entry, type JsonObject } from "../../../src/core/record.js";
import type { ServiceEnvelope, SourceHandle } from "../../../src/components/contracts.js";
import mqttPacket from "mqtt-packet";
import { acknowledgementBytes, classifyMqttError } from "../../../src/sources/mqtt/client.js";
import { messageEntry, messagePosition } from "../../../src/sources/mqtt/messages.js";
import { definition } from "../../../src/sources/mqtt/source.js";

const ctx = { name: "m", dataDir: "", baseDir: "", clock: systemClock, logger: silentLogger, emit: () => {} };
const base = { url: "mqtt://127.0.0.1:1883", topics: "sensors/#", client_id: "sluice-1" };

/** A handle that builds entries as the engine does with the default id_field `id`. */
const handle = {
  chunkSize: 10,
  record: (payload: JsonObject, bytes: number, position: string | number, text?: string, envelope?: ServiceEnvelope): Entry => {
    const e = new RecordEntry(typeof payload.id === "string" ? payload.id : `m:${position}`, envelope?.key, payload, undefined, "m", bytes);
    e.text = text;
    return e;
  },
  malformed: (raw: string, position: string | number, error: SluiceError, envelope?: ServiceEnvelope): Entry => {
    const e = new RecordEntry(`m:${position}`, envelope?.key, {}, undefined, "m", raw.length);
    e.failure = error;
    e.raw = raw;
    return e;
  },
} as unknown as SourceHandle;

const message = (topic: string, text: string) => ({ topic, payload: Buffer.from(text), qos: 1, packetId: 7 });

describe("mqtt source options", () => {
  it("has the documented defaults", () => {
    expect(definition.options.parse(base)).toEqual({ ...base, qos: 1, clean: false, session_expiry: "never", keepalive: 30_000 });
  });

  it.each([
    [{ client_id: undefined }, "client_id", /persistent session/],
    [{ qos: 0 }, "qos", /./],
    [{ qos: 3 }, "qos", /./],
    [{ topics: [] }, "topics", /./],
    [{ password: "p" }, "username", /needs a username/],
    [{ tls: { cert: "c.pem" } }, "tls.key", /go together/],
    [{ receive_maximum: 70_000 }, "receive_maximum", /./],
    [{ topic: "x" }, "", /topic/],
  ])("refuses %j", (extra, path, pattern) => {
    const result = definition.options.safeParse({ ...base, ...extra });
    expect(result.success).toBe(false);
    const issue = result.error!.issues[0]!;
    expect(issue.path.join(".")).toBe(path);
    expect(issue.message + JSON.stringify(issue)).toMatch(pattern);
  });

  it("takes clean: true without a client_id", () => {
    expect(definition.options.safeParse({ url: base.url, topics: "a", clean: true }).success).toBe(true);
  });

  it("declares ordered acks (PUBACKs in the order the messages came) and waits when full", () => {
    const source = definition.create(definition.options.parse(base), ctx);
    expect(source).toMatchObject({ acks: "ordered", whenFull: "wait" });
    expect(typeof source.connect).toBe("function");
  });
});

describe("mqtt messages", () => {
  it("gives a message without an id the topic and a hash of its bytes: equal on redelivery, different per topic and per payload", () => {
    const a = messagePosition("s/1", Buffer.from('{"v":1}'));
    expect(a).toMatch(/^s\/1:[\w-]{22}$/);
    expect(messagePosition("s/1", Buffer.from('{"v":1}'))).toBe(a);
    expect(messagePosition("s/2", Buffer.from('{"v":1}'))).not.toBe(a);
    expect(messagePosition("s/1", Buffer.from('{"v": 1}'))).not.toBe(a);
  });

  it("builds a record with the topic as key, and the id from the payload when it has one", () => {
    const e = messageEntry(handle, message("s/1", '{"id":"r-1","v":1}'), undefined);
    expect(e).toMatchObject({ id: "r-1", key: "s/1", payload: { id: "r-1", v: 1 }, text: '{"id":"r-1","v":1}' });
    expect(messageEntry(handle, message("s/1", '{"v":1}'), undefined).id).toBe(`m:${messagePosition("s/1", Buffer.from('{"v":1}'))}`);
  });

  it("writes the topic to topic_field, and then no longer passes the text as received", () => {
    const e = messageEntry(handle, message("s/1", '{"v":1}'), "topic");
    expect(e.payload).toEqual({ v: 1, topic: "s/1" });
    expect(e.text).toBeUndefined();
  });

  it.each([
    ["not json", /not valid JSON/],
    ["[1,2]", /not a JSON object/],
    ["42", /not a JSON object/],
  ])("dead-letters %s with the topic in its location", (text, pattern) => {
    const e = messageEntry(handle, message("s/1", text), undefined);
    expect(e.failure?.code).toBe("ERR_RECORD_MALFORMED");
    expect(e.failure?.message).toMatch(pattern);
    expect(e.failure?.location).toBe("topic s/1");
    expect(e.raw).toBe(text);
  });
});

describe("mqtt acknowledgements", () => {
  it("writes the PUBACKs and PUBRECs of every chunk in order, each as MQTT 5 parses it: success, its packet id", () => {
    const bytes = acknowledgementBytes([
      { puback: [1, 65_535], pubrec: [7] },
      { puback: [], pubrec: [] },
      { puback: [300], pubrec: [] },
    ]);
    const parser = mqttPacket.parser({ protocolVersion: 5 });
    const packets: { cmd: string; messageId?: number; reasonCode?: number }[] = [];
    parser.on("packet", (p: { cmd: string; messageId?: number; reasonCode?: number }) => packets.push(p));
    parser.parse(bytes);
    expect(packets.map((p) => [p.cmd, p.messageId, p.reasonCode ?? 0])).toEqual([
      ["puback", 1, 0],
      ["puback", 65_535, 0],
      ["pubrec", 7, 0],
      ["puback", 300, 0],
    ]);
  });
});

describe("mqtt errors", () => {
  const refused = (code: number) => Object.assign(new Error(`Connection refused: ${code}`), { code });
  it.each([
    [refused(134), false],
    [refused(135), false],
    [refused(133), false],
    [refused(136), true],
    [refused(137), true],
    [Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:1"), { code: "ECONNREFUSED" }), true],
    [new Error("connack timeout"), true],
  ])("classifies %s (retryable: %s)", (err, retryable) => {
    const e = classifyMqttError(err, "here");
    expect(e.code).toBe("ERR_SOURCE_CONNECT");
    expect(e.retryable).toBe(retryable);
    expect(e.message).toMatch(/^mqtt: /);
  });

  it("keeps a programmer error permanent", () => {
    expect(classifyMqttError(new TypeError("x is not a function"), "here")).toMatchObject({ code: "ERR_INTERNAL", retryable: false });
  });
});
