/**
 * The `validate` transform: checks each payload against a JSON Schema (ajv) and fails the
 * records that do not match with `ERR_RECORD_INVALID`, listing every schema error, so the engine
 * dead-letters them and the pipeline goes on.
 */
import { readFile } from "node:fs/promises";
import { resolve } from "node:path";
import type { Ajv, CodeOptions, ErrorObject, Format, Logger as AjvLogger, Options as AjvOptions, ValidateFunction } from "ajv";
import type { Ajv2019 } from "ajv/dist/2019.js";
import type { Ajv2020 } from "ajv/dist/2020.js";
import type { RE2JS } from "re2js";
import { z } from "zod";
import { defineComponent, type Transform, type TransformOutput } from "../components/contracts.js";
import { SluiceError } from "../core/errors.js";
import type { Logger } from "../core/events.js";
import type { JsonObject } from "../core/record.js";

/** A JSON Schema: an object, or `true` / `false`. */
export type JsonSchema = Record<string, unknown> | boolean;

/** A compiled schema: true when the payload matches, else the errors, one `<instancePath> <message>` each. */
export type PayloadValidator = (payload: JsonObject) => true | string[];

/** Beyond this many, a record's message names how many more errors there were instead of each. */
const MAX_LISTED_ERRORS = 50;

/** The schema compilers (one per draft) and the linear-time regex engine. */
interface SchemaLibraries {
  readonly Ajv: typeof Ajv;
  readonly Ajv2019: typeof Ajv2019;
  readonly Ajv2020: typeof Ajv2020;
  readonly RE2JS: typeof RE2JS;
}

let libraries: Promise<SchemaLibraries> | undefined;

/** ajv and re2js, imported when the first schema compiles: a pipeline without `validate` never loads them. */
function loadLibraries(): Promise<SchemaLibraries> {
  libraries ??= Promise.all([import("ajv"), import("ajv/dist/2019.js"), import("ajv/dist/2020.js"), import("re2js")]).then(([ajv, ajv2019, ajv2020, re2js]) => ({
    Ajv: ajv.Ajv,
    Ajv2019: ajv2019.Ajv2019,
    Ajv2020: ajv2020.Ajv2020,
    RE2JS: re2js.RE2JS,
  }));
  return libraries;
}

/**
 * Reads (when `schema` is a path: absolute, or relative to the working directory) and compiles a
 * JSON Schema the way the `validate` transform does. Drafts: 2020-12 and 2019-09 when `$schema`
 * names them, draft-07 otherwise. Formats `date`, `time`, `date-time` and `uuid` are checked;
 * other formats are accepted unchecked (and reported to `logger` when given). Remote and
 * cross-file `$ref`s are not resolved. Payloads are never modified (no defaults, no coercion).
 * `pattern` and `patternProperties` run on a linear-time engine (see {@link linearRegExp}).
 *
 * @throws SluiceError `ERR_CONFIG_INVALID` with the schema's path (or `schema_inline`) as
 * location, when the file cannot be read, is not JSON, or is not a valid schema (a pattern that
 * uses lookaround or a backreference is refused by name).
 */
export async function loadSchemaValidator(schema: string | JsonSchema, logger?: Logger): Promise<PayloadValidator> {
  const location = typeof schema === "string" ? schema : "schema_inline";
  const parsed = typeof schema === "string" ? await readSchema(schema) : schema;
  const validate = compile(parsed, location, logger, await loadLibraries());
  return (payload) => (validate(payload) ? true : listErrors(validate.errors ?? []));
}

/**
 * For `sluice validate`: reads and compiles the schema as {@link loadSchemaValidator} does and
 * resolves to the problem, or `undefined` when it is usable. Never rejects. `schema` is a path
 * (resolve it against the config's directory first) or the inline schema object.
 */
export async function checkValidateTransform(schema: string | JsonSchema): Promise<SluiceError | undefined> {
  try {
    await loadSchemaValidator(schema);
    return undefined;
  } catch (err) {
    return err instanceof SluiceError
      ? err
      : new SluiceError("ERR_CONFIG_INVALID", String(err), { location: typeof schema === "string" ? schema : "schema_inline", cause: err });
  }
}

const options = z
  .strictObject({
    schema: z.string().min(1).optional().describe("Path to a JSON Schema file, relative to the config file's directory."),
    schema_inline: z
      .record(z.string(), z.unknown())
      .optional()
      .describe("The JSON Schema itself, written in the config. Use instead of `schema`."),
  })
  .superRefine((value, ctx) => {
    const problem = schemaChoiceProblem(value);
    if (problem !== undefined) ctx.addIssue({ code: "custom", message: problem, path: [value.schema === undefined ? "schema" : "schema_inline"] });
  });

