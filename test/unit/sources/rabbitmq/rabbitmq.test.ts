/**
 * The `rabbitmq` source's and sink's options (defaults, what is refused), the source's record ids
 * and entries, and the classification of amqplib's errors; no broker needed (nothing connects
 * before `connect`).
 */
import type { Message } from "amqplib";
import { describe, expect, it } from "vitest";
import { classifyAmqpError, safeUrl } from "../../../../src/brokers/rabbitmq.js";
import { SluiceError } from "../../../../src/core/errors.js";
import { RecordEntry, type Entry, type JsonObject } from "../../../../src/core/record.js";
import type { ServiceEnvelope, SourceHandle } from "../../../../src/components/contracts.js";
import { definition as sink } from "../../../../src/sinks/rabbitmq.js";
import { bodyPosition, deliveries, envelopeOf, messageEntry } from "../../../../src/sources/rabbitmq/messages.js";
import { definition as source } from "../../../../src/sources/rabbitmq/source.js";

const URL_ = "amqp://guest:guest@127.0.0.1:5672";

/** A handle that builds entries as the engine does with the default id_field `id`. */
const handle = {
  chunkSize: 10,
  record: (payload: JsonObject, bytes: number, position: string | number, text?: string, envelope?: ServiceEnvelope): Entry => {
    const e = new RecordEntry(typeof payload.id === "string" ? payload.id : (envelope?.id ?? `r:${position}`), envelope?.key, payload, envelope?.eventTime, "r", bytes);
    e.text = text;
    return e;
  },
  malformed: (raw: string, position: string | number, error: SluiceError, envelope?: ServiceEnvelope): Entry => {
    const e = new RecordEntry(envelope?.id ?? `r:${position}`, envelope?.key, {}, undefined, "r", raw.length);
    e.failure = error;
    e.raw = raw;
    return e;
  },
} as unknown as SourceHandle;

function message(body: string, o: { messageId?: string; headers?: Record<string, unknown>; redelivered?: boolean; timestamp?: number } = {}): Message {
  return {
    content: Buffer.from(body),
    fields: { deliveryTag: 1, redelivered: o.redelivered ?? false, exchange: "", routingKey: "q", consumerTag: "c" },
    properties: { messageId: o.messageId, headers: o.headers ?? {}, timestamp: o.timestamp },
  } as unknown as Message;
}

describe("rabbitmq options", () => {
  it("has the documented defaults, and refuses a routing_key without an exchange", () => {
    expect(source.options.parse({ url: URL_, queue: "q" })).toEqual({ url: URL_, queue: "q", heartbeat: 30_000, max_deliveries: 10 });
    expect(source.options.safeParse({ url: URL_, queue: "q", routing_key: "a.*" }).success).toBe(false);
    expect(source.options.safeParse({ url: URL_, queue: "q", prefetch: 70_000 }).success).toBe(false);
    expect(source.options.safeParse({ url: URL_, queue: "q", queue_type: "stream" }).success).toBe(false);
  });

  it("sink: needs a queue or an exchange; queue_type and queue_arguments need a queue", () => {
    expect(sink.options.parse({ url: URL_, queue: "q" })).toEqual({ url: URL_, queue: "q", heartbeat: 30_000, confirm_timeout: 30_000 });
    expect(sink.options.safeParse({ url: URL_ }).success).toBe(false);
    expect(sink.options.safeParse({ url: URL_, exchange: "" }).success).toBe(false);
    expect(sink.options.safeParse({ url: URL_, exchange: "x", routing_key: "r" }).success).toBe(true);
    expect(sink.options.safeParse({ url: URL_, exchange: "x", queue_type: "classic" }).success).toBe(false);
    expect(sink.options.safeParse({ url: URL_, exchange: "x", queue_arguments: { "x-max-length": 5 } }).success).toBe(false);
  });
});

