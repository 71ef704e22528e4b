/**
 * The engine side of `sluice dlq replay`: a source that reads selected dead letters, a stand-in
 * dead-letter store that records a replay's failures on the entries replayed, and the pace. The
 * records go through an ordinary {@link Pipeline} (built in `config/replay.ts`), so a replay has
 * the batching, retries and idempotent writes of a run and no delivery path of its own.
 */
import type { DeadLetter, DeadLetterStore, DeadLetterWorkflow, Source, SourceHandle, StoredDeadLetter } from "../components/contracts.js";
import { sleep, type Clock } from "./clock.js";
import { isStage } from "./dead-letters.js";
import { SluiceError } from "./errors.js";
import type { Entry, JsonObject } from "./record.js";

/** Entries that go to the same sinks by the same way: one pipeline. */
export interface ReplayGroup {
  /** The sinks (by name) every record of the group goes to. */
  readonly sinks: readonly string[];
  /**
   * Whether the records go through the pipeline's transforms: entries of a stage before the sinks
   * do (their payload is what the source read); a sink's entries do not, since their payload is
   * what the transforms already made of it, and transforming it again would apply them twice.
   */
  readonly transforms: boolean;
  readonly entries: readonly StoredDeadLetter[];
}

/** An entry a replay leaves alone, and why. */
export interface SkippedEntry {
  readonly entry: StoredDeadLetter;
  readonly reason: string;
}

/** What {@link planReplay} decided. */
export interface ReplayPlan {
  readonly groups: readonly ReplayGroup[];
  readonly skipped: readonly SkippedEntry[];
}

/**
 * Groups the selected entries by where they go: a sink's entry to that sink (or `to`), a stage's
 * entry through the transforms to every sink (or `to`). An entry of a sink the config no longer
 * has (and no `to`) is skipped. `sinks` are the config's sink names; `to` must be one of them.
 */
export function planReplay(entries: readonly StoredDeadLetter[], sinks: readonly string[], to: string | undefined): ReplayPlan {
  const groups = new Map<string, { sinks: string[]; transforms: boolean; entries: StoredDeadLetter[] }>();
  const skipped: SkippedEntry[] = [];
  for (const entry of entries) {
    const stage = isStage(entry.sink);
    const targets = to !== undefined ? [to] : stage ? [...sinks] : [entry.sink];
    if (!stage && to === undefined && !sinks.includes(entry.sink)) {
      skipped.push({ entry, reason: `sink ${entry.sink} is not in the config (replay it elsewhere with --to <sink>)` });
      continue;
    }
    const key = `${stage ? "stage" : "sink"}\u0000${targets.join("\u0000")}`;
    let group = groups.get(key);
    if (group === undefined) {
      group = { sinks: targets, transforms: stage, entries: [] };
      groups.set(key, group);
    }
    group.entries.push(entry);
  }
  return { groups: [...groups.values()], skipped };
}

/**
 * Paces a replay: an entry goes out no sooner than `index / rate` seconds after the first, in
 * chunks of a tenth of a second's worth, so over any span `t` at most `rate * t` entries plus one
 * chunk go out. Shared by every source of a replay, across its groups.
 */
export class ReplayPacer {
  private sent = 0;
  private startedAt: number | undefined;

  /** `rate`: entries per second; undefined: as fast as the pipeline takes them. */
  constructor(
    private readonly rate: number | undefined,
    private readonly clock: Clock,
  ) {}

  /** Most entries per chunk at this pace. */
  get chunkSize(): number {
    return this.rate === undefined ? Number.POSITIVE_INFINITY : Math.max(1, Math.floor(this.rate / 10));
  }

  /** Waits for the turn of the next `n` entries; false when `signal` aborted first. */
  async take(n: number, signal: AbortSignal): Promise<boolean> {
    if (this.rate === undefined) return !signal.aborted;
    const now = this.clock.now();
    this.startedAt ??= now;
    const due = this.startedAt + (this.sent / this.rate) * 1000;
    // Counted before the wait: a second source asking meanwhile gets the turn after this one.
    this.sent += n;
    if (due > now) {
      try {
        await sleep(this.clock, due - now, signal);
      } catch {
        return false;
      }
    }
    return !signal.aborted;
  }
}

/** Running counts of a replay, for its progress line and summary. */
export interface ReplayCounts {
  /** Entries selected and planned (skipped ones not included). */
  readonly total: number;
  /** Entries whose records the sink committed, marked `replayed`. */
  replayed: number;
  /** Entries whose record failed again: still `pending`, with the new error. */
  failedAgain: number;
}

/**
 * The bookkeeping of one replay pipeline: which entry each record came from, which failed again,
 * and the marking once a chunk is done. A chunk's checkpoint is the `seq`s of its entries; every
 * record of it is then delivered or dead-lettered (the dead letter written, so its failure is
 * known), and the others are marked `replayed` only now, after the sink committed them.
 */
export class ReplayLedger {
  private readonly seqsById = new Map<string, number[]>();
  private readonly failed = new Set<number>();
  /** Dead letters already recorded on their entries: the writer retries a failed write with the same objects, whose attempts must not add up twice. */
  private readonly recorded = new WeakSet<DeadLetter>();
  private readonly marking = new Set<Promise<void>>();
  private markError: unknown;

  constructor(
    entries: readonly StoredDeadLetter[],
    private readonly workflow: DeadLetterWorkflow,
    private readonly store: DeadLetterStore,
    private readonly clock: Clock,
    private readonly counts: ReplayCounts,
    private readonly onProgress: () => void,
  ) {
    for (const e of entries) {
      const seqs = this.seqsById.get(e.recordId);
      if (seqs === undefined) this.seqsById.set(e.recordId, [e.seq]);
      else seqs.push(e.seq);
    }
  }

