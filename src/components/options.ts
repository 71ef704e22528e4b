/**
 * Config value types shared by components: byte sizes (`64MiB`) and durations (`200ms`), which
 * accept a plain number too (bytes, milliseconds), and the file-name prefix of segment sinks.
 */
import { z } from "zod";

const BYTE_UNITS: Record<string, number> = {
  b: 1,
  kb: 1e3,
  mb: 1e6,
  gb: 1e9,
  kib: 1024,
  mib: 1024 ** 2,
  gib: 1024 ** 3,
};

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1e3, m: 60e3, h: 3600e3 };

function parseWithUnits(text: string, units: Record<string, number>): number | undefined {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]+)\s*$/.exec(text);
  if (!m) return undefined;
  const factor = units[m[2]!.toLowerCase()];
  return factor === undefined ? undefined : Math.round(Number(m[1]) * factor);
}

/** A size in bytes: a non-negative number, or a string like `512KiB`, `64MiB`, `1GB`. */
export function byteSize() {
  return z.union([z.number().int().nonnegative(), z.string()]).transform((value, ctx) => {
    if (typeof value === "number") return value;
    const n = parseWithUnits(value, BYTE_UNITS);
    if (n === undefined) {
      ctx.addIssue({ code: "custom", message: `"${value}" is not a size; use bytes or a unit: B, KB, MB, GB, KiB, MiB, GiB` });
      return z.NEVER;
    }
    return n;
  });
}

/** A duration in milliseconds: a non-negative number, or a string like `250ms`, `5s`, `2m`, `1h`. */
export function duration() {
  return z.union([z.number().nonnegative(), z.string()]).transform((value, ctx) => {
    if (typeof value === "number") return value;
    const n = parseWithUnits(value, DURATION_UNITS);
    if (n === undefined) {
      ctx.addIssue({ code: "custom", message: `"${value}" is not a duration; use milliseconds or a unit: ms, s, m, h` });
      return z.NEVER;
    }
    return n;
  });
}

/** The `prefix` of a segment sink's file names (`file`, `parquet`): safe in a file name, never hidden. */
export function fileNamePrefix(defaultPrefix: string) {
  return z
    .string()
    .regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/, "prefix may hold letters, digits, '.', '_' and '-', and must start with a letter or digit")
    .default(defaultPrefix);
}
