/**
 * The `file` source: NDJSON from a file (optionally tailed, across rotations), a named pipe or
 * stdin, a file resumable from a checkpointed byte offset within a known generation of the file.
 * The parts: `ndjson-reader.ts` (bytes to records), `identity.ts` (which file, which generation),
 * `checkpoint-store.ts` (the saved position), `fifo.ts` (named pipes).
 */
import { open, readdir, stat, type FileHandle } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { z } from "zod";
import { sleep } from "../../core/clock.js";
import { SluiceError } from "../../core/errors.js";
import { defineComponent, type ComponentContext, type Source, type SourceHandle } from "../../components/contracts.js";
import { byteSize, duration } from "../../components/options.js";
import { CheckpointStore, type FileCheckpoint, type SavedCheckpoint } from "./checkpoint-store.js";
import { fifoBytes } from "./fifo.js";
import { FileGeneration, fingerprintOf, identityOf, startsWith, type FileIdentity } from "./identity.js";
import { NdjsonReader, READ_BYTES, readNdjsonStream } from "./ndjson-reader.js";

export { readNdjsonStream, type NdjsonStreamSettings, type StreamCheckpoint } from "./ndjson-reader.js";
export type { FileCheckpoint } from "./checkpoint-store.js";

const options = z.strictObject({
  path: z
    .string()
    .min(1)
    .describe("NDJSON file to read, relative to the working directory; a named pipe (FIFO) is read as its writers write (no checkpoint); `-` reads stdin (no checkpoint)"),
  follow: z
    .boolean()
    .default(false)
    .describe("Keep reading as the file grows (like `tail -F`, waiting for it if it does not exist yet, following rotations) until the pipeline stops; otherwise finish at end of file (a named pipe: when its writer closes it)"),
  poll_interval: duration()
    .default(250)
    .describe("With `follow`: how often to look for new data, truncation or rotation (ms or `250ms`)"),
  checkpoint_interval: duration()
    .default(1000)
    .describe("Longest time between checkpoint writes (ms or `1s`); it is also written once at close"),
  max_line_bytes: byteSize()
    .default(1024 * 1024)
    .describe("Longest line accepted; a longer one is dead-lettered as malformed and skipped without being buffered"),
});

/** Validated options of the `file` source. */
export type FileSourceOptions = z.output<typeof options>;

/** Wraps an I/O failure of the source file as a retryable `ERR_SOURCE_READ`. */
function readError(path: string, what: string, err: unknown): SluiceError {
  return new SluiceError("ERR_SOURCE_READ", `${what} ${path}: ${(err as Error).message}`, { cause: err, location: path });
}

/** What {@link checkFileSourcePath} found: an error stops `validate` and `run`; a warning is printed. */
export type PathFinding = { level: "error" | "warning"; message: string };

/**
 * Checks, before a run, that the file a `file` source reads can be read: a missing file is an
 * error, unless `follow` is set and its directory exists (the source then waits for it: a warning);
 * a missing directory is an error even with `follow`, since no file can appear there. `path` is
 * resolved; `-` (stdin) is not checked.
 */
export async function checkFileSourcePath(path: string, follow: boolean): Promise<PathFinding | undefined> {
  const found = await stat(path).catch((err: NodeJS.ErrnoException) => err);
  if (!(found instanceof Error)) return found.isDirectory() ? { level: "error", message: `${path} is a directory, not a file` } : undefined;
  if (found.code !== "ENOENT") return { level: "error", message: `cannot read ${path}: ${found.message}` };
  if (!follow) return { level: "error", message: `${path} does not exist` };
  const dir = await stat(dirname(path)).catch(() => undefined);
  if (dir?.isDirectory() !== true) return { level: "error", message: `${path} does not exist, nor does its directory ${dirname(path)}` };
  return { level: "warning", message: `${path} does not exist yet; with follow the source waits for it` };
}

