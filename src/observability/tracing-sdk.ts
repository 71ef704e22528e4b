/**
 * The CLI's OpenTelemetry SDK: installed when `observability.tracing` is set, before the pipeline
 * is built (the engine picks the installed tracer up then, see `core/tracing.ts`). The library
 * never imports this module. The SDK packages are loaded with `import()` inside
 * {@link startTracing}, so a run without tracing never loads them, bundled (the benchmarks'
 * children) or not: a bundler hoists the static imports of a module it inlines.
 */
import type { Logger } from "../core/events.js";

/** `observability.tracing` as validated. */
export interface TracingConfig {
  /** OTLP/HTTP base URL of the collector; spans go to `<otlp_endpoint>/v1/traces`. */
  readonly otlp_endpoint: string;
  /** Share of root traces kept, 0 to 1. */
  readonly sample_ratio: number;
  readonly service_name: string;
}

/** The installed SDK. */
export interface TracingSdk {
  /**
   * Exports the spans still queued (for at most {@link SHUTDOWN_WAIT_MS}: a collector that is down
   * must not hold the exit) and uninstalls the SDK; call once, after the run.
   */
  shutdown(): Promise<void>;
}

/** Longest the last export may hold the end of a run, in ms. */
export const SHUTDOWN_WAIT_MS = 5_000;

/** Where spans are POSTed for a collector at `endpoint` (the OTLP/HTTP convention for a base URL). */
export function tracesUrl(endpoint: string): string {
  return `${endpoint.replace(/\/+$/, "")}/v1/traces`;
}

/**
 * Installs a tracer provider as the global one: spans encoded as OTLP/JSON when they end and sent
 * in batches over OTLP/HTTP to the collector (`otlp-span-processor.ts`), root traces sampled at
 * `sample_ratio` and child spans following their parent's decision (a request whose `traceparent`
 * is sampled is traced whatever the ratio; the sampler and the id generator are `span-plugins.ts`),
 * W3C trace context as the propagator. The SDK's own warnings and errors, and exports that fail (a collector
 * that cannot be reached), go to `logger` as warnings. No context manager is installed (see below).
 */
export async function startTracing(config: TracingConfig, logger: Logger): Promise<TracingSdk> {
  const [{ context, diag, DiagLogLevel, propagation, trace }, { OTLP_DEFAULTS, OtlpJsonSpanProcessor }, { ParentOrRootSampler, PooledIdGenerator }, { resourceFromAttributes }, { NodeTracerProvider, TraceIdRatioBasedSampler }] = await Promise.all([
    import("@opentelemetry/api"),
    import("./otlp-span-processor.js"),
    import("./span-plugins.js"),
    import("@opentelemetry/resources"),
    import("@opentelemetry/sdk-trace-node"),
  ]);
  diag.setLogger(
    {
      error: (message, ...args) => logger.warn({ component: "tracing", detail: args.map(String).join(" ") }, message),
      warn: (message, ...args) => logger.warn({ component: "tracing", detail: args.map(String).join(" ") }, message),
      info: () => {},
      debug: () => {},
      verbose: () => {},
    },
    DiagLogLevel.WARN,
  );
  const processor = new OtlpJsonSpanProcessor({
    ...OTLP_DEFAULTS,
    url: tracesUrl(config.otlp_endpoint),
    onError: (message, detail) => logger.warn({ component: "tracing", ...detail }, message),
  });
  // The export thread's start (a few tens of ms of CPU) belongs to setting tracing up, not to the run.
  await processor.whenReady();
  const provider = new NodeTracerProvider({
    resource: resourceFromAttributes({ "service.name": config.service_name }),
    // At ratio 1 every root is kept: no hash of each trace id.
    sampler: new ParentOrRootSampler(trace, config.sample_ratio >= 1 ? undefined : new TraceIdRatioBasedSampler(config.sample_ratio)),
    idGenerator: new PooledIdGenerator(),
    spanProcessors: [processor],
  });
  // No context manager: sluice hands every span its parent explicitly. The default one
  // (AsyncLocalStorage) turns on Node 20's async hooks for every promise once something enters a
  // context; nothing here needs that (its cost was within the benchmark's noise on a loaded machine).
  provider.register({ contextManager: null });
  return {
    async shutdown() {
      let timer: NodeJS.Timeout | undefined;
      const waited = new Promise<"timeout">((resolve) => {
        timer = setTimeout(() => resolve("timeout"), SHUTDOWN_WAIT_MS);
        timer.unref();
      });
      const flushed = provider.shutdown().then(
        () => "done" as const,
        (err: unknown) => logger.warn({ component: "tracing", err: String(err) }, "could not export the last spans"),
      );
      if ((await Promise.race([flushed, waited])) === "timeout") {
        logger.warn({ component: "tracing", endpoint: tracesUrl(config.otlp_endpoint) }, `spans not all exported within ${SHUTDOWN_WAIT_MS / 1000} s of the end of the run (is the collector reachable?); giving up on them`);
        // The export thread would hold the exit through its retries.
        await processor.abandon();
      }
      clearTimeout(timer);
      trace.disable();
      propagation.disable();
      context.disable();
      diag.disable();
    },
  };
}