/** The `validate` transform's definition: `{ type: validate, schema: ./reading.schema.json }` or `schema_inline: {...}`. */
export const definition = defineComponent({
  type: "validate",
  summary: "Checks each payload against a JSON Schema; records that do not match are dead-lettered with every schema error.",
  options,
  create(opts, ctx) {
    // The options schema refuses this already; a config loader that rebuilds the object from
    // its shape would drop that refinement, so the factory refuses it too.
    const problem = schemaChoiceProblem(opts);
    if (problem !== undefined) throw new SluiceError("ERR_CONFIG_INVALID", problem, { location: ctx.name });
    const schema = opts.schema === undefined ? opts.schema_inline! : resolve(ctx.baseDir, opts.schema);
    return new SchemaTransform(() => loadSchemaValidator(schema, ctx.logger), typeof schema === "string" ? schema : "schema_inline");
  },
  async check(opts, baseDir) {
    const error = await checkValidateTransform(opts.schema === undefined ? opts.schema_inline! : resolve(baseDir, opts.schema));
    return error === undefined ? [] : [{ level: "error", message: error.withLocation() }];
  },
});

function schemaChoiceProblem(value: { schema?: string | undefined; schema_inline?: unknown }): string | undefined {
  if ((value.schema === undefined) === (value.schema_inline === undefined)) {
    return "set exactly one of `schema` (a JSON Schema file) and `schema_inline` (the schema as an object)";
  }
  return undefined;
}

/**
 * Validates payloads with a schema compiled on the first `apply` (factories must not do I/O);
 * after that `apply` is synchronous and a valid payload costs one call of ajv's compiled code.
 */
class SchemaTransform implements Transform {
  #validate: PayloadValidator | undefined;
  #loading: Promise<PayloadValidator> | undefined;
  readonly #load: () => Promise<PayloadValidator>;
  readonly #location: string;

  constructor(load: () => Promise<PayloadValidator>, location: string) {
    this.#load = load;
    this.#location = location;
  }

  apply(payload: JsonObject): TransformOutput | Promise<TransformOutput> {
    const validate = this.#validate;
    if (validate === undefined) return this.#applyWhenLoaded(payload);
    const result = validate(payload);
    if (result === true) return payload;
    throw new SluiceError("ERR_RECORD_INVALID", result.join("; "), { location: this.#location });
  }

  async #applyWhenLoaded(payload: JsonObject): Promise<TransformOutput> {
    // Shared by every record that arrives during the load; a failed load stays failed.
    this.#loading ??= this.#load().then((validate) => (this.#validate = validate));
    await this.#loading;
    return this.apply(payload);
  }
}

async function readSchema(path: string): Promise<JsonSchema> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (err) {
    throw new SluiceError("ERR_CONFIG_INVALID", `JSON Schema file ${path} could not be read: ${(err as Error).message}`, {
      location: path,
      cause: err,
    });
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new SluiceError("ERR_CONFIG_INVALID", `JSON Schema file ${path} is not JSON: ${(err as Error).message}`, {
      location: path,
      cause: err,
    });
  }
  if (typeof parsed === "boolean" || (typeof parsed === "object" && parsed !== null && !Array.isArray(parsed))) {
    return parsed as JsonSchema;
  }
  throw new SluiceError("ERR_CONFIG_INVALID", `JSON Schema file ${path} must hold an object or a boolean`, { location: path });
}

function compile(schema: JsonSchema, location: string, logger: Logger | undefined, { Ajv, Ajv2019, Ajv2020, RE2JS }: SchemaLibraries): ValidateFunction {
  const draft = typeof schema === "object" ? schema.$schema : undefined;
  const ajvOptions: AjvOptions = {
    allErrors: true,
    // Users' schemas often carry extra keywords (`examples`, vendor `x-` keys); strict mode
    // would refuse them.
    strict: false,
    formats: FORMATS,
    code: { regExp: linearRegExp(RE2JS) },
    logger: logger === undefined ? false : ajvLogger(logger, location),
  };
  try {
    const ajv = typeof draft === "string" && draft.includes("2020-12")
      ? new Ajv2020(ajvOptions)
      : typeof draft === "string" && draft.includes("2019-09")
        ? new Ajv2019(ajvOptions)
        : new Ajv(ajvOptions);
    const validate = ajv.compile(schema);
    if ((validate as { $async?: unknown }).$async === true) {
      throw new SluiceError("ERR_CONFIG_INVALID", "asynchronous schemas ($async) are not supported: validate checks each record synchronously");
    }
    return validate;
  } catch (err) {
    // ajv's own errors and ours alike: the message gets the schema's path, the code stays ours.
    throw new SluiceError("ERR_CONFIG_INVALID", `JSON Schema ${location} is invalid: ${(err as Error).message}`, {
      location,
      cause: err instanceof SluiceError ? err.cause : err,
    });
  }
}

/**
 * ajv's regex engine for `pattern` and `patternProperties`: re2js, a pure-JavaScript port of RE2,
 * whose matching time is linear in the value's length. With JavaScript's backtracking `RegExp`, a
 * pattern such as `^(a+)+$` took 22 s on one 33-character value (and doubles per character), with
 * the event loop blocked all along: no HTTP answer, no stop. The price, measured in
 * docs/architecture.md: about 0.6 µs per pattern test instead of 0.03-0.05 µs; schemas without
 * patterns pay nothing. RE2 has no lookaround and no backreferences (the features that need
 * backtracking): a pattern using them is refused when the schema compiles, naming the pattern.
 */
