import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { appendFile, copyFile, mkdir, open, readFile, rename, stat, truncate, writeFile } from "node:fs/promises";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { Readable } from "node:stream";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import type { Source } from "../../../src/components/contracts.js";
import type { Clock } from "../../../src/core/clock.js";
import { SluiceError } from "../../../src/core/errors.js";
import type { Entry, JsonObject } from "../../../src/core/record.js";
import { createFileSource, definition, readNdjsonStream, type FileCheckpoint } from "../../../src/sources/file/source.js";
import { FakeClock } from "../../helpers/fake-clock.js";
import { makeTempDir, SourceHarness, testContext, type CapturingLogger } from "../../helpers/source-harness.js";

let tmp: { path: string; remove: () => Promise<void> };
let inputPath: string;
let dataDir: string;

beforeEach(async () => {
  tmp = await makeTempDir("sluice-file-source-");
  inputPath = join(tmp.path, "in.ndjson");
  dataDir = join(tmp.path, "data");
});

afterEach(async () => {
  await tmp.remove();
});

interface Made {
  source: Source;
  logger: CapturingLogger;
}

function makeSource(
  raw: Record<string, unknown>,
  { dir = dataDir, clock, stdin }: { dir?: string; clock?: Clock; stdin?: () => AsyncIterable<Buffer | string> } = {},
): Made {
  const opts = definition.options.parse({ path: "in.ndjson", ...raw });
  const ctx = testContext({ name: "logs", dataDir: dir, baseDir: tmp.path, ...(clock ? { clock } : {}) });
  const source = createFileSource(opts, ctx, { stdin: stdin ?? (() => Readable.from([])) });
  return { source, logger: ctx.logger };
}

async function runOnce(
  raw: Record<string, unknown> = {},
  chunkSize = 100,
  dir = dataDir,
): Promise<Made & { harness: SourceHarness }> {
  const made = makeSource(raw, { dir });
  const harness = new SourceHarness({ source: "logs", chunkSize });
  await made.source.run(harness, new AbortController().signal);
  return { ...made, harness };
}

const lines = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => JSON.stringify({ id: `r${from + i}`, n: from + i }));
const ndjson = (ls: string[]) => ls.map((l) => `${l}\n`).join("");

async function savedCheckpoint(name = "logs", dir = dataDir): Promise<Record<string, unknown>> {
  return JSON.parse(await readFile(join(dir, "checkpoints", `${name}.json`), "utf8")) as Record<string, unknown>;
}

/** The generation token in the fallback ids of the lines a harness got (from its first chunk). */
function tokenOf(harness: SourceHarness, chunk = 0): string {
  return (harness.chunks[chunk]!.checkpoint as FileCheckpoint).generation.token;
}

function failureOf(entry: { failure: SluiceError | undefined }): SluiceError {
  expect(entry.failure).toBeInstanceOf(SluiceError);
  return entry.failure!;
}

describe("file source options", () => {
  it("applies defaults, parses units and rejects unknown keys", () => {
    expect(definition.options.parse({ path: "x" })).toEqual({
      path: "x",
      follow: false,
      poll_interval: 250,
      checkpoint_interval: 1000,
      max_line_bytes: 1024 * 1024,
    });
    expect(definition.options.parse({ path: "x", poll_interval: "50ms", checkpoint_interval: "2s", max_line_bytes: "4KiB" })).toMatchObject({
      poll_interval: 50,
      checkpoint_interval: 2000,
      max_line_bytes: 4096,
    });
    expect(definition.options.safeParse({ path: "x", tail: true }).success).toBe(false);
    expect(definition.options.safeParse({}).success).toBe(false);
    for (const [key, schema] of Object.entries(definition.options.shape)) expect(schema.description, key).toBeTruthy();
  });
});

