/**
 * The files a path was rotated away to: its siblings in the same directory whose names start with
 * the path's own (`app.log.1`, `app.log-20240101`), as logrotate, `mv app.log app.log.1` and most
 * loggers name them. Used to finish a generation rotated away, and to find generations rotated
 * away unseen (two rotations between two looks at the path, or while sluice was down).
 */
import { open, readdir, stat, type FileHandle } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { endsAt, sameIdentity, startsWith, type FileIdentity, type Fingerprint, type Tail } from "./identity.js";

/**
 * Most rotated generations held open at once: each is an open descriptor (kept so that a later
 * rotation, or a deletion, cannot take it away before it is read). More found in one look are
 * warned about and not read.
 */
export const MAX_OPEN_GENERATIONS = 16;

/** Compressed rotations (logrotate's `compress`): their bytes are not NDJSON, so they are never read. */
const COMPRESSED = /\.(gz|bz2|xz|zst|lz4|lzma|z|zip)$/i;

/** A rotated sibling of the path. */
export interface Sibling {
  readonly file: string;
  readonly identity: FileIdentity;
  readonly mtimeMs: number;
  /** The last number in the name after the path's (`app.log.2` → 2): the older, the higher. */
  readonly rank: number;
}

/** The path's rotated siblings, oldest first (by mtime, then by rotation number), and the compressed ones found (not read). */
export async function listSiblings(path: string): Promise<{ files: Sibling[]; compressed: string[] }> {
  const dir = dirname(path);
  const prefix = basename(path);
  const names = await readdir(dir).catch(() => [] as string[]);
  const files: Sibling[] = [];
  const compressed: string[] = [];
  for (const name of names) {
    if (name === prefix || !name.startsWith(prefix)) continue;
    const file = join(dir, name);
    const s = await stat(file, { bigint: true }).catch(() => undefined);
    if (s === undefined || !s.isFile()) continue;
    if (COMPRESSED.test(name)) {
      compressed.push(file);
      continue;
    }
    const digits = /(\d+)\D*$/.exec(name.slice(prefix.length));
    files.push({ file, identity: { dev: String(s.dev), ino: String(s.ino) }, mtimeMs: Number(s.mtimeNs / 1_000_000n), rank: digits === null ? 0 : Number(digits[1]) });
  }
  files.sort((a, b) => a.mtimeMs - b.mtimeMs || b.rank - a.rank);
  return { files, compressed: compressed.sort() };
}

/** Siblings none of `known` names. */
export function unknownSiblings(siblings: readonly Sibling[], known: readonly FileIdentity[]): Sibling[] {
  return siblings.filter((s) => !known.some((k) => sameIdentity(k, s.identity)));
}

/** Opens a sibling; undefined when it went away since it was listed, or is another file by now. */
export async function openSibling(sibling: Sibling): Promise<FileHandle | undefined> {
  const fh = await open(sibling.file, "r").catch(() => undefined);
  if (fh === undefined) return undefined;
  const s = await fh.stat({ bigint: true });
  if (String(s.dev) === sibling.identity.dev && String(s.ino) === sibling.identity.ino) return fh;
  await fh.close();
  return undefined;
}

/**
 * The file a generation went to when the path was rotated by renaming it within its directory
 * (logrotate's `create`, `mv app.log app.log.1`): a sibling with the same device and inode (the
 * name's prefix keeps an inode reused by another file from being taken for it). `same`: it still
 * starts with the generation's first line, has at least `minSize` bytes and, given a `tail`,
 * still holds it at `minSize`; otherwise it was truncated or rewritten after the generation was
 * seen. Undefined when it is not there (deleted, compressed, moved elsewhere).
 */
export async function findRotated(
  path: string,
  identity: FileIdentity,
  fingerprint: Fingerprint,
  minSize: number,
  tail: Tail | undefined,
): Promise<{ fh: FileHandle; same: boolean } | undefined> {
  const { files } = await listSiblings(path);
  const sibling = files.find((s) => sameIdentity(s.identity, identity));
  if (sibling === undefined) return undefined;
  const fh = await openSibling(sibling);
  if (fh === undefined) return undefined;
  const same = (await fh.stat()).size >= minSize && (await startsWith(fh, fingerprint)) && (tail === undefined || (await endsAt(fh, minSize, tail)));
  return { fh, same };
}

/**
 * A copy of a generation among `candidates` (rotated files no generation was read from): one that
 * starts with the generation's first line, has at least `offset` bytes and, given a `tail`, holds
 * it at `offset`. That is what a copytruncate leaves when the truncation was not seen (sluice was
 * down, or stopped before its next poll): the copy holds the rest of the generation, read on from
 * `offset` under the generation's own ids.
 */
export async function findCopy(
  candidates: readonly Sibling[],
  fingerprint: Fingerprint,
  offset: number,
  tail: Tail | undefined,
): Promise<{ fh: FileHandle; sibling: Sibling } | undefined> {
  for (const sibling of candidates) {
    const fh = await openSibling(sibling);
    if (fh === undefined) continue;
    if ((await fh.stat()).size >= offset && (await startsWith(fh, fingerprint)) && (tail === undefined || (await endsAt(fh, offset, tail)))) return { fh, sibling };
    await fh.close();
  }
  return undefined;
}
