import { describe, expect, it } from "vitest";
import { AckTracker } from "../../../src/core/acks.js";
import type { AckTicket } from "../../../src/core/record.js";
import { flush } from "../../helpers/fake-clock.js";

/** Issues a ticket from the tracker, as the pipeline does for an accepted chunk; its checkpoint is `cp-<seq>`. */
function issue(tracker: AckTracker): AckTicket {
  const seq = tracker.nextTicketSeq();
  return { seq, checkpoint: `cp-${seq}`, receivedAt: 0, records: 1, bytes: 1, pending: 1, onDone: () => {} };
}

/** A controllable ack: each call stays pending until the test resolves or rejects it. */
function manualAck() {
  const calls: { checkpoint: unknown; resolve: () => void; reject: (e: unknown) => void }[] = [];
  let running = 0;
  let maxRunning = 0;
  const ack = (checkpoint: unknown) =>
    new Promise<void>((resolve, reject) => {
      running++;
      maxRunning = Math.max(maxRunning, running);
      const done = () => running--;
      calls.push({
        checkpoint,
        resolve: () => {
          done();
          resolve();
        },
        reject: (e) => {
          done();
          reject(e);
        },
      });
    });
  return { ack, calls, maxRunning: () => maxRunning };
}

describe("AckTracker", () => {
  it("acks only the contiguous prefix of done chunks, whatever order they finish in", async () => {
    const acked: unknown[] = [];
    const tracker = new AckTracker((cp) => void acked.push(cp), () => {});
    const t = [issue(tracker), issue(tracker), issue(tracker), issue(tracker), issue(tracker)];

    tracker.complete(t[2]!);
    tracker.complete(t[1]!);
    await tracker.flush();
    expect(acked).toEqual([]);
    expect(tracker.outstanding()).toBe(5);

    tracker.complete(t[0]!);
    await tracker.flush();
    expect(acked).toEqual(["cp-2"]);
    expect(tracker.outstanding()).toBe(2);

    tracker.complete(t[4]!);
    await tracker.flush();
    expect(acked).toEqual(["cp-2"]);

    tracker.complete(t[3]!);
    await tracker.flush();
    expect(acked).toEqual(["cp-2", "cp-4"]);
    expect(tracker.outstanding()).toBe(0);
  });

  it("serializes acks: a slow ack never overlaps the next, and progress made meanwhile is coalesced", async () => {
    const m = manualAck();
    const tracker = new AckTracker(m.ack, () => {});
    const t = Array.from({ length: 4 }, () => issue(tracker));

    tracker.complete(t[0]!);
    await flush();
    expect(m.calls.map((c) => c.checkpoint)).toEqual(["cp-0"]);

    // While cp-0 is being acked, three more chunks finish: no new call yet.
    tracker.complete(t[1]!);
    tracker.complete(t[2]!);
    tracker.complete(t[3]!);
    await flush();
    expect(m.calls).toHaveLength(1);

    m.calls[0]!.resolve();
    await flush();
    // One call with the newest checkpoint, not one per chunk.
    expect(m.calls.map((c) => c.checkpoint)).toEqual(["cp-0", "cp-3"]);
    m.calls[1]!.resolve();
    await tracker.flush();
    expect(m.maxRunning()).toBe(1);
    expect(m.calls).toHaveLength(2);
  });

  it("flush waits for the ack in progress and for the one queued behind it", async () => {
    const m = manualAck();
    const tracker = new AckTracker(m.ack, () => {});
    const t = [issue(tracker), issue(tracker)];
    tracker.complete(t[0]!);
    tracker.complete(t[1]!);
    let flushed = false;
    void tracker.flush().then(() => (flushed = true));
    await flush();
    m.calls[0]!.resolve();
    await flush();
    expect(flushed).toBe(false);
    m.calls[1]!.resolve();
    await flush();
    expect(flushed).toBe(true);
  });

  it("reports an ack error and still acks later progress", async () => {
    const errors: unknown[] = [];
    const m = manualAck();
    const tracker = new AckTracker(m.ack, (e) => errors.push(e));
    const t = [issue(tracker), issue(tracker)];

    tracker.complete(t[0]!);
    await flush();
    const boom = new Error("checkpoint store down");
    m.calls[0]!.reject(boom);
    await tracker.flush();
    expect(errors).toEqual([boom]);

    tracker.complete(t[1]!);
    await flush();
    expect(m.calls.map((c) => c.checkpoint)).toEqual(["cp-0", "cp-1"]);
    m.calls[1]!.resolve();
    await tracker.flush();
    expect(errors).toHaveLength(1);
  });

  it("survives an ack that throws synchronously (Source.ack may be sync)", async () => {
    const errors: unknown[] = [];
    const acked: unknown[] = [];
    let first = true;
    const tracker = new AckTracker(
      (cp) => {
        if (first) {
          first = false;
          throw new Error("sync failure");
        }
        acked.push(cp);
      },
      (e) => errors.push(e),
    );
    const t = [issue(tracker), issue(tracker)];
    tracker.complete(t[0]!);
    await flush();
    tracker.complete(t[1]!);
    await flush();
    // Checked before tracker.flush(): a wedged tracker fails here instead of spinning in flush().
    expect(errors).toHaveLength(1);
    expect(acked).toEqual(["cp-1"]);
    await tracker.flush();
  });
});
