/**
 * Loads a pipeline config: reads the YAML, interpolates `${ENV_VAR}` in string values, validates
 * strictly, and points every issue at its path and line.
 */
import { readFile } from "node:fs/promises";
import { isMap, isScalar, isSeq, LineCounter, parse, parseDocument, visit, type Alias, type Document, type Node } from "yaml";
import { validateConfig, type ConfigIssue, type PipelineConfig } from "./schema.js";

/** A config issue with the line and column it was found at, when known. */
export interface LocatedIssue extends ConfigIssue {
  readonly line: number | undefined;
  readonly column: number | undefined;
}

/** The result of loading a config: the config, or every issue. */
export type LoadResult = { ok: true; config: PipelineConfig } | { ok: false; issues: LocatedIssue[] };

/**
 * Most times one anchor may be expanded, counting uses through other aliases (the yaml library's
 * `maxAliasCount`; its default, 100, refused an anchor shared by 120 sinks). A config that shares
 * a block among a few hundred components stays below; a "billion laughs" file, where each anchor
 * is a list of aliases to the previous one, passes it within a few levels.
 */
export const MAX_ALIAS_EXPANSIONS = 1000;

const ENV_REF = /\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}/g;

/**
 * Replaces `${NAME}` with the environment variable, `${NAME:-default}` with a default when unset
 * (or empty), and `$${` with a literal `${`, in one string. An unset variable without a default
 * is an issue at `path`. Applied to values only (never keys), after parsing, so a variable can
 * never inject YAML.
 */
function interpolateText(text: string, env: NodeJS.ProcessEnv, path: readonly (string | number)[], issues: ConfigIssue[]): string {
  return text.replace(ENV_REF, (match, varName: string | undefined, fallback: string | undefined) => {
    if (match === "$${") return "${";
    const v = env[varName!];
    if (v !== undefined && v !== "") return v;
    if (fallback !== undefined) return fallback;
    issues.push({ path: pathText(path), message: `environment variable ${varName} is not set (use \${${varName}:-default} for a default)` });
    return "";
  });
}

/**
 * The value an interpolated scalar gets when the schema refused its text: a number or boolean
 * when YAML would read the text so (`count: ${COUNT}` with COUNT=5 is the number 5), else the
 * text. Never a mapping, sequence or null, so a variable cannot inject structure.
 */
function yamlScalar(text: string): string | number | boolean {
  try {
    const v: unknown = parse(text);
    return typeof v === "number" || typeof v === "boolean" ? v : text;
  } catch {
    return text;
  }
}

/** A value that held a `${...}` reference: where it is and what it became. */
interface Interpolated {
  readonly path: readonly (string | number)[];
  readonly text: string;
}

/**
 * Interpolates every string value of the document in place (keys are left alone); values stay
 * strings. Collects the values that held a reference, by path text, so the caller can type them
 * as YAML would where the schema wants a number or boolean. Quoted ones too: in a flow mapping
 * (`{ count: "${N}" }`) a reference must be quoted to be YAML at all.
 */
