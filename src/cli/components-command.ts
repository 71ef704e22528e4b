/**
 * `sluice components [type]`: every built-in component with its summary and options, read from
 * the same schemas that validate configs, so this help can never drift from what is accepted.
 */
import { z } from "zod";
import { DEAD_LETTER_STORES, SINKS, SOURCES, TRANSFORMS } from "../components/builtins.js";
import type { ComponentDefinition } from "../components/contracts.js";
import { EXIT, type Io } from "./run-command.js";

interface OptionLine {
  readonly key: string;
  readonly required: boolean;
  readonly fallback: unknown;
  readonly description: string;
}

function describeOptions(options: z.ZodObject): OptionLine[] {
  return Object.entries(options.shape).map(([key, schema]) => {
    let s: z.ZodType = schema as z.ZodType;
    let required = true;
    let fallback: unknown;
    let description = s.description ?? "";
    for (;;) {
      description ||= s.description ?? "";
      if (s instanceof z.ZodDefault || s instanceof z.ZodPrefault) {
        required = false;
        fallback = s.def.defaultValue;
        s = s.def.innerType as z.ZodType;
      } else if (s instanceof z.ZodOptional) {
        required = false;
        s = s.def.innerType as z.ZodType;
      } else break;
    }
    return { key, required, fallback, description };
  });
}

function render(kind: string, def: ComponentDefinition<z.ZodObject, unknown>): string {
  const lines = [`${kind} ${def.type}: ${def.summary}`];
  const options = describeOptions(def.options);
  const width = Math.max(4, ...options.map((o) => o.key.length));
  for (const o of options) {
    const note = o.required ? "required" : o.fallback === undefined ? "optional" : `default ${JSON.stringify(o.fallback)}`;
    lines.push(`  ${o.key.padEnd(width)}  ${note}${o.description ? `. ${o.description}` : ""}`);
  }
  return lines.join("\n");
}

/** The component kinds, in the order they are listed; each lists its types from the one list of built-ins. */
const KINDS: readonly (readonly [string, readonly ComponentDefinition<z.ZodObject, unknown>[]])[] = [
  ["source", SOURCES],
  ["transform", TRANSFORMS],
  ["sink", SINKS],
  ["dead_letter", DEAD_LETTER_STORES],
];

/**
 * Prints the built-in components, grouped by kind; `filter` narrows them to one kind (`sink` or
 * `sinks`) or to one type name (`sqlite`: the sink and the dead-letter store). Exit 2 for a word
 * that is neither, naming what is accepted, each type under its kind.
 */
export function componentsCommand(filter: string | undefined, io: Io): number {
  const kind = KINDS.find(([k]) => filter === k || filter === `${k}s`);
  const blocks = KINDS.flatMap(([k, defs]) =>
    defs.filter((d) => filter === undefined || kind?.[0] === k || (kind === undefined && d.type === filter)).map((d) => render(k, d)),
  );
  if (blocks.length === 0) {
    const types = KINDS.map(([k, defs]) => `${k}: ${defs.map((d) => d.type).join(", ")}`).join("; ");
    io.stderr.write(`unknown component kind or type "${filter}"; kinds: ${KINDS.map(([k]) => k).join(", ")}; types by kind: ${types}\n`);
    return EXIT.usage;
  }
  io.stdout.write(`${blocks.join("\n\n")}\n`);
  if (filter === undefined) {
    io.stdout.write("\nEvery source also takes id_field, key_field, time_field; every transform takes timeout, max_split; every sink takes concurrency, batch, retry, connect_timeout, chaos; the dead-letter store takes retry.max_elapsed (see README.md).\n");
  } else if (kind?.[0] === "source") {
    io.stdout.write("\nEvery source also takes id_field, key_field, time_field (see README.md).\n");
  } else if (kind?.[0] === "transform") {
    io.stdout.write("\nEvery transform also takes timeout, max_split (see README.md).\n");
  } else if (kind?.[0] === "sink") {
    io.stdout.write("\nEvery sink also takes concurrency, batch, retry, connect_timeout, chaos (see README.md).\n");
  } else if (kind?.[0] === "dead_letter") {
    io.stdout.write("\nThe dead-letter store also takes retry.max_elapsed (see README.md).\n");
  }
  return EXIT.ok;
}