/** Where the `file` source reads stdin from; injected so tests can feed a stream. */
export interface FileSourceIo {
  /** Called once, when `path` is `-` and `run` starts. */
  readonly stdin: () => AsyncIterable<Buffer | string>;
}

/** Where a file source starts: a generation of the file and the position in it. */
interface Start {
  readonly generation: FileGeneration;
  readonly offset: number;
  readonly line: number;
  /** A generation no checkpoint knew: nothing before it to ack. */
  readonly fresh?: boolean;
  /**
   * The file the checkpoint's generation was rotated away to (renamed within the path's
   * directory since the last run): its rest is read first, then the path's file from its start.
   */
  readonly rotated?: FileHandle;
}

/** The position prefix of a generation's lines (see {@link NdjsonReader.positionPrefix}). */
function prefixOf(generation: FileGeneration): string {
  return generation.token === "" ? "" : `${generation.token}:`;
}

class FileSource implements Source {
  readonly kind = "pull";
  private readonly path: string | undefined;
  private readonly store: CheckpointStore | undefined;
  /** Set while reading a stream (stdin, a named pipe): nothing to checkpoint. */
  private stream = false;

  constructor(
    private readonly opts: FileSourceOptions,
    private readonly ctx: ComponentContext,
    private readonly io: FileSourceIo,
  ) {
    if (opts.path !== "-") {
      this.path = resolve(ctx.baseDir, opts.path);
      this.store = new CheckpointStore(
        ctx.dataDir,
        ctx.name,
        this.path,
        opts.checkpoint_interval,
        ctx.clock,
        ctx.logger,
        ctx.emit,
        ctx.name,
      );
    }
  }

  async run(handle: SourceHandle, signal: AbortSignal): Promise<void> {
    if (this.path === undefined || this.store === undefined) {
      this.stream = true;
      this.ctx.logger.info({ source: this.ctx.name }, "reading NDJSON from stdin until it ends; stdin has no checkpoint");
      await readNdjsonStream(this.io.stdin(), handle, signal, {
        location: "stdin",
        maxLineBytes: this.opts.max_line_bytes,
      });
      return;
    }
    const opened = await this.openWhenPresent(this.path, signal);
    if (opened === undefined) return; // stopped before the file appeared
    if (opened === "fifo") {
      this.stream = true;
      this.ctx.logger.info(
        { source: this.ctx.name, path: this.path },
        this.opts.follow ? "reading NDJSON from a named pipe, writer after writer; a pipe has no checkpoint" : "reading NDJSON from a named pipe until its writer closes it; a pipe has no checkpoint",
      );
      await readNdjsonStream(fifoBytes(this.path, this.opts.follow, signal), handle, signal, {
        location: this.path,
        maxLineBytes: this.opts.max_line_bytes,
      });
      return;
    }
    await this.runFile(this.path, this.store, opened, handle, signal);
  }