describe("file source: reading", () => {
  it("reads every line in chunks, checkpointing the byte offset and line after each chunk", async () => {
    const content = ndjson(lines(1, 250));
    await writeFile(inputPath, content);
    const { harness } = await runOnce({}, 100);
    expect(harness.chunks.map((c) => c.records.length)).toEqual([100, 100, 50]);
    expect(harness.payloads.map((p) => p.n)).toEqual(Array.from({ length: 250 }, (_, i) => i + 1));
    expect(harness.entries.map((e) => e.id).slice(0, 2)).toEqual(["r1", "r2"]);
    const offsetAfter = (n: number) => Buffer.byteLength(ndjson(lines(1, n)));
    const generation = expect.objectContaining({ token: expect.stringMatching(/^[0-9a-f]{12}$/), epoch: 0 });
    // The tail: a hash of the 1 KiB just before the offset.
    const tail = { bytes: 1024, sha256: expect.stringMatching(/^[0-9a-f]{64}$/) };
    expect(harness.chunks.map((c) => c.checkpoint)).toEqual([
      { offset: offsetAfter(100), line: 100, generation, size: content.length, tail },
      { offset: offsetAfter(200), line: 200, generation, size: content.length, tail },
      { offset: content.length, line: 250, generation, size: content.length, tail },
    ]);
    expect(harness.entries[0]!.bytes).toBe(Buffer.byteLength(lines(1, 1)[0]!));
  });

  it("hashes each checkpoint's tail from the bytes just before its offset, also for chunks ending across 1 MiB reads", async () => {
    // ~3 MiB of lines of varied length, so chunk ends fall at every distance from a read's start.
    const ls = Array.from({ length: 30_000 }, (_, i) => JSON.stringify({ id: `r${i}`, pad: "x".repeat(i % 97) }));
    const content = ndjson(ls);
    await writeFile(inputPath, content);
    const { harness } = await runOnce({}, 37);
    const bytes = Buffer.from(content);
    const expected = (offset: number) => {
      const n = Math.min(offset, 1024);
      return { bytes: n, sha256: createHash("sha256").update(bytes.subarray(offset - n, offset)).digest("hex") };
    };
    const checkpoints = harness.chunks.map((c) => c.checkpoint as FileCheckpoint);
    expect(checkpoints.length).toBe(Math.ceil(30_000 / 37));
    for (const c of checkpoints) expect(c.tail).toEqual(expected(c.offset));
  });

  it("gives records without an id a stable fallback id from the file's generation and the line's byte offset", async () => {
    await writeFile(inputPath, '{"a":1}\n{"a":22}\n{"a":333}\n');
    const run = await runOnce();
    const first = run.harness.entries.map((e) => e.id);
    const token = tokenOf(run.harness);
    expect(first).toEqual([`logs:${token}:0`, `logs:${token}:8`, `logs:${token}:17`]);
    const second = (await runOnce({}, 100, join(tmp.path, "other-data"))).harness.entries.map((e) => e.id);
    expect(second).toEqual(first);
  });

  it("cuts out no text when the handle wants none, and gives the same ids (fallback ones too), sizes and checkpoints", async () => {
    class TextHarness extends SourceHarness {
      readonly texts: (string | undefined)[] = [];
      override record(payload: JsonObject, bytes: number, position: string | number, text?: string, envelope?: unknown, positionPrefix?: string): Entry {
        this.texts.push(text);
        return super.record(payload, bytes, position, text, envelope, positionPrefix);
      }
    }
    await writeFile(inputPath, ndjson([...lines(1, 150), '{"a":1}', '{"a":"é22"}', ...lines(151, 260)]));
    const read = async (wantsText: boolean | undefined, dir: string) => {
      const harness = new TextHarness({ source: "logs", chunkSize: 50, ...(wantsText !== undefined && { wantsText }) });
      await makeSource({}, { dir: join(tmp.path, dir) }).source.run(harness, new AbortController().signal);
      return harness;
    };
    const withText = await read(undefined, "a");
    const without = await read(false, "b");
    expect(without.texts.every((t) => t === undefined)).toBe(true);
    expect(withText.texts.every((t) => t !== undefined)).toBe(true);
    expect(without.entries.map((e) => [e.id, e.bytes])).toEqual(withText.entries.map((e) => [e.id, e.bytes]));
    expect(without.entries[150]!.id).toBe(`logs:${tokenOf(without)}:${Buffer.byteLength(ndjson(lines(1, 150)))}`);
    expect(without.chunks.map((c) => c.checkpoint)).toEqual(withText.chunks.map((c) => c.checkpoint));
  });

  it("dead-letters lines that are not JSON objects with path:line, and goes on", async () => {
    await writeFile(inputPath, '{"a":1}\nnot json\n[1,2]\n42\n"s"\nnull\n{"a":2}\n');
    const { harness } = await runOnce();
    expect(harness.payloads).toEqual([{ a: 1 }, { a: 2 }]);
    const failures = harness.failures;
    expect(failures.map((f) => f.raw)).toEqual(["not json", "[1,2]", "42", '"s"', "null"]);
    expect(failures.map((f) => failureOf(f).code)).toEqual(Array(5).fill("ERR_RECORD_MALFORMED"));
    expect(failures.map((f) => failureOf(f).location)).toEqual([2, 3, 4, 5, 6].map((n) => `${inputPath}:${n}`));
    expect(failureOf(failures[0]!).message).toMatch(/JSON/);
    expect(failureOf(failures[1]!).message).toBe("line is not a JSON object");
    expect(failures[0]!.id).toBe(`logs:${tokenOf(harness)}:8`);
    // Order is kept: the bad line sits between its neighbours.
    expect(harness.entries.map((e) => e.failure === undefined)).toEqual([true, false, false, false, false, false, true]);
  });

  it("never lets bad lines that look like objects merge into neighbours when a run is parsed at once", async () => {
    // Each bad line starts with { and ends with }. Joined with commas, lines 2 and 3 parse as one
    // object ({"s":"},{"}) and line 4 adds an element, so the run has one element per line: only
    // the top-level-comma check sends it down the line-by-line path.
    const lines = ['{"a":1}', '{"s":"}', '{"}', '{"x":1},{"y":2}', '{"u":"},"}', '{"a":2}'];
    await writeFile(inputPath, `${lines.join("\n")}\n`);
    const { harness } = await runOnce();
    expect(harness.payloads).toEqual([{ a: 1 }, { u: "}," }, { a: 2 }]);
    expect(harness.failures.map((f) => [f.raw, failureOf(f).location])).toEqual([
      ['{"s":"}', `${inputPath}:2`],
      ['{"}', `${inputPath}:3`],
      ['{"x":1},{"y":2}', `${inputPath}:4`],
    ]);
  });

  it("parses long runs of object lines with the right ids, sizes and line numbers", async () => {
    const lines = Array.from({ length: 250 }, (_, i) => JSON.stringify({ n: i, s: "é".repeat(i % 3) }));
    lines[137] = '{"n":137,"bad"}';
    await writeFile(inputPath, `${lines.join("\n")}\n`);
    const { harness } = await runOnce();
    expect(harness.payloads.map((p) => p.n)).toEqual([...Array(250).keys()].filter((i) => i !== 137));
    expect(failureOf(harness.failures[0]!).location).toBe(`${inputPath}:138`);
    let offset = 0;
    const token = tokenOf(harness);
    const expected = lines.map((line) => {
      const at = offset;
      offset += Buffer.byteLength(line) + 1;
      return { id: `logs:${token}:${at}`, bytes: Buffer.byteLength(line) };
    });
    expect(harness.entries.map((e) => ({ id: e.id, bytes: e.bytes }))).toEqual(expected);
  });

  it("strips \\r, skips empty and blank lines, and still counts them as lines", async () => {
    await writeFile(inputPath, '{"a":1}\r\n\r\n\n   \n\t\r\n{"a":2}\r\noops\r\n');
    const { harness } = await runOnce();
    expect(harness.payloads).toEqual([{ a: 1 }, { a: 2 }]);
    expect(harness.failures).toHaveLength(1);
    expect(harness.failures[0]!.raw).toBe("oops");
    expect(failureOf(harness.failures[0]!).location).toBe(`${inputPath}:7`);
    expect(harness.entries[1]!.bytes).toBe(7);
  });

  it("reads a last line without a newline at EOF", async () => {
    await writeFile(inputPath, '{"a":1}\n{"a":2}');
    const { harness } = await runOnce();
    expect(harness.payloads).toEqual([{ a: 1 }, { a: 2 }]);
    expect(harness.chunks.at(-1)!.checkpoint).toMatchObject({ offset: 15, line: 2 });
  });

  it("keeps byte offsets right with multi-byte characters, also across read boundaries", async () => {
    // Lines of 2-, 3- and 4-byte characters, enough for three 1 MiB reads, so reads end
    // inside a line (the stdin test below splits inside characters on purpose).
    const texts = ["é", "€", "𝄞", "ascii"];
    const all: string[] = [];
    for (let i = 0; i < 30_000; i++) all.push(JSON.stringify({ n: i, t: texts[i % 4]!.repeat(1 + (i % 50)) }));
    all.splice(25_001, 0, "naïve ✗ not json");
    const content = ndjson(all);
    await writeFile(inputPath, content);
    expect(Buffer.byteLength(content)).toBeGreaterThan(2 * 1024 * 1024);
    const { harness } = await runOnce({}, 1000);

    let offset = 0;
    const token = tokenOf(harness);
    const expectedIds = all.map((l) => {
      const id = `logs:${token}:${offset}`;
      offset += Buffer.byteLength(l) + 1;
      return id;
    });
    expect(harness.entries.map((e) => e.id)).toEqual(expectedIds);
    expect(harness.payloads).toEqual(all.filter((l) => l.startsWith("{")).map((l) => JSON.parse(l)));
    expect(harness.failures.map((f) => [f.raw, failureOf(f).location])).toEqual([["naïve ✗ not json", `${inputPath}:25002`]]);
    expect(harness.chunks.at(-1)!.checkpoint).toMatchObject({ offset: Buffer.byteLength(content), line: all.length });
    const lengths = harness.entries.filter((e) => e.failure === undefined).map((e) => e.bytes);
    expect(lengths).toEqual(all.filter((l) => l.startsWith("{")).map((l) => Buffer.byteLength(l)));
  });

  it("hands each record its own line as text, cut at characters, not bytes, whatever the reads", async () => {
    // Lines of plain `{...}` (parsed as one run) after multi-byte characters, and lines that take
    // the line-by-line path (CRLF, padding), split into reads of every size.
    class TextHarness extends SourceHarness {
      readonly texts: (string | undefined)[] = [];
      override record(payload: JsonObject, bytes: number, position: string | number, text?: string): Entry {
        this.texts.push(text);
        return super.record(payload, bytes, position);
      }
    }
    const plain = ['{"a":"é"}', '{"b":1}', '{"c":"€𝄞"}', '{"d":[1,{"e":"ü"}]}', '{"g":2}'];
    const other = [' {"f":"é"} ', '{"h":"€"}'];
    for (const [lines, content] of [
      [plain, `${plain.join("\n")}\n`],
      [[...plain, ...other], `${plain.join("\n")}\n${other.join("\r\n")}\r\n`],
    ] as const) {
      const bytes = Buffer.from(content);
      for (const size of [1, 3, 7, 16, 40, bytes.length]) {
        const parts: Buffer[] = [];
        for (let i = 0; i < bytes.length; i += size) parts.push(bytes.subarray(i, i + size));
        const harness = new TextHarness({ source: "s", chunkSize: 100 });
        await readNdjsonStream(Readable.from(parts), harness, new AbortController().signal, { location: "stdin", maxLineBytes: 1024 });
        expect(harness.texts, `reads of ${size} bytes`).toEqual(lines);
      }
    }
  });

  it("dead-letters a line longer than max_line_bytes with its location and reads on", async () => {
    const long = JSON.stringify({ a: "x".repeat(200) });
    await writeFile(inputPath, `{"a":1}\n${long}\n{"a":2}\n${"y".repeat(5000)}`);
    const { harness } = await runOnce({ max_line_bytes: 64 });
    expect(harness.payloads).toEqual([{ a: 1 }, { a: 2 }]);
    expect(harness.failures).toHaveLength(2);
    for (const [i, f] of harness.failures.entries()) {
      const error = failureOf(f);
      expect(error.code).toBe("ERR_RECORD_MALFORMED");
      expect(error.message).toMatch(/^line exceeds max_line_bytes/);
      expect(error.location).toBe(`${inputPath}:${i === 0 ? 2 : 4}`);
      expect(f.raw!.length).toBeLessThanOrEqual(1024);
    }
    expect(harness.failures[0]!.raw).toBe(long);
    expect(harness.failures[1]!.id).toBe(`logs:${tokenOf(harness)}:${8 + long.length + 1 + 8}`);
  });

  it("accepts a line of exactly max_line_bytes, with or without \\r", async () => {
    const exact = JSON.stringify({ a: "x".repeat(56) });
    expect(exact.length).toBe(64);
    await writeFile(inputPath, `${exact}\r\n${exact}\n`);
    const { harness } = await runOnce({ max_line_bytes: 64 });
    expect(harness.failures).toHaveLength(0);
    expect(harness.payloads).toHaveLength(2);
  });

  it("skips a byte order mark at the start of the file instead of dead-lettering the first line", async () => {
    await writeFile(inputPath, Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from('{"a":1}\r\n{"a":2}\r\n')]));
    const { harness } = await runOnce();
    expect(harness.failures).toEqual([]);
    expect(harness.payloads).toEqual([{ a: 1 }, { a: 2 }]);
    const token = tokenOf(harness);
    expect(harness.entries.map((e) => e.id)).toEqual([`logs:${token}:0`, `logs:${token}:12`]);

    // Only at the start: a BOM later in the file is no JSON and is dead-lettered.
    await writeFile(inputPath, Buffer.concat([Buffer.from('{"a":1}\n'), Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from('{"a":2}\n')]));
    const later = await runOnce({}, 100, join(tmp.path, "later"));
    expect(later.harness.payloads).toEqual([{ a: 1 }]);
    expect(failureOf(later.harness.failures[0]!).location).toBe(`${inputPath}:2`);
  });

  it("dead-letters a line that is not valid UTF-8 with its location, never delivering it with U+FFFD, and reads on", async () => {
    const bad = Buffer.concat([Buffer.from('{"name":"caf'), Buffer.from([0xe9]), Buffer.from('"}')]); // Latin-1 é
    const lines = [Buffer.from('{"a":1}'), bad, Buffer.from('{"a":2}'), Buffer.from('{"t":"é€𝄞"}')];
    const content = Buffer.concat(lines.flatMap((l) => [l, Buffer.from("\n")]));
    await writeFile(inputPath, content);
    const { harness } = await runOnce();
    expect(harness.payloads).toEqual([{ a: 1 }, { a: 2 }, { t: "é€𝄞" }]);
    expect(harness.failures).toHaveLength(1);
    const error = failureOf(harness.failures[0]!);
    expect(error.code).toBe("ERR_RECORD_MALFORMED");
    expect(error.location).toBe(`${inputPath}:2`);
    expect(error.message).toBe(`line is not valid UTF-8 (the line starts at byte 8; its bytes in base64: ${bad.toString("base64")})`);
    // The raw text shows the bad byte as U+FFFD; the message keeps the line's exact bytes.
    expect(Buffer.from(/base64: (\S+)\)$/.exec(error.message)![1]!, "base64").equals(bad)).toBe(true);
    expect(harness.failures[0]!.id).toBe(`logs:${tokenOf(harness)}:8`);
    expect(harness.failures[0]!.raw).toBe('{"name":"caf\ufffd"}');

    // The same whatever the reads: split inside the bad line and inside characters.
    for (const size of [1, 2, 5, 13]) {
      const parts: Buffer[] = [];
      for (let i = 0; i < content.length; i += size) parts.push(content.subarray(i, i + size));
      const split = new SourceHarness({ source: "s", chunkSize: 2 });
      await readNdjsonStream(Readable.from(parts), split, new AbortController().signal, { location: "stdin", maxLineBytes: 1024 });
      expect(split.payloads, `reads of ${size} bytes`).toEqual([{ a: 1 }, { a: 2 }, { t: "é€𝄞" }]);
      expect(split.failures.map((f) => [f.id, failureOf(f).location]), `reads of ${size} bytes`).toEqual([["s:8", "stdin:2"]]);
    }
  });

  it("fails with ERR_SOURCE_READ when the file does not exist", async () => {
    const { source } = makeSource({ path: "missing.ndjson" });
    await expect(source.run(new SourceHarness(), new AbortController().signal)).rejects.toMatchObject({
      code: "ERR_SOURCE_READ",
      location: join(tmp.path, "missing.ndjson"),
    });
  });

  it("stops pulling while enqueue waits (backpressure)", async () => {
    await writeFile(inputPath, ndjson(lines(1, 50)));
    const { source } = makeSource({});
    const harness = new SourceHarness({ source: "logs", chunkSize: 10 });
    let release: () => void = () => {};
    harness.onEnqueue = (chunk) => (chunk.seq === 1 ? new Promise<void>((r) => (release = r)) : undefined);
    const done = source.run(harness, new AbortController().signal);
    await vi.waitFor(() => expect(harness.chunks).toHaveLength(2));
    await new Promise((r) => setTimeout(r, 20));
    expect(harness.chunks).toHaveLength(2);
    release();
    await done;
    expect(harness.entries).toHaveLength(50);
  });

  it("stops when aborted or told `stopping`, without enqueueing more", async () => {
    await writeFile(inputPath, ndjson(lines(1, 50)));
    const controller = new AbortController();
    const aborted = new SourceHarness({ source: "logs", chunkSize: 10 });
    aborted.onEnqueue = (chunk) => {
      if (chunk.seq === 1) controller.abort();
    };
    await makeSource({}).source.run(aborted, controller.signal);
    expect(aborted.chunks).toHaveLength(2);

    const stopping = new SourceHarness({ source: "logs", chunkSize: 10 });
    stopping.outcome = "stopping";
    await makeSource({}).source.run(stopping, new AbortController().signal);
    expect(stopping.chunks).toHaveLength(1);
  });
});

