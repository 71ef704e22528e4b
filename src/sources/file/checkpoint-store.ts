/**
 * The `file` source's checkpoint: where reading resumes, and which generation of the file that
 * position belongs to. Kept in `<data_dir>/checkpoints/<source name>.json`, written atomically.
 */
import { mkdir, readFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { z } from "zod";
import { writeFileAtomic } from "../../core/atomic-write.js";
import type { Clock } from "../../core/clock.js";
import { classify, SluiceError } from "../../core/errors.js";
import type { EventSink, Logger } from "../../core/events.js";
import { sameIdentity, type Fingerprint, type FileIdentity, type PreviousGeneration, type Tail } from "./identity.js";

/** A generation as a checkpoint names it (see `FileGeneration`). */
export interface GenerationState {
  readonly identity: FileIdentity;
  readonly fingerprint: Fingerprint;
  readonly epoch: number;
  /** `""` for a generation taken over from a checkpoint of before generations: its ids stay `<source>:<offset>`. */
  readonly token: string;
  /** False while no line of the generation was read: the token may still change (see `FileGeneration`). */
  readonly fixed: boolean;
  /** While not fixed: the previous generation of the same inode, which its epoch depends on. */
  readonly pendingPrevious: PreviousGeneration | undefined;
}

/**
 * The checkpoint a file source hands to `enqueue`: the byte offset just after the chunk's last
 * line, the number of lines before that offset, the generation of the file they are in, and how
 * many bytes of that generation had been read when the chunk was handed over (saved as
 * `size_at_ack`: a file found shorter than that on the next start was truncated since), and the
 * {@link Tail} at the offset (a file that no longer holds it was rewritten since).
 */
export interface FileCheckpoint {
  readonly offset: number;
  readonly line: number;
  readonly generation: GenerationState;
  readonly size: number;
  /** Undefined at offset 0. */
  readonly tail: Tail | undefined;
}

/** A generation as saved: its token undefined when it was not fixed yet. */
export interface SavedGeneration {
  readonly identity: FileIdentity;
  readonly fingerprint: Fingerprint;
  readonly epoch: number;
  readonly token: string | undefined;
  readonly previous: PreviousGeneration | undefined;
}

/** A saved checkpoint as {@link CheckpointStore.load} gives it, whatever version of sluice wrote it. */
export interface SavedCheckpoint {
  readonly path: string;
  readonly offset: number;
  readonly line: number;
  readonly sizeAtAck: number;
  readonly epoch: number;
  /** Undefined when saved before a line of the generation was read: the token was not fixed yet. */
  readonly token: string | undefined;
  /** Undefined for a checkpoint of before generations, which kept the inode only. */
  readonly dev: string | undefined;
  readonly ino: string | undefined;
  readonly fingerprint: Fingerprint | undefined;
  /** While unfixed: the previous generation of the same inode. */
  readonly previous: PreviousGeneration | undefined;
  /** Generations started after the checkpoint's, in order, none of whose lines is acked yet. */
  readonly trail: readonly SavedGeneration[];
  /** Undefined for a checkpoint of before version 3, which kept no tail. */
  readonly tail: Tail | undefined;
  /**
   * The rotated files next to the path that are accounted for: there before the source first ran,
   * or generations it started. Any other rotated file found next to the path was rotated away
   * unseen. Undefined for a checkpoint of before version 3, which kept no such list.
   */
  readonly known: readonly FileIdentity[] | undefined;
}

const fingerprintSchema = z.object({ bytes: z.number().int().nonnegative(), sha256: z.string(), complete: z.boolean() });

const generationSchema = z.object({
  dev: z.string(),
  ino: z.string(),
  fingerprint: fingerprintSchema,
  epoch: z.number().int().nonnegative(),
  /** The token, once fixed. */
  generation: z.string().optional(),
  /** While not fixed: the first line's hash and the epoch of the generation before, on the same inode. */
  previous: z.object({ sha256: z.string(), epoch: z.number().int().nonnegative() }).optional(),
});

const tailSchema = z.object({ bytes: z.number().int().positive(), sha256: z.string() });

/** Written since generations (version 2); version 3 added `tail` and `known`, absent from a version 2 checkpoint. */
const currentSchema = generationSchema.extend({
  version: z.union([z.literal(2), z.literal(3)]),
  path: z.string(),
  offset: z.number().int().nonnegative(),
  line: z.number().int().nonnegative(),
  size_at_ack: z.number().int().nonnegative(),
  trail: z.array(generationSchema).default([]),
  tail: tailSchema.optional(),
  known: z.array(z.object({ dev: z.string(), ino: z.string() })).optional(),
});

function savedGeneration(g: z.output<typeof generationSchema>): SavedGeneration {
  const identity = { dev: g.dev, ino: g.ino };
  return {
    identity,
    fingerprint: g.fingerprint,
    epoch: g.epoch,
    token: g.generation,
    previous: g.previous === undefined ? undefined : { identity, fingerprint: { sha256: g.previous.sha256 }, epoch: g.previous.epoch },
  };
}

function generationFields(g: GenerationState): z.input<typeof generationSchema> {
  const previous = g.fixed ? undefined : g.pendingPrevious;
  return {
    dev: g.identity.dev,
    ino: g.identity.ino,
    fingerprint: g.fingerprint,
    epoch: g.epoch,
    ...(g.fixed ? { generation: g.token } : {}),
    ...(previous?.fingerprint !== undefined ? { previous: { sha256: previous.fingerprint.sha256, epoch: previous.epoch } } : {}),
  };
}

/** Written before generations: no version, the inode only, and ids were `<source>:<offset>`. */
const legacySchema = z.object({
  path: z.string(),
  offset: z.number().int().nonnegative(),
  line: z.number().int().nonnegative().default(0),
  ino: z.string().optional(),
  size_at_ack: z.number().int().nonnegative().optional(),
});

function parseSaved(value: unknown): SavedCheckpoint {
  if (typeof value === "object" && value !== null && "version" in value) {
    const c = currentSchema.parse(value);
    const g = savedGeneration(c);
    return {
      path: c.path,
      offset: c.offset,
      line: c.line,
      sizeAtAck: c.size_at_ack,
      epoch: g.epoch,
      token: g.token,
      dev: c.dev,
      ino: c.ino,
      fingerprint: c.fingerprint,
      previous: g.previous,
      trail: c.trail.map(savedGeneration),
      tail: c.tail,
      known: c.known,
    };
  }
  // Migrated, not refused: the file it names resumes where it was, under the ids it had.
  const c = legacySchema.parse(value);
  return {
    path: c.path,
    offset: c.offset,
    line: c.line,
    sizeAtAck: c.size_at_ack ?? c.offset,
    epoch: 0,
    token: "",
    dev: undefined,
    ino: c.ino,
    fingerprint: undefined,
    previous: undefined,
    trail: [],
    tail: undefined,
    known: undefined,
  };
}

/**
 * Persists acked checkpoints to `<data_dir>/checkpoints/<name>.json`: atomically (temp file,
 * fsync, rename), at most once per interval plus once at close, and only checkpoints that were
 * acked. With it, the trail: the generations the source went on to (rotations) whose lines are
 * not acked yet, saved as soon as each starts, so that a restart finds each of them by its inode,
 * however many rotations happened while nothing could be acked. And the rotated files that are
 * accounted for (see {@link SavedCheckpoint.known}), so that a restart tells a file rotated away
 * unseen from one that was there before.
 */
export class CheckpointStore {
  private acked: FileCheckpoint | undefined;
  private written: FileCheckpoint | undefined;
  private trail: GenerationState[] = [];
  private known: FileIdentity[] = [];
  private lastWriteAt = Number.NEGATIVE_INFINITY;
  private cancelTimer: (() => void) | undefined;
  private writing: Promise<void> = Promise.resolve();
  private readonly file: string;

  constructor(
    dataDir: string,
    name: string,
    private readonly path: string,
    private readonly intervalMs: number,
    private readonly clock: Clock,
    private readonly logger: Logger,
    private readonly emitEvent: EventSink,
    private readonly component: string,
  ) {
    this.file = join(dataDir, "checkpoints", `${name}.json`);
  }

  /** The saved checkpoint, or undefined when there is none or it is unreadable (logged). */
  async load(): Promise<SavedCheckpoint | undefined> {
    let text: string;
    try {
      text = await readFile(this.file, "utf8");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw new SluiceError("ERR_SOURCE_READ", `cannot read checkpoint: ${(err as Error).message}`, {
        cause: err,
        location: this.file,
      });
    }
    try {
      return parseSaved(JSON.parse(text));
    } catch {
      this.logger.warn({ source: this.component, checkpoint: this.file }, "checkpoint file is not valid; reading from the start");
      return undefined;
    }
  }

  /**
   * Saves, before any line is read, where the run starts (`base`: the checkpoint it resumes, or
   * the start of a generation with nothing before it) and the generations it will read after it
   * (`trail`): a file rotated away while sluice is down, before any ack, is still found by its
   * inode on the next start; `known`: the rotated files accounted for. Does not count as a write
   * for the interval.
   */
  async begin(base: FileCheckpoint, trail: readonly GenerationState[], known: readonly FileIdentity[]): Promise<void> {
    this.acked = base;
    this.trail = [...trail];
    this.known = [...known];
    await this.persistNow();
  }

  /** The source went on to a new generation (a rotation): saved at once, in the trail and as known. */
  async started(generation: GenerationState): Promise<void> {
    if (this.trail.includes(generation) || this.acked?.generation === generation) return;
    this.trail.push(generation);
    this.addKnown([generation.identity]);
    await this.persistNow();
  }

  /**
   * Counts rotated files as accounted for without reading them (copies a copytruncate left, whose
   * lines were read from the file itself); saved with the next write. Never for a file still to
   * be read: a crash before it is read would then leave it unread.
   */
  addKnown(files: readonly FileIdentity[]): void {
    for (const f of files) if (!this.known.some((k) => sameIdentity(k, f))) this.known.push(f);
  }

  /** Forgets known files no longer in the directory (`present`: every file there now), so the list stays as long as the directory. */
  pruneKnown(present: readonly FileIdentity[]): void {
    this.known = this.known.filter((k) => present.some((p) => sameIdentity(k, p)));
  }

  /**
   * Saves now, best effort: a failure is logged in persist, and since the checkpoint then counts
   * as not written, the next ack or close writes it again and reports it.
   */
  private async persistNow(): Promise<void> {
    const checkpoint = this.acked;
    if (checkpoint === undefined) return;
    this.writing = this.writing.then(() => this.persist(checkpoint)).catch(() => {});
    await this.writing;
  }

  /** Records an acked checkpoint; writes it now if the interval has passed, else schedules a write. */
  async ack(checkpoint: FileCheckpoint): Promise<void> {
    this.acked = checkpoint;
    // Generations up to the acked one are no longer ahead of the checkpoint.
    const reached = this.trail.indexOf(checkpoint.generation);
    if (reached >= 0) this.trail = this.trail.slice(reached + 1);
    const wait = this.lastWriteAt + this.intervalMs - this.clock.now();
    if (wait <= 0) {
      await this.write();
    } else if (this.cancelTimer === undefined) {
      this.cancelTimer = this.clock.setTimer(wait, () => {
        this.cancelTimer = undefined;
        // A failure is logged in persist; close() writes the checkpoint again and reports it.
        this.write().catch(() => {});
      });
    }
  }

  /** Writes the last acked checkpoint if it was not written yet. */
  async close(): Promise<void> {
    this.cancelTimer?.();
    this.cancelTimer = undefined;
    await this.write();
  }

  /** Serializes writes: a timer's write and an ack's write never overlap. Rejects when this write failed; the next one tries again. */
  private write(): Promise<void> {
    const write = this.writing.then(() => this.writeNow());
    this.writing = write.catch(() => {});
    return write;
  }

  private async writeNow(): Promise<void> {
    const checkpoint = this.acked;
    if (checkpoint === undefined || checkpoint === this.written) return;
    this.lastWriteAt = this.clock.now();
    await this.persist(checkpoint);
  }

  private async persist(checkpoint: FileCheckpoint): Promise<void> {
    try {
      const stored: z.input<typeof currentSchema> = {
        version: 3,
        path: this.path,
        offset: checkpoint.offset,
        line: checkpoint.line,
        size_at_ack: checkpoint.size,
        ...generationFields(checkpoint.generation),
        trail: this.trail.map(generationFields),
        ...(checkpoint.tail === undefined ? {} : { tail: checkpoint.tail }),
        known: this.known.map((k) => ({ dev: k.dev, ino: k.ino })),
      };
      await writeCheckpointFile(this.file, `${JSON.stringify(stored)}\n`);
      this.written = checkpoint;
    } catch (err) {
      // The run goes on (the previous checkpoint stays, a rerun redelivers more; ids are stable),
      // but ack() and close() reject, so the pipeline ends it with exit 1 if no later write saves it.
      const error = classify(err, "ERR_SOURCE_READ");
      this.logger.error({ component: this.component, code: error.code, checkpoint: this.file, err: error.message }, "cannot write checkpoint");
      this.emitEvent({ type: "component_error", component: this.component, code: error.code, message: error.message });
      throw error;
    }
  }
}

/** Writes `text` to `file` so a crash leaves either the old or the new content, never a mix, and the rename is durable too. */
async function writeCheckpointFile(file: string, text: string): Promise<void> {
  await mkdir(dirname(file), { recursive: true });
  await writeFileAtomic(file, text, { tmp: `${file}.${process.pid}.tmp`, sync: "full", syncDir: true });
}
