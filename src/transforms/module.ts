/**
 * The `module` transform: maps each payload with a function the user exports from a JS or TS
 * module. Also {@link mapTransform}, the same transform around an in-code function, for the
 * library API.
 */
import { extname, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { z } from "zod";
import { defineComponent, type Transform, type TransformOutput } from "../components/contracts.js";
import { SluiceError } from "../core/errors.js";
import { envelopeWriteError, type JsonObject, type RecordView } from "../core/record.js";

/**
 * A user's payload function: return the payload (changed or not), `null` to filter the record
 * out, or an array of payloads to split it; sync or async. `record` is a frozen view of the
 * envelope (id, key, source, times, attempts) for context. A function declared with fewer than
 * two parameters gets `undefined` instead (no view is built for it): declare `record` to use it,
 * also through `arguments` or a rest parameter.
 */
export type PayloadFunction = (payload: JsonObject, record: RecordView) => TransformOutput | Promise<TransformOutput>;

/** Extensions loaded through tsx; everything else goes to Node's own `import()`. */
const TYPESCRIPT_EXTENSIONS = new Set([".ts", ".mts", ".cts"]);
const MODULE_PATH = /\.(?:[cm]?js|[cm]?ts)$/i;

/**
 * Loads the function a `module` transform runs: imports `path` (absolute, or relative to the
 * working directory) and returns its `exportName` export. `.js`/`.mjs`/`.cjs` use Node's own
 * `import()`; `.ts`/`.mts`/`.cts` go through tsx, scoped to these imports (it does not change how
 * the rest of the process loads files).
 *
 * Gotchas: this runs the module's top-level code; Node caches the module, so loading the same
 * path twice runs it once. For a CommonJS module, `"default"` is `module.exports` (or its
 * `default` property, for compiled ESM).
 *
 * @throws SluiceError `ERR_CONFIG_INVALID` with `location: path` when the module cannot be loaded
 * (missing, syntax error, throws at top level) or the export is not a function.
 */
export async function loadModuleTransform(path: string, exportName = "default"): Promise<PayloadFunction> {
  const file = resolve(path);
  let namespace: Record<string, unknown>;
  try {
    namespace = TYPESCRIPT_EXTENSIONS.has(extname(file).toLowerCase())
      ? await importTypeScript(file)
      : ((await import(pathToFileURL(file).href)) as Record<string, unknown>);
  } catch (err) {
    throw new SluiceError("ERR_CONFIG_INVALID", `module transform ${path} could not be loaded: ${errorText(err)}`, {
      location: path,
      cause: err,
    });
  }
  let fn = namespace[exportName];
  // CommonJS compiled from ESM puts the function on `module.exports.default`.
  if (exportName === "default" && typeof fn !== "function" && isObject(fn) && typeof fn.default === "function") {
    fn = fn.default;
  }
  if (typeof fn !== "function") {
    const found = exportName in namespace ? describeValue(fn) : "missing";
    throw new SluiceError(
      "ERR_CONFIG_INVALID",
      `module transform ${path}: export "${exportName}" must be a function (payload) => payload | null | payload[], but it is ${found}`,
      { location: path },
    );
  }
  return fn as PayloadFunction;
}

/**
 * For `sluice validate`: loads the module as {@link loadModuleTransform} does and resolves to the
 * problem, or `undefined` when the transform would load. Never rejects.
 *
 * Gotcha: this runs the module's top-level code.
 */
export async function checkModuleTransform(path: string, exportName = "default"): Promise<SluiceError | undefined> {
  try {
    await loadModuleTransform(path, exportName);
    return undefined;
  } catch (err) {
    return err instanceof SluiceError
      ? err
      : new SluiceError("ERR_CONFIG_INVALID", errorText(err), { location: path, cause: err });
  }
}

/**
 * A transform around an in-code function, for pipelines built with the library API. Its results
 * are checked like a module's: a plain object, `null`, or an array of plain objects; anything else,
 * or a throw, fails the record with `ERR_TRANSFORM_FAILED` (a thrown {@link SluiceError} passes
 * through with its own code). Only the top level is checked: values inside the payload must be
 * JSON, which is not verified per record.
 */
export function mapTransform(fn: PayloadFunction): Transform {
  const name = fn.name === "" ? "anonymous" : fn.name;
  return new FunctionTransform({ tag: "ready", fn }, `map function ${name}`, name);
}

/** The `module` transform's definition: `{ type: module, path: ./enrich.mjs, export?: default }`. */
export const definition = defineComponent({
  type: "module",
  summary: "Maps each payload with a function exported by a JS or TS module: return a payload, null to drop it, or an array to split it.",
  options: z.strictObject({
    path: z
      .string()
      .min(1)
      .regex(MODULE_PATH, "must name a .js, .mjs, .cjs, .ts, .mts or .cts file")
      .describe("The module file, relative to the config file's directory."),
    export: z
      .string()
      .min(1)
      .default("default")
      .describe("Name of the export to call: (payload) => payload | null | payload[], sync or async."),
  }),
  create(options, ctx) {
    const file = resolve(ctx.baseDir, options.path);
    const load = () => loadModuleTransform(file, options.export);
    return new FunctionTransform({ tag: "lazy", load }, `module ${options.path}`, file);
  },
  async check(options, baseDir) {
    const error = await checkModuleTransform(resolve(baseDir, options.path), options.export);
    return error === undefined ? [] : [{ level: "error", message: error.withLocation() }];
  },
});

/** Where a {@link FunctionTransform} gets its function: at hand, or from a loader run on first use. */
type FunctionSource =
  | { readonly tag: "ready"; readonly fn: PayloadFunction }
  | { readonly tag: "lazy"; readonly load: () => Promise<PayloadFunction> };

/**
 * Runs a payload function and checks what it returns. Built either with the function, or with a
 * loader that the first `apply` awaits (factories must not do I/O); once loaded, `apply` calls the
 * function directly and allocates nothing of its own per record.
 */
class FunctionTransform implements Transform {
  /**
   * Whether the function declares `record`; true until a lazily loaded one is known. A field set
   * once, not a getter: the chain reads it per record, and `fn.length` per call measured slower.
   */
  takesRecord = true;
  #fn: PayloadFunction | undefined;
  #loader: (() => Promise<PayloadFunction>) | undefined;
  #loading: Promise<PayloadFunction> | undefined;
  readonly #label: string;
  readonly #location: string;

  constructor(source: FunctionSource, label: string, location: string) {
    this.#label = label;
    this.#location = location;
    if (source.tag === "ready") this.#loaded(source.fn);
    else this.#loader = source.load;
  }

  apply(payload: JsonObject, record: RecordView): TransformOutput | Promise<TransformOutput> {
    const fn = this.#fn;
    if (fn === undefined) return this.#applyWhenLoaded(payload, record);
    let out: unknown;
    try {
      out = fn(payload, record);
    } catch (err) {
      throw this.#failure(err);
    }
    // The common result first: a plain object needs no `then` lookup, which is megamorphic
    // across payload shapes. (Promises are class instances, so they never pass as payloads.)
    if (isPlainObject(out) || out === null) return out;
    if (isThenable(out)) return this.#settle(out);
    return this.#check(out);
  }

  async #applyWhenLoaded(payload: JsonObject, record: RecordView): Promise<TransformOutput> {
    // One load shared by every record that arrives before it finishes; a failed load stays
    // failed, so each record gets the same config error instead of retrying the import.
    this.#loading ??= this.#loader!().then((fn) => this.#loaded(fn));
    await this.#loading;
    return this.apply(payload, record);
  }

  #loaded(fn: PayloadFunction): PayloadFunction {
    this.#fn = fn;
    this.takesRecord = fn.length >= 2;
    return fn;
  }

  async #settle(out: PromiseLike<unknown>): Promise<TransformOutput> {
    let value: unknown;
    try {
      value = await out;
    } catch (err) {
      throw this.#failure(err);
    }
    return this.#check(value);
  }

  #check(out: unknown): TransformOutput {
    if (out === null || isPlainObject(out)) return out;
    if (Array.isArray(out)) {
      for (let i = 0; i < out.length; i++) {
        if (!isPlainObject(out[i])) {
          throw this.#invalid(`an array whose element ${i} is ${describeValue(out[i])}`);
        }
      }
      return out as JsonObject[];
    }
    throw this.#invalid(describeValue(out));
  }

  #invalid(what: string): SluiceError {
    const hint = what === "undefined" ? " (does the function forget to return the payload?)" : "";
    return new SluiceError(
      "ERR_TRANSFORM_FAILED",
      `${this.#label} returned ${what}${hint}; expected a payload object, null, or an array of payload objects`,
      { location: this.#location },
    );
  }

  #failure(err: unknown): SluiceError {
    if (err instanceof SluiceError) return err;
    return envelopeWriteError(err) ?? new SluiceError("ERR_TRANSFORM_FAILED", `${this.#label} threw ${errorText(err)}`, {
      location: this.#location,
      cause: err,
    });
  }
}

