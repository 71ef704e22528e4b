/**
 * The http source on a durable buffer writes an NDJSON body's own bytes to the log (lines entries,
 * format version 2) when the body is exactly its records' lines, and the records serialised (JSON
 * entries) otherwise. Read back from the segment files, every entry holds each record's payload as
 * the producer sent it, whichever kind it is and however a request was split into chunks.
 */
import { readdirSync, readFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import { afterEach, describe, expect, it } from "vitest";
import { readFrame } from "../../src/core/durable-log.js";
import { send, startHttpPipeline, waitUntil, type HttpPipeline } from "../helpers/http-pipeline.js";

let running: HttpPipeline | undefined;
let dir: string | undefined;
afterEach(async () => {
  await running?.close();
  running = undefined;
  if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  dir = undefined;
});

/** Every entry in the log: whether it is a lines entry, and its records' ids and payload texts as read back. */
function logEntries(bufferDir: string): { lines: boolean; ids: string[]; payloads: unknown[] }[] {
  const out: { lines: boolean; ids: string[]; payloads: unknown[] }[] = [];
  for (const name of readdirSync(bufferDir).filter((f) => f.endsWith(".seg")).sort()) {
    const data = readFileSync(join(bufferDir, name));
    for (let offset = 0; offset < data.length; ) {
      const frame = readFrame(data, offset, 0);
      if (typeof frame === "string") throw new Error(`${name} at ${offset}: ${frame}`);
      const comma = data.indexOf(0x2c, offset + 12);
      out.push({ lines: data[comma + 1] === 0x32, ids: frame.records.map((r) => r.id), payloads: frame.records.map((r) => r.payload) });
      offset += frame.length;
    }
  }
  return out;
}

const line = (id: string, extra = "x") => JSON.stringify({ id, v: extra });

describe("http source -> durable buffer: the log entries of a request", () => {
  it("are lines entries for bodies that are their records' lines, JSON entries otherwise, and hold every payload as sent", async () => {
    dir = await mkdtemp(join(tmpdir(), "sluice-http-lines-"));
    // Two records a chunk: a request of more is split into parts, each an entry.
    running = await startHttpPipeline({ durable: true, gated: true, buffer: { maxRecords: 2 }, dir });
    const cases: { name: string; body: Buffer; gzip?: boolean; json?: boolean; ids: string[]; lines: boolean }[] = [
      { name: "ASCII, 5 records, 3 parts", body: Buffer.from(`${["a1", "a2", "a3", "a4", "a5"].map((i) => line(i)).join("\n")}\n`), ids: ["a1", "a2", "a3", "a4", "a5"], lines: true },
      { name: "no newline after the last line", body: Buffer.from(["b1", "b2", "b3"].map((i) => line(i)).join("\n")), ids: ["b1", "b2", "b3"], lines: true },
      { name: "non-ASCII, one part", body: Buffer.from(`${line("c1", "é✓")}\n${line("c2", "😀")}\n`), ids: ["c1", "c2"], lines: true },
      // Its lines' places in the text are not their places in the bytes: serialised instead.
      { name: "non-ASCII, 2 parts", body: Buffer.from(`${["d1", "d2", "d3"].map((i) => line(i, "é")).join("\n")}\n`), ids: ["d1", "d2", "d3"], lines: false },
      { name: "CRLF", body: Buffer.from(`${line("e1")}\r\n${line("e2")}\r\n`), ids: ["e1", "e2"], lines: false },
      { name: "a blank line", body: Buffer.from(`${line("f1")}\n\n${line("f2")}\n`), ids: ["f1", "f2"], lines: false },
      { name: "a byte order mark", body: Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(`${line("g1")}\n`)]), ids: ["g1"], lines: false },
      { name: "a line with spaces around", body: Buffer.from(` ${line("h1")}\n`), ids: ["h1"], lines: false },
      { name: "gzip", body: gzipSync(`${line("i1")}\n${line("i2")}\n`), gzip: true, ids: ["i1", "i2"], lines: true },
      { name: "a JSON array", body: Buffer.from(JSON.stringify([{ id: "j1" }, { id: "j2" }])), json: true, ids: ["j1", "j2"], lines: false },
    ];
    const expected = new Map<string, unknown>();
    for (const c of cases) {
      const text = c.gzip ? `${line("i1")}\n${line("i2")}\n` : c.body.toString("utf8").replace(/^\uFEFF/, "");
      const parsed = c.json ? (JSON.parse(text) as { id: string }[]) : text.split("\n").filter((l) => l.trim() !== "").map((l) => JSON.parse(l) as { id: string });
      for (const p of parsed) expected.set(p.id, p);
      const headers: Record<string, string> = { "content-type": c.json ? "application/json" : "application/x-ndjson" };
      if (c.gzip) headers["content-encoding"] = "gzip";
      const a = await send(`${running.base}/v1/events`, { method: "POST", headers, body: c.body });
      expect(a.status, c.name).toBe(202);
    }
    await waitUntil("every request's entries on disk", () => running!.pipeline.bufferUsage().records === expected.size);
    const entries = logEntries(join(dir, "buffer"));
    for (const c of cases) {
      const mine = entries.filter((e) => e.ids.some((id) => c.ids.includes(id)));
      expect(mine.flatMap((e) => e.ids), c.name).toEqual(c.ids);
      expect(mine.every((e) => e.lines === c.lines), c.name).toBe(true);
    }
    for (const e of entries) e.ids.forEach((id, i) => expect(e.payloads[i], id).toEqual(expected.get(id)));
  });
});
