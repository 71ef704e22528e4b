/**
 * The broker sinks' pure parts: error classification (table-driven), message-id encoding, the
 * partition hash and the options' checks.
 */
import { AuthorizationError, TimeoutError } from "@nats-io/transport-node";
import { ReplyError } from "ioredis";
import { beforeAll, describe, expect, it } from "vitest";
import { classifyNatsError, headerValue, loadNats } from "../../../src/brokers/nats.js";
import { definition as natsJetStream } from "../../../src/sinks/nats-jetstream.js";
import { classifyRedisError, loadRedis, partitionStream } from "../../../src/brokers/redis.js";
import { definition as redisStreams } from "../../../src/sinks/redis-streams.js";

// The sinks load their client library on connect; classification knows its error classes from then on.
beforeAll(async () => {
  await Promise.all([loadRedis(), loadNats()]);
});

describe("classifyRedisError", () => {
  const reply = (message: string): Error => new (ReplyError as new (m: string) => Error)(message);
  const cases: [string, unknown, string, boolean][] = [
    ["memory full", reply("OOM command not allowed when used memory > 'maxmemory'."), "ERR_SINK_WRITE", true],
    ["loading after a restart", reply("LOADING Redis is loading the dataset in memory"), "ERR_SINK_WRITE", true],
    ["script cache flushed", reply("NOSCRIPT No matching script. Please use EVAL."), "ERR_SINK_WRITE", true],
    ["a replica after failover", reply("READONLY You can't write against a read only replica."), "ERR_SINK_WRITE", true],
    ["failing RDB saves", reply("MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk."), "ERR_SINK_WRITE", true],
    ["a busy script", reply("BUSY Redis is busy running a script."), "ERR_SINK_WRITE", true],
    ["too many clients", reply("ERR max number of clients reached"), "ERR_SINK_WRITE", true],
    ["a key of another type", reply("WRONGTYPE Operation against a key holding the wrong kind of value script: x"), "ERR_SINK_REJECTED", false],
    ["wrong password", reply("WRONGPASS invalid username-password pair or user is disabled."), "ERR_SINK_WRITE", false],
    ["no password", reply("NOAUTH Authentication required."), "ERR_SINK_WRITE", false],
    ["an ACL denial", reply("NOPERM this user has no permissions to run the 'xadd' command"), "ERR_SINK_WRITE", false],
    ["too few replicas (min-replicas-to-write)", reply("NOREPLICAS Not enough good replicas to write."), "ERR_SINK_WRITE", true],
    ["memory full inside a script (Redis 6.2)", reply("ERR Error running script (call to f_3c2a): @user_script:1: @user_script: 1: -OOM command not allowed when used memory > 'maxmemory'."), "ERR_SINK_WRITE", true],
    ["too few replicas inside a script (Redis 6.2)", reply("ERR Error running script (call to f_3c2a): @user_script:3: @user_script: 3: -NOREPLICAS Not enough good replicas to write."), "ERR_SINK_WRITE", true],
    ["a key of another type inside a script (Redis 6.2)", reply("ERR Error running script (call to f_3c2a): @user_script:2: @user_script: 2: -WRONGTYPE Operation against a key holding the wrong kind of value"), "ERR_SINK_REJECTED", false],
    ["an ACL denial inside a script (Redis 6.2)", reply("ERR Error running script (call to f_3c2a): @user_script:1: @user_script: 1: -NOPERM this user has no permissions to run the 'xadd' command"), "ERR_SINK_WRITE", false],
    ["a script's own error (Redis 6.2)", reply("ERR Error running script (call to f_3c2a): @user_script:1: user_script:1: attempt to call a nil value"), "ERR_SINK_WRITE", false],
    ["another reply", reply("ERR syntax error"), "ERR_SINK_WRITE", false],
    ["a lost connection", new Error("Connection is closed."), "ERR_SINK_WRITE", true],
    ["a refused connection", Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:6379"), { code: "ECONNREFUSED" }), "ERR_SINK_WRITE", true],
    ["a programmer error", new TypeError("x is not a function"), "ERR_INTERNAL", false],
  ];
  it.each(cases)("%s", (_name, err, code, retryable) => {
    const wrapped = classifyRedisError(err, "ERR_SINK_WRITE", "redis stream s");
    expect([wrapped.code, wrapped.retryable]).toEqual([code, retryable]);
    expect(wrapped.cause).toBe(err);
  });
});

describe("classifyNatsError", () => {
  const cases: [string, unknown, string, boolean][] = [
    ["bad credentials", new AuthorizationError("Authorization Violation"), "ERR_SINK_CONNECT", false],
    ["JetStream off", Object.assign(new Error("jetstream is not enabled"), { name: "JetStreamNotEnabled" }), "ERR_SINK_CONNECT", false],
    ["an ack timeout", new TimeoutError(), "ERR_SINK_CONNECT", true],
    ["a refused connection", Object.assign(new Error("connect ECONNREFUSED"), { code: "ECONNREFUSED" }), "ERR_SINK_CONNECT", true],
    ["a programmer error", new RangeError("bad"), "ERR_INTERNAL", false],
  ];
  it.each(cases)("%s", (_name, err, code, retryable) => {
    const wrapped = classifyNatsError(err, "ERR_SINK_CONNECT", "nats subject s");
    expect([wrapped.code, wrapped.retryable]).toEqual([code, retryable]);
  });
});

describe("headerValue", () => {
  it("keeps printable ASCII without % as it is", () => {
    expect(headerValue("r-1:sensor/7?x=1")).toBe("r-1:sensor/7?x=1");
  });
  it("encodes % and everything else so that distinct ids stay distinct and decode back", () => {
    const ids = ["a b", "a%20b", "line\nbreak", " lead", "trail ", "ünï", "🚀", "nul\u0000", "", "%"];
    const encoded = ids.map(headerValue);
    expect(new Set(encoded).size).toBe(ids.length);
    for (const e of encoded) expect(e).toMatch(/^[\x21-\x7e]*$/);
    expect(encoded.map((e) => decodeURIComponent(e))).toEqual(ids);
  });
});

describe("partitionStream", () => {
  it("is the stream itself with one partition, else <stream>:<FNV-1a of the key, else the id, mod n>", () => {
    expect(partitionStream("s", 1, { id: "a", key: "k" })).toBe("s");
    // FNV-1a 32 of "a" is 0xe40c292c = 3826002220; of "b" 0xe70c2de5 = 3876335077.
    expect(partitionStream("s", 7, { id: "x", key: "a" })).toBe(`s:${3826002220 % 7}`);
    expect(partitionStream("s", 7, { id: "b", key: undefined })).toBe(`s:${3876335077 % 7}`);
  });
});

describe("options", () => {
  it("refuses a body_key the sink fills itself", () => {
    expect(redisStreams.options.safeParse({ url: "redis://h", stream: "s", body_key: "id" }).success).toBe(false);
    expect(redisStreams.options.parse({ url: "redis://h", stream: "s" })).toMatchObject({ body_key: "body", dedupe_window: 120_000, partitions: 1 });
  });
  it("refuses a dedupe window or ack timeout of 0", () => {
    expect(redisStreams.options.safeParse({ url: "redis://h", stream: "s", dedupe_window: 0 }).success).toBe(false);
    expect(natsJetStream.options.safeParse({ servers: "nats://h", subject: "x", ack_timeout: 0 }).success).toBe(false);
  });
  it("refuses a token with a user, and a user without a password", () => {
    expect(natsJetStream.options.safeParse({ servers: "nats://h", subject: "x", token: "t", user: "u", password: "p" }).success).toBe(false);
    expect(natsJetStream.options.safeParse({ servers: "nats://h", subject: "x", user: "u" }).success).toBe(false);
    expect(natsJetStream.options.parse({ servers: "nats://h", subject: "x", create_stream: { name: "S" } }).create_stream).toEqual({
      name: "S",
      storage: "file",
      replicas: 1,
      duplicate_window: 120_000,
    });
  });
});