describe("file source: checkpoints", () => {
  it("resumes after the acked checkpoint in a new instance, with line numbers continuing", async () => {
    const all = lines(1, 35);
    all[24] = "broken line 25";
    await writeFile(inputPath, ndjson(all));
    const first = await runOnce({}, 10);
    await first.harness.ackThrough(first.source, 1);
    await first.source.close();
    const saved = await savedCheckpoint();
    const expectedOffset = Buffer.byteLength(ndjson(all.slice(0, 20)));
    const st = await stat(inputPath, { bigint: true });
    const token = tokenOf(first.harness);
    expect(saved).toEqual({
      version: 3,
      path: inputPath,
      offset: expectedOffset,
      line: 20,
      size_at_ack: Buffer.byteLength(ndjson(all)),
      dev: String(st.dev),
      ino: String(st.ino),
      fingerprint: { bytes: Buffer.byteLength(all[0]!), sha256: expect.stringMatching(/^[0-9a-f]{64}$/), complete: true },
      epoch: 0,
      generation: token,
      trail: [],
      tail: { bytes: expectedOffset, sha256: expect.stringMatching(/^[0-9a-f]{64}$/) },
      known: [{ dev: String(st.dev), ino: String(st.ino) }],
    });

    const second = await runOnce({}, 10);
    expect(second.harness.entries.map((e) => e.id)[0]).toBe("r21");
    expect(second.harness.entries).toHaveLength(15);
    expect(failureOf(second.harness.failures[0]!).location).toBe(`${inputPath}:25`);
    expect(second.harness.failures[0]!.id).toBe(`logs:${token}:${Buffer.byteLength(ndjson(all.slice(0, 24)))}`);
    expect(second.logger.at("info").some((l) => l.msg === "resuming from checkpoint")).toBe(true);
    expect(second.logger.at("warn")).toHaveLength(0);
  });

  it("reads from the start in a fresh data_dir", async () => {
    await writeFile(inputPath, ndjson(lines(1, 30)));
    const first = await runOnce({}, 10);
    await first.harness.ackThrough(first.source);
    await first.source.close();
    const fresh = await runOnce({}, 10, join(tmp.path, "fresh-data"));
    expect(fresh.harness.entries).toHaveLength(30);
    expect(fresh.logger.at("info").some((l) => l.msg === "no checkpoint; reading from the start")).toBe(true);
  });

  it("never checkpoints a chunk that was not acked (a fresh start saves only the start of the file)", async () => {
    await writeFile(inputPath, ndjson(lines(1, 30)));
    const unacked = await runOnce({}, 10);
    await unacked.source.close();
    expect(await savedCheckpoint()).toMatchObject({ offset: 0, line: 0, epoch: 0, generation: tokenOf(unacked.harness) });

    const partly = await runOnce({}, 10);
    await partly.harness.ackThrough(partly.source, 0);
    await partly.source.close();
    expect(await savedCheckpoint()).toMatchObject({ offset: (partly.harness.chunks[0]!.checkpoint as FileCheckpoint).offset, line: 10 });
  });

  it("writes at most once per checkpoint_interval, the newest acked one, and once more at close", async () => {
    await writeFile(inputPath, ndjson(lines(1, 40)));
    const clock = new FakeClock();
    const { source } = makeSource({ checkpoint_interval: "1s" }, { clock });
    const harness = new SourceHarness({ source: "logs", chunkSize: 10 });
    await source.run(harness, new AbortController().signal);
    const offsetOf = (i: number) => (harness.chunks[i]!.checkpoint as FileCheckpoint).offset;

    await harness.ackThrough(source, 0);
    expect((await savedCheckpoint()).offset).toBe(offsetOf(0));
    await harness.ackThrough(source, 1);
    await harness.ackThrough(source, 2);
    expect((await savedCheckpoint()).offset).toBe(offsetOf(0));
    expect(clock.pendingTimers).toBe(1);

    await clock.advanceAsync(1000);
    await vi.waitFor(async () => expect((await savedCheckpoint()).offset).toBe(offsetOf(2)));

    await harness.ackThrough(source, 3);
    expect((await savedCheckpoint()).offset).toBe(offsetOf(2));
    await source.close();
    expect(await savedCheckpoint()).toMatchObject({ offset: offsetOf(3), line: 40 });
    expect(clock.pendingTimers).toBe(0);
  });

  it("leaves no temp files next to the checkpoint", async () => {
    await writeFile(inputPath, ndjson(lines(1, 5)));
    const run = await runOnce();
    await run.harness.ackThrough(run.source);
    await run.source.close();
    const { readdir } = await import("node:fs/promises");
    expect(await readdir(join(dataDir, "checkpoints"))).toEqual(["logs.json"]);
  });

  it("starts from 0 with a warning when the file is now shorter than the checkpoint (truncated)", async () => {
    await writeFile(inputPath, ndjson(lines(1, 30)));
    const first = await runOnce({}, 10);
    await first.harness.ackThrough(first.source);
    await first.source.close();

    await writeFile(inputPath, ndjson(lines(101, 105))); // same inode, O_TRUNC
    const second = await runOnce({}, 10);
    expect(second.harness.entries.map((e) => e.id)).toEqual(["r101", "r102", "r103", "r104", "r105"]);
    expect(second.logger.at("warn").map((l) => l.msg)).toEqual(["file is shorter than at the checkpoint (truncated); reading it from the start as a new generation"]);
  });

  it("starts from 0 with a warning when the file was replaced (inode changed)", async () => {
    await writeFile(inputPath, ndjson(lines(1, 10)));
    const first = await runOnce({}, 5);
    await first.harness.ackThrough(first.source);
    await first.source.close();

    const replacement = join(tmp.path, "replacement.ndjson");
    await writeFile(replacement, ndjson(lines(201, 240))); // longer than the old offset
    await rename(replacement, inputPath);
    const second = await runOnce({}, 100);
    expect(second.harness.entries).toHaveLength(40);
    expect(second.harness.entries[0]!.id).toBe("r201");
    expect(second.logger.at("warn").map((l) => l.msg)).toEqual([
      "file was replaced since the checkpoint (inode changed); reading it from the start as a new generation",
    ]);
  });

  it("ignores a checkpoint saved for another path, and a corrupt checkpoint file", async () => {
    await writeFile(inputPath, ndjson(lines(1, 10)));
    const first = await runOnce({}, 5);
    await first.harness.ackThrough(first.source);
    await first.source.close();

    await writeFile(join(tmp.path, "other.ndjson"), ndjson(lines(1, 10)));
    const other = await runOnce({ path: "other.ndjson" }, 5);
    expect(other.harness.entries).toHaveLength(10);

    await writeFile(join(dataDir, "checkpoints", "logs.json"), "{ not json");
    const corrupt = await runOnce({}, 5);
    expect(corrupt.harness.entries).toHaveLength(10);
    expect(corrupt.logger.at("warn").map((l) => l.msg)).toEqual(["checkpoint file is not valid; reading from the start"]);
  });
});

