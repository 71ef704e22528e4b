import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import type { ComponentContext, Transform, TransformOutput } from "../../../src/components/contracts.js";
import { systemClock } from "../../../src/core/clock.js";
import { SluiceError } from "../../../src/core/errors.js";
import { silentLogger, type Logger } from "../../../src/core/events.js";
import type { JsonObject, SluiceRecord } from "../../../src/core/record.js";
import { checkValidateTransform, definition, loadSchemaValidator } from "../../../src/transforms/validate.js";

const FIXTURES = fileURLToPath(new URL("../../fixtures/transforms/", import.meta.url));
const DEMO = fileURLToPath(new URL("../../../examples/demo/", import.meta.url));
const READING_SCHEMA = resolve(DEMO, "reading.schema.json");

function context(baseDir: string, logger: Logger = silentLogger): ComponentContext {
  return {
    name: "validate",
    dataDir: tmpdir(),
    baseDir,
    clock: systemClock,
    logger,
    emit: () => {},
  };
}

function record(payload: JsonObject): SluiceRecord {
  return { id: "r", key: undefined, payload, eventTime: undefined, receivedAt: 0, source: "test", attempts: 0 };
}

function validateTransform(options: Record<string, unknown>, baseDir = DEMO, logger?: Logger): Transform {
  return definition.create(definition.options.parse(options), context(baseDir, logger));
}

async function apply(transform: Transform, payload: JsonObject): Promise<TransformOutput> {
  return transform.apply(payload, record(payload));
}

/** Awaits what `run` throws or rejects with, failing the test when it does neither. */
async function failureOf(run: () => unknown): Promise<SluiceError> {
  try {
    await run();
  } catch (err) {
    expect(err).toBeInstanceOf(SluiceError);
    return err as SluiceError;
  }
  throw new Error("expected a failure, got a result");
}

function reading(overrides: JsonObject = {}): JsonObject {
  return { id: "r1", sensor: "t1", value: 21.5, unit: "C", ts: "2024-05-01T12:00:00.000Z", seq: 7, ...overrides };
}

