import { pipeline, sinks, sources, type SensorReading } from "sluice";

type Enriched = SensorReading & { processed_at: string; fahrenheit: number };

const { status, summary } = await pipeline({ data_dir: "./data/library-demo" })
  .source("sensor-A", sources.generator({ count: 10_000, keys: 20, seed: 42 }), { key_field: "sensor", time_field: "ts" })
  .map((r): Enriched => ({ ...r, processed_at: new Date().toISOString(), fahrenheit: r.value * 1.8 + 32 }))
  .filter((r) => r.fahrenheit < 100) // r is typed as Enriched here
  .sink("readings", sinks.sqlite({ path: "./data/library-demo/readings.db", table: "readings" }), {
    retry: { max_attempts: 5, initial_backoff: "20ms" },
    chaos: { failure_rate: 0.15, seed: 7 },
  })
  .run();

console.log(status.tag, summary.records);
