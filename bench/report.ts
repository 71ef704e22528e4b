/**
 * What every section of `npm run bench` shares: reading its env knobs, formatting figures, the
 * median of runs, and the progress lines on stderr.
 */

/** An integer env knob (`_` separators allowed); exits 2 with a message when it is not one >= `min`. */
export function intEnv(name: string, fallback: number, min: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === "") return fallback;
  const n = Number(raw.replaceAll("_", ""));
  if (!Number.isSafeInteger(n) || n < min) {
    console.error(`${name} must be an integer >= ${min}, got ${JSON.stringify(raw)}`);
    process.exit(2);
  }
  return n;
}

export const fmtInt = (n: number): string => Math.round(n).toLocaleString("en-US");
export const fmtRatio = (n: number): string => `${n.toFixed(2)}x`;

export function median(values: readonly number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** Progress goes to stderr: a live line on a terminal, plain lines otherwise. */
export const progress = {
  tty: process.stderr.isTTY === true,
  live(text: string): void {
    if (this.tty) process.stderr.write(`\r\x1b[2K${text}`);
  },
  line(text: string): void {
    process.stderr.write(this.tty ? `\r\x1b[2K${text}\n` : `${text}\n`);
  },
};
