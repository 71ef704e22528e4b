/**
 * What the durable buffer does with bytes it cannot use: copies them to `<dir>/quarantine`,
 * reports them (`buffer_corrupt`), and retries a copy that failed (a full disk) until it succeeds,
 * so the bytes are never deleted before someone can look at them.
 */
import type { Clock } from "./clock.js";
import { quarantine } from "./durable-log.js";
import type { EventSink, Logger } from "./events.js";

type Bytes = globalThis.Buffer;

/** First and longest wait before retrying a quarantine copy that failed, ms. */
const COPY_RETRY_MS = 1000;
const COPY_RETRY_MAX_MS = 30_000;

/** Options of a {@link BufferQuarantine}. */
export interface BufferQuarantineOptions {
  /** The durable buffer's directory; copies go to its `quarantine/`. */
  readonly dir: string;
  readonly emit: EventSink;
  readonly logger: Logger;
  readonly clock: Clock;
}

/**
 * Quarantines and reports a durable buffer's torn, corrupt or missing entries.
 *
 * Gotchas: {@link BufferQuarantine.report} answers whether the copy is on disk; until it is, the
 * caller must keep the file the bytes came from (a copy that failed is retried only while this
 * process runs, and at the next start by scanning that file again).
 */
export class BufferQuarantine {
  private readonly cancels = new Set<() => void>();
  private stopped = false;

  constructor(private readonly o: BufferQuarantineOptions) {}

  /** Copies that failed and are being retried. */
  get pendingCopies(): number {
    return this.cancels.size;
  }

  /**
   * Quarantines bad bytes (found on open, or in an entry read back while running) as `name`,
   * reports them unless an earlier run quarantined (and reported) the same bytes, and goes on
   * whatever happens. `records`: how many records of this run the entry held. False when the
   * copy failed: the caller keeps the bytes' file, and `retry` then copies again until it succeeds.
   */
  async report(name: string, offset: number, data: Bytes, reason: string, detail: string, records?: number): Promise<boolean> {
    let file: string | undefined;
    let failed: unknown;
    try {
      const q = await quarantine(this.o.dir, name, data);
      if (q.already) return true;
      file = q.file;
    } catch (err) {
      failed = err;
    }
    this.o.emit({ type: "buffer_corrupt", entries: 1, bytes: data.length, reason, records });
    this.o.logger.warn({ path: this.o.dir, offset, bytes: data.length, reason, records, quarantine: file }, `durable buffer: ${detail}`);
    if (failed === undefined) return true;
    this.o.logger.warn({ path: this.o.dir, err: String(failed) }, `durable buffer: could not write quarantine file ${name}.bad; its segment is kept and the copy retried`);
    return false;
  }

  /** Copies `data` again, with backoff, until it succeeds; then calls `done` (the segment may go). */
  retry(name: string, data: Bytes, done: () => void, wait = COPY_RETRY_MS): void {
    if (this.stopped) return;
    const cancel = this.o.clock.setTimer(wait, () => {
      this.cancels.delete(cancel);
      quarantine(this.o.dir, name, data).then(
        (q) => {
          this.o.logger.info({ path: this.o.dir, quarantine: q.file, pending: this.pendingCopies }, "durable buffer: quarantine copy written after failing");
          done();
        },
        (err: unknown) => {
          this.o.logger.warn({ path: this.o.dir, err: String(err), pending: this.pendingCopies + 1 }, `durable buffer: still cannot write quarantine file ${name}.bad`);
          this.retry(name, data, done, Math.min(wait * 2, COPY_RETRY_MAX_MS));
        },
      );
    });
    this.cancels.add(cancel);
  }

  /** Reports entries the index says were written, not released, and not found: lost, with nothing left to quarantine. `records`: those of this run. */
  reportMissing(entries: number, where: string, records?: number): void {
    if (entries <= 0) return;
    this.o.emit({ type: "buffer_corrupt", entries, bytes: 0, reason: "missing", records });
    this.o.logger.warn({ path: this.o.dir, entries, records }, `durable buffer: ${where}: ${entries} entr${entries === 1 ? "y" : "ies"} not yet delivered are lost`);
  }

  /** Ends the retries: what is not copied yet stays in its segment, scanned again at the next start. */
  stop(): void {
    this.stopped = true;
    for (const cancel of this.cancels) cancel();
    this.cancels.clear();
  }
}
