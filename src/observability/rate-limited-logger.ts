/**
 * Rate limiting of repeated failure logs: a sink that is down fails every batch, and a line per
 * failure would bury everything else. Applies to warn and error lines that carry a `code`, keyed by
 * `component` + `code`; everything else passes through.
 */
import type { Clock } from "../core/clock.js";
import type { ErrorLogFields, Logger } from "../core/events.js";

/** How many lines of one component and code may pass per window, and the window's length (ms). */
export interface LogRateLimit {
  readonly max: number;
  readonly intervalMs: number;
}

/** At most 5 lines per component and code every 10 s: enough to see a failure change, few enough to read. */
export const DEFAULT_LOG_RATE_LIMIT: LogRateLimit = { max: 5, intervalMs: 10_000 };

interface Window {
  readonly start: number;
  readonly level: "warn" | "error";
  passed: number;
  suppressed: number;
  /** The last suppressed line, reported with the count. */
  last?: { readonly fields: Record<string, unknown>; readonly msg: string | undefined };
  cancel?: () => void;
}

/**
 * A {@link Logger} that passes at most `limit.max` warn or error lines of one component and code
 * per `limit.intervalMs` window (the window opens at the first line). Lines past that are counted;
 * when the window ends (a timer on `clock`, set only once something was suppressed) one line at
 * the same level says how many were suppressed, with the component, the code and the last
 * suppressed line's message and fields. {@link flush} reports open windows at once: call it when
 * the run ends, so no count is lost and no timer outlives the run.
 */
export class RateLimitedLogger implements Logger {
  private readonly windows = new Map<string, Window>();

  constructor(
    private readonly inner: Logger,
    private readonly clock: Clock,
    private readonly limit: LogRateLimit = DEFAULT_LOG_RATE_LIMIT,
  ) {}

  debug(obj: object, msg?: string): void {
    this.inner.debug(obj, msg);
  }

  info(obj: object, msg?: string): void {
    this.inner.info(obj, msg);
  }

  warn(obj: object, msg?: string): void {
    if (this.admit("warn", obj, msg)) this.inner.warn(obj, msg);
  }

  error(obj: ErrorLogFields, msg?: string): void {
    if (this.admit("error", obj, msg)) this.inner.error(obj, msg);
  }

  /** Reports every window with suppressed lines now, and forgets all windows. */
  flush(): void {
    for (const [key, w] of [...this.windows]) this.close(key, w);
  }

  /** True when the line may pass; otherwise counts it in its window. */
  private admit(level: "warn" | "error", obj: object, msg: string | undefined): boolean {
    const fields = obj as Record<string, unknown>;
    if (typeof fields.code !== "string") return true;
    const key = `${String(fields.component ?? "")}\u0000${fields.code}\u0000${level}`;
    const now = this.clock.now();
    const open = this.windows.get(key);
    if (open === undefined || now - open.start >= this.limit.intervalMs) {
      if (open !== undefined) this.close(key, open);
      this.windows.set(key, { start: now, level, passed: 1, suppressed: 0 });
      return true;
    }
    if (open.passed < this.limit.max) {
      open.passed++;
      return true;
    }
    open.suppressed++;
    open.last = { fields, msg };
    open.cancel ??= this.clock.setTimer(open.start + this.limit.intervalMs - now, () => this.close(key, open));
    return false;
  }

  private close(key: string, w: Window): void {
    if (this.windows.get(key) === w) this.windows.delete(key);
    w.cancel?.();
    if (w.suppressed === 0 || w.last === undefined) return;
    const { fields, msg } = w.last;
    const line = { ...fields, suppressed: w.suppressed, window_s: this.limit.intervalMs / 1000 } as unknown as ErrorLogFields;
    const text = `${w.suppressed} more like this suppressed in ${this.limit.intervalMs / 1000} s: ${msg ?? ""}`;
    if (w.level === "error") this.inner.error(line, text);
    else this.inner.warn(line, text);
    w.suppressed = 0;
  }
}
