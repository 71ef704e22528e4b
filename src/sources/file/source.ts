/**
 * The `file` source: NDJSON from a file (optionally tailed, across rotations), a named pipe or
 * stdin, a file resumable from a checkpointed byte offset within a known generation of the file.
 * The parts: `ndjson-reader.ts` (bytes to records), `identity.ts` (which file, which generation),
 * `checkpoint-store.ts` (the saved position), `fifo.ts` (named pipes).
 */
import { open, readdir, stat, type FileHandle } from "node:fs/promises";
import { basename, dirname, join, resolve } from "node:path";
import { z } from "zod";
import { sleep } from "../../core/clock.js";
import { SluiceError } from "../../core/errors.js";
import { defineComponent, type ComponentContext, type Source, type SourceHandle } from "../../components/contracts.js";
import { byteSize, duration } from "../../components/options.js";
import { CheckpointStore, type FileCheckpoint, type SavedCheckpoint } from "./checkpoint-store.js";
import { fifoBytes } from "./fifo.js";
import { FileGeneration, sameIdentity, startsWith, type FileIdentity, type Fingerprint, type PreviousGeneration } from "./identity.js";
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

/** A generation of the file to read, where its file is open, and where to begin in it. */
interface Part {
  readonly generation: FileGeneration;
  readonly fh: FileHandle;
  readonly offset: number;
  readonly line: number;
}

/**
 * Where a file source starts: the generations to read in order, the last one the path's own file.
 * Those before it were rotated away (renamed within the path's directory) since the checkpoint:
 * the checkpoint's own from its offset, then those of its trail from their start.
 */
interface Start {
  readonly parts: readonly Part[];
  /** The checkpoint in effect before anything is read: the saved one, or the start of a generation with nothing before it. */
  readonly base: FileCheckpoint;
}

/** The position prefix of a generation's lines (see {@link NdjsonReader.positionPrefix}). */
function prefixOf(generation: FileGeneration): string {
  return generation.token === "" ? "" : `${generation.token}:`;
}

