/**
 * Replacing a small file atomically: the checkpoint store's checkpoints and the durable buffer's
 * release state. A crash leaves the old content or the new, never a mix.
 */
import fs from "node:fs/promises";
import { dirname } from "node:path";

/** How durable a {@link writeFileAtomic} is when it resolves. */
export interface AtomicWriteOptions {
  /** The temporary file, in the same directory (a rename across file systems is not atomic). */
  readonly tmp: string;
  /** `full`: fsync, `data`: fdatasync (survive power loss); `none`: neither (survives a crash of the process). */
  readonly sync: "full" | "data" | "none";
  /** Also fsync the directory, so the rename itself survives power loss (best effort: not every platform can). */
  readonly syncDir: boolean;
}

/**
 * Writes `text` to `tmp`, then renames it over `file`. A write that fails (a full disk) removes its
 * temporary file: left there, it would hold on to the space it got.
 */
export async function writeFileAtomic(file: string, text: string, o: AtomicWriteOptions): Promise<void> {
  try {
    const fh = await fs.open(o.tmp, "w");
    try {
      await fh.writeFile(text, "utf8");
      if (o.sync === "full") await fh.sync();
      else if (o.sync === "data") await fh.datasync();
    } finally {
      await fh.close();
    }
    await fs.rename(o.tmp, file);
  } catch (err) {
    await fs.rm(o.tmp, { force: true }).catch(() => {});
    throw err;
  }
  if (o.syncDir) await syncDirectory(dirname(file));
}

async function syncDirectory(dir: string): Promise<void> {
  try {
    const dh = await fs.open(dir, "r");
    try {
      await dh.sync();
    } finally {
      await dh.close();
    }
  } catch {
    // Not supported on every platform: there the rename is the best we get.
  }
}
