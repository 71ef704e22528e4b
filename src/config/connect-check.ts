/**
 * The connection checks of `sluice validate`: each source and sink of a config connected once, as
 * a run's start connects them, within one deadline, then closed.
 */
import { mkdir } from "node:fs/promises";
import { resolve } from "node:path";
import type { ComponentContext, Sink, Source } from "../components/contracts.js";
import { systemClock } from "../core/clock.js";
import { classify } from "../core/errors.js";
import type { Logger } from "../core/events.js";
import { lockDataDir } from "./build.js";
import type { PipelineConfig } from "./schema.js";

/** How one component's check ended. */
export type ConnectOutcome =
  /** `connect` resolved after `ms`. */
  | { readonly tag: "ok"; readonly ms: number }
  /** A source without `connect` (a file, a generator, an http listener): nothing to reach before it runs. */
  | { readonly tag: "nothing_to_connect" }
  /** `connect` rejected: a run would retry a `retryable` error until it connects (or its `connect_timeout`), and end at once on another. */
  | { readonly tag: "failing"; readonly code: string; readonly message: string; readonly retryable: boolean }
  /** `connect` had not settled at the deadline. */
  | { readonly tag: "timed_out"; readonly ms: number };

/** One source's or sink's check. */
export interface ConnectReport {
  readonly kind: "source" | "sink";
  readonly name: string;
  readonly type: string;
  readonly outcome: ConnectOutcome;
}

/** Where relative paths resolve, how long the checks may take, where components log. */
export interface ConnectCheckOptions {
  readonly cwd: string;
  readonly timeoutMs: number;
  readonly logger: Logger;
}

/** A component with a connection to check: its `connect`, and its `close` once connected. */
interface Connectable {
  readonly kind: "source" | "sink";
  readonly name: string;
  readonly type: string;
  readonly connect: ((signal: AbortSignal) => Promise<void>) | undefined;
  readonly close: () => Promise<void>;
}

/**
 * Connects every source (that has `connect`) and sink of `config` at once, each with the same
 * deadline (`timeoutMs` from the start), and closes each that connected. Connecting does what the
 * start of a run does (a sink creates its table, a broker source its consumer group, a file sink
 * finishes the segments a crash left), so it takes `data_dir`'s lock as a run does: rejects with
 * `ERR_LOCKED` while a run of the pipeline holds it. Never rejects for a component's failure: that
 * is its report.
 */
export async function checkConnections(config: PipelineConfig, o: ConnectCheckOptions): Promise<ConnectReport[]> {
  const dataDir = resolve(o.cwd, config.dataDir);
  await mkdir(dataDir, { recursive: true });
  const lock = await lockDataDir(dataDir, o.logger);
  try {
    const ctx = (name: string): ComponentContext => ({ name, dataDir, baseDir: o.cwd, clock: systemClock, logger: o.logger, emit: () => {}, bufferBytes: config.buffer.max_bytes, bufferRecords: config.buffer.max_records });
    const components: Connectable[] = await Promise.all([
      ...config.sources.map(async (s): Promise<Connectable> => {
        const source: Source = await s.definition.create(s.options as never, ctx(s.name));
        return { kind: "source", name: s.name, type: s.definition.type, connect: source.connect?.bind(source), close: () => source.close() };
      }),
      ...config.sinks.map(async (s): Promise<Connectable> => {
        const sink: Sink = await s.definition.create(s.options as never, ctx(s.name));
        return { kind: "sink", name: s.name, type: s.definition.type, connect: (signal) => sink.connect(signal), close: () => sink.close() };
      }),
    ]);
    const deadline = AbortSignal.timeout(o.timeoutMs);
    const expired = new Promise<"expired">((done) => deadline.addEventListener("abort", () => done("expired"), { once: true }));
    return await Promise.all(components.map(async (c) => ({ kind: c.kind, name: c.name, type: c.type, outcome: await check(c, deadline, expired) })));
  } finally {
    await lock.release();
  }
}

/** One component's connect raced against the deadline (a client may not honour the abort), then its close. */
async function check(c: Connectable, deadline: AbortSignal, expired: Promise<"expired">): Promise<ConnectOutcome> {
  if (c.connect === undefined) return { tag: "nothing_to_connect" };
  const started = performance.now();
  const attempt = c.connect(deadline).then(
    () => undefined,
    (err: unknown) => err,
  );
  const settled = await Promise.race([attempt.then((err) => ({ err })), expired]);
  const ms = Math.round(performance.now() - started);
  if (settled === "expired") {
    // Closed once the attempt settles, whenever that is; the command does not wait for it.
    void attempt.then(() => c.close()).catch(() => undefined);
    return { tag: "timed_out", ms };
  }
  // Closed after a failure too: a connect that failed half-way may hold a client.
  const closing = c.close().catch(() => undefined);
  await Promise.race([closing, expired]);
  if (settled.err === undefined) return { tag: "ok", ms };
  const error = classify(settled.err, c.kind === "sink" ? "ERR_SINK_CONNECT" : "ERR_SOURCE_CONNECT");
  return { tag: "failing", code: error.code, message: error.message, retryable: error.retryable };
}