describe("validate transform options", () => {
  it.each([
    [{ schema: "./reading.schema.json" }],
    [{ schema_inline: { type: "object" } }],
  ])("accepts %j", (input) => {
    expect(definition.options.safeParse(input).success).toBe(true);
  });

  it.each([
    [{}, "schema"],
    [{ schema: "./a.json", schema_inline: { type: "object" } }, "schema_inline"],
    [{ schema: "./a.json", schemas: "./b.json" }, ""],
  ])("rejects %j at %s", (input, path) => {
    const result = definition.options.safeParse(input);
    expect(result.success).toBe(false);
    expect(result.error!.issues[0]!.path.join(".")).toBe(path);
  });

  it("refuses both or neither in create too, for options that skipped the refinement", () => {
    let err: unknown;
    try {
      definition.create({ schema: undefined, schema_inline: undefined }, context(DEMO));
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(SluiceError);
    expect((err as SluiceError).code).toBe("ERR_CONFIG_INVALID");
  });
});

describe("validate transform", () => {
  it("passes a valid reading through unchanged, synchronously once the schema is compiled", async () => {
    const transform = validateTransform({ schema: "./reading.schema.json" });
    const first = reading();
    const pending = transform.apply(first, record(first));
    expect(pending).toBeInstanceOf(Promise);
    expect(await pending).toBe(first);

    const second = reading({ id: "r2", processed_at: "2024-05-01T12:00:01Z" });
    expect(transform.apply(second, record(second))).toBe(second);
  });

  it("fails an invalid record with every schema error as `<instancePath> <message>`", async () => {
    const transform = validateTransform({ schema: "./reading.schema.json" });
    const payload = reading({ value: "hot", seq: 1.5 });
    delete payload.sensor;
    const err = await failureOf(() => apply(transform, payload));
    expect(err.code).toBe("ERR_RECORD_INVALID");
    expect(err.retryable).toBe(false);
    expect(err.location).toBe(READING_SCHEMA);
    expect(err.message.split("; ").sort()).toEqual(["/sensor is required", "/seq must be integer", "/value must be number"]);
  });

  it("throws synchronously for an invalid record once compiled", async () => {
    const transform = validateTransform({ schema: "./reading.schema.json" });
    await apply(transform, reading());
    expect(() => transform.apply(reading({ unit: 3 }), record({}))).toThrow("/unit must be string");
  });

  it.each([
    ["2024-05-01T12:00:00Z", true],
    ["2024-05-01 12:00:00.5+02:00", true],
    ["2024-02-29T00:00:00Z", true],
    ["2023-02-29T00:00:00Z", false],
    ["2024-13-01T00:00:00Z", false],
    ["2024-05-01T24:00:00Z", false],
    ["2024-05-01T12:00:00", false],
    ["yesterday", false],
  ])("checks format date-time: %s is %s", async (ts, valid) => {
    const transform = validateTransform({ schema: "./reading.schema.json" });
    const payload = reading({ ts });
    if (valid) expect(await apply(transform, payload)).toBe(payload);
    else expect((await failureOf(() => apply(transform, payload))).message).toBe('/ts must match format "date-time"');
  });

  it.each([
    ["time", "23:59:60.25-03:30", true],
    ["time", "12:00:00+24:00", false],
    ["time", "12:60:00Z", false],
    ["date", "2000-02-29", true],
    ["date", "1900-02-29", false],
    ["date", "2024-04-31", false],
    ["uuid", "123e4567-e89b-12d3-a456-426614174000", true],
    ["uuid", "123e4567-e89b-12d3-a456", false],
  ])("checks format %s: %s is %s", async (format, value, valid) => {
    const transform = validateTransform({ schema_inline: { type: "object", properties: { v: { type: "string", format } } } });
    if (valid) expect(await apply(transform, { v: value })).toEqual({ v: value });
    else expect((await failureOf(() => apply(transform, { v: value }))).message).toBe(`/v must match format "${format}"`);
  });

  it("names a property that additionalProperties forbids, and the root as /", async () => {
    const transform = validateTransform({
      schema_inline: { type: "object", properties: { a: { type: "number" } }, additionalProperties: false, minProperties: 2 },
    });
    const err = await failureOf(() => apply(transform, { "x/y": 1 }));
    expect(err.location).toBe("schema_inline");
    expect(err.message.split("; ").sort()).toEqual(["/ must NOT have fewer than 2 properties", "/x~1y is not allowed"]);
  });

  it("uses draft 2020-12 when the schema says so", async () => {
    const transform = validateTransform({ schema: "./items.2020.schema.json" }, FIXTURES);
    expect(await apply(transform, { pair: ["a", 1] })).toEqual({ pair: ["a", 1] });
    const err = await failureOf(() => apply(transform, { pair: [1, "a", 2] }));
    expect(err.message.split("; ")).toEqual(
      expect.arrayContaining(["/pair/0 must be string", "/pair/1 must be number", "/pair must NOT have more than 2 items"]),
    );
  });

  it("caps the listed errors of one record", async () => {
    const transform = validateTransform({ schema_inline: { type: "object", additionalProperties: { type: "string" } } });
    const payload = Object.fromEntries(Array.from({ length: 60 }, (_, i) => [`k${i}`, i]));
    const lines = (await failureOf(() => apply(transform, payload))).message.split("; ");
    expect(lines).toHaveLength(51);
    expect(lines[0]).toBe("/k0 must be string");
    expect(lines[50]).toBe("and 10 more errors");
  });

  it("does no I/O in create: a missing schema file fails at the first apply, as a config error", async () => {
    const transform = validateTransform({ schema: "./missing.schema.json" });
    const err = await failureOf(() => apply(transform, reading()));
    expect(err.code).toBe("ERR_CONFIG_INVALID");
    expect(err.location).toBe(resolve(DEMO, "missing.schema.json"));
    expect(await failureOf(() => apply(transform, reading()))).toBe(err);
  });

  it("accepts unknown keywords and formats, and tells the logger about the format", async () => {
    const warnings: string[] = [];
    const logger: Logger = { ...silentLogger, warn: (_obj, msg) => void warnings.push(msg ?? "") };
    const transform = validateTransform(
      { schema_inline: { type: "object", "x-owner": "team", properties: { mail: { type: "string", format: "email" } } } },
      DEMO,
      logger,
    );
    expect(await apply(transform, { mail: "not an address" })).toEqual({ mail: "not an address" });
    expect(warnings.join("\n")).toContain('unknown format "email"');
  });
});

describe("loadSchemaValidator and checkValidateTransform", () => {
  it("accept the demo's schema", async () => {
    await expect(checkValidateTransform(READING_SCHEMA)).resolves.toBeUndefined();
    const validate = await loadSchemaValidator(READING_SCHEMA);
    expect(validate(reading())).toBe(true);
    expect(validate(reading({ seq: -1 }))).toEqual(["/seq must be >= 0"]);
  });

  it.each([
    ["missing.schema.json", /could not be read/],
    ["broken.schema.json", /is not JSON/],
    ["bad-keyword.schema.json", /is invalid: schema is invalid: data\/properties\/value\/type/],
  ])("report %s as ERR_CONFIG_INVALID at its path", async (file, message) => {
    const path = join(FIXTURES, file);
    const err = await checkValidateTransform(path);
    expect(err?.code).toBe("ERR_CONFIG_INVALID");
    expect(err?.location).toBe(path);
    expect(err?.message).toMatch(message);
    expect((await failureOf(() => loadSchemaValidator(path))).code).toBe("ERR_CONFIG_INVALID");
  });

  it("report a bad inline schema at schema_inline", async () => {
    const err = await checkValidateTransform({ type: "object", required: "id" });
    expect(err?.code).toBe("ERR_CONFIG_INVALID");
    expect(err?.location).toBe("schema_inline");
  });
});

describe("validate transform: patterns run in linear time", () => {
  // `^(a+)+$` on JavaScript's backtracking RegExp: 22 s for 33 characters, twice that per character more.
  const schema = {
    type: "object",
    properties: { s: { type: "string", pattern: "^(a+)+$" } },
    patternProperties: { "^(x+x+)+y$": { type: "number" } },
  };

  it("answers a catastrophic pattern on a long value at once, accepting and refusing correctly", async () => {
    const validate = await loadSchemaValidator(schema);
    const started = performance.now();
    expect(validate({ s: `${"a".repeat(40)}!` })).toEqual(['/s must match pattern "^(a+)+$"']);
    expect(validate({ s: "a".repeat(5000) })).toBe(true);
    expect(validate({ [`${"x".repeat(40)}y`]: "not a number" })).toEqual([`/${"x".repeat(40)}y must be number`]);
    expect(validate({ [`${"x".repeat(40)}`]: "no y: the pattern does not apply" })).toBe(true);
    // Behaviour is what is asserted; this bound only turns a hang into a failure (backtracking takes hours here).
    expect(performance.now() - started).toBeLessThan(5000);
  });

  it("keeps JavaScript pattern syntax: named groups, \\d, unicode escapes, and unanchored matching", async () => {
    const validate = await loadSchemaValidator({
      type: "object",
      properties: {
        a: { type: "string", pattern: "^(?<year>\\d{4})-\\d{2}$" },
        b: { type: "string", pattern: "\\u00e9" },
        c: { type: "string", pattern: "sensor" },
      },
    });
    expect(validate({ a: "2024-05", b: "café", c: "my-sensor-1" })).toBe(true);
    expect(validate({ a: "24-05", b: "cafe", c: "probe" })).toHaveLength(3);
  });

  it("refuses a pattern that needs backtracking (lookahead, backreference) when the schema compiles, naming it", async () => {
    const error = await checkValidateTransform({ type: "object", properties: { p: { type: "string", pattern: "^(?=.*\\d)\\w+$" } } });
    expect(error?.code).toBe("ERR_CONFIG_INVALID");
    expect(error?.message).toMatch(/pattern "\^\(\?=\.\*\\\\d\)\\\\w\+\$" cannot run on a linear-time regex engine/);
    const backref = await checkValidateTransform({ type: "object", properties: { p: { type: "string", pattern: "^(a)\\1$" } } });
    expect(backref?.message).toMatch(/pattern "\^\(a\)\\\\1\$" cannot run on a linear-time regex engine/);
    // The refusal is one catalogue error, not a plain Error wrapped in one: the cause is RE2's own complaint.
    expect((error?.cause as Error).message).not.toMatch(/linear-time/);
  });

  it("refuses an asynchronous schema as ERR_CONFIG_INVALID", async () => {
    const error = await checkValidateTransform({ $async: true, type: "object" });
    expect(error?.code).toBe("ERR_CONFIG_INVALID");
    expect(error?.message).toMatch(/asynchronous schemas \(\$async\) are not supported/);
  });
});