class FileSource implements Source {
  /** One contiguous checkpoint: the byte offset every record before which is done. */
  readonly acks = "ordered";
  /** A file can simply stop being read while the buffer is full. */
  readonly whenFull = "wait";
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
    // What is left to read, in order; the first is being read. Files rotated away come first.
    let parts: Part[];
    try {
      parts = [...(await this.startPosition(path, store, fh)).parts];
    } catch (err) {
      await fh.close();
      throw err;
    }
    try {
      const start = parts[0]!;
      let gen = start.generation;
      let reading = start.fh;
      // Where `reading` had got to when a rotation was seen; undefined: switch without waiting.
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
      /** Goes on to the next part, or to a new generation of `reading` (truncated). */
      const switchTo = async (part: Part): Promise<void> => {
        gen = part.generation;
        reading = part.fh;
        reader.reset(part.offset, part.line);
        reader.positionPrefix = prefixOf(gen);
        await store.started(gen);
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
        if (parts.length > 1) {
          if (this.opts.follow && quietAt !== undefined && quietAt !== reader.readPos) {
            // The rotated file still grew since the last poll: its writer is still at it.
            quietAt = reader.readPos;
          } else {
            if (!(await finish())) return;
            await reading.close();
            parts = parts.slice(1);
            await switchTo(parts[0]!);
            quietAt = undefined;
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
          const rotatedTo = await this.openIfRotated(path, gen.identity);
          if (rotatedTo !== undefined) {
            parts = [...parts, { generation: await FileGeneration.open(rotatedTo, gen), fh: rotatedTo, offset: 0, line: 0 }];
            quietAt = reader.readPos;
          }
        }
        try {
          await sleep(this.ctx.clock, this.opts.poll_interval, signal);
        } catch {
          return; // aborted: the pipeline is stopping
        }
        // Checked before reading on: a file truncated and regrown past the position since the
        // last poll would otherwise be read from the middle of its new content.
        if (parts.length === 1) {
          const size = (await reading.stat()).size;
          if (size < reader.readPos || !(await startsWith(reading, gen.fingerprint))) {
            this.ctx.logger.warn({ ...log, size, offset: reader.readPos }, "file was truncated; reading it again from the start as a new generation");
            const next: Part = { generation: await FileGeneration.open(reading, gen), fh: reading, offset: 0, line: 0 };
            parts = [next];
            await switchTo(next);
          }
        }
      }
    } finally {
      for (const part of parts) await part.fh.close();
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
   * Where to start, and saves it (see {@link CheckpointStore.begin}): in the saved checkpoint's
   * generation when the file at the path is still it (same device and inode, still starting with
   * the same first line, not shorter than when the checkpoint was acked); else first in the files
   * it and the generations after it were rotated away to within the same directory, then the
   * path's file from its start, as the next generation.
   */
  private async startPosition(path: string, store: CheckpointStore, fh: FileHandle): Promise<Start> {
    const start = await this.findStart(path, store, fh, await FileGeneration.open(fh, undefined));
    const [first, ...rest] = start.parts;
    await store.begin(start.base, first === undefined ? [] : [first, ...rest].map((p) => p.generation).filter((g) => g !== start.base.generation));
    return start;
  }

  /** See {@link startPosition}; `current` is the path's file as a first generation. */
  private async findStart(path: string, store: CheckpointStore, fh: FileHandle, current: FileGeneration): Promise<Start> {
    const saved = await store.load();
    const log = { source: this.ctx.name, path };
    const fresh = async (previous: PreviousGeneration | undefined): Promise<Start> => {
      const generation = previous === undefined ? current : await FileGeneration.open(fh, previous);
      return { parts: [{ generation, fh, offset: 0, line: 0 }], base: { offset: 0, line: 0, generation, size: 0 } };
    };
    if (saved === undefined) {
      this.ctx.logger.info(log, "no checkpoint; reading from the start");
      return fresh(undefined);
    }
    if (saved.path !== path) {
      this.ctx.logger.info({ ...log, checkpoint_path: saved.path }, "checkpoint is for another path; reading from the start");
      return fresh(undefined);
    }
    const { identity } = current;
    const savedIdentity = saved.dev === undefined || saved.ino === undefined ? undefined : { dev: saved.dev, ino: saved.ino };
    const previous: PreviousGeneration = { identity: savedIdentity, fingerprint: saved.fingerprint, epoch: saved.epoch };
    if (saved.ino !== identity.ino || (saved.dev !== undefined && saved.dev !== identity.dev)) {
      const rotated = await this.startAfterRotations(path, fh, saved, current);
      if (rotated !== undefined) return rotated;
      this.ctx.logger.warn({ ...log, offset: saved.offset }, "file was replaced since the checkpoint (inode changed); reading it from the start as a new generation");
      return fresh(previous);
    }
    const size = (await fh.stat()).size;
    if (size < saved.offset || size < saved.sizeAtAck) {
      this.ctx.logger.warn({ ...log, size, offset: saved.offset, size_at_ack: saved.sizeAtAck }, "file is shorter than at the checkpoint (truncated); reading it from the start as a new generation");
      return fresh(previous);
    }
    if (saved.fingerprint !== undefined && !(await startsWith(fh, saved.fingerprint))) {
      this.ctx.logger.warn({ ...log, offset: saved.offset }, "file no longer starts as it did at the checkpoint (rewritten); reading it from the start as a new generation");
      return fresh(previous);
    }
    this.ctx.logger.info({ ...log, offset: saved.offset, line: saved.line }, "resuming from checkpoint");
    // A checkpoint of before generations has no fingerprint: the file's own becomes the generation's.
    const generation = FileGeneration.resumed(identity, saved.fingerprint ?? current.fingerprint, saved.epoch, saved.token, saved.previous);
    return { parts: [{ generation, fh, offset: saved.offset, line: saved.line }], base: { offset: saved.offset, line: saved.line, generation, size: saved.sizeAtAck } };
  }

  /**
   * The parts to read when the path's file is no longer the checkpoint's: the files the
   * checkpoint's generation and those of its trail were rotated away to within `dir` (found by
   * inode and first line, each skipped when gone: deleted, compressed, moved elsewhere), then the
   * path's file, which is the trail's next generation or a new one. Undefined when none was found.
   */
  private async startAfterRotations(path: string, fh: FileHandle, saved: SavedCheckpoint, current: FileGeneration): Promise<Start | undefined> {
    const parts: Part[] = [];
    let base: FileCheckpoint | undefined;
    let last: PreviousGeneration = { identity: undefined, fingerprint: saved.fingerprint, epoch: saved.epoch };
    /** Reads `generation` from `offset` in the file it went to; one rewritten since from its start, as the generation after it. */
    const follow = async (generation: FileGeneration, offset: number, line: number): Promise<void> => {
      last = generation;
      const found = await findRotated(path, generation.identity, generation.fingerprint, offset);
      if (found === undefined) return;
      if (found.same) parts.push({ generation, fh: found.fh, offset, line });
      else {
        const rewritten = await FileGeneration.open(found.fh, generation);
        last = rewritten;
        parts.push({ generation: rewritten, fh: found.fh, offset: 0, line: 0 });
      }
    };
    if (saved.dev !== undefined && saved.ino !== undefined && saved.fingerprint !== undefined) {
      const generation = FileGeneration.resumed({ dev: saved.dev, ino: saved.ino }, saved.fingerprint, saved.epoch, saved.token, saved.previous);
      await follow(generation, saved.offset, saved.line);
      if (parts[0]?.generation === generation) base = { offset: saved.offset, line: saved.line, generation, size: saved.sizeAtAck };
    }
    let atPath: FileGeneration | undefined;
    for (const t of saved.trail) {
      const generation = FileGeneration.resumed(t.identity, t.fingerprint, t.epoch, t.token, t.previous);
      if (sameIdentity(t.identity, current.identity)) {
        // Still at the path: the trail's generation, or (rewritten since) the one after it.
        atPath = (await startsWith(fh, t.fingerprint)) ? generation : await FileGeneration.open(fh, generation);
        break;
      }
      await follow(generation, 0, 0);
    }
    if (parts.length === 0 && atPath === undefined) return undefined;
    this.ctx.logger.info(
      { source: this.ctx.name, path, rotated_files: parts.length, offset: saved.offset },
      "file was rotated since the checkpoint; reading the rest of the rotated file first",
    );
    const generation = atPath ?? (await FileGeneration.open(fh, last));
    parts.push({ generation, fh, offset: 0, line: 0 });
    return { parts, base: base ?? { offset: 0, line: 0, generation: parts[0]!.generation, size: 0 } };
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
 * The file a generation went to when the path was rotated by renaming it within its directory
 * (logrotate's `create`, `mv app.log app.log.1`): a file whose name starts with the path's (so
 * that an inode reused by another file is never taken for it) with the same device and inode.
 * `same`: it still starts with the generation's first line and has at least `minSize` bytes;
 * otherwise it was truncated or rewritten after the generation was seen. Undefined when it is not
 * there (deleted, compressed, moved elsewhere).
 */
async function findRotated(path: string, identity: FileIdentity, fingerprint: Fingerprint, minSize: number): Promise<{ fh: FileHandle; same: boolean } | undefined> {
  const dir = dirname(path);
  const prefix = basename(path);
  const names = await readdir(dir).catch(() => []);
  for (const name of names) {
    if (!name.startsWith(prefix)) continue;
    const s = await stat(join(dir, name), { bigint: true }).catch(() => undefined);
    if (s === undefined || !s.isFile() || String(s.dev) !== identity.dev || String(s.ino) !== identity.ino) continue;
    const fh = await open(join(dir, name), "r").catch(() => undefined);
    if (fh === undefined) return undefined;
    return { fh, same: (await fh.stat()).size >= minSize && (await startsWith(fh, fingerprint)) };
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
