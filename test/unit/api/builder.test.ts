/**
 * The library builder's sink driving settings: validated like the YAML's, and passed through to
 * the engine (here: `concurrency: "adaptive"` reaches the sink runner and its gauge); a failed run
 * surfaced as an event and a rejected `run()`.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { pipeline } from "../../../src/api/builder.js";
import { sinks, sources } from "../../../src/api/components.js";
import type { Sink } from "../../../src/components/contracts.js";
import { systemClock } from "../../../src/core/clock.js";
import { SluiceError } from "../../../src/core/errors.js";
import type { InternalEvent } from "../../../src/core/events.js";

function configError(fn: () => unknown): SluiceError {
  try {
    fn();
  } catch (err) {
    if (err instanceof SluiceError) return err;
    throw err;
  }
  throw new Error("expected a SluiceError");
}

describe("PipelineBuilder.sink driving settings", () => {
  const base = pipeline().source("gen", sources.generator({ count: 1 }));

  it("rejects bad concurrency values with the YAML loader's messages and paths", () => {
    const misspelt = configError(() => base.sink("out", sinks.blackhole(), { concurrency: "adaptve" as "adaptive" }));
    expect(misspelt.code).toBe("ERR_CONFIG_INVALID");
    expect(misspelt.message).toBe('sinks.out.concurrency: Invalid input: expected "adaptive"');
    expect(configError(() => base.sink("out", sinks.blackhole(), { concurrency: 0 })).message).toBe("sinks.out.concurrency: Too small: expected number to be >0");
    const unknown = configError(() => base.sink("out", sinks.blackhole(), { concurrency: { adaptive: { mx: 4 } as never } }));
    expect(unknown.message).toBe('sinks.out.concurrency.adaptive.mx: unknown key "mx"; did you mean "max"?');
  });

  it("words an unknown component option as the YAML loader does: path and \"did you mean\"", () => {
    const option = configError(() => sinks.postgres({ url: "postgres://u@h/db", table: "t", pool_sise: 2 } as never));
    expect(option.code).toBe("ERR_CONFIG_INVALID");
    expect(option.message).toBe('postgres.pool_sise: unknown key "pool_sise"; did you mean "pool_size"?');
    expect(configError(() => sources.generator({ cout: 3 } as never)).message).toBe('generator.cout: unknown key "cout"; did you mean "count"?');
    expect(configError(() => sources.http({ lisen: "127.0.0.1:0" } as never)).message).toBe('http.lisen: unknown key "lisen"; did you mean "listen"?');
  });

  it("words an unknown pipeline setting the same way", async () => {
    const build = pipeline({ data_dri: "./x" } as never)
      .source("gen", sources.generator({ count: 1 }))
      .sink("out", sinks.blackhole())
      .build();
    await expect(build).rejects.toMatchObject({ code: "ERR_CONFIG_INVALID", message: 'data_dri: unknown key "data_dri"; did you mean "data_dir"?' });
  });

  it.each(["__proto__", "constructor", "prototype"])("refuses %s as a source or sink name", (reserved) => {
    expect(configError(() => base.sink(reserved, sinks.blackhole())).message).toMatch(new RegExp(`^sinks\\.${reserved}: the name "${reserved}" is reserved`));
    expect(configError(() => pipeline().source(reserved, sources.generator({ count: 1 }))).message).toMatch(/is reserved/);
  });

  describe("running", () => {
    let dir: string;
    beforeEach(async () => {
      dir = await mkdtemp(join(tmpdir(), "sluice-builder-"));
    });
    afterEach(async () => {
      await rm(dir, { recursive: true, force: true });
    });

    it("build() gives the pipeline and its metrics, whose summary times the run (never NaN)", async () => {
      let skew = 0; // moves the clock on after the run, without sleeping
      const clock = { ...systemClock, now: () => systemClock.now() + skew };
      const built = await pipeline({ cwd: dir, clock })
        .source("gen", sources.generator({ count: 5000 }))
        .sink("out", sinks.blackhole())
        .build();
      expect(built.dataDir).toBe(join(dir, "data"));
      expect(built.metrics.summary().elapsed_seconds).toBe(0);
      expect((await built.pipeline.run()).tag).toBe("completed");
      const summary = built.metrics.summary();
      expect(summary.records).toMatchObject({ received: 5000, delivered: 5000 });
      expect(Number.isFinite(summary.elapsed_seconds) && summary.elapsed_seconds > 0).toBe(true);
      // The run is over: its elapsed time stays what it was.
      skew = 60_000;
      expect(built.metrics.summary().elapsed_seconds).toBe(summary.elapsed_seconds);
    });

    it.each([
      ["adaptive", "adaptive" as const, 1],
      ["{ adaptive: { initial: 3 } }", { adaptive: { initial: 3 } }, 3],
      ["a fixed number", 6, 6],
    ])("passes concurrency %s through to the sink's limit gauge", async (_name, concurrency, startLimit) => {
      const { pipeline: p, metrics } = await pipeline({ cwd: dir })
        .source("gen", sources.generator({ count: 20 }))
        .sink("out", sinks.blackhole(), { concurrency })
        .build();
      // The runner reports its limit when it is built, before anything ran.
      const gauge = await metrics.registry.getSingleMetric("sluice_sink_concurrency_limit")!.get();
      expect(gauge.values).toEqual([{ labels: { sink: "out" }, value: startLimit }]);
      expect((await p.run()).tag).toBe("completed");
    });

    it("a sink that cannot connect: onEvent hears each failed attempt, run() rejects with ERR_SINK_CONNECT at connect_timeout", async () => {
      const refusing: Sink = {
        maxInFlight: 1,
        connect: async () => {
          throw Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:5433"), { code: "ECONNREFUSED" });
        },
        write: async () => {},
        close: async () => {},
      };
      const events: InternalEvent[] = [];
      const run = pipeline({ cwd: dir, onEvent: (e) => events.push(e) })
        .source("gen", sources.generator({ count: 20 }))
        .sink("db", sinks.custom("refusing", () => refusing), { connect_timeout: "300ms", retry: { initial_backoff: 10, max_backoff: 20 } })
        .run();
      const error = await run.then(
        () => undefined,
        (err: unknown) => err,
      );
      expect(error).toBeInstanceOf(SluiceError);
      expect(error).toMatchObject({ code: "ERR_SINK_CONNECT", message: "sink db could not connect within 0.3 s: connect ECONNREFUSED 127.0.0.1:5433" });
      const failed = events.filter((e) => e.type === "sink_connect_failed");
      expect(failed.length).toBeGreaterThan(2);
      expect(failed[0]).toMatchObject({ sink: "db", attempt: 1, code: "ERR_SINK_CONNECT", message: "connect ECONNREFUSED 127.0.0.1:5433", connectTimeoutMs: 300 });
    });
  });
});

describe("PipelineBuilder transforms: limits and the read-only envelope", () => {
  const base = pipeline().source("gen", sources.generator({ count: 1 }));

  it("rejects bad limits with the YAML loader's messages and paths", () => {
    expect(configError(() => base.map((p) => p, { timeout: "soon" })).message).toMatch(/^transforms\.map\.timeout: /);
    expect(configError(() => base.flatMap((p) => [p], { max_split: 0 })).message).toBe("transforms.flat_map.max_split: Too small: expected number to be >0");
    expect(configError(() => base.map((p) => p, { max_splits: 3 } as never)).message).toBe('transforms.map.max_splits: unknown key "max_splits"; did you mean "max_split"?');
  });

  describe("running", () => {
    let dir: string;
    beforeEach(async () => {
      dir = await mkdtemp(join(tmpdir(), "sluice-builder-"));
    });
    afterEach(async () => {
      await rm(dir, { recursive: true, force: true });
    });

    it("a map that sets record.id on 1,000 records: every one dead-lettered, none delivered", async () => {
      const { summary } = await pipeline({ cwd: dir })
        .source("gen", sources.generator({ count: 1000 }))
        .map((payload, record) => {
          (record as { id: string }).id = "same";
          return payload;
        })
        .sink("out", sinks.blackhole())
        .run();
      expect(summary.records).toMatchObject({ received: 1000, delivered: 0, dead_lettered: 1000 });
    });

    it("a map whose promise never settles is dead-lettered at its timeout; a flatMap past max_split too", async () => {
      const { summary } = await pipeline({ cwd: dir })
        .source("gen", sources.generator({ count: 4 }))
        .map((payload) => (payload.seq === 2 ? new Promise<typeof payload>(() => {}) : payload), { timeout: "50ms" })
        .flatMap((payload) => (payload.seq === 3 ? [payload, payload, payload] : [payload]), { max_split: 2 })
        .sink("out", sinks.blackhole())
        .run();
      expect(summary.records).toMatchObject({ received: 4, delivered: 2, dead_lettered: 2 });
    });
  });
});
