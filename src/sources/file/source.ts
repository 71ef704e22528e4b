/**
 * The `file` source: NDJSON from a file (optionally tailed, across rotations), a named pipe or
 * stdin, a file resumable from a checkpointed byte offset within a known generation of the file.
 * The parts: `ndjson-reader.ts` (bytes to records), `identity.ts` (which file, which generation),
 * `checkpoint-store.ts` (the saved position), `fifo.ts` (named pipes).
 */
import { open, stat, type FileHandle } from "node:fs/promises";
import { dirname, resolve } from "node:path";
import { z } from "zod";
import { sleep } from "../../core/clock.js";
import { SluiceError } from "../../core/errors.js";
import { defineComponent, type ComponentContext, type Source, type SourceHandle } from "../../components/contracts.js";
import { byteSize, duration } from "../../components/options.js";
import { CheckpointStore, type FileCheckpoint, type SavedCheckpoint, type SavedGeneration } from "./checkpoint-store.js";
import { fifoBytes } from "./fifo.js";
import { endsAt, FileGeneration, identityOf, sameIdentity, startsWith, tailAt, type FileIdentity, type PreviousGeneration, type Tail } from "./identity.js";
import { NdjsonReader, READ_BYTES, readNdjsonStream } from "./ndjson-reader.js";
import { findCopy, findRotated, listSiblings, MAX_OPEN_GENERATIONS, openSibling, unknownSiblings, type Sibling } from "./rotated.js";

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
  /** Where the file was when it was opened, for the logs. */
  readonly file: string;
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
  /** The files accounted for (see `SavedCheckpoint.known`): the rotated files already there that are not read, and every part's. */
  readonly known: readonly FileIdentity[];
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
   * from its start as the next generation. A truncation is also told by the bytes just before the
   * position (see `Tail`): a rewrite that keeps the first line and grows past the position between
   * two polls. When the path was rotated, the directory is looked through for rotated files no
   * generation was read from (the path rotated twice between two looks, as when the sink is slow):
   * each is opened at once (its descriptor keeps it readable whatever is renamed or deleted next)
   * and read, oldest first, before the file now at the path.
   */
  private async runFile(path: string, store: CheckpointStore, fh: FileHandle, handle: SourceHandle, signal: AbortSignal): Promise<void> {
    const log = { source: this.ctx.name, path };
    // What is left to read, in order; the first is being read. Files rotated away come first.
    let parts: Part[];
    let startAt: Start;
    try {
      startAt = await this.startPosition(path, store, fh);
      parts = [...startAt.parts];
    } catch (err) {
      await fh.close();
      throw err;
    }
    try {
      // Every file a generation was or will be read from, and the rotated files accounted for.
      const seen: FileIdentity[] = [...startAt.known];
      const start = parts[0]!;
      let gen = start.generation;
      let reading = start.fh;
      // The tail of the last chunk handed over, and where: a file that no longer holds it was rewritten.
      let lastTail: { generation: FileGeneration; offset: number; tail: Tail | undefined } | undefined;
      // Where `reading` had got to when a rotation was seen; undefined: switch without waiting.
      let quietAt: number | undefined;
      const reader: NdjsonReader = new NdjsonReader(
        handle,
        { location: path, maxLineBytes: this.opts.max_line_bytes, signal },
        // `gen` is read when the chunk is enqueued: chunks of a new generation carry it. The tail is
        // read back from the file (one small read per chunk): the reader keeps no bytes behind it.
        async (records, offset, line) => {
          const tail = await tailAt(reading, offset).catch((err: unknown) => {
            throw readError(path, "cannot read", err);
          });
          lastTail = { generation: gen, offset, tail };
          return handle.enqueue(records, { offset, line, generation: gen, size: reader.readPos, tail } satisfies FileCheckpoint);
        },
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
            const rotatedToId = await identityOf(rotatedTo);
            const { files } = await listSiblings(path);
            store.pruneKnown([...files.map((f) => f.identity), rotatedToId, ...parts.map((p) => p.generation.identity)]);
            const missed = unknownSiblings(files, [...seen, rotatedToId]);
            const taken = missed.slice(0, Math.max(MAX_OPEN_GENERATIONS - parts.length - 1, 0));
            const last = await this.openRotated(taken, gen, parts, log, (sibling) => seen.push(sibling.identity));
            if (taken.length > 0) this.ctx.logger.info({ ...log, files: taken.map((m) => m.file) }, "the path was rotated more than once since the last look; reading the rotated files in between first, oldest first");
            this.warnTooMany(missed.slice(taken.length), seen, store);
            parts.push({ generation: await FileGeneration.open(rotatedTo, last), fh: rotatedTo, offset: 0, line: 0, file: path });
            seen.push(rotatedToId);
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
          const rewritten = async (): Promise<boolean> =>
            lastTail !== undefined && lastTail.generation === gen && lastTail.tail !== undefined && !(await endsAt(reading, lastTail.offset, lastTail.tail));
          if (size < reader.readPos || !(await startsWith(reading, gen.fingerprint)) || (await rewritten())) {
            this.ctx.logger.warn({ ...log, size, offset: reader.readPos }, "file was truncated; reading it again from the start as a new generation");
            await this.forgetCopies(path, gen, seen, store);
            const next: Part = { generation: await FileGeneration.open(reading, gen), fh: reading, offset: 0, line: 0, file: path };
            parts = [next];
            await switchTo(next);
          }
        }
      }
    } finally {
      for (const part of parts) await part.fh.close();
    }
  }

  /**
   * Rotated files more than {@link MAX_OPEN_GENERATIONS} allows at once: warned about and counted
   * as accounted for, so that they are not read later, out of order, after newer generations.
   */
  /**
   * Opens `siblings` (rotated files, oldest first) as the generations after `last`, each appended to
   * `parts` (and told to `opened`); one that went away meanwhile is skipped with a warning.
   * Resolves with the last generation opened, or `last` when none was.
   */
  private async openRotated(siblings: readonly Sibling[], last: PreviousGeneration, parts: Part[], log: object, opened?: (sibling: Sibling) => void): Promise<PreviousGeneration> {
    for (const sibling of siblings) {
      const sfh = await openSibling(sibling);
      if (sfh === undefined) {
        this.ctx.logger.warn({ ...log, file: sibling.file }, "a rotated file went away before it could be read");
        continue;
      }
      const generation = await FileGeneration.open(sfh, last);
      last = generation;
      parts.push({ generation, fh: sfh, offset: 0, line: 0, file: sibling.file });
      opened?.(sibling);
    }
    return last;
  }

  private warnTooMany(files: readonly Sibling[], seen: FileIdentity[], store: CheckpointStore): void {
    if (files.length === 0) return;
    this.ctx.logger.warn(
      { source: this.ctx.name, path: this.path, files: files.map((f) => f.file), max_open_generations: MAX_OPEN_GENERATIONS },
      "more rotated files to read than generations held open at once; these are not read",
    );
    seen.push(...files.map((f) => f.identity));
    store.addKnown(files.map((f) => f.identity));
  }

  /**
   * After a truncation in place: the rotated files no generation was read from that start as the
   * truncated generation did are the copies a copytruncate made of it, whose lines were read from
   * the file itself. Counted as accounted for, so that a later rotation does not read them again.
   */
  private async forgetCopies(path: string, gen: FileGeneration, seen: FileIdentity[], store: CheckpointStore): Promise<void> {
    const copies: Sibling[] = [];
    for (const sibling of unknownSiblings((await listSiblings(path)).files, seen)) {
      const fh = await openSibling(sibling);
      if (fh === undefined) continue;
      if (await startsWith(fh, gen.fingerprint)) copies.push(sibling);
      await fh.close();
    }
    if (copies.length === 0) return;
    this.ctx.logger.info({ source: this.ctx.name, path, files: copies.map((c) => c.file) }, "copies of the truncated file (copytruncate) are not read: their lines were read from the file");
    seen.push(...copies.map((c) => c.identity));
    store.addKnown(copies.map((c) => c.identity));
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
   * the same first line, still holding the bytes read last before the offset, not shorter than
   * when the checkpoint was acked); else first in the files it and the generations after it were
   * rotated away to within the same directory, then in the rotated files no generation was read
   * from (rotated away while sluice was down), then the path's file from its start.
   */
  private async startPosition(path: string, store: CheckpointStore, fh: FileHandle): Promise<Start> {
    const start = await this.findStart(path, store, fh, await FileGeneration.open(fh, undefined));
    const [first, ...rest] = start.parts;
    await store.begin(start.base, first === undefined ? [] : [first, ...rest].map((p) => p.generation).filter((g) => g !== start.base.generation), start.known);
    return start;
  }

  /** See {@link startPosition}; `current` is the path's file as a first generation. */
  private async findStart(path: string, store: CheckpointStore, fh: FileHandle, current: FileGeneration): Promise<Start> {
    const saved = await store.load();
    const log = { source: this.ctx.name, path };
    const { files: siblings, compressed } = await listSiblings(path);
    const present = siblings.map((s) => s.identity);
    // With no checkpoint, rotated files already there are history: accounted for, never read.
    const fresh = async (previous: PreviousGeneration | undefined, known: readonly FileIdentity[] = present): Promise<Start> => {
      const generation = previous === undefined ? current : await FileGeneration.open(fh, previous);
      return { parts: [{ generation, fh, offset: 0, line: 0, file: path }], base: { offset: 0, line: 0, generation, size: 0, tail: undefined }, known: [...known, current.identity] };
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
    // The trail naming the path's own file: the source went on to a later generation of it in place
    // (truncated or rewritten) before any of that generation was acked; resuming the checkpoint's
    // would read the new content under the old generation's ids.
    const supersededInPlace = saved.trail.some((t) => sameIdentity(t.identity, identity));
    if (supersededInPlace || saved.ino !== identity.ino || (saved.dev !== undefined && saved.dev !== identity.dev)) {
      const rotated = await this.startAfterRotations(path, fh, saved, current, siblings, compressed);
      if (rotated !== undefined) return rotated;
      this.ctx.logger.warn({ ...log, offset: saved.offset }, "file was replaced since the checkpoint (inode changed); reading it from the start as a new generation");
      return fresh(previous);
    }
    const size = (await fh.stat()).size;
    const notResumable = async (): Promise<string | undefined> => {
      if (size < saved.offset || size < saved.sizeAtAck) return "file is shorter than at the checkpoint (truncated); reading it from the start as a new generation";
      if (saved.fingerprint !== undefined && !(await startsWith(fh, saved.fingerprint))) {
        return "file no longer starts as it did at the checkpoint (rewritten); reading it from the start as a new generation";
      }
      if (saved.tail !== undefined && !(await endsAt(fh, saved.offset, saved.tail))) {
        return "file no longer holds the line read last before the checkpoint (rewritten); reading it from the start as a new generation";
      }
      return undefined;
    };
    const why = await notResumable();
    if (why !== undefined) {
      this.ctx.logger.warn({ ...log, size, offset: saved.offset, size_at_ack: saved.sizeAtAck }, why);
      const copy =
        saved.known === undefined || saved.fingerprint === undefined ? undefined : await findCopy(unknownSiblings(siblings, [...saved.known, identity]), saved.fingerprint, saved.offset, saved.tail);
      if (copy !== undefined) {
        // A copytruncate while sluice was down: the copy holds the rest of the checkpoint's generation.
        this.ctx.logger.info({ ...log, files: [copy.sibling.file, path], offset: saved.offset }, "reading the rest of the file from its copy (copytruncate), then the file at the path from its start");
        const generation = FileGeneration.resumed(identity, saved.fingerprint!, saved.epoch, saved.token, saved.previous);
        const next = await FileGeneration.open(fh, generation);
        return {
          parts: [
            { generation, fh: copy.fh, offset: saved.offset, line: saved.line, file: copy.sibling.file },
            { generation: next, fh, offset: 0, line: 0, file: path },
          ],
          base: { offset: saved.offset, line: saved.line, generation, size: saved.sizeAtAck, tail: saved.tail },
          known: [...this.accountFor(saved, siblings.filter((s) => s !== copy.sibling), "copies of the file before it was truncated are not read (copytruncate)"), copy.sibling.identity, identity],
        };
      }
      // Rotated files the checkpoint does not know of are copies of the old content (copytruncate): not read.
      return fresh(previous, this.accountFor(saved, siblings, "copies of the file before it was truncated are not read (copytruncate)"));
    }
    this.ctx.logger.info({ ...log, offset: saved.offset, line: saved.line }, "resuming from checkpoint");
    // A checkpoint of before generations has no fingerprint: the file's own becomes the generation's.
    const generation = FileGeneration.resumed(identity, saved.fingerprint ?? current.fingerprint, saved.epoch, saved.token, saved.previous);
    return {
      parts: [{ generation, fh, offset: saved.offset, line: saved.line, file: path }],
      base: { offset: saved.offset, line: saved.line, generation, size: saved.sizeAtAck, tail: saved.tail },
      // The path's file was never rotated since: any rotated file the checkpoint does not know of is a copy.
      known: [...this.accountFor(saved, siblings, "rotated files that are copies of the file at the path are not read"), identity],
    };
  }

  /**
   * The rotated files now there, all counted as accounted for: those the checkpoint knew of, and
   * the others, which are logged with `why` they are not read (a checkpoint of before version 3
   * knew of none, so it cannot place any: a warning then).
   */
  private accountFor(saved: SavedCheckpoint, siblings: readonly Sibling[], why: string): FileIdentity[] {
    const unknown = unknownSiblings(siblings, saved.known ?? []);
    if (saved.known === undefined) this.cannotPlace(unknown);
    else if (unknown.length > 0) this.ctx.logger.info({ source: this.ctx.name, path: this.path, files: unknown.map((u) => u.file) }, why);
    return siblings.map((s) => s.identity);
  }

  /** Rotated files a checkpoint of before version 3 cannot tell apart from history: warned about, not read. */
  private cannotPlace(files: readonly Sibling[]): void {
    if (files.length === 0) return;
    this.ctx.logger.warn(
      { source: this.ctx.name, path: this.path, files: files.map((f) => f.file) },
      "the checkpoint (written by an older sluice) does not say which rotated files were read: these are not read",
    );
  }

  /**
   * The parts to read when the path's file is no longer the checkpoint's: the files the
   * checkpoint's generation and those of its trail were rotated away to within the directory
   * (found by inode and first line, each skipped when gone: deleted, compressed, moved elsewhere),
   * then the rotated files the checkpoint does not know of (rotated away while sluice was down),
   * oldest first, then the path's file, which is the trail's next generation or a new one.
   * Undefined when none was found.
   */
  private async startAfterRotations(
    path: string,
    fh: FileHandle,
    saved: SavedCheckpoint,
    current: FileGeneration,
    siblings: readonly Sibling[],
    compressed: readonly string[],
  ): Promise<Start | undefined> {
    const parts: Part[] = [];
    let base: FileCheckpoint | undefined;
    let last: PreviousGeneration = { identity: undefined, fingerprint: saved.fingerprint, epoch: saved.epoch };
    // Files the checkpoint names (its own, its trail's, the path's): never taken for unseen rotations.
    const named: FileIdentity[] = [current.identity];
    /** Reads `generation` from `offset` in the file it went to; one rewritten since from its start, as the generation after it. */
    const follow = async (generation: FileGeneration, offset: number, line: number, tail: Tail | undefined, later: readonly SavedGeneration[]): Promise<void> => {
      last = generation;
      named.push(generation.identity);
      // A later generation of the same file: this one was truncated or rewritten in place, its
      // content is gone, and what the file holds now is read as that later generation.
      if (later.some((t) => sameIdentity(t.identity, generation.identity))) return;
      const found = await findRotated(path, generation.identity, generation.fingerprint, offset, tail);
      if (found?.same !== true) {
        // Truncated (or gone) unseen: a copytruncate's copy still holds the rest, under the generation's ids.
        const copy = saved.known === undefined ? undefined : await findCopy(unknownSiblings(siblings, [...named, ...saved.known]), generation.fingerprint, offset, tail);
        if (copy !== undefined) {
          named.push(copy.sibling.identity);
          parts.push({ generation, fh: copy.fh, offset, line, file: copy.sibling.file });
        }
      }
      if (found === undefined) return;
      const file = siblings.find((s) => sameIdentity(s.identity, generation.identity))?.file ?? path;
      if (found.same) parts.push({ generation, fh: found.fh, offset, line, file });
      else {
        const rewritten = await FileGeneration.open(found.fh, generation);
        last = rewritten;
        parts.push({ generation: rewritten, fh: found.fh, offset: 0, line: 0, file });
      }
    };
    if (saved.dev !== undefined && saved.ino !== undefined && saved.fingerprint !== undefined) {
      const generation = FileGeneration.resumed({ dev: saved.dev, ino: saved.ino }, saved.fingerprint, saved.epoch, saved.token, saved.previous);
      await follow(generation, saved.offset, saved.line, saved.tail, saved.trail);
      if (parts[0]?.generation === generation) base = { offset: saved.offset, line: saved.line, generation, size: saved.sizeAtAck, tail: saved.tail };
    }
    let atPath: FileGeneration | undefined;
    for (const [i, t] of saved.trail.entries()) {
      const generation = FileGeneration.resumed(t.identity, t.fingerprint, t.epoch, t.token, t.previous);
      const later = saved.trail.slice(i + 1);
      if (sameIdentity(t.identity, current.identity)) {
        if (later.some((l) => sameIdentity(l.identity, current.identity))) {
          // Superseded in place by a later generation of the path's file, read as that one.
          last = generation;
          continue;
        }
        // Still at the path: the trail's generation, or (rewritten since) the one after it.
        atPath = (await startsWith(fh, t.fingerprint)) ? generation : await FileGeneration.open(fh, generation);
        break;
      }
      await follow(generation, 0, 0, undefined, later);
    }
    const log = { source: this.ctx.name, path };
    // Rotated away unseen, between the checkpoint's last generation and the path's file: only
    // when the path's file is not itself a generation the checkpoint named.
    const unseen = atPath === undefined ? unknownSiblings(siblings, [...named, ...(saved.known ?? siblings.map((s) => s.identity))]) : [];
    if (saved.known === undefined) this.cannotPlace(unknownSiblings(siblings, named));
    const taken = unseen.slice(0, Math.max(MAX_OPEN_GENERATIONS - parts.length - 1, 0));
    last = await this.openRotated(taken, last, parts, log);
    if (unseen.length > taken.length) {
      this.ctx.logger.warn(
        { ...log, files: unseen.slice(taken.length).map((u) => u.file), max_open_generations: MAX_OPEN_GENERATIONS },
        "more rotated files to read than generations held open at once; these are not read",
      );
    }
    if (parts.length === 0 && atPath === undefined) return undefined;
    const generation = atPath ?? (await FileGeneration.open(fh, last));
    parts.push({ generation, fh, offset: 0, line: 0, file: path });
    this.ctx.logger.info(
      { ...log, files: parts.map((p) => p.file), offset: saved.offset },
      "reading files rotated since the checkpoint, oldest first (the checkpoint's own from its offset), then the file at the path",
    );
    if (compressed.length > 0) this.ctx.logger.info({ ...log, files: compressed }, "compressed rotated files are not read: a compressed rotation must be read before it is compressed");
    return {
      parts,
      base: base ?? { offset: 0, line: 0, generation: parts[0]!.generation, size: 0, tail: undefined },
      known: [...siblings.map((s) => s.identity), current.identity],
    };
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
 * the generation; a replaced, shrunk or rewritten file (told by its first line and the bytes just
 * before the offset) is read from the start as a new generation (logged as a warning). Rotated
 * files next to the path that no generation was read from are read, oldest first, before the
 * path's file; compressed ones never (see `rotated.ts` for the bound on open generations). Without `follow`, a last line without `\n` is read as a line; if the
 * file later grows, the next run starts after it. stdin and named pipes have no checkpoint.
 */
export const definition = defineComponent({
  type: "file",
  summary: "Reads NDJSON from a file (optionally tailing it across rotations), a named pipe or stdin, resuming from a checkpointed offset",
  options,
  create: (opts, ctx): Source => createFileSource(opts, ctx, { stdin: () => process.stdin }),
  async check(opts, baseDir) {
    if (opts.path === "-") return [];
    const finding = await checkFileSourcePath(resolve(baseDir, opts.path), opts.follow);
    return finding === undefined ? [] : [{ ...finding, key: "path" }];
  },
});
