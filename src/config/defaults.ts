/**
 * Every engine default, in one place, with its unit. Component defaults live in each
 * component's options schema.
 */
export const DEFAULTS = {
  /** Checkpoints, the default dead-letter store. Relative to the working directory. */
  data_dir: "./data",
  /** Threads that decode and transform: 1 is the main thread alone; `auto` is one worker thread per core. */
  workers: 1,
  /** How long a graceful stop may drain, ms. */
  shutdown_timeout_ms: 30_000,
  buffer: {
    max_records: 10_000,
    /** 64 MiB. */
    max_bytes: 64 * 1024 * 1024,
    when_full: "block",
    /** Records per source chunk. */
    chunk_size: 1000,
  },
  /** `buffer.durable`: the crash-safe disk log, off unless configured. */
  durable_buffer: {
    /** Under data_dir. */
    path: "buffer",
    /** 1 GiB of un-released entries on disk. */
    max_bytes: 1024 * 1024 * 1024,
    /** A push counts as accepted only once on disk (O_DSYNC writes). */
    fsync: true,
  },
  /** Limits every transform has (`timeout`, `max_split`), per transform in YAML and in the library. */
  transform: {
    /** ms a promise a transform returns may take to settle; then the record is dead-lettered (ERR_TRANSFORM_TIMEOUT). */
    timeout_ms: 30_000,
    /** Most records one record may split into; more is dead-lettered (ERR_TRANSFORM_SPLIT). */
    max_split: 10_000,
  },
  dead_letter: {
    retry: {
      /** ms a dead-letter write may keep failing (retried with backoff) before the run ends with exit 1. */
      max_elapsed_ms: 60_000,
    },
  },
  sink: {
    /** Batches in flight per sink (a number, or `adaptive` with the settings below). */
    concurrency: 4,
    /** `concurrency: adaptive`: an AIMD limit on batches in flight, driven by latency and errors. */
    adaptive: {
      /** Limit at start, batches. */
      initial: 1,
      /** Highest limit, batches (and lanes); also capped by what the sink supports. */
      max: 16,
      /** Factor applied to the limit on back pressure or a latency rise, in (0, 1). */
      decrease_ratio: 0.9,
      /** Weight of each new window in the moving average of past latency, in (0, 1]. */
      ewma_alpha: 0.4,
      /** Standard deviations above the past mean latency before a window counts as a rise. */
      rtt_deviation_scale: 2.5,
    },
    batch: {
      max_records: 1000,
      /** 4 MiB. */
      max_bytes: 4 * 1024 * 1024,
      /** ms */
      max_wait_ms: 100,
    },
    retry: {
      max_attempts: 5,
      /** ms */
      max_elapsed_ms: 60_000,
      /** ms: cap of the first backoff delay. */
      initial_backoff_ms: 100,
      /** ms */
      max_backoff_ms: 10_000,
      multiplier: 2,
    },
  },
  observability: {
    log_level: "info",
    /** ms between progress lines on a terminal. */
    progress_interval_ms: 1000,
    /** ms a sink may fail (retrying without one success) before /health/ready answers 503. */
    unready_after_ms: 30_000,
    tracing: {
      /** Share of root traces kept: every one. */
      sample_ratio: 1,
      service_name: "sluice",
    },
  },
} as const;
