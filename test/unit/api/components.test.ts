import { describe, expect, it } from "vitest";
import { deadLetters, factoryName, sinks, sources, transforms } from "../../../src/api/components.js";
import { DEAD_LETTER_TYPES, SINK_TYPES, SOURCE_TYPES, TRANSFORM_TYPES } from "../../../src/components/builtins.js";

describe("library factories: derived from the one list of built-ins", () => {
  it.each([
    ["source", SOURCE_TYPES, sources],
    ["transform", TRANSFORM_TYPES, transforms],
    ["sink", SINK_TYPES, sinks],
    ["dead_letter", DEAD_LETTER_TYPES, deadLetters],
  ] as const)("every %s type has a factory, and every factory but custom a type", (_kind, types, factories) => {
    for (const [type, def] of Object.entries(types)) {
      expect(def.type).toBe(type);
      expect(typeof (factories as Record<string, unknown>)[factoryName(type)]).toBe("function");
    }
    expect(Object.keys(factories).filter((k) => k !== "custom").sort()).toEqual(Object.keys(types).map(factoryName).sort());
  });

  it("keeps the names the library has always had", () => {
    expect(Object.keys(sources).sort()).toEqual(["custom", "file", "generator", "http", "mqtt", "natsJetStream", "rabbitmq", "redisStreams"]);
    expect(Object.keys(sinks).sort()).toEqual(["blackhole", "custom", "file", "natsJetStream", "parquet", "postgres", "rabbitmq", "redisStreams", "sqlite", "stdout"]);
  });

  it("validates the options at the call, with the definition's schema", () => {
    expect(sources.http().type).toBe("http");
    expect(() => sinks.file({ path: "out", bogus: 1 } as never)).toThrow(/bogus/);
    // @ts-expect-error path is required
    expect(() => sources.file()).toThrow(/path/);
    // @ts-expect-error an unknown key is a type error too
    expect(() => sinks.blackhole({ size: 1 })).toThrow(/size/);
  });
});
