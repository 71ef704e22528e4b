/**
 * The `nats_jetstream` source's options: defaults, what is refused, and what the engine reads off
 * the source it builds (no server needed: nothing connects before `connect`).
 */
import { describe, expect, it } from "vitest";
import { systemClock } from "../../../src/core/clock.js";
import { silentLogger } from "../../../src/core/events.js";
import { definition } from "../../../src/sources/nats-jetstream.js";

const ctx = { name: "js", dataDir: "", baseDir: "", clock: systemClock, logger: silentLogger, emit: () => {} };
const base = { servers: "nats://127.0.0.1:4222", stream: "EVENTS" };

describe("nats_jetstream source options", () => {
  it("has the documented defaults", () => {
    expect(definition.options.parse(base)).toEqual({ ...base, consumer: "sluice", bind: false, deliver: "all", max_deliver: 10 });
  });

  it.each([
    [{ consumer: "a.b" }, "consumer", /no '\.', '\*', '>' or white space/],
    [{ consumer: "a b" }, "consumer", /white space/],
    [{ ack_wait: "500ms" }, "ack_wait", /at least 1s/],
    [{ max_deliver: 0 }, "max_deliver", /./],
    [{ deliver: "last" }, "deliver", /./],
    [{ user: "u" }, "password", /user and password go together/],
    [{ token: "t", user: "u", password: "p" }, "token", /not both/],
    [{ subject: "x" }, "", /subject/],
  ])("refuses %j", (extra, path, message) => {
    const result = definition.options.safeParse({ ...base, ...extra });
    expect(result.success).toBe(false);
    const issue = result.error!.issues[0]!;
    expect(issue.path.join(".")).toBe(path);
    expect(issue.message + JSON.stringify(issue)).toMatch(message);
  });

  it("declares individual acks, waits when full, and ticks working() every third of ack_wait", () => {
    const source = definition.create(definition.options.parse({ ...base, ack_wait: "9s" }), ctx);
    expect(source).toMatchObject({ acks: "individual", whenFull: "wait", workingIntervalMs: 3000 });
    // Unset: the default 30 s.
    expect(definition.create(definition.options.parse(base), ctx)).toMatchObject({ workingIntervalMs: 10_000 });
    expect(typeof source.connect).toBe("function");
    expect(typeof source.inProgress).toBe("function");
  });
});