describe("file source: generations between runs", () => {
  const unkeyed = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => JSON.stringify({ n: from + i }));

  async function runAndAck(raw: Record<string, unknown> = {}, chunkSize = 10): Promise<Made & { harness: SourceHarness }> {
    const run = await runOnce(raw, chunkSize);
    await run.harness.ackThrough(run.source);
    await run.source.close();
    return run;
  }

  it("reads a file that shrank and was rewritten from the start, under ids no earlier line had", async () => {
    await writeFile(inputPath, ndjson(unkeyed(1, 100)));
    const first = await runAndAck();
    await writeFile(inputPath, ndjson(unkeyed(1001, 1050))); // same inode, O_TRUNC, shorter
    const second = await runAndAck();
    expect(second.harness.payloads.map((p) => p.n)).toEqual(Array.from({ length: 50 }, (_, i) => 1001 + i));
    const before = new Set(first.harness.entries.map((e) => e.id));
    expect(second.harness.entries.filter((e) => before.has(e.id))).toEqual([]);
    expect((await savedCheckpoint()).generation).not.toBe(tokenOf(first.harness));
  });

  it("reads a file truncated and regrown past the checkpoint (same inode) from the start: its first line changed", async () => {
    await writeFile(inputPath, ndjson(unkeyed(1, 10)));
    const first = await runAndAck();
    const ino = (await stat(inputPath)).ino;
    await truncate(inputPath, 0);
    await appendFile(inputPath, ndjson(unkeyed(501, 540))); // longer than the checkpoint's offset
    expect((await stat(inputPath)).ino).toBe(ino);
    const second = await runAndAck();
    expect(second.harness.payloads.map((p) => p.n)).toEqual(Array.from({ length: 40 }, (_, i) => 501 + i));
    expect(second.logger.at("warn").map((l) => l.msg)).toEqual(["file no longer starts as it did at the checkpoint (rewritten); reading it from the start as a new generation"]);
    const before = new Set(first.harness.entries.map((e) => e.id));
    expect(second.harness.entries.filter((e) => before.has(e.id))).toEqual([]);
  });

  it("reads a file regrown past the checkpoint with the same first line from the start when it is shorter than at the last ack", async () => {
    await writeFile(inputPath, ndjson(unkeyed(1, 30)));
    const first = await runOnce({}, 10);
    await first.harness.ackThrough(first.source, 0); // acked at line 10, with 30 lines read
    await first.source.close();
    // Truncated to its first line, then regrown past the checkpoint but not to the size at the ack.
    await writeFile(inputPath, ndjson([...unkeyed(1, 1), ...unkeyed(201, 215)]));
    expect((await stat(inputPath)).size).toBeGreaterThan((await savedCheckpoint()).offset as number);
    const second = await runAndAck();
    expect(second.harness.payloads.map((p) => p.n)).toEqual([1, ...Array.from({ length: 15 }, (_, i) => 201 + i)]);
    expect(second.logger.at("warn").map((l) => l.msg)).toEqual(["file is shorter than at the checkpoint (truncated); reading it from the start as a new generation"]);
    // Its first line is the old first line, at the same offset: the epoch keeps the ids apart.
    expect(second.harness.entries[0]!.id).not.toBe(first.harness.entries[0]!.id);
  });

  it("finishes a file rotated by rename since the last run, found by its inode, then reads the new one", async () => {
    await writeFile(inputPath, ndjson(unkeyed(1, 30)));
    const first = await runOnce({}, 10);
    await first.harness.ackThrough(first.source, 1); // lines 21-30 were read, never acked
    await first.source.close();
    await appendFile(inputPath, ndjson(unkeyed(31, 35)));
    await rename(inputPath, join(tmp.path, "in.ndjson.1"));
    await writeFile(inputPath, ndjson(unkeyed(101, 105)));
    const second = await runAndAck();
    expect(second.harness.payloads.map((p) => p.n)).toEqual([...Array.from({ length: 15 }, (_, i) => 21 + i), 101, 102, 103, 104, 105]);
    // The rest of the old generation keeps its ids: the redelivered lines 21-30 match the first run's.
    expect(second.harness.entries.slice(0, 10).map((e) => e.id)).toEqual(first.harness.entries.slice(20, 30).map((e) => e.id));
    expect(second.logger.at("info").find((l) => l.msg?.startsWith("reading files rotated since the checkpoint"))?.obj).toMatchObject({ files: [join(tmp.path, "in.ndjson.1"), inputPath] });
    expect(await savedCheckpoint()).toMatchObject({ offset: Buffer.byteLength(ndjson(unkeyed(101, 105))), line: 5, trail: [] });
  });

  it("after rotations while nothing was acked, reads every rotated file from the checkpoint's trail, under the ids they had", async () => {
    await writeFile(inputPath, ndjson(unkeyed(1, 10)));
    const clock = new FakeClock();
    const { source } = makeSource({ follow: true }, { clock });
    const harness = new SourceHarness({ source: "logs", chunkSize: 5 });
    const controller = new AbortController();
    const done = source.run(harness, controller.signal);
    const poll = async () => {
      await clock.advanceAsync(250);
      await vi.waitFor(() => expect(clock.pendingTimers).toBe(1));
    };
    await vi.waitFor(() => expect(clock.pendingTimers).toBe(1));
    for (const [n, from, to] of [[1, 11, 15], [2, 16, 20]] as const) {
      await rename(inputPath, join(tmp.path, `in.ndjson.${n}`));
      await writeFile(inputPath, ndjson(unkeyed(from, to)));
      await poll();
      await poll();
    }
    controller.abort();
    await done;
    await source.close(); // nothing acked: a sink was down all along
    expect(harness.payloads.map((p) => p.n)).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
    expect((await savedCheckpoint()).trail).toHaveLength(2);

    // While sluice is down: more lines, one more rotation.
    await appendFile(inputPath, ndjson(unkeyed(21, 22)));
    await rename(inputPath, join(tmp.path, "in.ndjson.3"));
    await writeFile(inputPath, ndjson(unkeyed(23, 25)));
    const second = await runAndAck({}, 5);
    expect(second.harness.payloads.map((p) => p.n)).toEqual(Array.from({ length: 25 }, (_, i) => i + 1));
    expect(second.harness.entries.slice(0, 20).map((e) => e.id)).toEqual(harness.entries.map((e) => e.id));
    expect(await savedCheckpoint()).toMatchObject({ offset: Buffer.byteLength(ndjson(unkeyed(23, 25))), trail: [] });
  });

  it("reads every generation rotated away while down, oldest first, before the file at the path", async () => {
    // A rotation from before the first run is history, not something this source ever had to read.
    await writeFile(join(tmp.path, "in.ndjson.9"), ndjson(unkeyed(900, 901)));
    await writeFile(inputPath, ndjson(unkeyed(1, 10)));
    await runAndAck();
    // Two rename rotations while sluice is down (logrotate shifts .1 to .2, then the path to .1).
    await rename(inputPath, join(tmp.path, "in.ndjson.1"));
    await writeFile(inputPath, ndjson(unkeyed(11, 15)));
    await rename(join(tmp.path, "in.ndjson.1"), join(tmp.path, "in.ndjson.2"));
    await rename(inputPath, join(tmp.path, "in.ndjson.1"));
    await writeFile(inputPath, ndjson(unkeyed(16, 20)));
    await writeFile(join(tmp.path, "in.ndjson.3.gz"), "not read");
    const second = await runAndAck();
    expect(second.harness.payloads.map((p) => p.n)).toEqual(Array.from({ length: 10 }, (_, i) => 11 + i));
    const infos = second.logger.at("info");
    expect(infos.find((l) => l.msg?.startsWith("reading files rotated since the checkpoint"))?.obj).toMatchObject({ files: [join(tmp.path, "in.ndjson.2"), join(tmp.path, "in.ndjson.1"), inputPath] });
    expect(infos.find((l) => l.msg?.startsWith("compressed rotated files are not read"))?.obj).toMatchObject({ files: [join(tmp.path, "in.ndjson.3.gz")] });
    expect(await savedCheckpoint()).toMatchObject({ version: 3, trail: [] });
  });

  it("reads a file rewritten with the same first line and grown past the checkpoint from the start: the bytes before the offset changed", async () => {
    const header = JSON.stringify({ header: "v1" });
    await writeFile(inputPath, ndjson([header, ...unkeyed(1, 10)]));
    const first = await runAndAck();
    await writeFile(inputPath, ndjson([header, ...unkeyed(101, 120)])); // same inode, same first line, longer
    const second = await runAndAck();
    expect(second.harness.payloads.map((p) => p.n ?? "header")).toEqual(["header", ...Array.from({ length: 20 }, (_, i) => 101 + i)]);
    expect(second.logger.at("warn").map((l) => l.msg)).toEqual(["file no longer holds the line read last before the checkpoint (rewritten); reading it from the start as a new generation"]);
    const before = new Set(first.harness.entries.map((e) => e.id));
    expect(second.harness.entries.filter((e) => before.has(e.id))).toEqual([]);
  });

  it("after a copytruncate while down, reads the rest of the checkpoint's generation from the copy under its ids, then the file", async () => {
    await writeFile(inputPath, ndjson(unkeyed(1, 30)));
    const first = await runOnce({}, 10);
    await first.harness.ackThrough(first.source, 0); // acked at line 10; 11-30 read, never acked
    await first.source.close();
    await copyFile(inputPath, join(tmp.path, "in.ndjson.1"));
    await truncate(inputPath, 0);
    await appendFile(inputPath, ndjson(unkeyed(101, 103)));
    const second = await runAndAck();
    expect(second.harness.payloads.map((p) => p.n)).toEqual([...Array.from({ length: 20 }, (_, i) => 11 + i), 101, 102, 103]);
    expect(second.harness.entries.slice(0, 20).map((e) => e.id)).toEqual(first.harness.entries.slice(10, 30).map((e) => e.id));
    expect(second.logger.at("info").map((l) => l.msg)).toContain("reading the rest of the file from its copy (copytruncate), then the file at the path from its start");
  });

  it("with a version 2 checkpoint, names the rotated files it cannot place in a warning instead of skipping them silently", async () => {
    await writeFile(inputPath, ndjson(unkeyed(1, 10)));
    await runAndAck();
    const v2 = await savedCheckpoint();
    delete v2.known;
    delete v2.tail;
    await writeFile(join(dataDir, "checkpoints", "logs.json"), JSON.stringify({ ...v2, version: 2 }));
    await rename(inputPath, join(tmp.path, "in.ndjson.1"));
    await writeFile(inputPath, ndjson(unkeyed(11, 12)));
    await rename(join(tmp.path, "in.ndjson.1"), join(tmp.path, "in.ndjson.2"));
    await rename(inputPath, join(tmp.path, "in.ndjson.1"));
    await writeFile(inputPath, ndjson(unkeyed(21, 22)));
    const second = await runAndAck();
    expect(second.harness.payloads.map((p) => p.n)).toEqual([21, 22]);
    const warning = second.logger.at("warn").find((l) => l.msg?.includes("does not say which rotated files were read"));
    expect(warning?.obj).toMatchObject({ files: [join(tmp.path, "in.ndjson.1")] });
  });

  it("migrates a checkpoint written before generations: resumes at its offset, with the ids that version gave", async () => {
    const all = unkeyed(1, 20);
    await writeFile(inputPath, ndjson(all));
    const offset = Buffer.byteLength(ndjson(all.slice(0, 12)));
    const { ino, size } = await stat(inputPath, { bigint: true });
    await mkdir(join(dataDir, "checkpoints"), { recursive: true });
    await writeFile(join(dataDir, "checkpoints", "logs.json"), JSON.stringify({ path: inputPath, offset, line: 12, ino: String(ino), size_at_ack: Number(size) }));
    const run = await runAndAck();
    expect(run.harness.payloads.map((p) => p.n)).toEqual([13, 14, 15, 16, 17, 18, 19, 20]);
    expect(run.harness.entries[0]!.id).toBe(`logs:${offset}`);
    expect(run.logger.at("warn")).toEqual([]);
    expect(await savedCheckpoint()).toMatchObject({ version: 3, generation: "", epoch: 0, line: 20, ino: String(ino) });
  });
});

