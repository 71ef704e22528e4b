/**
 * What makes a file the same file: the device and inode it lives on, and a fingerprint of its
 * first line (as Vector's `fingerprint` and Fluent Bit's inode database do). Together they tell a
 * file that only grew from one that was rotated (a new inode at the path), truncated in place
 * (copytruncate: same inode, first line gone) or rewritten (same inode, other first line).
 */
import { createHash } from "node:crypto";
import type { FileHandle } from "node:fs/promises";

/** Bytes of the first line that the fingerprint covers at most: enough to tell log files apart. */
export const FINGERPRINT_MAX_BYTES = 1024;

const LF = 10;

/** The device and inode of an open file, as decimal strings (inodes pass 2^53). */
export interface FileIdentity {
  readonly dev: string;
  readonly ino: string;
}

/**
 * A hash of the first `bytes` bytes of a file: its first line (without the newline), or its first
 * {@link FINGERPRINT_MAX_BYTES} bytes. `complete` once the first line has its newline or the cap
 * is reached: from then on appends cannot change it. An incomplete fingerprint covers what there
 * was (a new or emptied file); it is extended as the file grows.
 */
export interface Fingerprint {
  readonly bytes: number;
  readonly sha256: string;
  readonly complete: boolean;
}

/** The identity of an open file. */
export async function identityOf(fh: FileHandle): Promise<FileIdentity> {
  const s = await fh.stat({ bigint: true });
  return { dev: String(s.dev), ino: String(s.ino) };
}

/** True when both name the same device and inode. */
export function sameIdentity(a: FileIdentity, b: FileIdentity): boolean {
  return a.dev === b.dev && a.ino === b.ino;
}

/** Up to `length` bytes of the file from `position`: fewer when the file ends first. */
async function readAt(fh: FileHandle, position: number, length: number): Promise<Buffer> {
  const buf = Buffer.alloc(length);
  let got = 0;
  while (got < length) {
    const { bytesRead } = await fh.read(buf, got, length - got, position + got);
    if (bytesRead === 0) break;
    got += bytesRead;
  }
  return buf.subarray(0, got);
}

function readHead(fh: FileHandle, length: number): Promise<Buffer> {
  return readAt(fh, 0, length);
}

function sha256(bytes: Buffer): string {
  return createHash("sha256").update(bytes).digest("hex");
}

/** The fingerprint of an open file as it is now. */
export async function fingerprintOf(fh: FileHandle): Promise<Fingerprint> {
  const head = await readHead(fh, FINGERPRINT_MAX_BYTES);
  const nl = head.indexOf(LF);
  const bytes = nl >= 0 ? nl : head.length;
  return { bytes, sha256: sha256(head.subarray(0, bytes)), complete: nl >= 0 || head.length === FINGERPRINT_MAX_BYTES };
}

/**
 * True when the file still starts with the bytes `fp` was taken of. False means its start was
 * truncated away or rewritten since: whatever is there now is another generation.
 */
export async function startsWith(fh: FileHandle, fp: Fingerprint): Promise<boolean> {
  const head = await readHead(fh, fp.bytes);
  return head.length === fp.bytes && sha256(head) === fp.sha256;
}

/** Bytes before a checkpoint's offset that its {@link Tail} covers at most: the last line read, or its end. */
export const TAIL_MAX_BYTES = 1024;

/**
 * A hash of the bytes just before a position: the `bytes` bytes ending at it (the last line read,
 * or its last {@link TAIL_MAX_BYTES}). The first line alone cannot tell a file rewritten with the
 * same header from the one that was read; the bytes right before the position can.
 */
export interface Tail {
  readonly bytes: number;
  readonly sha256: string;
}

/** The tail of an open file at `offset` as it is now; undefined at offset 0 (nothing before it to compare). */
export async function tailAt(fh: FileHandle, offset: number): Promise<Tail | undefined> {
  const bytes = Math.min(offset, TAIL_MAX_BYTES);
  if (bytes === 0) return undefined;
  const got = await readAt(fh, offset - bytes, bytes);
  return { bytes, sha256: sha256(got) };
}

/**
 * True when the file still holds, just before `offset`, the bytes `tail` was taken of. False: the
 * file was rewritten (or truncated) since those bytes were read, even if its first line is the same.
 */
export async function endsAt(fh: FileHandle, offset: number, tail: Tail): Promise<boolean> {
  if (offset < tail.bytes) return false;
  const got = await readAt(fh, offset - tail.bytes, tail.bytes);
  return got.length === tail.bytes && sha256(got) === tail.sha256;
}

