/**
 * Runs the source contract suite against every built-in source.
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import type { JsonObject } from "../../src/core/record.js";
import { definition as file } from "../../src/sources/file/source.js";
import { definition as generator } from "../../src/sources/generator.js";
import { runSourceContract } from "./source-contract.js";

runSourceContract("generator", () => ({
  create: (ctx, total) => generator.create(generator.options.parse({ count: total }), ctx),
  produce: async () => {},
  indexOf: (payload: JsonObject) => (payload.seq as number) - 1,
}));

runSourceContract("file", (dir) => {
  let written = false;
  return {
    create: (ctx, total) => {
      // The file exists before the source runs, and stays between the runs of a test.
      if (!written) {
        written = true;
        // No `id` field: ids come from the byte offset, which is what a redelivery must keep.
        writeFileSync(join(dir, "in.ndjson"), Array.from({ length: total }, (_, n) => `${JSON.stringify({ n, pad: "x".repeat(n % 7) })}\n`).join(""));
      }
      return file.create(file.options.parse({ path: join(dir, "in.ndjson") }), ctx);
    },
    produce: async () => {},
    indexOf: (payload: JsonObject) => payload.n as number,
  };
});