  /**
   * The entries a record came from: by its id, or a split part's (`<id>#<index>`) by its
   * parent's; undefined for a record no entry explains.
   */
  private seqsOf(recordId: string): number[] | undefined {
    for (let id = recordId; ; ) {
      const seqs = this.seqsById.get(id);
      if (seqs !== undefined) return seqs;
      const cut = id.lastIndexOf("#");
      if (cut < 0 || !/^\d+$/.test(id.slice(cut + 1))) return undefined;
      id = id.slice(0, cut);
    }
  }

  /**
   * The replay pipeline's dead-letter store: a record that fails again updates the entry it came
   * from (attempts add up; code, message, last failure are the new ones; it stays pending) rather
   * than adding an entry. A record no entry explains is written to the store as usual. Opening
   * and closing are the caller's: the store is open for the whole replay.
   */
  deadLetterStore(): DeadLetterStore {
    return {
      open: async () => {},
      close: async () => {},
      write: async (entries: readonly DeadLetter[]) => {
        const unknown: DeadLetter[] = [];
        for (const e of entries) {
          if (this.recorded.has(e)) continue;
          const seqs = this.seqsOf(e.record.id);
          if (seqs === undefined) {
            unknown.push(e);
            continue;
          }
          for (const seq of seqs) {
            await this.workflow.failedAgain(seq, { code: e.code, message: e.message, attempts: e.attempts, at: e.lastFailureAt });
            this.failed.add(seq);
          }
          this.recorded.add(e);
        }
        if (unknown.length > 0) await this.store.write(unknown);
      },
    };
  }

  /** A chunk is done (the source's ack): marks its entries that did not fail again `replayed`. */
  done(seqs: readonly number[]): Promise<void> {
    const ok: number[] = [];
    let failed = 0;
    for (const seq of seqs) {
      if (this.failed.has(seq)) failed++;
      else ok.push(seq);
    }
    const marked = (ok.length === 0 ? Promise.resolve() : this.workflow.markReplayed(ok, this.clock.now())).then(
      () => {
        this.counts.replayed += ok.length;
        this.counts.failedAgain += failed;
        this.onProgress();
      },
      (err: unknown) => {
        this.markError ??= err;
      },
    );
    this.marking.add(marked);
    void marked.finally(() => this.marking.delete(marked));
    return marked;
  }

  /** Resolves when every marking started has ended. */
  async settled(): Promise<void> {
    while (this.marking.size > 0) await Promise.all(this.marking);
  }

  /** Why marking entries replayed failed, the first time it did; undefined while it never did. */
  markFailure(): SluiceError | undefined {
    if (this.markError === undefined) return undefined;
    return new SluiceError("ERR_DEAD_LETTER_WRITE", `could not mark replayed entries: ${String(this.markError)}; they stay pending, and replaying them again is absorbed by the sink's idempotent writes`, {
      cause: this.markError,
    });
  }
}

function isObject(v: unknown): v is JsonObject {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/**
 * The record an entry becomes, with the entry's record id: its payload, or, for input that never
 * became JSON, its raw text parsed again (still not a JSON object: a malformed record, which
 * fails again at the source stage).
 */
function recordOf(handle: SourceHandle, e: StoredDeadLetter): Entry {
  const envelope = { id: e.recordId };
  const text = e.raw ?? e.payload ?? "{}";
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    return handle.malformed(text, e.seq, new SluiceError("ERR_RECORD_MALFORMED", `still not JSON on replay: ${(err as Error).message}`), envelope);
  }
  if (!isObject(parsed)) return handle.malformed(text, e.seq, new SluiceError("ERR_RECORD_MALFORMED", "still not a JSON object on replay"), envelope);
  return handle.record(parsed, text.length, e.seq, text, envelope);
}

/**
 * Most entries per chunk. A chunk is marked once all its records are done: smaller chunks mean a
 * finer progress, and less to deliver again (absorbed by the sinks) after a replay is killed.
 */
const MAX_CHUNK = 100;

/**
 * A source that reads the given dead letters (of one original source, under whose name it runs)
 * at the pacer's pace, one chunk per turn, each chunk acked with the `seq`s of its entries.
 * `individual` acks: a chunk is marked as soon as it is done, whatever the others do.
 */
export class DeadLetterReplaySource implements Source {
  readonly acks = "individual" as const;
  readonly whenFull = "wait" as const;

  constructor(
    private readonly entries: readonly StoredDeadLetter[],
    private readonly pacer: ReplayPacer,
    private readonly ledger: ReplayLedger,
  ) {}

  async run(handle: SourceHandle, signal: AbortSignal): Promise<void> {
    const size = Math.max(1, Math.min(handle.chunkSize, this.pacer.chunkSize, MAX_CHUNK));
    for (let i = 0; i < this.entries.length; ) {
      const chunk = this.entries.slice(i, i + size);
      if (!(await this.pacer.take(chunk.length, signal))) return;
      i += chunk.length;
      const outcome = await handle.enqueue(
        chunk.map((e) => recordOf(handle, e)),
        chunk.map((e) => e.seq),
      );
      if (outcome !== "accepted") return;
    }
  }

  ack(checkpoint: unknown): Promise<void> {
    return this.ledger.done(checkpoint as number[]);
  }

  async close(): Promise<void> {
    await this.ledger.settled();
  }
}