/**
 * The token of a file generation: put into the fallback id of every line (`<source>:<token>:<byte
 * offset>`), so that content at an offset reused by a later generation is never taken by an
 * idempotent sink for a redelivery of what was delivered before. Derived from the identity and
 * the first line, so re-reading one generation from the start (a fresh `data_dir`) yields the ids
 * it had; `epoch` tells apart successive generations of one inode with the same first line (a
 * copytruncated log whose first line repeats), see {@link epochAfter}.
 */
export function generationToken(identity: FileIdentity, fp: Fingerprint, epoch: number): string {
  return createHash("sha256").update(`${identity.dev}:${identity.ino}:${fp.sha256}:${epoch}`).digest("hex").slice(0, 12);
}

/** What a new generation is compared with: the generation before it at the path, as far as it is known. */
export interface PreviousGeneration {
  readonly identity: FileIdentity | undefined;
  readonly fingerprint: Pick<Fingerprint, "sha256"> | undefined;
  readonly epoch: number;
}

/**
 * The epoch of a generation that follows `previous`: one more when it is the same inode with the
 * same first line (the only case where the token would otherwise repeat), else 0. Depending only
 * on the generation just before, it comes out the same after a restart that finds the checkpoint
 * one or more generations behind.
 */
export function epochAfter(previous: PreviousGeneration | undefined, identity: FileIdentity, fp: Fingerprint): number {
  const same = previous?.identity !== undefined && sameIdentity(previous.identity, identity) && previous.fingerprint?.sha256 === fp.sha256;
  return same ? previous.epoch + 1 : 0;
}

/**
 * One generation of the file at a path: which file it is, what it starts with, and the token its
 * lines' fallback ids carry. The token of a new generation is fixed once its first line is
 * complete (it is derived from it); no line is read before that, except a last line without a
 * newline at the end of a run without `follow`.
 */
export class FileGeneration {
  private constructor(
    readonly identity: FileIdentity,
    public fingerprint: Fingerprint,
    public epoch: number,
    public token: string,
    private tokenFixed: boolean,
    /** Kept until the token is fixed: the epoch depends on it. */
    private previous: PreviousGeneration | undefined,
  ) {}

  /** A new generation of an open file, after `previous` (undefined: the first a checkpoint sees). */
  static async open(fh: FileHandle, previous: PreviousGeneration | undefined): Promise<FileGeneration> {
    const identity = await identityOf(fh);
    const fp = await fingerprintOf(fh);
    const epoch = epochAfter(previous, identity, fp);
    return new FileGeneration(identity, fp, epoch, generationToken(identity, fp, epoch), fp.complete, fp.complete ? undefined : previous);
  }

  /**
   * A generation a checkpoint was saved in, with the token its ids already have; `token`
   * undefined when it was saved before the token was fixed (no line of it read yet), with the
   * `previous` its epoch depends on.
   */
  static resumed(identity: FileIdentity, fingerprint: Fingerprint, epoch: number, token: string | undefined, previous?: PreviousGeneration): FileGeneration {
    return token === undefined
      ? new FileGeneration(identity, fingerprint, epoch, generationToken(identity, fingerprint, epoch), false, previous)
      : new FileGeneration(identity, fingerprint, epoch, token, true, undefined);
  }

  /** Whether the token is fixed: lines of this generation may have been read with it. */
  get fixed(): boolean {
    return this.tokenFixed;
  }

  /** While the token is not fixed: the previous generation, when its epoch may count (same inode). */
  get pendingPrevious(): PreviousGeneration | undefined {
    return this.previous?.identity !== undefined && sameIdentity(this.previous.identity, this.identity) ? this.previous : undefined;
  }

  /** False while the fingerprint may still grow or the token is not fixed: then {@link refresh} before reading. */
  get settled(): boolean {
    return this.fingerprint.complete && this.tokenFixed;
  }

  /**
   * Takes the fingerprint again while the first line was incomplete, and fixes the token once it
   * is complete (or at once when `force`: a last line without a newline is about to be read).
   * Called before read bytes are fed to the reader: the head read here is at least as long as what
   * the reader has, so the first line's record gets the token of that very line.
   */
  async refresh(fh: FileHandle, force: boolean): Promise<void> {
    if (!this.fingerprint.complete) this.fingerprint = await fingerprintOf(fh);
    if (this.tokenFixed) return;
    if (this.previous !== undefined) this.epoch = epochAfter(this.previous, this.identity, this.fingerprint);
    this.token = generationToken(this.identity, this.fingerprint, this.epoch);
    this.tokenFixed = this.fingerprint.complete || force;
    if (this.tokenFixed) this.previous = undefined;
  }
}