describe("file source: named pipes", () => {
  it("reads what a writer writes into a FIFO until it closes its end, and saves no checkpoint", async () => {
    execFileSync("mkfifo", [inputPath]);
    const { source, logger } = makeSource({});
    const harness = new SourceHarness({ source: "logs" });
    const done = source.run(harness, new AbortController().signal);
    const writer = await open(inputPath, "w");
    await writer.write('{"id":"a"}\n{"b":1}\n');
    await writer.close();
    await done;
    expect(harness.entries.map((e) => e.id)).toEqual(["a", "logs:11"]);
    await harness.ackThrough(source);
    await source.close();
    expect(existsSync(join(dataDir, "checkpoints"))).toBe(false);
    expect(logger.at("info").map((l) => l.msg)).toContain("reading NDJSON from a named pipe until its writer closes it; a pipe has no checkpoint");
  });

  it("returns promptly when stopped while a FIFO has no writer", async () => {
    execFileSync("mkfifo", [inputPath]);
    const controller = new AbortController();
    const done = makeSource({ follow: true }).source.run(new SourceHarness(), controller.signal);
    await new Promise((r) => setTimeout(r, 50));
    controller.abort();
    await expect(done).resolves.toBeUndefined();
  });
});

describe("file source: follow", () => {
  /** Advances the poll timer and waits until the source has read and gone back to sleep. */
  async function poll(clock: FakeClock): Promise<void> {
    await clock.advanceAsync(250);
    await vi.waitFor(() => expect(clock.pendingTimers).toBe(1));
  }

  it("picks up appended lines and waits for the newline of a partial line", async () => {
    await writeFile(inputPath, ndjson(lines(1, 3)));
    const clock = new FakeClock();
    const { source } = makeSource({ follow: true }, { clock });
    const harness = new SourceHarness({ source: "logs", chunkSize: 100 });
    const controller = new AbortController();
    const done = source.run(harness, controller.signal);

    await vi.waitFor(() => expect(clock.pendingTimers).toBe(1));
    // A half chunk is handed over before the source waits.
    expect(harness.entries).toHaveLength(3);

    await appendFile(inputPath, `${ndjson(lines(4, 5))}{"id":"r6",`);
    await poll(clock);
    expect(harness.entries.map((e) => e.id)).toEqual(["r1", "r2", "r3", "r4", "r5"]);
    const offsetBeforePartial = Buffer.byteLength(ndjson(lines(1, 5)));
    expect(harness.chunks.at(-1)!.checkpoint).toMatchObject({ offset: offsetBeforePartial, line: 5 });

    await poll(clock);
    expect(harness.entries).toHaveLength(5);

    await appendFile(inputPath, '"n":6}\n');
    await poll(clock);
    expect(harness.entries.map((e) => e.id)).toEqual(["r1", "r2", "r3", "r4", "r5", "r6"]);
    expect(harness.failures).toHaveLength(0);

    controller.abort();
    await done;
  });

  it("waits for a file that does not exist yet, then reads it", async () => {
    const clock = new FakeClock();
    const { source, logger } = makeSource({ follow: true }, { clock });
    const harness = new SourceHarness({ source: "logs", chunkSize: 100 });
    const controller = new AbortController();
    const done = source.run(harness, controller.signal);
    await vi.waitFor(() => expect(clock.pendingTimers).toBe(1));
    await poll(clock);
    expect(logger.at("info").map((l) => l.msg)).toEqual(["file does not exist yet; waiting for it (follow)"]);

    await writeFile(inputPath, ndjson(lines(1, 2)));
    await poll(clock);
    expect(harness.entries.map((e) => e.id)).toEqual(["r1", "r2"]);
    controller.abort();
    await done;
  });

  it("ends when stopped while waiting for the file to appear", async () => {
    const clock = new FakeClock();
    const { source } = makeSource({ follow: true }, { clock });
    const controller = new AbortController();
    const done = source.run(new SourceHarness(), controller.signal);
    await vi.waitFor(() => expect(clock.pendingTimers).toBe(1));
    controller.abort();
    await expect(done).resolves.toBeUndefined();
  });

  it("resolves only when the signal aborts", async () => {
    await writeFile(inputPath, ndjson(lines(1, 2)));
    const clock = new FakeClock();
    const { source } = makeSource({ follow: true }, { clock });
    const controller = new AbortController();
    let settled = false;
    const done = source.run(new SourceHarness(), controller.signal).then(() => (settled = true));
    await poll(clock);
    await poll(clock);
    expect(settled).toBe(false);
    controller.abort();
    await done;
    expect(settled).toBe(true);
  });

  it("reads a truncated file again from the start", async () => {
    await writeFile(inputPath, ndjson(lines(1, 5)));
    const clock = new FakeClock();
    const { source, logger } = makeSource({ follow: true }, { clock });
    const harness = new SourceHarness();
    const controller = new AbortController();
    const done = source.run(harness, controller.signal);
    await vi.waitFor(() => expect(harness.entries).toHaveLength(5));

    await truncate(inputPath, 0);
    await appendFile(inputPath, ndjson(lines(50, 51)));
    await poll(clock);
    await poll(clock);
    expect(harness.entries.map((e) => e.id)).toEqual(["r1", "r2", "r3", "r4", "r5", "r50", "r51"]);
    expect(harness.chunks.at(-1)!.checkpoint).toMatchObject({ offset: Buffer.byteLength(ndjson(lines(50, 51))), line: 2 });
    expect(tokenOf(harness, harness.chunks.length - 1)).not.toBe(tokenOf(harness));
    expect(logger.at("warn").map((l) => l.msg)).toEqual(["file was truncated; reading it again from the start as a new generation"]);
    controller.abort();
    await done;
  });

  it("follows a rotation: finishes the old file, then reads the new one from the start", async () => {
    await writeFile(inputPath, ndjson(lines(1, 2)));
    const clock = new FakeClock();
    const { source } = makeSource({ follow: true }, { clock });
    const harness = new SourceHarness();
    const controller = new AbortController();
    const done = source.run(harness, controller.signal);
    await vi.waitFor(() => expect(clock.pendingTimers).toBe(1));
    const oldIno = (harness.chunks[0]!.checkpoint as FileCheckpoint).generation.identity.ino;

    await appendFile(inputPath, `${ndjson(lines(3, 3))}{"id":"r4"}`); // written just before rotation
    await rename(inputPath, join(tmp.path, "in.ndjson.1"));
    await writeFile(inputPath, ndjson(lines(100, 101)));
    await poll(clock);
    await poll(clock);
    expect(harness.entries.map((e) => e.id)).toEqual(["r1", "r2", "r3", "r4", "r100", "r101"]);
    const last = harness.chunks.at(-1)!.checkpoint as FileCheckpoint;
    expect(last.generation.identity.ino).not.toBe(oldIno);
    expect(last).toMatchObject({ offset: Buffer.byteLength(ndjson(lines(100, 101))), line: 2 });
    controller.abort();
    await done;
  });
});

