/**
 * `sluice tap <url>`: prints live records of a running pipeline as NDJSON (stdout), read from
 * its observability listener's `/tap`. Drop notices (this reader was slower than the pipeline)
 * go to stderr. Ends after `--limit` records, when the run ends, or on Ctrl-C.
 */
import { get, type IncomingMessage } from "node:http";
import { createInterface } from "node:readline";
import { EXIT, type Io } from "./run-command.js";

/** Options of `sluice tap`. */
export interface TapOptions {
  readonly stage?: string;
  readonly component?: string;
  readonly limit?: string;
}

/** The `/tap` URL for `base` (the listener, with or without `/tap`) and the options; or why not. */
export function tapUrl(base: string, o: TapOptions): URL | string {
  let url: URL;
  try {
    url = new URL(/^https?:\/\//.test(base) ? base : `http://${base}`);
  } catch {
    return `not a URL: ${base}`;
  }
  if (url.protocol !== "http:") return `only http:// is served by the observability listener: ${base}`;
  url.pathname = url.pathname.replace(/\/+$/, "").replace(/\/tap$/, "") + "/tap";
  if (o.stage !== undefined) {
    if (!["source", "transform", "sink"].includes(o.stage)) return "--stage must be source, transform or sink";
    url.searchParams.set("stage", o.stage);
  }
  if (o.component !== undefined) url.searchParams.set("component", o.component);
  if (o.limit !== undefined) {
    if (!/^[1-9]\d*$/.test(o.limit)) return "--limit must be a positive integer";
    url.searchParams.set("limit", o.limit);
  }
  return url;
}

/** Runs `sluice tap`; resolves with the exit code. `signal` ends it (Ctrl-C) with 0. */
export async function tapCommand(base: string, o: TapOptions, io: Io, signal?: AbortSignal): Promise<number> {
  const url = tapUrl(base, o);
  if (typeof url === "string") {
    io.stderr.write(`sluice tap: ${url}\n`);
    return EXIT.usage;
  }
  let res: IncomingMessage;
  try {
    res = await new Promise<IncomingMessage>((resolve, reject) => {
      const req = get(url, resolve);
      req.on("error", reject);
      signal?.addEventListener("abort", () => req.destroy(), { once: true });
    });
  } catch (err) {
    if (signal?.aborted) return EXIT.ok;
    io.stderr.write(`sluice tap: cannot reach ${url.origin}: ${(err as Error).message}\n`);
    return EXIT.runtime;
  }
  if (res.statusCode !== 200) {
    let body = "";
    for await (const chunk of res) body += String(chunk);
    const why = res.statusCode === 404 ? "no /tap there: is it the observability listener, with `observability.tap: true` in the pipeline's config?" : body.trim();
    io.stderr.write(`sluice tap: ${url.origin} answered ${res.statusCode}: ${why}\n`);
    return EXIT.runtime;
  }
  const lines = createInterface({ input: res, crlfDelay: Infinity });
  // A destroyed response does not end readline's iteration: close both.
  const stop = () => {
    lines.close();
    res.destroy();
  };
  signal?.addEventListener("abort", stop, { once: true });
  // Stdout closed under us (`sluice tap ... | head`): stop reading, exit 0.
  let stdoutGone = false;
  io.stdout.on("error", () => {
    stdoutGone = true;
    stop();
  });
  let records = 0;
  try {
    for await (const line of lines) {
      if (line.startsWith('{"notice":')) {
        const notice = JSON.parse(line) as { records: number };
        io.stderr.write(`sluice tap: ${notice.records} record(s) dropped: this reader was slower than the pipeline\n`);
        continue;
      }
      records++;
      io.stdout.write(`${line}\n`);
    }
  } catch (err) {
    if (!signal?.aborted && !stdoutGone) {
      io.stderr.write(`sluice tap: the stream broke after ${records} record(s): ${(err as Error).message}\n`);
      return EXIT.runtime;
    }
  }
  return EXIT.ok;
}