let scopedTsImport: Promise<(specifier: string, parentUrl: string) => Promise<unknown>> | undefined;

/** Imports a TypeScript file through one tsx loader, registered on first use and only for these imports. */
async function importTypeScript(file: string): Promise<Record<string, unknown>> {
  // tsx's `tsImport` registers a new loader on every call; one namespaced loader serves them all
  // and lets Node's module cache work across calls (validate, then run, loads once).
  scopedTsImport ??= import("tsx/esm/api").then(({ register }) => register({ namespace: "sluice-module-transform" }).import);
  const importer = await scopedTsImport;
  return (await importer(pathToFileURL(file).href, import.meta.url)) as Record<string, unknown>;
}

function isThenable(value: unknown): value is PromiseLike<unknown> {
  return typeof value === "object" && value !== null && typeof (value as { then?: unknown }).then === "function";
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null;
}

/** A plain object from any realm: its prototype is `null` or a root `Object.prototype`. */
function isPlainObject(value: unknown): value is JsonObject {
  if (typeof value !== "object" || value === null) return false;
  const proto: unknown = Object.getPrototypeOf(value);
  return proto === null || Object.getPrototypeOf(proto) === null;
}

/** Names a value for an error message: its type, and a short preview of primitives. */
function describeValue(value: unknown): string {
  if (value === undefined) return "undefined";
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  switch (typeof value) {
    case "string":
      return `a string (${JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value)})`;
    case "number":
    case "bigint":
    case "boolean":
      return `a ${typeof value} (${String(value)})`;
    case "function":
      return "a function";
    case "symbol":
      return "a symbol";
    default: {
      if (isThenable(value)) return "a promise";
      if (isPlainObject(value)) return "an object";
      const ctor = (Object.getPrototypeOf(value) as { constructor?: { name?: string } }).constructor?.name;
      return ctor ? `an instance of ${ctor}` : "an object";
    }
  }
}

/** An error's name and message; also for error-like objects thrown across realms or by tools. */
function errorText(err: unknown): string {
  if (isObject(err) && typeof err.message === "string") {
    const name = typeof err.name === "string" ? err.name : "Error";
    return name === "Error" ? err.message : `${name}: ${err.message}`;
  }
  return describeValue(err);
}
