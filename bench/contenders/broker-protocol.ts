/**
 * What the broker section's runner (bench/brokers.ts) and its baseline children say to each other.
 * A child gets a {@link BrokerTask} as JSON in argv[2], reads and acks exactly `records` entries
 * (or jobs, or messages) through the transform, then closes its connections and exits 0; it is
 * timed from outside, as a whole process (start-up and connecting included), like sluice. A child
 * that could not do it prints why on stderr and exits non-zero.
 */
import { loadTransform, type PayloadFunction } from "./protocol.js";

/** What one baseline run must do. */
export interface BrokerTask {
  /** redis://host:port, or nats://host:port. */
  readonly url: string;
  /** The Redis stream, the JetStream stream, or the BullMQ queue. */
  readonly stream: string;
  /** The consumer group (Redis) or durable consumer (JetStream) the runner created for this run; unused by BullMQ. */
  readonly group: string;
  /** Entries to read and ack: the child exits once it has. */
  readonly records: number;
  /** The transform every contender runs (bench/enrich-copy.mjs), absolute path. */
  readonly transform: string;
  /** BullMQ's worker concurrency; unused by the others. */
  readonly concurrency: number;
}

/** The line a baseline prints once done, with the records it passed through the transform. */
export const DONE_PREFIX = "BENCH_DONE ";

/** Reads the task and loads its transform. */
export async function readBrokerTask(): Promise<{ task: BrokerTask; transform: PayloadFunction }> {
  const arg = process.argv[2];
  if (arg === undefined) throw new Error("usage: <contender> '<task json>'");
  const task = JSON.parse(arg) as BrokerTask;
  return { task, transform: await loadTransform(task.transform) };
}

/** Prints the done line. */
export function done(records: number): void {
  process.stdout.write(`${DONE_PREFIX}${records}\n`);
}
