/**
 * `sluice top [url...]`: reads running instances' /metrics every interval and shows them. On a
 * terminal: a screen redrawn in place (the alternate screen, so the shell's is back on quit), `q`
 * quits (stdin in raw mode). Otherwise: plain lines per refresh, until a signal or `--count`.
 */
import { parsePrometheusText } from "../../observability/prometheus-text.js";
import { EXIT } from "../run-command.js";
import { scrapeOf, type Scrape } from "./model.js";
import { plainLines, screen, type Instance } from "./view.js";

/** Options of `sluice top`. */
export interface TopOptions {
  /** Between two refreshes, ms. */
  readonly intervalMs: number;
  /** Stop after this many refreshes (undefined: until `q` or a signal). */
  readonly count?: number;
}

/** The terminal `top` draws on and reads `q` from. */
export interface TopIo {
  readonly stdout: NodeJS.WritableStream & { isTTY?: boolean; columns?: number; on?(event: "resize", listener: () => void): unknown; off?(event: "resize", listener: () => void): unknown };
  readonly stderr: NodeJS.WritableStream;
  readonly stdin?: NodeJS.ReadableStream & { isTTY?: boolean; setRawMode?(mode: boolean): unknown };
}

/** The address `top` reads when given none: `observability.listen`'s usual one. */
export const DEFAULT_TOP_URL = "http://127.0.0.1:9464/metrics";

/** `host:port`, `http://host:port` or a full URL, as the /metrics URL to read (`/metrics` when no path is given). */
export function metricsUrl(text: string): string {
  const url = new URL(/^[a-z][a-z0-9+.-]*:\/\//i.test(text) ? text : `http://${text}`);
  if (url.protocol !== "http:" && url.protocol !== "https:") throw new Error(`${text}: not an http(s) URL`);
  if (url.pathname === "/" || url.pathname === "") url.pathname = "/metrics";
  return url.href;
}

/** Why a scrape failed, in one line: the connection's error (`connect ECONNREFUSED 127.0.0.1:9465`), an HTTP status, a bad body. */
function reasonOf(err: unknown): string {
  const cause = (err as { cause?: unknown }).cause;
  if (cause instanceof Error) return cause.message;
  return err instanceof Error ? err.message : String(err);
}

async function scrape(url: string, timeoutMs: number): Promise<{ tag: "ok"; scrape: Scrape } | { tag: "failed"; reason: string }> {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
    const body = await res.text();
    if (!res.ok) return { tag: "failed", reason: `HTTP ${res.status} from ${url}` };
    return { tag: "ok", scrape: scrapeOf(parsePrometheusText(body), Date.now()) };
  } catch (err) {
    return { tag: "failed", reason: (err as Error).name === "TimeoutError" ? `no answer within ${timeoutMs} ms` : reasonOf(err) };
  }
}

const ALT_SCREEN_ON = "\x1b[?1049h\x1b[?25l";
const ALT_SCREEN_OFF = "\x1b[?25h\x1b[?1049l";

/** Runs `top` until `q`, a signal, or `count` refreshes; resolves with the exit code. */
export async function topCommand(urlTexts: readonly string[], opts: TopOptions, io: TopIo): Promise<number> {
  let urls: string[];
  try {
    urls = (urlTexts.length > 0 ? urlTexts : [DEFAULT_TOP_URL]).map(metricsUrl);
  } catch (err) {
    io.stderr.write(`sluice top: ${(err as Error).message}\n`);
    return EXIT.usage;
  }
  const tty = io.stdout.isTTY === true;
  let instances: Instance[] = urls.map((url) => ({ url, state: { tag: "waiting" } }));
  // Each instance's last answered scrape: rates are against it, also after a down spell.
  const last: (Scrape | undefined)[] = urls.map(() => undefined);
  const quit = new AbortController();
  const stop = () => quit.abort();
  const quitted = new Promise<undefined>((done) => quit.signal.addEventListener("abort", () => done(undefined), { once: true }));
  /** `p`, or undefined as soon as `top` is told to quit. */
  const untilQuit = <T>(p: Promise<T>): Promise<T | undefined> => Promise.race([p, quitted]);
  const onKey = (data: Buffer | string) => {
    const key = String(data);
    // In raw mode Ctrl-C arrives as a byte, not as SIGINT.
    if (key === "q" || key === "Q" || key === "\x03") stop();
  };
  const draw = () => {
    if (tty) io.stdout.write(`\x1b[H${screen(instances, Date.now(), opts.intervalMs, io.stdout.columns ?? 100).join("\x1b[K\n")}\x1b[K\x1b[J`);
  };
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
  const keys = tty && io.stdin?.isTTY === true && io.stdin.setRawMode !== undefined ? io.stdin : undefined;
  if (tty) {
    io.stdout.write(ALT_SCREEN_ON);
    io.stdout.on?.("resize", draw);
    draw();
  }
  if (keys) {
    keys.setRawMode!(true);
    keys.on("data", onKey);
    keys.resume();
  }
  try {
    for (let refresh = 1; !quit.signal.aborted; refresh++) {
      // `q` does not wait for an instance that is slow to answer.
      const scrapes = await untilQuit(Promise.all(instances.map((i) => scrape(i.url, Math.min(opts.intervalMs, 5000)))));
      if (scrapes === undefined) break;
      const now = Date.now();
      instances = instances.map((i, n): Instance => {
        const got = scrapes[n]!;
        if (got.tag === "failed") return { url: i.url, state: { tag: "down", reason: got.reason, since: i.state.tag === "down" ? i.state.since : now } };
        const previous = last[n];
        last[n] = got.scrape;
        return { url: i.url, state: { tag: "up", current: got.scrape, previous } };
      });
      if (tty) draw();
      else io.stdout.write(plainLines(instances, now).map((l) => `${l}\n`).join(""));
      if (opts.count !== undefined && refresh >= opts.count) break;
      await untilQuit(new Promise((done) => setTimeout(done, opts.intervalMs)));
    }
  } finally {
    process.off("SIGINT", stop);
    process.off("SIGTERM", stop);
    if (keys) {
      keys.off("data", onKey);
      keys.setRawMode!(false);
      keys.pause();
    }
    if (tty) {
      io.stdout.off?.("resize", draw);
      io.stdout.write(ALT_SCREEN_OFF);
    }
  }
  return EXIT.ok;
}
