/**
 * The dashboard's live feed: server-sent events, one compact JSON snapshot per second to every
 * open stream. One sampler for all streams, running only while one is open. Bounded: at most
 * {@link MAX_STREAMS} streams, and a stream whose client reads slower than it is written skips
 * snapshots instead of queueing them. When the run has ended, the last snapshot goes out with an
 * `end` event and every stream closes.
 */
import type { ServerResponse } from "node:http";
import type { LiveSnapshot } from "../observability/live-stats.js";

/** Streams open at once, over every port; past it a new one is answered 503. */
export const MAX_STREAMS = 16;
/** The event that tells the page the run is over (and `EventSource` not to reconnect). */
export const END_EVENT = "event: end\ndata: {}\n\n";
/** ms between two snapshots. */
export const FEED_INTERVAL_MS = 1000;

/** The feed of one pipeline, shared by every server that mounts its endpoints. */
export class LiveFeed {
  private readonly streams = new Set<ServerResponse>();
  private timer: NodeJS.Timeout | undefined;
  private sampling = false;

  constructor(
    private readonly sample: () => Promise<LiveSnapshot>,
    private readonly intervalMs = FEED_INTERVAL_MS,
  ) {}

  /** Starts an event stream on `res` and sends a snapshot at once; false (nothing written) when {@link MAX_STREAMS} are open. */
  open(res: ServerResponse, headers: Record<string, string>): boolean {
    if (this.streams.size >= MAX_STREAMS) return false;
    res.writeHead(200, { ...headers, "content-type": "text/event-stream", "cache-control": "no-store", "x-accel-buffering": "no" });
    // Tells EventSource how long to wait before reconnecting after a cut (ms).
    res.write("retry: 2000\n\n");
    this.streams.add(res);
    res.on("close", () => {
      this.streams.delete(res);
      if (this.streams.size === 0) this.stop();
    });
    if (this.timer === undefined) {
      this.timer = setInterval(() => void this.tick(), this.intervalMs);
      this.timer.unref();
    }
    void this.tick();
    return true;
  }

  private stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  private async tick(): Promise<void> {
    // A sample that takes longer than the interval (a busy event loop) is not overlapped by another.
    if (this.sampling) return;
    this.sampling = true;
    try {
      const snapshot = await this.sample();
      const frame = `data: ${JSON.stringify(snapshot)}\n\n`;
      const last = snapshot.state === "stopped";
      for (const res of this.streams) {
        if (res.writableEnded) continue;
        if (last) res.end(`${frame}${END_EVENT}`);
        else if (!res.writableNeedDrain) res.write(frame);
      }
      if (last) this.stop();
    } catch {
      // The registry's collectors read counters in memory: a failure here skips one frame, and
      // the next tick tries again.
    } finally {
      this.sampling = false;
    }
  }
}