describe("rabbitmq messages", () => {
  it("takes the id from the payload, else message_id, else a hash of the body that a redelivery keeps", () => {
    expect(messageEntry(handle, message('{"id":"p","v":1}', { messageId: "m" }), "q", 10).id).toBe("p");
    expect(messageEntry(handle, message('{"v":1}', { messageId: "m" }), "q", 10).id).toBe("m");
    const hashed = messageEntry(handle, message('{"v":1}'), "q", 10);
    expect(hashed.id).toBe(`r:${bodyPosition(Buffer.from('{"v":1}'))}`);
    expect(messageEntry(handle, message('{"v":1}', { redelivered: true }), "q", 10).id).toBe(hashed.id);
    expect(messageEntry(handle, message('{"v":2}'), "q", 10).id).not.toBe(hashed.id);
  });

  it("reads key and event time from the sink's headers, the event time else from the timestamp property", () => {
    expect(envelopeOf(message("{}", { headers: { "sluice-key": Buffer.from("k"), "sluice-event-time": "2026-01-02T03:04:05.000Z" } }))).toEqual({
      id: undefined,
      key: "k",
      eventTime: Date.parse("2026-01-02T03:04:05.000Z"),
    });
    expect(envelopeOf(message("{}", { timestamp: 1_700_000_000 })).eventTime).toBe(1_700_000_000_000);
    expect(envelopeOf(message("{}", { headers: { "sluice-event-time": "not a time" } })).eventTime).toBeUndefined();
  });

  it("counts deliveries where a quorum queue does, and dead-letters past max_deliveries", () => {
    expect(deliveries(message("{}"))).toBe(1);
    expect(deliveries(message("{}", { redelivered: true }))).toBeUndefined();
    expect(deliveries(message("{}", { redelivered: true, headers: { "x-delivery-count": 3 } }))).toBe(4);
    const over = messageEntry(handle, message('{"id":"x"}', { redelivered: true, headers: { "x-delivery-count": 3 } }), "q", 3);
    expect([over.failure?.code, over.failure?.location]).toEqual(["ERR_MAX_DELIVERIES", "queue q"]);
    expect(messageEntry(handle, message('{"id":"x"}', { redelivered: true, headers: { "x-delivery-count": 2 } }), "q", 3).failure).toBeUndefined();
  });

  it("dead-letters a body that is not a JSON object", () => {
    for (const body of ["not json", "[1,2]", "42", "null"]) {
      const e = messageEntry(handle, message(body), "q", 10);
      expect([e.failure?.code, e.raw]).toEqual(["ERR_RECORD_MALFORMED", body]);
    }
  });
});

describe("rabbitmq errors", () => {
  const at = "rabbitmq amqp://guest:***@127.0.0.1:5672 queue q";
  it.each([
    ["refused credentials", new Error('Handshake terminated by server: 403 (ACCESS-REFUSED) with message "ACCESS_REFUSED - Login was refused"'), false],
    ["a queue declared with other arguments", Object.assign(new Error("Operation failed: QueueDeclare; 406 (PRECONDITION-FAILED)"), { code: 406 }), false],
    ["a missing exchange", Object.assign(new Error("Operation failed: ExchangeDeclare; 404 (NOT-FOUND)"), { code: 404 }), false],
    ["a vhost the server refuses at open", new Error("Expected ConnectionOpenOk; got <ConnectionClose channel:0>"), false],
    ["a refused connection", Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:5672"), { code: "ECONNREFUSED" }), true],
    ["a broker shutting down", Object.assign(new Error("Connection closed: 320 (CONNECTION-FORCED)"), { code: 320 }), true],
    ["a channel closed under a write", new Error("channel closed"), true],
  ])("%s is %s", (_what, err, retryable) => {
    const e = classifyAmqpError(err, "ERR_SOURCE_CONNECT", at);
    expect([e.code, e.retryable, e.location]).toEqual(["ERR_SOURCE_CONNECT", retryable, at]);
  });

  it("keeps a programmer error an ERR_INTERNAL, and never shows the password", () => {
    expect(classifyAmqpError(new TypeError("x is not a function"), "ERR_SINK_WRITE", "here").code).toBe("ERR_INTERNAL");
    expect(safeUrl("amqp://sluice:s3cret@rabbit:5672/shop")).toBe("amqp://sluice:***@rabbit:5672/shop");
    expect(safeUrl("amqp://rabbit")).toBe("amqp://rabbit");
  });
});
