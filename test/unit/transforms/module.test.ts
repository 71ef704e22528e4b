import { execFile } from "node:child_process";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import type { ComponentContext, Transform, TransformOutput } from "../../../src/components/contracts.js";
import { systemClock } from "../../../src/core/clock.js";
import { SluiceError } from "../../../src/core/errors.js";
import { silentLogger } from "../../../src/core/events.js";
import type { JsonObject, SluiceRecord } from "../../../src/core/record.js";
import { checkModuleTransform, definition, loadModuleTransform, mapTransform } from "../../../src/transforms/module.js";

const FIXTURES = fileURLToPath(new URL("../../fixtures/transforms/", import.meta.url));
const DEMO = fileURLToPath(new URL("../../../examples/demo/", import.meta.url));

function context(baseDir = FIXTURES): ComponentContext {
  return {
    name: "module",
    dataDir: tmpdir(),
    baseDir,
    clock: systemClock,
    logger: silentLogger,
    emit: () => {},
  };
}

function record(payload: JsonObject): SluiceRecord {
  return { id: String(payload.id ?? "r"), key: undefined, payload, eventTime: undefined, receivedAt: 0, source: "test", attempts: 0 };
}

function moduleTransform(path: string, exportName?: string, baseDir?: string): Transform {
  const options = definition.options.parse(exportName === undefined ? { path } : { path, export: exportName });
  return definition.create(options, context(baseDir));
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

describe("module transform options", () => {
  it("defaults the export to default", () => {
    expect(definition.options.parse({ path: "./enrich.mjs" })).toEqual({ path: "./enrich.mjs", export: "default" });
  });

  it.each([
    [{}, "path"],
    [{ path: "" }, "path"],
    [{ path: "./enrich.py" }, "path"],
    [{ path: "./enrich.mjs", exports: "x" }, ""],
  ])("rejects %j", (input, path) => {
    const result = definition.options.safeParse(input);
    expect(result.success).toBe(false);
    expect(result.error!.issues[0]!.path.join(".")).toBe(path);
  });
});

describe("module transform", () => {
  it("loads on the first apply, then applies synchronously", async () => {
    const transform = moduleTransform("./map.mjs");
    const first = transform.apply({ id: "a" }, record({ id: "a" }));
    expect(first).toBeInstanceOf(Promise);
    expect(await first).toEqual({ id: "a", tagged: true });

    const second = transform.apply({ id: "b" }, record({ id: "b" }));
    expect(second).not.toBeInstanceOf(Promise);
    expect(second).toEqual({ id: "b", tagged: true });
  });

  it("keeps order and loads once when records arrive before the load finished", async () => {
    const transform = moduleTransform("./map.mjs", "upper");
    const results = await Promise.all(["x", "y", "z"].map((name) => apply(transform, { name })));
    expect(results).toEqual([{ name: "X" }, { name: "Y" }, { name: "Z" }]);
  });

  it("calls a named export", async () => {
    expect(await apply(moduleTransform("./map.mjs", "upper"), { name: "ada" })).toEqual({ name: "ADA" });
  });

  it("loads a TypeScript module with type annotations", async () => {
    const transform = moduleTransform("./map.ts");
    expect(await apply(transform, { sensor: "t1", value: 212 })).toEqual({ sensor: "t1", value: 100, unit: "C" });
    expect(transform.apply({ sensor: "t1", value: 32 }, record({}))).toEqual({ sensor: "t1", value: 0, unit: "C" });
  });

  it("loads a CommonJS module through its module.exports", async () => {
    expect(await apply(moduleTransform("./map.cjs"), { value: 21 })).toEqual({ value: 42 });
  });

  it("resolves the path against the config's directory, not the working directory", async () => {
    const transform = moduleTransform("./transforms/map.mjs", undefined, resolve(FIXTURES, ".."));
    expect(await apply(transform, { id: "a" })).toEqual({ id: "a", tagged: true });
  });

  it("awaits an async function", async () => {
    const transform = moduleTransform("./async.mjs");
    await apply(transform, { id: "warm-up" });
    const out = transform.apply({ id: "a" }, record({ id: "a" }));
    expect(out).toBeInstanceOf(Promise);
    expect(await out).toEqual({ id: "a", looked_up: true });
  });

  it("fails the record with the rejection of an async function as cause", async () => {
    const transform = moduleTransform("./async.mjs");
    const err = await failureOf(() => apply(transform, { id: "a", fail: true }));
    expect(err.code).toBe("ERR_TRANSFORM_FAILED");
    expect(err.location).toBe(resolve(FIXTURES, "async.mjs"));
    expect((err.cause as Error).message).toBe("lookup failed for a");
  });

  it("passes null through to filter a record out", async () => {
    const transform = moduleTransform("./filter.mjs");
    expect(await apply(transform, { id: "a", keep: false })).toBeNull();
    expect(transform.apply({ id: "b", keep: true }, record({}))).toEqual({ id: "b", keep: true });
  });

  it("passes an array of payloads through to split a record", async () => {
    const transform = moduleTransform("./split.mjs");
    expect(await apply(transform, { id: "a", items: [1, 2] })).toEqual([
      { id: "a-0", item: 1 },
      { id: "a-1", item: 2 },
    ]);
    expect(transform.apply({ id: "b", items: [] }, record({}))).toEqual([]);
  });

  it("fails the record when the function throws, keeping the error as cause", async () => {
    const transform = moduleTransform("./throws.mjs");
    const err = await failureOf(() => apply(transform, { id: "a" }));
    expect(err.code).toBe("ERR_TRANSFORM_FAILED");
    expect(err.retryable).toBe(false);
    expect(err.location).toBe(resolve(FIXTURES, "throws.mjs"));
    expect(err.cause).toBeInstanceOf(RangeError);
    expect(err.message).toContain("cannot handle a");

    // Once loaded, a throw is synchronous: the engine needs no promise to catch it.
    expect(() => transform.apply({ id: "b" }, record({}))).toThrow(SluiceError);
  });

  it.each([
    ["default", { id: "a" }, "returned a number (1)"],
    ["forgetful", { id: "a" }, "returned undefined"],
    ["dated", { id: "a" }, "returned an instance of Date"],
  ])("fails the record when the %s export returns no payload", async (exportName, payload, text) => {
    const err = await failureOf(() => apply(moduleTransform("./returns-number.mjs", exportName), payload));
    expect(err.code).toBe("ERR_TRANSFORM_FAILED");
    expect(err.location).toBe(resolve(FIXTURES, "returns-number.mjs"));
    expect(err.message).toContain(text);
  });

  it("fails the record when an array element is not a payload", async () => {
    const err = await failureOf(() => apply(moduleTransform("./split.mjs", "badElement"), { id: "a" }));
    expect(err.code).toBe("ERR_TRANSFORM_FAILED");
    expect(err.message).toContain("an array whose element 1 is a number (42)");
  });

  it("does no I/O in create: a missing module fails at the first apply, as a config error", async () => {
    const transform = moduleTransform("./missing.mjs");
    const err = await failureOf(() => apply(transform, { id: "a" }));
    expect(err.code).toBe("ERR_CONFIG_INVALID");
    expect(err.location).toBe(resolve(FIXTURES, "missing.mjs"));
    // The failed load is kept: later records get the same error without another import.
    expect(await failureOf(() => apply(transform, { id: "b" }))).toBe(err);
  });

  it("works for the demo's enrich.mjs", async () => {
    const out = (await apply(moduleTransform("./enrich.mjs", undefined, DEMO), { id: "r1", value: 1 })) as JsonObject;
    expect(out).toMatchObject({ id: "r1", value: 1 });
    expect(new Date(out.processed_at as string).toISOString()).toBe(out.processed_at);
  });
});

describe("loadModuleTransform and checkModuleTransform", () => {
  it("load a good module and report nothing", async () => {
    const fn = await loadModuleTransform(join(FIXTURES, "map.mjs"));
    expect(fn({ id: "a" }, record({}))).toEqual({ id: "a", tagged: true });
    await expect(checkModuleTransform(join(FIXTURES, "map.ts"))).resolves.toBeUndefined();
  });

  it.each([
    ["not-a-function.mjs", "default", /export "default" must be a function .* it is an object/],
    ["map.mjs", "nope", /export "nope" must be a function .* it is missing/],
    ["syntax-error.mjs", "default", /could not be loaded/],
    ["missing.mjs", "default", /could not be loaded/],
  ])("report %s (export %s) as ERR_CONFIG_INVALID at its path", async (file, exportName, message) => {
    const path = join(FIXTURES, file);
    const loadError = await failureOf(() => loadModuleTransform(path, exportName));
    expect(loadError.code).toBe("ERR_CONFIG_INVALID");
    expect(loadError.location).toBe(path);
    expect(loadError.message).toMatch(message);

    const checked = await checkModuleTransform(path, exportName);
    expect(checked?.code).toBe("ERR_CONFIG_INVALID");
    expect(checked?.location).toBe(path);
  });

  it("keeps the syntax error as cause", async () => {
    const err = await failureOf(() => loadModuleTransform(join(FIXTURES, "syntax-error.mjs")));
    // Under vitest the loader's error is a plain object (vite's), under Node a SyntaxError.
    expect(err.cause).toMatchObject({ message: expect.any(String) });
    expect(err.message).toMatch(/syntax|unexpected|expected/i);
  });
});

describe("outside vitest", () => {
  // Vitest routes the src's dynamic import() through vite; the CLI and the benchmark use Node's
  // own loader, so load the fixtures there too.
  it("loads .mjs, .cjs and .ts with Node's loader and keeps a SyntaxError as cause", async () => {
    const moduleUrl = new URL("../../../src/transforms/module.ts", import.meta.url).href;
    const script = `
      const { checkModuleTransform, loadModuleTransform } = await import(${JSON.stringify(moduleUrl)});
      const dir = ${JSON.stringify(FIXTURES)};
      const mjs = (await loadModuleTransform(dir + "map.mjs"))({ id: "a" });
      const cjs = (await loadModuleTransform(dir + "map.cjs"))({ value: 2 });
      const ts = (await loadModuleTransform(dir + "map.ts"))({ sensor: "s", value: 212 });
      const err = await checkModuleTransform(dir + "syntax-error.mjs");
      process.stdout.write(JSON.stringify({ mjs, cjs, ts, code: err.code, cause: err.cause.constructor.name }));
    `;
    const { stdout } = await promisify(execFile)(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script]);
    expect(JSON.parse(stdout)).toEqual({
      mjs: { id: "a", tagged: true },
      cjs: { value: 4 },
      ts: { sensor: "s", value: 100, unit: "C" },
      code: "ERR_CONFIG_INVALID",
      cause: "SyntaxError",
    });
  });
});

