import { defineConfig } from "vitest/config";

export default defineConfig({
  resolve: { conditions: ["sluice-source"] },
  ssr: { resolve: { conditions: ["sluice-source"] } },
  test: {
    include: ["test/**/*.test.ts"],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: "forks",
    // Most test files wait on services, child processes and timers, not on the CPU: vitest's
    // default (cores - 1, so one file at a time on 2 cores) left the second core idle and doubled
    // the suite's wall time (.ci/run from a fresh clone: 22m43s one at a time, 10m19s three at once).
    maxWorkers: 3,
  },
});