  /**
   * Reads the file at `path` (open as `fh`) from the checkpoint on. With `follow`, at each poll it
   * looks for a truncation (the file is shorter than what was read, or no longer starts with the
   * generation's first line: copytruncate, or a rewrite that grew past the position) and for a
   * rotation (another file at the path): a truncated file is read again from its start as a new
   * generation; a rotated one is read to its end through the descriptor still open, and once it
   * stayed quiet for a poll (the writer may not have reopened the path yet), the new file is read
   * from its start as the next generation.
   */
  private async runFile(path: string, store: CheckpointStore, fh: FileHandle, handle: SourceHandle, signal: AbortSignal): Promise<void> {
    const log = { source: this.ctx.name, path };
    let reading = fh;
    // The path's file, to read once `reading` (rotated away) is finished.
    let next: FileHandle | undefined;
    try {
      const start = await this.startPosition(path, store, fh);
      let gen = start.generation;
      if (start.fresh === true) await store.saveStart({ offset: 0, line: 0, generation: gen, size: 0 });
      if (start.rotated !== undefined) {
        reading = start.rotated;
        next = fh;
      }
      // Where `reading` had got to when the rotation was seen; undefined: switch without waiting.
      let quietAt: number | undefined;
      const reader: NdjsonReader = new NdjsonReader(
        handle,
        { location: path, maxLineBytes: this.opts.max_line_bytes, signal },
        // `gen` is read when the chunk is enqueued: chunks of a new generation carry it.
        (records, offset, line) => handle.enqueue(records, { offset, line, generation: gen, size: reader.readPos } satisfies FileCheckpoint),
        start.offset,
        start.line,
      );
      reader.positionPrefix = prefixOf(gen);
      const settle = async (force: boolean): Promise<void> => {
        if (gen.settled) return;
        await gen.refresh(reading, force);
        reader.positionPrefix = prefixOf(gen);
      };
      const newGeneration = async (): Promise<void> => {
        gen = await FileGeneration.open(reading, gen);
        reader.reset(0, 0);
        reader.positionPrefix = prefixOf(gen);
      };
      // Two buffers: the next read runs on the thread pool while this one is parsed, so the
      // event loop never sits idle waiting for the disk.
      const bufs = [Buffer.allocUnsafe(READ_BYTES), Buffer.allocUnsafe(READ_BYTES)] as const;
      const read = (from: FileHandle, i: 0 | 1, position: number): Promise<number> =>
        from.read(bufs[i], 0, READ_BYTES, position).then(
          (r) => r.bytesRead,
          (err: unknown) => {
            throw readError(path, "cannot read", err);
          },
        );
      const readToEnd = async (from: FileHandle): Promise<boolean> => {
        let i: 0 | 1 = 0;
        let pending = read(from, i, reader.readPos);
        for (;;) {
          const bytesRead = await pending;
          if (bytesRead === 0) return true;
          if (signal.aborted) return false;
          const data = bufs[i].subarray(0, bytesRead);
          i = i === 0 ? 1 : 0;
          pending = read(from, i, reader.readPos + bytesRead);
          await settle(false);
          if (!(await reader.feed(data))) {
            // Let the read-ahead settle before the file is closed under it.
            await pending.catch(() => 0);
            return false;
          }
        }
      };
      // End of a generation's input: a last line without a newline counts.
      const finish = async (): Promise<boolean> => {
        await settle(true);
        return reader.end();
      };

      for (;;) {
        if (!(await readToEnd(reading))) return;
        if (next !== undefined) {
          if (this.opts.follow && quietAt !== undefined && quietAt !== reader.readPos) {
            // The rotated file still grew since the last poll: its writer is still at it.
            quietAt = reader.readPos;
          } else {
            if (!(await finish())) return;
            await reading.close();
            reading = next;
            next = undefined;
            await newGeneration();
            this.ctx.logger.info(log, "file was rotated; the rotated file is read to its end, the new file from its start");
            continue;
          }
        } else {
          if (!this.opts.follow) {
            await finish();
            return;
          }
          // Hand over what we have before waiting: a slow trickle must not sit in a half chunk.
          if (!(await reader.flush())) return;
          next = await this.openIfRotated(path, gen.identity);
          quietAt = reader.readPos;
        }
        try {
          await sleep(this.ctx.clock, this.opts.poll_interval, signal);
        } catch {
          return; // aborted: the pipeline is stopping
        }
        // Checked before reading on: a file truncated and regrown past the position since the
        // last poll would otherwise be read from the middle of its new content.
        if (next === undefined) {
          const size = (await reading.stat()).size;
          if (size < reader.readPos || !(await startsWith(reading, gen.fingerprint))) {
            this.ctx.logger.warn({ ...log, size, offset: reader.readPos }, "file was truncated; reading it again from the start as a new generation");
            await newGeneration();
          }
        }
      }
    } finally {
      await reading.close();
      await next?.close();
    }
  }

