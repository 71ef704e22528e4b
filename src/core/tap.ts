/**
 * The engine's side of `sluice tap`: the pipeline shows the records passing each stage to a
 * {@link RecordTap} while someone listens. `observability/tap.ts` implements it.
 */
import type { SluiceRecord } from "./record.js";

/**
 * Where a record is seen: `source` as a source hands it over (before the buffer and any
 * transform; a chunk the buffer then refuses or drops was shown too), `transform`
 * as it leaves the transform chain (what the sinks get; nothing when there is no transform),
 * `sink` once a sink committed it.
 */
export type TapStage = "source" | "transform" | "sink";

/** Sees records as they pass a stage, while a reader listens. */
export interface RecordTap {
  /**
   * True while a reader listens. The engine calls {@link observe} only then, so a tap nobody
   * reads costs one property read per chunk or batch.
   */
  readonly listening: boolean;
  /**
   * Called synchronously, once per chunk or batch, on the engine's path: must not block or
   * throw, and must copy what it keeps (a later transform may change a payload in place).
   * `component`: the source, the last transform, or the sink.
   */
  observe(stage: TapStage, component: string, records: readonly SluiceRecord[]): void;
}
