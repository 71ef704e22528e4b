/**
 * Every engine default, in one place, with its unit. Component defaults live in each
 * component's options schema.
 */
export const DEFAULTS = {
  /** Checkpoints, the default dead-letter store. Relative to the working directory. */
  data_dir: "./data",
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
  sink: {
    /** Batches in flight per sink. */
    concurrency: 4,
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
  },
} as const;