  /** The file now at `path` when it is not `identity` (the path was rotated); undefined while it is, or while nothing is there. */
  private async openIfRotated(path: string, identity: FileIdentity): Promise<FileHandle | undefined> {
    const current = await stat(path, { bigint: true }).catch(() => undefined);
    if (current === undefined || (String(current.dev) === identity.dev && String(current.ino) === identity.ino)) return undefined;
    return open(path, "r").catch((err: unknown) => {
      // Gone again between the stat and the open: look again at the next poll.
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw readError(path, "cannot open", err);
    });
  }

  /**
   * Opens the file. With `follow`, a file that does not exist yet is waited for, polled every
   * `poll_interval` as `tail -F` does (a service that creates its log on its first event);
   * resolves undefined when the pipeline stops first. Without `follow` it must exist. A named
   * pipe is not opened here (a plain open would wait for a writer where nothing can stop it):
   * `"fifo"` says to read it as a stream.
   */
  private async openWhenPresent(path: string, signal: AbortSignal): Promise<FileHandle | "fifo" | undefined> {
    for (let waited = false; ; waited = true) {
      try {
        if ((await stat(path)).isFIFO()) return "fifo";
        return await open(path, "r");
      } catch (err) {
        if (!this.opts.follow || (err as NodeJS.ErrnoException).code !== "ENOENT") throw readError(path, "cannot open", err);
      }
      if (!waited) this.ctx.logger.info({ source: this.ctx.name, path }, "file does not exist yet; waiting for it (follow)");
      try {
        await sleep(this.ctx.clock, this.opts.poll_interval, signal);
      } catch {
        return undefined;
      }
    }
  }

  /**
   * Where to start: in the saved checkpoint's generation when the file at the path is still it
   * (same device and inode, still starting with the same first line, not shorter than when the
   * checkpoint was acked), or in the file it was rotated away to within the same directory;
   * otherwise at the start of the path's file, as the next generation.
   */
  private async startPosition(path: string, store: CheckpointStore, fh: FileHandle): Promise<Start> {
    const saved = await store.load();
    const log = { source: this.ctx.name, path };
    const fresh = async (previous: SavedCheckpoint | undefined): Promise<Start> => ({
      generation: await FileGeneration.open(fh, previous),
      offset: 0,
      line: 0,
      fresh: true,
    });
    if (saved === undefined) {
      this.ctx.logger.info(log, "no checkpoint; reading from the start");
      return fresh(undefined);
    }
    if (saved.path !== path) {
      this.ctx.logger.info({ ...log, checkpoint_path: saved.path }, "checkpoint is for another path; reading from the start");
      return fresh(undefined);
    }
    const identity = await identityOf(fh);
    if (saved.ino !== identity.ino || (saved.dev !== undefined && saved.dev !== identity.dev)) {
      const rotated = await findRotated(dirname(path), saved);
      if (rotated !== undefined) {
        this.ctx.logger.info({ ...log, rotated_to: rotated.path, offset: saved.offset }, "file was rotated since the checkpoint; reading the rest of the rotated file first");
        const generation = FileGeneration.resumed(rotated.identity, rotated.fingerprint, saved.epoch, saved.token);
        return { generation, offset: saved.offset, line: saved.line, rotated: rotated.fh };
      }
      this.ctx.logger.warn({ ...log, offset: saved.offset }, "file was replaced since the checkpoint (inode changed); reading it from the start as a new generation");
      return fresh(saved);
    }
    const size = (await fh.stat()).size;
    if (size < saved.offset || size < saved.sizeAtAck) {
      this.ctx.logger.warn({ ...log, size, offset: saved.offset, size_at_ack: saved.sizeAtAck }, "file is shorter than at the checkpoint (truncated); reading it from the start as a new generation");
      return fresh(saved);
    }
    if (saved.fingerprint !== undefined && !(await startsWith(fh, saved.fingerprint))) {
      this.ctx.logger.warn({ ...log, offset: saved.offset }, "file no longer starts as it did at the checkpoint (rewritten); reading it from the start as a new generation");
      return fresh(saved);
    }
    this.ctx.logger.info({ ...log, offset: saved.offset, line: saved.line }, "resuming from checkpoint");
    // A checkpoint of before generations has no fingerprint: the file's own becomes the generation's.
    const generation = FileGeneration.resumed(identity, saved.fingerprint ?? (await fingerprintOf(fh)), saved.epoch, saved.token);
    return { generation, offset: saved.offset, line: saved.line };
  }

