/**
 * Reading a named pipe (`mkfifo`) without blocking. A plain `open()` of a FIFO waits in the
 * kernel until a writer opens it, on one of libuv's few threads, where nothing can cancel it: a
 * source waiting for a writer could never be stopped, and the process could not exit. Opened
 * `O_NONBLOCK`, the open returns at once and the pipe is read through a libuv pipe handle (as
 * `process.stdin` is), which waits for a writer in the event loop and closes on abort.
 */
import { constants, open } from "node:fs";
import { Socket } from "node:net";

function openNonBlocking(path: string): Promise<number> {
  return new Promise((resolve, reject) => {
    open(path, constants.O_RDONLY | constants.O_NONBLOCK, (err, fd) => (err ? reject(err) : resolve(fd)));
  });
}

/**
 * The bytes written into the FIFO at `path`: what its writer writes until it closes its end, and
 * with `follow` then what each next writer writes, until `signal` aborts. Waiting for a writer
 * costs no thread; an abort closes the pipe and ends the iteration.
 */
export async function* fifoBytes(path: string, follow: boolean, signal: AbortSignal): AsyncGenerator<Buffer> {
  while (!signal.aborted) {
    const socket = new Socket({ fd: await openNonBlocking(path), readable: true, writable: false });
    const onAbort = () => socket.destroy();
    signal.addEventListener("abort", onAbort, { once: true });
    try {
      for await (const chunk of socket) yield chunk as Buffer;
    } catch (err) {
      // Destroyed by the abort: a premature close, which is how the wait ends.
      if (!signal.aborted) throw err;
    } finally {
      signal.removeEventListener("abort", onAbort);
      socket.destroy();
    }
    if (!follow) return;
  }
}