describe("file source: follow across rotations, records without ids", () => {
  const unkeyed = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => JSON.stringify({ n: from + i }));

  async function poll(clock: FakeClock): Promise<void> {
    await clock.advanceAsync(250);
    await vi.waitFor(() => expect(clock.pendingTimers).toBe(1));
  }

  async function following(): Promise<{ harness: SourceHarness; clock: FakeClock; logger: CapturingLogger; stop: () => Promise<void> }> {
    const clock = new FakeClock();
    const { source, logger } = makeSource({ follow: true }, { clock });
    const harness = new SourceHarness({ source: "logs" });
    const controller = new AbortController();
    const done = source.run(harness, controller.signal);
    await vi.waitFor(() => expect(clock.pendingTimers).toBe(1));
    return {
      harness,
      clock,
      logger,
      stop: async () => {
        controller.abort();
        await done;
      },
    };
  }

  const uniqueIds = (h: SourceHarness) => new Set(h.entries.map((e) => e.id)).size;

  it("rename rotation: the old file is read to its end (writes after the rename included), the new one under other ids", async () => {
    await writeFile(inputPath, ndjson(unkeyed(1, 3)));
    const f = await following();
    await rename(inputPath, join(tmp.path, "in.ndjson.1"));
    await writeFile(inputPath, ndjson(unkeyed(101, 103))); // same offsets as lines 1-3
    await poll(f.clock);
    // The writer has not reopened yet: it still appends to the renamed file.
    await appendFile(join(tmp.path, "in.ndjson.1"), ndjson(unkeyed(4, 5)));
    await poll(f.clock);
    await poll(f.clock);
    expect(f.harness.payloads.map((p) => p.n)).toEqual([1, 2, 3, 4, 5, 101, 102, 103]);
    expect(uniqueIds(f.harness)).toBe(8);
    await f.stop();
  });

  it("two rename rotations while the source is held back: the generation between them is read too, in order", async () => {
    await writeFile(inputPath, ndjson(unkeyed(1, 4)));
    const clock = new FakeClock();
    const { source } = makeSource({ follow: true }, { clock });
    const harness = new SourceHarness({ source: "logs", chunkSize: 2 });
    let release: () => void = () => {};
    const held = new Promise<void>((r) => (release = r));
    harness.onEnqueue = () => held; // a sink that lags: the source waits on its first chunk
    const controller = new AbortController();
    const done = source.run(harness, controller.signal);
    await vi.waitFor(() => expect(harness.chunks).toHaveLength(1));
    await rename(inputPath, join(tmp.path, "in.ndjson.1"));
    await writeFile(inputPath, ndjson(unkeyed(11, 13)));
    await rename(join(tmp.path, "in.ndjson.1"), join(tmp.path, "in.ndjson.2"));
    await rename(inputPath, join(tmp.path, "in.ndjson.1"));
    await writeFile(inputPath, ndjson(unkeyed(21, 23)));
    harness.onEnqueue = undefined;
    release();
    await vi.waitFor(() => expect(clock.pendingTimers).toBe(1));
    for (let i = 0; i < 4; i++) await poll(clock);
    expect(harness.payloads.map((p) => p.n)).toEqual([1, 2, 3, 4, 11, 12, 13, 21, 22, 23]);
    expect(uniqueIds(harness)).toBe(10);
    controller.abort();
    await done;
  });

  it("a rewrite with the same first line, grown past the position between two polls, is read from its start", async () => {
    const header = JSON.stringify({ header: "v1" });
    await writeFile(inputPath, ndjson([header, ...unkeyed(1, 3)]));
    const f = await following();
    await writeFile(inputPath, ndjson([header, ...unkeyed(11, 20)]));
    await poll(f.clock);
    await poll(f.clock);
    expect(f.harness.payloads.map((p) => p.n ?? "header")).toEqual(["header", 1, 2, 3, "header", ...Array.from({ length: 10 }, (_, i) => 11 + i)]);
    expect(uniqueIds(f.harness)).toBe(15);
    await f.stop();
  });

  it("copytruncate: what was read before the truncation is kept, the regrown file is read from its start under other ids", async () => {
    await writeFile(inputPath, ndjson(unkeyed(1, 5)));
    const f = await following();
    await copyFile(inputPath, join(tmp.path, "in.ndjson.1"));
    await truncate(inputPath, 0);
    // Regrown past the old read position before the next poll: only the first line tells.
    await appendFile(inputPath, ndjson(unkeyed(11, 20)));
    await poll(f.clock);
    expect(f.harness.payloads.map((p) => p.n)).toEqual([1, 2, 3, 4, 5, ...Array.from({ length: 10 }, (_, i) => 11 + i)]);
    expect(uniqueIds(f.harness)).toBe(15);
    expect(f.logger.at("warn").map((l) => l.msg)).toEqual(["file was truncated; reading it again from the start as a new generation"]);
    await f.stop();
  });

  it("a copytruncate that leaves the first line as it was is told by the size, and its epoch keeps the ids apart", async () => {
    await writeFile(inputPath, ndjson(unkeyed(1, 5)));
    const f = await following();
    await writeFile(inputPath, ndjson(unkeyed(1, 2)));
    await poll(f.clock);
    await poll(f.clock);
    expect(f.harness.payloads.map((p) => p.n)).toEqual([1, 2, 3, 4, 5, 1, 2]);
    expect(uniqueIds(f.harness)).toBe(7);
    await f.stop();
  });
});

