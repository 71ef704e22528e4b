/**
 * Loads a pipeline config: reads the YAML, interpolates `${ENV_VAR}` in string values, validates
 * strictly, and points every issue at its path and line.
 */
import { readFile } from "node:fs/promises";
import { isMap, isSeq, LineCounter, parseDocument, type Document, type Node } from "yaml";
import { validateConfig, type ConfigIssue, type PipelineConfig } from "./schema.js";

/** A config issue with the line and column it was found at, when known. */
export interface LocatedIssue extends ConfigIssue {
  readonly line: number | undefined;
  readonly column: number | undefined;
}

/** The result of loading a config: the config, or every issue. */
export type LoadResult = { ok: true; config: PipelineConfig } | { ok: false; issues: LocatedIssue[] };

const ENV_REF = /\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}/g;

/**
 * Replaces `${NAME}` with the environment variable, `${NAME:-default}` with a default when unset,
 * and `$${` with a literal `${`. Works on string values only, so a variable can never inject YAML.
 */
export function interpolate(value: unknown, env: NodeJS.ProcessEnv, path: (string | number)[], issues: ConfigIssue[]): unknown {
  if (typeof value === "string") {
    return value.replace(ENV_REF, (match, varName: string | undefined, fallback: string | undefined) => {
      if (match === "$${") return "${";
      const v = env[varName!];
      if (v !== undefined && v !== "") return v;
      if (fallback !== undefined) return fallback;
      issues.push({ path: pathText(path), message: `environment variable ${varName} is not set (use \${${varName}:-default} for a default)` });
      return "";
    });
  }
  if (Array.isArray(value)) return value.map((v, i) => interpolate(v, env, [...path, i], issues));
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, interpolate(v, env, [...path, k], issues)]));
  }
  return value;
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

/** The offset of the deepest node along `path` (the key itself for the last step, so unknown keys point at their line). */
function locate(doc: Document, path: readonly (string | number)[]): number | undefined {
  let node: unknown = doc.contents;
  let offset = (doc.contents as Node | null)?.range?.[0];
  for (const step of path) {
    if (isMap(node)) {
      const pair = node.items.find((p) => (p.key as { value?: unknown } | null)?.value === step);
      if (!pair) break;
      offset = (pair.key as Node).range?.[0] ?? offset;
      node = pair.value;
    } else if (isSeq(node) && typeof step === "number") {
      node = node.items[step];
      offset = (node as Node | undefined)?.range?.[0] ?? offset;
    } else break;
  }
  return offset;
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
  const envIssues: ConfigIssue[] = [];
  const raw = interpolate(doc.toJS(), env, [], envIssues);
  const result = validateConfig(raw);
  const issues = [...envIssues, ...result.issues];
  if (issues.length === 0 && result.config) return { ok: true, config: result.config };
  return {
    ok: false,
    issues: issues.map((issue) => {
      const offset = locate(doc, parsePath(issue.path));
      const pos = offset === undefined ? undefined : lineCounter.linePos(offset);
      return { ...issue, line: pos?.line, column: pos?.col };
    }),
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
