/**
 * Small tmpfs mounts for the tests of full disks and read-only directories. Mounting needs root
 * (CAP_SYS_ADMIN): where it is not permitted, {@link mountTmpfs} prints why and returns
 * undefined, and the test skips.
 */
import { spawnSync } from "node:child_process";
import fs from "node:fs";

/**
 * Mounts a tmpfs with `options` (e.g. `size=512k`, `ro,size=64k`) on the existing directory
 * `dir`. Returns the unmount (lazy, so a process still holding a file there does not keep it),
 * or undefined, having printed why, where mounting is not permitted.
 */
export function mountTmpfs(dir: string, options: string): (() => void) | undefined {
  const mount = spawnSync("mount", ["-t", "tmpfs", "-o", options, "tmpfs", dir], { encoding: "utf8" });
  if (mount.status !== 0) {
    console.warn(`skipped: cannot mount a tmpfs here (${(mount.stderr || mount.error?.message || `exit ${mount.status}`).trim()})`);
    return undefined;
  }
  return () => void spawnSync("umount", ["-l", dir]);
}

/** Writes zeros to a new file until the disk refuses, halving the write down to one byte: nothing is left after it. */
export function fillDisk(file: string): void {
  const fd = fs.openSync(file, "w");
  try {
    for (let size = 64 * 1024; size >= 1; ) {
      try {
        fs.writeSync(fd, Buffer.alloc(size));
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "ENOSPC") throw err;
        size = Math.floor(size / 2);
      }
    }
  } finally {
    fs.closeSync(fd);
  }
}