  async ack(checkpoint: unknown): Promise<void> {
    // A stream (stdin, a named pipe) cannot be re-read, so there is nothing to save.
    if (this.store === undefined || this.stream) return;
    await this.store.ack(checkpoint as FileCheckpoint);
  }

  async close(): Promise<void> {
    await this.store?.close();
  }
}

/**
 * The file the checkpoint's generation became, when it was renamed within `dir` (logrotate's
 * `create`, `mv app.log app.log.1`): same device and inode, still starting with the saved first
 * line, at least as long as the checkpoint. Undefined when it is not there (deleted, compressed,
 * moved elsewhere): its unread rest cannot be read then.
 */
async function findRotated(
  dir: string,
  saved: SavedCheckpoint,
): Promise<{ fh: FileHandle; path: string; identity: FileIdentity; fingerprint: NonNullable<SavedCheckpoint["fingerprint"]> } | undefined> {
  const { dev, ino, fingerprint } = saved;
  if (dev === undefined || ino === undefined || fingerprint === undefined) return undefined;
  const names = await readdir(dir).catch(() => []);
  for (const name of names) {
    const candidate = join(dir, name);
    const s = await stat(candidate, { bigint: true }).catch(() => undefined);
    if (s === undefined || !s.isFile() || String(s.dev) !== dev || String(s.ino) !== ino) continue;
    const fh = await open(candidate, "r").catch(() => undefined);
    if (fh === undefined) return undefined;
    if ((await fh.stat()).size >= saved.offset && (await startsWith(fh, fingerprint))) return { fh, path: candidate, identity: { dev, ino }, fingerprint };
    await fh.close();
    return undefined;
  }
  return undefined;
}

/**
 * Builds a `file` source with its stdin injected; {@link definition} uses `process.stdin`.
 * For tests and embedders that read NDJSON from their own stream.
 */
export function createFileSource(opts: FileSourceOptions, ctx: ComponentContext, io: FileSourceIo): Source {
  return new FileSource(opts, ctx, io);
}

/**
 * The `file` source: NDJSON, one JSON object per line, from `path` (a file or a named pipe) or
 * stdin (`-`).
 *
 * Records of a file get fallback ids `<source name>:<generation>:<byte offset of the line>`, where
 * the generation token is derived from the file's device, inode, first line and how many
 * generations the checkpoint has followed: stable across re-reads of one generation, never reused
 * by the next (after a rotation, a truncation or a rewrite). Records of a stream (stdin, a pipe)
 * get `<source name>:<byte offset>`. A line that is not a JSON object, is not valid UTF-8, or is
 * longer than `max_line_bytes`, is dead-lettered as `ERR_RECORD_MALFORMED` with location
 * `<absolute path>:<line number>` and the run goes on. Empty and whitespace-only lines are
 * skipped; a trailing `\r` and a leading byte order mark are stripped.
 *
 * Gotchas: the checkpoint (`<data_dir>/checkpoints/<name>.json`) is keyed by the resolved path and
 * the generation; a replaced, shrunk or rewritten file is read from the start as a new generation
 * (logged as a warning). Without `follow`, a last line without `\n` is read as a line; if the
 * file later grows, the next run starts after it. stdin and named pipes have no checkpoint.
 */
export const definition = defineComponent({
  type: "file",
  summary: "Reads NDJSON from a file (optionally tailing it across rotations), a named pipe or stdin, resuming from a checkpointed offset",
  options,
  create: (opts, ctx): Source => createFileSource(opts, ctx, { stdin: () => process.stdin }),
});