describe("mapTransform", () => {
  it("is synchronous for a synchronous function", () => {
    const transform = mapTransform((payload) => ({ ...payload, n: 1 }));
    expect(transform.apply({ id: "a" }, record({}))).toEqual({ id: "a", n: 1 });
  });

  it("passes the envelope as context", () => {
    const transform = mapTransform((payload, rec) => ({ ...payload, from: rec.source }));
    expect(transform.apply({ id: "a" }, record({}))).toEqual({ id: "a", from: "test" });
  });

  it("checks results like a module's", () => {
    const transform = mapTransform(function badMap() {
      return "nope" as unknown as JsonObject;
    });
    const err = (() => {
      try {
        transform.apply({ id: "a" }, record({}));
      } catch (e) {
        return e as SluiceError;
      }
      throw new Error("expected a failure");
    })();
    expect(err.code).toBe("ERR_TRANSFORM_FAILED");
    expect(err.location).toBe("badMap");
    expect(err.message).toContain('returned a string ("nope")');
  });

  it("wraps a thrown error and lets a SluiceError through with its code", async () => {
    const boom = new Error("boom");
    const rejected = mapTransform(() => Promise.reject(boom)).apply({}, record({}));
    expect(rejected).toBeInstanceOf(Promise);
    const wrapped = await failureOf(() => rejected);
    expect(wrapped.code).toBe("ERR_TRANSFORM_FAILED");
    expect(wrapped.cause).toBe(boom);

    const own = new SluiceError("ERR_RECORD_INVALID", "no sensor");
    const passed = await failureOf(() =>
      mapTransform(() => {
        throw own;
      }).apply({}, record({})),
    );
    expect(passed).toBe(own);
  });

  it("treats a zero-argument function as the map itself", () => {
    const transform = mapTransform(() => ({ constant: true }));
    expect(transform.apply({ id: "a" }, record({}))).toEqual({ constant: true });
  });
});
