/**
 * Runs the source contract suite against every built-in source.
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import type { JsonObject } from "../../src/core/record.js";
import { definition as file } from "../../src/sources/file/source.js";
import { definition as generator } from "../../src/sources/generator.js";
import { HttpSource } from "../../src/sources/http.js";
import { definition as http } from "../../src/sources/http-options.js";
import { freePort } from "../helpers/http-pipeline.js";
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

runSourceContract("http", () => {
  let port = 0;
  let rejected = 0;
  return {
    connection: false,
    setup: async () => {
      port = await freePort();
    },
    // The class the definition loads: the contract builds its source synchronously.
    create: (ctx) => new HttpSource(http.options.parse({ listen: `127.0.0.1:${port}`, ack_timeout: 10_000 }), { ...ctx, bufferBytes: 64 * 1024 * 1024 }),
    // Requests of 10 records with their own ids (an HTTP producer's redelivery is its retry of the
    // same body), 4 at a time, each retried until answered 202: what a well-behaved producer does.
    produce: async (total, signal) => {
      let next = 0;
      const post = async (): Promise<void> => {
        while (!signal.aborted && next < total) {
          const from = next;
          next = Math.min(total, next + 10);
          const body = Array.from({ length: next - from }, (_, i) => JSON.stringify({ id: `h-${from + i}`, n: from + i })).join("\n");
          for (;;) {
            if (signal.aborted) return;
            const status = await fetch(`http://127.0.0.1:${port}/v1/events`, { method: "POST", headers: { "content-type": "application/x-ndjson" }, body, signal }).then(
              async (r) => {
                await r.arrayBuffer();
                return r.status;
              },
              () => 0,
            );
            if (status === 202) break;
            if (status === 429 || status === 503) rejected++;
            await new Promise((r) => setTimeout(r, 20));
          }
        }
      };
      await Promise.all([post(), post(), post(), post()]);
    },
    indexOf: (payload: JsonObject) => payload.n as number,
    rejections: () => rejected,
  };
});