function interpolateDocument(node: unknown, env: NodeJS.ProcessEnv, path: (string | number)[], issues: ConfigIssue[], interpolated: Map<string, Interpolated>): void {
  if (isMap(node)) {
    for (const pair of node.items) interpolateDocument(pair.value, env, [...path, keyText(pair.key)], issues, interpolated);
  } else if (isSeq(node)) {
    node.items.forEach((item, i) => interpolateDocument(item, env, [...path, i], issues, interpolated));
  } else if (isScalar(node) && typeof node.value === "string") {
    const text = interpolateText(node.value, env, path, issues);
    if (text === node.value) return;
    if (/\$\{[A-Za-z_]/.test(node.value.replaceAll("$${", ""))) interpolated.set(pathText(path), { path, text });
    node.value = text;
  }
}

/** Sets the value at `path` in plain parsed data (objects and arrays); does nothing if the path is not there. */
function setAt(root: unknown, path: readonly (string | number)[], value: unknown): void {
  let node = root;
  for (const step of path.slice(0, -1)) {
    if (node === null || typeof node !== "object") return;
    node = (node as Record<string | number, unknown>)[step];
  }
  if (node !== null && typeof node === "object") (node as Record<string | number, unknown>)[path.at(-1)!] = value;
}

function keyText(key: unknown): string {
  return isScalar(key) ? String(key.value) : String(key);
}

function pathText(path: readonly (string | number)[]): string {
  let out = "";
  for (const p of path) out += typeof p === "number" ? `[${p}]` : out === "" ? p : `.${p}`;
  return out || "(root)";
}

function parsePath(text: string): (string | number)[] {
  const out: (string | number)[] = [];
  for (const m of text.matchAll(/([^.[\]]+)|\[(\d+)\]/g)) out.push(m[2] !== undefined ? Number(m[2]) : m[1]!);
  return out;
}

/**
 * The offset of the deepest node along `path` (the key itself for the last step, so unknown keys
 * point at their line). Component names may contain dots, so a key that is not found is retried
 * joined with the following steps (`sources.sensor.A.count` finds the key `sensor.A`).
 */
function locate(doc: Document, path: readonly (string | number)[]): number | undefined {
  let node: unknown = doc.contents;
  let offset = (doc.contents as Node | null)?.range?.[0];
  let i = 0;
  while (i < path.length) {
    const step = path[i]!;
    if (isMap(node)) {
      let found: { pair: (typeof node.items)[number]; steps: number } | undefined;
      for (let j = i + 1; j <= path.length && found === undefined; j++) {
        const want = path.slice(i, j).join(".");
        const pair = node.items.find((p) => isScalar(p.key) && String(p.key.value) === want);
        if (pair) found = { pair, steps: j - i };
      }
      if (!found) break;
      offset = (found.pair.key as Node).range?.[0] ?? offset;
      node = found.pair.value;
      i += found.steps;
    } else if (isSeq(node) && typeof step === "number") {
      node = node.items[step];
      offset = (node as Node | undefined)?.range?.[0] ?? offset;
      i++;
    } else break;
  }
  return offset;
}

/**
 * The alias a failed `toJS` is about: for an unresolved alias, the first one naming that anchor;
 * for too many expansions, the first use of the anchor used most (where a reader starts looking).
 */
function culpritAlias(doc: Document, message: string): Alias | undefined {
  const aliases: Alias[] = [];
  visit(doc, { Alias: (_key, node) => void aliases.push(node) });
  const unresolved = /^Unresolved alias.*: (.+)$/.exec(message)?.[1];
  if (unresolved !== undefined) return aliases.find((a) => a.source === unresolved);
  const uses = new Map<string, number>();
  let most: Alias | undefined;
  for (const a of aliases) {
    const n = (uses.get(a.source) ?? 0) + 1;
    uses.set(a.source, n);
    if (most === undefined || n > uses.get(most.source)!) most = a;
  }
  // `most` is the alias where its anchor's count took the lead; report that anchor's first use.
  return aliases.find((a) => a.source === most?.source);
}

/**
 * The document as plain data. Alias resolution can fail (an alias before its anchor, too many
 * expansions): that is a config error at the alias's line, never an exception.
 */
function toData(doc: Document, lineCounter: LineCounter): { ok: true; raw: unknown } | { ok: false; issue: LocatedIssue } {
  try {
    return { ok: true, raw: doc.toJS({ maxAliasCount: MAX_ALIAS_EXPANSIONS }) };
  } catch (err) {
    const text = (err as Error).message.split("\n")[0]!;
    const excessive = /excessive alias count/i.test(text);
    const message = excessive
      ? `too many alias expansions: an anchor may be used at most ${MAX_ALIAS_EXPANSIONS} times, counting uses through other aliases (an alias bomb is refused)`
      : text;
    const offset = culpritAlias(doc, text)?.range?.[0];
    const pos = offset === undefined ? undefined : lineCounter.linePos(offset);
    return { ok: false, issue: { path: "(yaml)", message, line: pos?.line, column: pos?.col } };
  }
}

/** Parses and validates config text. `source` names the file in messages. */
export function parseConfig(text: string, env: NodeJS.ProcessEnv = process.env): LoadResult {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, prettyErrors: false, uniqueKeys: true });
  if (doc.errors.length > 0) {
    return {
      ok: false,
      issues: doc.errors.map((e) => {
        const pos = lineCounter.linePos(e.pos[0]);
        return { path: "(yaml)", message: e.message.split("\n")[0]!, line: pos.line, column: pos.col };
      }),
    };
  }
  if (doc.contents === null) {
    return { ok: false, issues: [{ path: "(root)", message: "the config is empty; it needs at least `sources` and `sinks`", line: 1, column: 1 }] };
  }
  const envIssues: ConfigIssue[] = [];
  const interpolated = new Map<string, Interpolated>();
  interpolateDocument(doc.contents, env, [], envIssues, interpolated);
  const data = toData(doc, lineCounter);
  if (!data.ok) return { ok: false, issues: [data.issue] };
  const raw = data.raw;
  let result = validateConfig(raw);
  // `${...}` gives text. Where the schema refused the text (`count: ${N}` wants a number), type it
  // as YAML would have typed it written literally, and validate again. String fields keep the
  // text: a numeric password stays a string.
  let retyped = false;
  for (const issue of result.issues) {
    const value = interpolated.get(issue.path);
    if (value === undefined) continue;
    const typed = yamlScalar(value.text);
    if (typed === value.text) continue;
    setAt(raw, value.path, typed);
    retyped = true;
  }
  if (retyped) result = validateConfig(raw);
  // A value whose variable is unset is already reported; its follow-up ("too small") would be noise.
  const envPaths = new Set(envIssues.map((i) => i.path));
  const issues = [...envIssues, ...result.issues.filter((i) => !envPaths.has(i.path))];
  if (issues.length === 0 && result.config) return { ok: true, config: result.config };
  return {
    ok: false,
    issues: issues
      .map((issue) => {
        const offset = locate(doc, parsePath(issue.path));
        const pos = offset === undefined ? undefined : lineCounter.linePos(offset);
        return { ...issue, line: pos?.line, column: pos?.col };
      })
      .sort((a, b) => (a.line ?? 0) - (b.line ?? 0) || (a.column ?? 0) - (b.column ?? 0)),
  };
}

/** Reads and validates a config file. A missing or unreadable file is reported as an issue, not thrown. */
export async function loadConfig(file: string, env: NodeJS.ProcessEnv = process.env): Promise<LoadResult> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (err) {
    return { ok: false, issues: [{ path: "(file)", message: `cannot read ${file}: ${(err as Error).message}`, line: undefined, column: undefined }] };
  }
  return parseConfig(text, env);
}

/** Formats issues one per line: `file:line:col path: message`. */
export function formatIssues(file: string, issues: readonly LocatedIssue[]): string {
  return issues.map((i) => `${file}${i.line === undefined ? "" : `:${i.line}:${i.column}`} ${i.path}: ${i.message}`).join("\n");
}
