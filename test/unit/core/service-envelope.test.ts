/**
 * A broker source hands over the envelope its service stored (id, key, event time): used where the
 * source's id_field, key_field and time_field find nothing in the payload, and kept by a record
 * the source dead-letters itself (ERR_MAX_DELIVERIES). Also the broker backlog metrics.
 */
import { describe, expect, it } from "vitest";
import { SluiceError } from "../../../src/core/errors.js";
import { silentLogger } from "../../../src/core/events.js";
import { Metrics } from "../../../src/observability/metrics.js";
import { makePipeline, MemorySource } from "../../helpers/memory.js";

/** A source of three records: one whose payload has an id, one that relies on the envelope, one its broker gave up on. */
class EnvelopeSource extends MemorySource {
  constructor() {
    super([], { acks: "individual", keyField: "k" });
  }

  override async run(handle: Parameters<MemorySource["run"]>[0]): Promise<void> {
    const envelope = { id: "env-1", key: "env-key", eventTime: Date.UTC(2026, 0, 2) };
    const records = [
      handle.record({ id: "own", k: "own-key", v: 1 }, 10, "1-0", undefined, envelope),
      handle.record({ v: 2 }, 10, "2-0", undefined, envelope),
      handle.record({ v: 3 }, 10, "3-0"),
      handle.malformed('{"v":4}', "4-0", new SluiceError("ERR_MAX_DELIVERIES", "delivered 5 times"), { id: "env-4", key: "k4" }),
    ];
    await handle.enqueue(records, "chunk");
  }
}

describe("service envelope", () => {
  it("fills id, key and event time only where the payload has none, and keeps the id of a dead-lettered record", async () => {
    const tp = makePipeline({ sources: [new EnvelopeSource()] });
    const status = await tp.pipeline.run();
    expect(status.tag).toBe("completed");
    const written = [...tp.sinks[0]!.committed.values()];
    expect(written.map((r) => [r.id, r.key, r.eventTime])).toEqual([
      ["own", "own-key", Date.UTC(2026, 0, 2)],
      ["env-1", "env-key", Date.UTC(2026, 0, 2)],
      ["src:3-0", undefined, undefined],
    ]);
    const dead = tp.deadLetters.entries;
    expect(dead.map((d) => [d.record.id, d.code, d.raw])).toEqual([["env-4", "ERR_MAX_DELIVERIES", '{"v":4}']]);
  });

  it("exports a broker source's pending entries, lag and reclaimed entries", async () => {
    const metrics = new Metrics([], silentLogger, () => 0);
    metrics.handle({ type: "source_backlog", source: "q", pending: 12, lag: 3400 });
    metrics.handle({ type: "records_reclaimed", source: "q", count: 7 });
    metrics.handle({ type: "records_reclaimed", source: "q", count: 2 });
    const text = await metrics.registry.metrics();
    expect(text).toMatch(/sluice_source_pending\{source="q"\} 12/);
    expect(text).toMatch(/sluice_source_lag\{source="q"\} 3400/);
    expect(text).toMatch(/sluice_source_reclaimed_total\{source="q"\} 9/);
  });
});
