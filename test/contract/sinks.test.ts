/**
 * Runs the sink contract suite against every built-in sink.
 */
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { Writable } from "node:stream";
import Database from "better-sqlite3";
import type { JsonObject } from "../../src/core/record.js";
import { definition as blackhole } from "../../src/sinks/blackhole.js";
import { definition as file } from "../../src/sinks/file.js";
import { definition as sqlite } from "../../src/sinks/sqlite.js";
import { createStdoutSink } from "../../src/sinks/stdout.js";
import { runSinkContract, type StoredRecord } from "./sink-contract.js";

interface Line {
  id: string;
  key: string | null;
  event_time: string | null;
  payload: JsonObject;
}

function fromLines(text: string): StoredRecord[] {
  return text
    .split("\n")
    .filter((line) => line.length > 0)
    .map((line) => {
      const l = JSON.parse(line) as Line;
      return { id: l.id, key: l.key, eventTime: l.event_time, payload: l.payload };
    });
}

runSinkContract(
  "sqlite",
  ({ ctx }) => sqlite.create(sqlite.options.parse({ path: "out/sink.db" }), ctx),
  async ({ dir }) => {
    const db = new Database(join(dir, "out/sink.db"), { readonly: true });
    try {
      const rows = db.prepare("SELECT id, key, payload, event_time FROM records").all() as {
        id: string;
        key: string | null;
        payload: string;
        event_time: string | null;
      }[];
      return rows.map((r) => ({ id: r.id, key: r.key, eventTime: r.event_time, payload: JSON.parse(r.payload) as JsonObject }));
    } finally {
      db.close();
    }
  },
);

runSinkContract(
  "file",
  // Small segments, so the big batch and the reopen case span several files.
  ({ ctx }) => file.create(file.options.parse({ path: "landing", rotate_bytes: "256KiB" }), ctx),
  async ({ dir }) => {
    // A write is durable once it is in the temp segment: read finished and unfinished segments alike.
    const names = (await readdir(join(dir, "landing"))).filter((n) => /\.ndjson(\.tmp)?$/.test(n)).sort();
    const texts = await Promise.all(names.map((n) => readFile(join(dir, "landing", n), "utf8")));
    return texts.flatMap(fromLines);
  },
  { idempotent: false },
);

runSinkContract("blackhole", ({ ctx }) => blackhole.create(blackhole.options.parse({}), ctx), undefined);

/** Per test directory, what the stdout sink printed; survives the sink for the reopen case. */
const captured = new Map<string, string[]>();

function capture(dir: string): Writable {
  const chunks = captured.get(dir) ?? [];
  captured.set(dir, chunks);
  return new Writable({
    highWaterMark: 1024,
    write(chunk: Buffer, _encoding, callback) {
      chunks.push(chunk.toString("utf8"));
      // Asynchronous like a pipe, so the sink's callback and drain handling are exercised.
      setImmediate(callback);
    },
  });
}

runSinkContract(
  "stdout",
  ({ dir }) => createStdoutSink(capture(dir), "ndjson"),
  async ({ dir }) => fromLines((captured.get(dir) ?? []).join("")),
  { idempotent: false, durable: false },
);
