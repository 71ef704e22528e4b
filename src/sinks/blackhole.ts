/**
 * The `blackhole` sink: accepts and discards every record. For benchmarks (the cost of everything
 * but the sink) and for trying a pipeline's sources and transforms.
 */
import { z } from "zod";
import { defineComponent, type Sink } from "../components/contracts.js";

const options = z.strictObject({});

/**
 * Creates a sink whose writes resolve at once and keep nothing. It counts nothing either: the
 * engine counts delivered records for every sink alike.
 *
 * `maxInFlight` is high on purpose: the blackhole has no limit of its own, so the engine's
 * `concurrency` is the one that applies. It reads no payloads (`readsPayloads: false`), so with
 * `workers` the worker threads need not send any back.
 */
export function createBlackholeSink(): Sink {
  return {
    maxInFlight: 1024,
    readsPayloads: false,
    async connect() {},
    async write() {
      return {};
    },
    async close() {},
  };
}

/** The `blackhole` sink: discards records (every write succeeds at once). */
export const definition = defineComponent<typeof options, Sink>({
  type: "blackhole",
  summary: "Discards every record (for benchmarks and dry runs)",
  options,
  create() {
    return createBlackholeSink();
  },
});