function linearRegExp(engine: typeof RE2JS): NonNullable<CodeOptions["regExp"]> {
  return Object.assign(
    (pattern: string): { test(value: string): boolean; toString(): string } => {
      let re: RE2JS;
      try {
        re = engine.compile(engine.translateRegExp(pattern));
      } catch (err) {
        throw new SluiceError(
          "ERR_CONFIG_INVALID",
          `pattern ${JSON.stringify(pattern)} cannot run on a linear-time regex engine (RE2: no lookahead, lookbehind or backreferences): ${(err as Error).message}`,
          { cause: err },
        );
      }
      // ajv keys its compiled patterns by `toString()`: it must differ per pattern.
      return { test: (value: string) => re.test(value), toString: () => `/${pattern}/` };
    },
    { code: "linearRegExp" },
  );
}

function ajvLogger(logger: Logger, location: string): AjvLogger {
  return {
    log: (message: unknown) => logger.debug({ schema: location }, String(message)),
    warn: (message: unknown) => logger.warn({ schema: location }, String(message)),
    error: (message: unknown) => logger.error({ component: "transform:validate", code: "ERR_CONFIG_INVALID", schema: location }, String(message)),
  };
}

/** Turns ajv's errors into `<instancePath> <message>` lines, naming the property for the ones about a property. */
function listErrors(errors: readonly ErrorObject[]): string[] {
  const listed = errors.slice(0, MAX_LISTED_ERRORS).map((e) => {
    const params = e.params as Record<string, unknown>;
    switch (e.keyword) {
      case "required":
        return `${pointer(e.instancePath, params.missingProperty)} is required`;
      case "additionalProperties":
        return `${pointer(e.instancePath, params.additionalProperty)} is not allowed`;
      case "unevaluatedProperties":
        return `${pointer(e.instancePath, params.unevaluatedProperty)} is not allowed`;
      default:
        return `${e.instancePath === "" ? "/" : e.instancePath} ${e.message ?? `fails "${e.keyword}"`}`;
    }
  });
  if (errors.length > MAX_LISTED_ERRORS) listed.push(`and ${errors.length - MAX_LISTED_ERRORS} more errors`);
  return listed;
}

/** Appends a property name to a JSON Pointer, escaped as RFC 6901 says. */
function pointer(base: string, property: unknown): string {
  return `${base}/${String(property).replaceAll("~", "~0").replaceAll("/", "~1")}`;
}

// Formats run once per record and field, so they test one regex and read digits in place:
// no match arrays, no substrings.
const DATE = /^\d{4}-\d{2}-\d{2}$/;
const TIME = /^\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})$/;
const DATE_TIME = /^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})$/;
const DAYS_IN_MONTH = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

/** The number written by `count` ASCII digits of `text` from `at` (already matched as digits). */
function digits(text: string, at: number, count: number): number {
  let n = 0;
  for (let i = at; i < at + count; i++) n = n * 10 + text.charCodeAt(i) - 48;
  return n;
}

/** Whether the `YYYY-MM-DD` at `at` names a real day. */
function dayExists(text: string, at: number): boolean {
  const year = digits(text, at, 4);
  const month = digits(text, at + 5, 2);
  const day = digits(text, at + 8, 2);
  if (month < 1 || month > 12 || day < 1 || day > DAYS_IN_MONTH[month - 1]!) return false;
  return month !== 2 || day < 29 || (year % 4 === 0 && (year % 100 !== 0 || year % 400 === 0));
}

/** Whether the `hh:mm:ss[.frac](Z|±hh:mm)` from `at` to the end is in range; second 60 allows leap seconds. */
function timeInRange(text: string, at: number): boolean {
  if (digits(text, at, 2) > 23 || digits(text, at + 3, 2) > 59 || digits(text, at + 6, 2) > 60) return false;
  const last = text.length - 1;
  const zulu = text.charCodeAt(last) === 90 || text.charCodeAt(last) === 122;
  return zulu || (digits(text, last - 4, 2) <= 23 && digits(text, last - 1, 2) <= 59);
}

/** RFC 3339 `full-date`. */
function isDate(text: string): boolean {
  return DATE.test(text) && dayExists(text, 0);
}

/** RFC 3339 `full-time` (an offset is required). */
function isTime(text: string): boolean {
  return TIME.test(text) && timeInRange(text, 0);
}

/** RFC 3339 `date-time`. */
function isDateTime(text: string): boolean {
  return DATE_TIME.test(text) && dayExists(text, 0) && timeInRange(text, 11);
}

/**
 * The formats checked without the ajv-formats package (not a dependency): the ones event payloads
 * use most. Others are accepted unchecked, which is what JSON Schema allows a validator to do.
 */
const FORMATS: Record<string, Format> = {
  date: isDate,
  time: isTime,
  "date-time": isDateTime,
  uuid: /^(?:urn:uuid:)?[0-9a-f]{8}-(?:[0-9a-f]{4}-){3}[0-9a-f]{12}$/i,
};