describe("file source: stdin", () => {
  it("reads NDJSON from the injected stdin to EOF and keeps no checkpoint", async () => {
    const stdin = () => Readable.from([Buffer.from('{"id":"a"}\n{"id":'), Buffer.from('"b"}\nbad\n'), '{"id":"c"}']);
    const { source, logger } = makeSource({ path: "-" }, { stdin });
    const harness = new SourceHarness({ source: "logs" });
    await source.run(harness, new AbortController().signal);
    expect(harness.entries.map((e) => e.id)).toEqual(["a", "b", "logs:22", "c"]);
    expect(failureOf(harness.failures[0]!).location).toBe("stdin:3");
    expect(logger.at("info").some((l) => /stdin has no checkpoint/.test(l.msg ?? ""))).toBe(true);
    await harness.ackThrough(source);
    await source.close();
    expect(existsSync(join(dataDir, "checkpoints"))).toBe(false);
  });

  it("gives the same records however the bytes are split into chunks", async () => {
    const content = '{"t":"é€𝄞"}\r\n\n{"id":"x","t":"ü"}\n✗ bad\r\n' + JSON.stringify({ t: "z".repeat(100) }) + '\n{"t":"end"}';
    const whole = new SourceHarness({ source: "s" });
    await readNdjsonStream(Readable.from([Buffer.from(content)]), whole, new AbortController().signal, {
      location: "stdin",
      maxLineBytes: 64,
    });
    const summary = (h: SourceHarness) => h.entries.map((e) => [e.id, e.payload, e.raw, e.failure?.location, e.failure?.message]);
    expect(whole.entries).toHaveLength(5);
    expect(whole.failures.map((f) => failureOf(f).location)).toEqual(["stdin:4", "stdin:5"]);

    const bytes = Buffer.from(content);
    for (const size of [1, 2, 3, 5, 7, 64, 65]) {
      const parts: Buffer[] = [];
      for (let i = 0; i < bytes.length; i += size) parts.push(bytes.subarray(i, i + size));
      const split = new SourceHarness({ source: "s", chunkSize: 2 });
      await readNdjsonStream(Readable.from(parts), split, new AbortController().signal, {
        location: "stdin",
        maxLineBytes: 64,
      });
      expect(summary(split), `split every ${size} bytes`).toEqual(summary(whole));
    }
  });

  it("skips a huge line without newline streamed in pieces, keeping only a prefix", async () => {
    async function* huge() {
      yield Buffer.from('{"a":1}\n');
      const piece = Buffer.alloc(64 * 1024, "x");
      for (let i = 0; i < 80; i++) yield piece; // 5 MiB line
      yield Buffer.from('\n{"a":2}\n');
    }
    const harness = new SourceHarness({ source: "s" });
    await readNdjsonStream(huge(), harness, new AbortController().signal, { location: "stdin", maxLineBytes: 1024 });
    expect(harness.payloads).toEqual([{ a: 1 }, { a: 2 }]);
    expect(harness.failures).toHaveLength(1);
    expect(harness.failures[0]!.raw).toBe("x".repeat(1024));
    expect(failureOf(harness.failures[0]!).location).toBe("stdin:2");
    expect(harness.entries[2]!.id).toBe(`s:${8 + 80 * 64 * 1024 + 1}`);
  });

  it("returns promptly when aborted while the stream has nothing to give", async () => {
    const never: AsyncIterable<Buffer> = {
      [Symbol.asyncIterator]: () => ({ next: () => new Promise<IteratorResult<Buffer>>(() => {}) }),
    };
    const controller = new AbortController();
    const done = readNdjsonStream(never, new SourceHarness(), controller.signal, { location: "stdin", maxLineBytes: 100 });
    controller.abort();
    await expect(done).resolves.toBeUndefined();
  });

  it("wraps a stream error as ERR_SOURCE_READ", async () => {
    async function* failing(): AsyncGenerator<Buffer> {
      yield Buffer.from('{"a":1}\n');
      throw new Error("EIO");
    }
    await expect(
      readNdjsonStream(failing(), new SourceHarness(), new AbortController().signal, { location: "stdin", maxLineBytes: 100 }),
    ).rejects.toMatchObject({ code: "ERR_SOURCE_READ", location: "stdin" });
  });
});
