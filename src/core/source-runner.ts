/**
 * The engine's side of a source's connection: connecting before `run`, reconnecting after a lost
 * connection, and telling the source's service that slow chunks are still being worked on.
 */
import type { Source, SourceHandle } from "../components/contracts.js";
import type { BackoffPolicy } from "./backoff.js";
import type { Clock } from "./clock.js";
import { classify, SluiceError } from "./errors.js";
import type { EventSink } from "./events.js";
import type { AckTicket } from "./record.js";
import { retry, Retry } from "./retry.js";

/** What {@link runSource} needs besides the source and its handle. */
export interface SourceRunOptions {
  readonly name: string;
  readonly source: Source;
  /** Backoff between connect attempts (the sinks' by default). */
  readonly backoff: BackoffPolicy;
  readonly clock: Clock;
  readonly random: () => number;
  readonly emit: EventSink;
  /** Aborts when the pipeline stops taking records: connect attempts, their waits and `run` end. */
  readonly signal: AbortSignal;
}

/**
 * Runs a source to its end. A source without `connect` is run once, and its rejection is the
 * caller's. A source with `connect` is connected first (retryable failures retried with backoff
 * for as long as it takes, each reported as `source_connect_failed`), then run; a retryable
 * rejection of `run` is a lost connection: reported (`attempt` 0), waited out one backoff delay
 * (a connection that drops as soon as it is up must not spin), and connected and run again. The
 * wait grows with consecutive losses; it starts over once a run stayed up longer than the
 * backoff's longest delay.
 * Resolves when `run` resolves or the signal aborts; rejects with a permanent error, which ends
 * the pipeline: `ERR_SOURCE_CONNECT` naming the source for a connect that cannot succeed.
 */
export async function runSource(handle: SourceHandle, o: SourceRunOptions): Promise<void> {
  const { source, name, clock, emit, signal } = o;
  if (source.connect === undefined) return source.run(handle, signal);
  const connect = source.connect.bind(source);
  let downSince = clock.now();
  /** The waits after consecutive lost connections, so a source that flaps backs off further each time. */
  let losses: Retry | undefined;
  for (;;) {
    const since = downSince;
    const outcome = await retry(() => connect(signal), {
      backoff: o.backoff,
      minDelayMs: 1,
      clock,
      random: o.random,
      signal,
      fallback: "ERR_SOURCE_CONNECT",
      onFailure: (e, attempt) => emit({ type: "source_connect_failed", source: name, attempt, downSince: since, code: e.code, message: e.message, retryable: e.retryable }),
    });
    if (outcome.tag === "aborted") return;
    if (outcome.tag === "gave_up") {
      const e = outcome.error;
      throw new SluiceError(e.code, `source ${name} cannot connect: ${e.message}`, { cause: e, retryable: false, location: name });
    }
    emit({ type: "source_connected", source: name, attempt: outcome.attempts });
    const upSince = clock.now();
    try {
      await source.run(handle, signal);
      return;
    } catch (err) {
      if (signal.aborted) return;
      const e = classify(err, "ERR_SOURCE_CONNECT");
      downSince = clock.now();
      emit({ type: "source_connect_failed", source: name, attempt: 0, downSince, code: e.code, message: e.message, retryable: e.retryable });
      if (!e.retryable) throw new SluiceError(e.code, `source ${name} failed: ${e.message}`, { cause: e, retryable: false, location: name });
      if (losses === undefined || clock.now() - upSince > o.backoff.maxMs) losses = new Retry({ backoff: o.backoff, minDelayMs: 1 }, o);
      losses.begin();
      const decision = losses.decide(e);
      if (decision.tag === "retry" && !(await losses.wait(decision.delayMs))) return;
    }
  }
}

/**
 * Calls a source's `inProgress` for each chunk in flight every `workingIntervalMs`, on the
 * pipeline's clock, from when the chunk is in the buffer until it is done, so its broker does not
 * redeliver a chunk that is only slow. One timer per chunk in flight, only for sources that have
 * the hook; the buffer's bound bounds their number.
 */
export class InProgressTicker {
  private readonly timers = new Map<AckTicket, () => void>();

  constructor(
    private readonly source: Source,
    private readonly intervalMs: number,
    private readonly clock: Clock,
    /** Receives a rejection of `inProgress` (logged; the next tick tries again). */
    private readonly onError: (err: unknown) => void,
  ) {}

  /** The chunk of `ticket` is in flight. */
  start(ticket: AckTicket): void {
    this.timers.set(
      ticket,
      this.clock.setTimer(this.intervalMs, () => {
        if (!this.timers.has(ticket)) return;
        this.start(ticket);
        try {
          void Promise.resolve(this.source.inProgress?.(ticket.checkpoint)).catch(this.onError);
        } catch (err) {
          this.onError(err);
        }
      }),
    );
  }

  /** The chunk of `ticket` is done (or will never be acked): no more ticks for it. */
  done(ticket: AckTicket): void {
    this.timers.get(ticket)?.();
    this.timers.delete(ticket);
  }

  /** The run is ending: no more ticks for anything. */
  stopAll(): void {
    for (const cancel of this.timers.values()) cancel();
    this.timers.clear();
  }
}
