/**
 * A reader of the Prometheus text exposition format (version 0.0.4), for `sluice top`: prom-client
 * writes the format but does not read it, and the part `top` needs (samples with labels) is small.
 */

/** One sample line: `name{label="value",...} value [timestamp]`. */
export interface Sample {
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly value: number;
}

const NAME = /[a-zA-Z_:][a-zA-Z0-9_:]*/y;
const LABEL_NAME = /[a-zA-Z_][a-zA-Z0-9_]*/y;

/** A value as the format writes it: a float, `NaN`, `+Inf`, `-Inf`. */
function parseValue(text: string): number {
  if (text === "+Inf" || text === "Inf") return Number.POSITIVE_INFINITY;
  if (text === "-Inf") return Number.NEGATIVE_INFINITY;
  if (text === "NaN") return Number.NaN;
  const n = Number(text);
  if (text === "" || Number.isNaN(n)) throw new Error(`not a sample value: ${JSON.stringify(text)}`);
  return n;
}

/** Reads a quoted label value at `i` (the opening quote); returns it and the index after the closing quote. */
function readQuoted(line: string, i: number): [string, number] {
  let value = "";
  for (let j = i + 1; j < line.length; j++) {
    const c = line[j]!;
    if (c === '"') return [value, j + 1];
    if (c !== "\\") {
      value += c;
      continue;
    }
    const next = line[++j];
    value += next === "n" ? "\n" : (next ?? "");
  }
  throw new Error("unterminated label value");
}

function parseLine(line: string): Sample {
  NAME.lastIndex = 0;
  const name = NAME.exec(line)?.[0];
  if (name === undefined) throw new Error("no metric name");
  let i = name.length;
  const labels: Record<string, string> = {};
  if (line[i] === "{") {
    i++;
    for (;;) {
      while (line[i] === " " || line[i] === ",") i++;
      if (line[i] === "}") {
        i++;
        break;
      }
      LABEL_NAME.lastIndex = i;
      const label = LABEL_NAME.exec(line)?.[0];
      if (label === undefined) throw new Error(`bad label at column ${i + 1}`);
      i += label.length;
      while (line[i] === " ") i++;
      if (line[i] !== "=") throw new Error(`expected = after label ${label}`);
      i++;
      while (line[i] === " ") i++;
      if (line[i] !== '"') throw new Error(`expected a quoted value for label ${label}`);
      [labels[label], i] = readQuoted(line, i);
    }
  }
  const [value] = line.slice(i).trim().split(/\s+/);
  return { name, labels, value: parseValue(value ?? "") };
}

/**
 * Every sample of a text exposition, in order. Comments (`# HELP`, `# TYPE`) and blank lines are
 * skipped; timestamps are ignored.
 * @throws Error naming the line when a line is not a sample.
 */
export function parsePrometheusText(text: string): Sample[] {
  const samples: Sample[] = [];
  const lines = text.split("\n");
  for (const [n, raw] of lines.entries()) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) continue;
    try {
      samples.push(parseLine(line));
    } catch (err) {
      throw new Error(`line ${n + 1}: ${(err as Error).message}: ${line.slice(0, 120)}`, { cause: err });
    }
  }
  return samples;
}
