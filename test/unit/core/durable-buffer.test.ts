/**
 * DurableBuffer on real files in a temp directory. A crash is simulated by copying the log
 * directory at that instant (what a SIGKILLed process leaves behind, page cache included) and
 * opening a new buffer on the copy; the copied lock names this process, which the new buffer
 * must see as stale. Writes are counted by spying on `FileHandle.prototype.write`, O_DSYNC is read
 * from /proc/self/fdinfo, and I/O errors are injected by mocking `FileHandle.prototype.write`.
 */
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import fsp from "node:fs/promises";
import os from "node:os";
import { join } from "node:path";
import { crc32 } from "node:zlib";
import fc from "fast-check";
import { afterEach, describe, expect, it, vi } from "vitest";
import type { Chunk, PushResult } from "../../../src/core/buffer.js";
import { DurableBuffer, type DurableBufferOptions } from "../../../src/core/durable-buffer.js";
import { encodeChunk, frameHead, readAcked, readFrame } from "../../../src/core/durable-log.js";
import { SluiceError } from "../../../src/core/errors.js";
import type { InternalEvent, Logger } from "../../../src/core/events.js";
import { RecordEntry, settle, type AckTicket, type JsonObject } from "../../../src/core/record.js";
import { FakeClock, flush } from "../../helpers/fake-clock.js";

const dirs: string[] = [];
const buffers: DurableBuffer[] = [];

afterEach(async () => {
  vi.restoreAllMocks();
  for (const b of buffers.splice(0)) await b.shutdown().catch(() => {});
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

function tmpDir(): string {
  const d = fs.mkdtempSync(join(os.tmpdir(), "sluice-durable-"));
  dirs.push(d);
  return d;
}

/** A chunk of one record per id, as a source's handle builds it (all records on one ticket). */
function chunkOf(ids: readonly string[], o: { source?: string; receivedAt?: number; bytes?: number; payload?: (id: string) => JsonObject } = {}): Chunk {
  const bytes = o.bytes ?? 10;
  const ticket: AckTicket = {
    seq: -1,
    checkpoint: ids[0],
    receivedAt: o.receivedAt ?? 1_700_000_000_000,
    records: ids.length,
    bytes: ids.length * bytes,
    pending: ids.length,
    onDone: () => {},
  };
  const records = ids.map((id) => {
    const r = new RecordEntry(id, undefined, o.payload?.(id) ?? { id }, undefined, o.source ?? "src", bytes);
    r.ticket = ticket;
    return r;
  });
  return { records, ticket };
}

function ids(c: Chunk | undefined): string[] {
  return c === undefined ? [] : c.records.map((r) => r.id);
}

/** Settles every record of a pulled chunk, as the engine does once sinks commit them. */
function finish(c: Chunk): void {
  settle(c.ticket, c.records.length);
}

interface Opened {
  readonly buffer: DurableBuffer;
  readonly events: InternalEvent[];
  readonly warnings: string[];
  readonly clock: FakeClock;
}

function collectingLogger(warnings: string[]): Logger {
  return { debug: () => {}, info: () => {}, warn: (_o, msg) => warnings.push(msg ?? ""), error: (_o, msg) => warnings.push(msg ?? "") };
}

function create(dir: string, o: Partial<DurableBufferOptions> = {}): Opened {
  const events: InternalEvent[] = [];
  const warnings: string[] = [];
  const clock = new FakeClock();
  const buffer = new DurableBuffer({
    path: dir,
    maxBytes: 1 << 30,
    fsync: true,
    memory: { maxRecords: 10_000, maxBytes: 64 << 20 },
    emit: (e) => events.push(e),
    logger: collectingLogger(warnings),
    clock,
    ...o,
  });
  buffers.push(buffer);
  return { buffer, events, warnings, clock };
}

async function open(dir: string, o: Partial<DurableBufferOptions> = {}): Promise<Opened> {
  const opened = create(dir, o);
  await opened.buffer.open();
  return opened;
}

/** The log directory as a SIGKILL at this instant leaves it: a copy, which a new buffer opens. */
function crashCopy(dir: string): string {
  const copy = tmpDir();
  // Verbatim: the lock is a symlink whose target is a pid, not a path to resolve.
  fs.cpSync(dir, copy, { recursive: true, verbatimSymlinks: true });
  return copy;
}

function segments(dir: string): string[] {
  return fs.readdirSync(dir).filter((f) => f.endsWith(".seg")).sort();
}

/** Pulls `n` chunks; fails the test instead of hanging when fewer are there. */
async function pullN(buffer: DurableBuffer, n: number): Promise<Chunk[]> {
  const out: Chunk[] = [];
  for (let i = 0; i < n; i++) {
    const c = await Promise.race([buffer.pull(), new Promise<"timeout">((r) => setTimeout(() => r("timeout"), 2000))]);
    if (c === "timeout" || c === undefined) throw new Error(`pull ${i + 1} of ${n}: ${String(c)}`);
    out.push(c);
  }
  return out;
}

/** Tracks a push's promise so a test can see whether (and how) it settled. */
function track(p: Promise<PushResult>): { result: PushResult | undefined } {
  const t: { result: PushResult | undefined } = { result: undefined };
  void p.then((r) => (t.result = r));
  return t;
}

/** The open flags of this process's file descriptor on the segment being written in `dir` (Linux /proc). */
function segmentFlags(dir: string): number {
  for (const fd of fs.readdirSync("/proc/self/fd")) {
    let target: string;
    try {
      target = fs.readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      continue; // closed meanwhile
    }
    if (target.startsWith(fs.realpathSync(dir)) && target.endsWith(".seg")) {
      const flags = /^flags:\s+([0-7]+)$/m.exec(fs.readFileSync(`/proc/self/fdinfo/${fd}`, "utf8"))![1]!;
      return parseInt(flags, 8);
    }
  }
  throw new Error(`no open segment in ${dir}`);
}

async function fileHandlePrototype(dir: string): Promise<{ datasync: () => Promise<void>; write: (...args: unknown[]) => Promise<unknown> }> {
  const fh = await fsp.open(join(dir, "probe"), "w");
  const proto = Object.getPrototypeOf(fh) as { datasync: () => Promise<void>; write: (...args: unknown[]) => Promise<unknown> };
  await fh.close();
  fs.rmSync(join(dir, "probe"));
  return proto;
}

function deadPid(): number {
  const child = spawnSync(process.execPath, ["-e", ""]);
  return child.pid!;
}

/** Pushes one chunk per id, the last of each group large enough (with segmentBytes 300) to end its segment. */
async function pushSegments(buffer: DurableBuffer, groups: readonly (readonly string[])[]): Promise<void> {
  for (const group of groups) {
    for (const [i, id] of group.entries()) {
      const pad = i === group.length - 1 ? 300 : 0;
      expect(await buffer.push(chunkOf([id], { payload: (x) => ({ id: x, pad: "p".repeat(pad) }) }), false)).toBe("accepted");
    }
  }
}

describe("DurableBuffer", () => {
  it("round-trips records, malformed ones included, from memory and from disk", async () => {
    const dir = tmpDir();
    const { buffer } = await open(dir, { memory: { maxRecords: 1, maxBytes: 1 << 20 } });
    const ticket: AckTicket = { seq: -1, checkpoint: 7, receivedAt: 1_700_000_000_123, records: 3, bytes: 60, pending: 3, onDone: () => {} };
    const good = new RecordEntry("a", "k1", { id: "a", n: 1.5, nested: { x: [1, null, "é✓\u0001"] } }, 1234, "http", 42);
    const bad = new RecordEntry("http:7", undefined, {}, undefined, "http", 5);
    bad.failure = new SluiceError("ERR_RECORD_MALFORMED", "not JSON", { location: "line 7" });
    bad.raw = "{oops";
    const noLocation = new RecordEntry("http:8", "k2", {}, undefined, "http", 13);
    noLocation.failure = new SluiceError("ERR_RECORD_MALFORMED", "not an object");
    for (const r of [good, bad, noLocation]) r.ticket = ticket;
    const pushed: Chunk = { records: [good, bad, noLocation], ticket };
    expect(await buffer.push(pushed, false)).toBe("accepted");

    const check = (c: Chunk) => {
      expect(c.ticket).toMatchObject({ seq: -1, checkpoint: undefined, receivedAt: 1_700_000_000_123, records: 3, bytes: 60, pending: 3 });
      const [g, b, n] = c.records;
      expect(g).toMatchObject({ id: "a", key: "k1", payload: good.payload, eventTime: 1234, bytes: 42, source: "http", receivedAt: 1_700_000_000_123, failure: undefined, raw: undefined });
      expect(b).toMatchObject({ id: "http:7", key: undefined, payload: {}, eventTime: undefined, bytes: 5, source: "http", raw: "{oops" });
      expect(b!.failure).toBeInstanceOf(SluiceError);
      expect(b!.failure).toMatchObject({ code: "ERR_RECORD_MALFORMED", message: "not JSON", location: "line 7", retryable: false });
      expect(n!.failure).toMatchObject({ code: "ERR_RECORD_MALFORMED", message: "not an object", location: undefined });
      expect(n!.raw).toBeUndefined();
      for (const r of c.records) expect(r.ticket).toBe(c.ticket);
    };
    // Three records exceed memory.maxRecords = 1: the chunk is not kept, so pull reads it back from disk.
    const fromDisk = (await pullN(buffer, 1))[0]!;
    expect(fromDisk.records[0]).not.toBe(good);
    check(fromDisk);

    const copy = crashCopy(dir);
    const replay = await open(copy);
    check((await pullN(replay.buffer, 1))[0]!);
    expect(replay.events).toContainEqual({ type: "buffer_replayed", records: 3, chunks: 1 });
  });

  describe("lines entries (a chunk with its producer's lines, format version 2)", () => {
    /** A chunk of NDJSON `lines` whose records are those lines parsed, as the http source hands one over. */
    function linesChunk(texts: readonly string[], o: { trailingNewline?: boolean; key?: string } = {}): Chunk {
      const ticket: AckTicket = { seq: -1, checkpoint: texts[0], receivedAt: 1_700_000_000_456, records: texts.length, bytes: 0, pending: texts.length, onDone: () => {} };
      const records = texts.map((t, i) => {
        const payload = JSON.parse(t) as JsonObject;
        const r = new RecordEntry(String(payload.id), o.key, payload, i === 0 ? 99 : undefined, "http", t.length);
        r.text = t;
        r.ticket = ticket;
        return r;
      });
      const body = texts.join("\n") + (o.trailingNewline === false ? "" : "\n");
      return { records, ticket, lines: Buffer.from(body) };
    }
    const texts = ['{"id":"l1","v":1}', '{"id":"l2","s":"é✓ \\n \\"q\\""}', '{ "id" : "l3" , "n" : [1, {"x": null}] }'];

    it("writes the lines as they came after a JSON meta line, and reads them back from disk and after a crash", async () => {
      const dir = tmpDir();
      const { buffer } = await open(dir, { memory: { maxRecords: 1, maxBytes: 1 << 20 } });
      expect(await buffer.push(linesChunk(texts, { key: "k" }), false)).toBe("accepted");
      const seg = fs.readFileSync(join(dir, segments(dir)[0]!));
      const body = seg.subarray(12).toString("utf8");
      expect(body.startsWith('[0,2,"http",1700000000456,[["l1","k",99,')).toBe(true);
      expect(body.slice(body.indexOf("\n") + 1)).toBe(`${texts.join("\n")}\n`);
      const check = (c: Chunk) => {
        expect(c.records.map((r) => [r.id, r.key, r.eventTime, r.bytes, r.source, r.text, r.payload])).toEqual(
          texts.map((t, i) => [String((JSON.parse(t) as JsonObject).id), "k", i === 0 ? 99 : undefined, t.length, "http", t, JSON.parse(t)]),
        );
        expect(c.ticket.receivedAt).toBe(1_700_000_000_456);
      };
      // Three records exceed memory.maxRecords = 1: pull reads the entry back from disk.
      check((await pullN(buffer, 1))[0]!);
      const replay = await open(crashCopy(dir));
      check((await pullN(replay.buffer, 1))[0]!);
    });

    it("property: any id and key, in either kind of entry, read back as they were", () => {
      fc.assert(
        fc.property(fc.array(fc.tuple(fc.string({ unit: "binary" }), fc.option(fc.string({ unit: "binary" }), { nil: undefined })), { minLength: 1, maxLength: 5 }), fc.boolean(), (rows, withLines) => {
          const texts = rows.map((_, i) => JSON.stringify({ n: i }));
          const { ticket, lines } = linesChunk(texts);
          const records = rows.map(([id, key], i) => {
            const r = new RecordEntry(id, key, { n: i }, undefined, "http", texts[i]!.length);
            r.text = texts[i];
            r.ticket = ticket;
            return r;
          });
          const chunk: Chunk = { records, ticket, lines };
          const encoded = encodeChunk(withLines ? chunk : { records: chunk.records, ticket: chunk.ticket });
          const frame = readFrame(Buffer.concat([frameHead(7, encoded), ...encoded.parts]), 0, 0);
          if (typeof frame === "string") throw new Error(frame);
          expect(frame.records.map((r) => [r.id, r.key])).toEqual(rows);
        }),
      );
    });

    it("adds the newline a body's last line lacked", async () => {
      const dir = tmpDir();
      const { buffer } = await open(dir, { memory: { maxRecords: 1, maxBytes: 1 << 20 } });
      expect(await buffer.push(linesChunk(texts, { trailingNewline: false }), false)).toBe("accepted");
      expect((await pullN(buffer, 1))[0]!.records.map((r) => r.text)).toEqual(texts);
    });

    it("reads a log of JSON entries (earlier versions) and lines entries mixed in one segment", async () => {
      const dir = tmpDir();
      const first = await open(dir);
      await first.buffer.push(chunkOf(["j1"]), false);
      await first.buffer.push(linesChunk(texts), false);
      await first.buffer.push(chunkOf(["j2", "j3"]), false);
      const replay = await open(crashCopy(dir));
      expect((await pullN(replay.buffer, 3)).map(ids)).toEqual([["j1"], ["l1", "l2", "l3"], ["j2", "j3"]]);
      expect(replay.events).toContainEqual({ type: "buffer_replayed", records: 6, chunks: 3 });
    });

    it("cuts off a lines entry torn in its lines as a torn tail, and replays the entries before it", async () => {
      const dir = tmpDir();
      const first = await open(dir);
      await first.buffer.push(linesChunk(texts.slice(0, 1)), false);
      await first.buffer.push(linesChunk(texts), false);
      const copy = crashCopy(dir);
      const file = join(copy, segments(copy)[0]!);
      const size = fs.statSync(file).size;
      fs.truncateSync(file, size - texts[2]!.length);
      const second = await open(copy);
      expect((await pullN(second.buffer, 1)).map(ids)).toEqual([["l1"]]);
      expect(second.events.filter((e) => e.type === "buffer_corrupt")).toEqual([expect.objectContaining({ reason: "torn_tail", entries: 1 })]);
    });

    it.each([
      ["one line fewer than rows", (lines: string) => lines.slice(0, lines.lastIndexOf("\n", lines.length - 2) + 1)],
      ["a line that is not an object's text", (lines: string) => lines.replace('{"id":"l1","v":1}', '[1]')],
      ["bytes after the last line", (lines: string) => `${lines}x`],
    ])("skips a lines entry whose checksum holds but whose lines do not match its rows (%s)", async (_name, mangle) => {
      const dir = tmpDir();
      const first = await open(dir);
      await first.buffer.push(chunkOf(["a"]), false);
      const copy = crashCopy(dir);
      const file = join(copy, segments(copy)[0]!);
      const meta = '[1,2,"http",1,[["l1",null,null,1],["l2",null,null,1],["l3",null,null,1]]]\n';
      const body = Buffer.from(meta + mangle(`${texts.join("\n")}\n`));
      const header = Buffer.alloc(12);
      header.writeUInt32LE(0x01e05cd1, 0);
      header.writeUInt32LE(body.length, 4);
      header.writeUInt32LE(crc32(body), 8);
      fs.appendFileSync(file, Buffer.concat([header, body]));
      const reopened = await open(copy);
      expect((await pullN(reopened.buffer, 1)).map(ids)).toEqual([["a"]]);
      expect(reopened.events).toContainEqual(expect.objectContaining({ type: "buffer_corrupt", entries: 1, reason: expect.stringMatching(/undecodable|torn_tail/) }));
      expect(reopened.buffer.usage().records).toBe(1);
    });
  });

  it("hands out a chunk it keeps in memory with its records re-pointed to a buffer-owned ticket that releases it", async () => {
    const { buffer } = await open(tmpDir());
    const pushed = chunkOf(["a", "b"]);
    const sourceTicket = pushed.ticket;
    expect(await buffer.push(pushed, false)).toBe("accepted");
    const pulled = (await pullN(buffer, 1))[0]!;
    expect(pulled.records[0]).toBe(pushed.records[0]);
    expect(pulled.ticket).not.toBe(sourceTicket);
    expect(pulled.ticket).toMatchObject({ seq: -1, checkpoint: undefined, records: 2, bytes: 20, pending: 2 });
    for (const r of pushed.records) expect(r.ticket).toBe(pulled.ticket);
    expect(buffer.usage().records).toBe(2);

    settle(pulled.ticket, 1);
    expect(buffer.usage().records).toBe(2);
    settle(pulled.ticket, 1);
    expect(buffer.usage()).toEqual({ records: 0, bytes: 0 });
    await buffer.whenEmpty();
    expect(() => buffer.release(sourceTicket)).toThrow(SluiceError);
  });

  it("group-commits concurrent pushes: far fewer (synchronous) writes than pushes, answers in call order", async () => {
    const dir = tmpDir();
    const proto = await fileHandlePrototype(dir);
    const { buffer } = await open(dir);
    const write = vi.spyOn(proto, "write");
    const order: number[] = [];
    const pushes = Array.from({ length: 200 }, (_, i) => buffer.push(chunkOf([`r${i}`]), false).then((r) => (order.push(i), r)));
    expect(await Promise.all(pushes)).toEqual(Array(200).fill("accepted"));
    expect(order).toEqual(Array.from({ length: 200 }, (_, i) => i));
    expect(write.mock.calls.length).toBeGreaterThan(0);
    expect(write.mock.calls.length).toBeLessThanOrEqual(5);
    // Each of those writes returned only once on disk: the segment is open with O_DSYNC.
    expect(segmentFlags(dir) & fs.constants.O_DSYNC).toBe(fs.constants.O_DSYNC);
    const pulled = await pullN(buffer, 200);
    expect(pulled.map((c) => ids(c)[0])).toEqual(Array.from({ length: 200 }, (_, i) => `r${i}`));
  });

  it("without fsync, accepts after a plain write: no O_DSYNC, no datasync", async () => {
    const dir = tmpDir();
    const proto = await fileHandlePrototype(dir);
    const { buffer } = await open(dir, { fsync: false });
    const datasync = vi.spyOn(proto, "datasync");
    expect(await buffer.push(chunkOf(["a"]), false)).toBe("accepted");
    expect(datasync).not.toHaveBeenCalled();
    expect(segmentFlags(dir) & fs.constants.O_DSYNC).toBe(0);
    const replay = await open(crashCopy(dir));
    expect(ids((await pullN(replay.buffer, 1))[0])).toEqual(["a"]);
  });

  it("rejects a group whose write fails with retryable ERR_BUFFER_IO and accepts the pushes after it", async () => {
    const dir = tmpDir();
    const proto = await fileHandlePrototype(dir);
    const { buffer, warnings } = await open(dir);
    expect(await buffer.push(chunkOf(["before"]), false)).toBe("accepted");
    vi.spyOn(proto, "write").mockRejectedValueOnce(Object.assign(new Error("ENOSPC: no space left on device"), { code: "ENOSPC" }));
    const failed = await buffer.push(chunkOf(["lost"]), false).catch((e: unknown) => e);
    expect(failed).toBeInstanceOf(SluiceError);
    expect(failed).toMatchObject({ code: "ERR_BUFFER_IO", retryable: true });
    expect((failed as Error).message).toContain("ENOSPC");
    expect(warnings.some((w) => w.includes("write failed"))).toBe(true);
    expect(buffer.usage().records).toBe(1);
    expect(await buffer.push(chunkOf(["after"]), false)).toBe("accepted");
    expect((await pullN(buffer, 2)).map(ids)).toEqual([["before"], ["after"]]);

    await buffer.shutdown();
    const reopened = await open(dir);
    expect((await pullN(reopened.buffer, 2)).map(ids)).toEqual([["before"], ["after"]]);
    expect(reopened.buffer.usage().records).toBe(2);
  });

  it("reports writes failing (ENOSPC) and, while they fail, probes every second until a write would succeed", async () => {
    const dir = tmpDir();
    const proto = await fileHandlePrototype(dir);
    const { buffer, events, clock } = await open(dir);
    const enospc = Object.assign(new Error("ENOSPC: no space left on device, write"), { code: "ENOSPC" });
    const write = vi.spyOn(proto, "write").mockRejectedValue(enospc);
    await expect(buffer.push(chunkOf(["a"]), false)).rejects.toMatchObject({ code: "ERR_BUFFER_IO" });
    expect(events.filter((e) => e.type.startsWith("buffer_write"))).toEqual([{ type: "buffer_write_failed", reason: enospc.message }]);

    // No push comes (a load balancer took the instance out): the probe is what finds out.
    const calls = write.mock.calls.length;
    clock.advance(1000);
    await vi.waitFor(() => expect(write.mock.calls.length).toBe(calls + 1));
    // A failed probe tries again a second later.
    await vi.waitFor(() => expect(fs.existsSync(join(dir, "write-probe"))).toBe(false));
    await new Promise((r) => setImmediate(r));
    clock.advance(1000);
    await vi.waitFor(() => expect(write.mock.calls.length).toBe(calls + 2));
    expect(events.some((e) => e.type === "buffer_write_recovered")).toBe(false);
    expect(fs.existsSync(join(dir, "write-probe"))).toBe(false);

    write.mockRestore();
    clock.advance(1000);
    await vi.waitFor(() => expect(events.at(-1)).toEqual({ type: "buffer_write_recovered" }));
    expect(fs.existsSync(join(dir, "write-probe"))).toBe(false);
    expect(await buffer.push(chunkOf(["b"]), false)).toBe("accepted");
    expect(events.filter((e) => e.type === "buffer_write_recovered")).toHaveLength(1);
  });

  it("reports writes succeeding again as soon as a push's write succeeds", async () => {
    const dir = tmpDir();
    const proto = await fileHandlePrototype(dir);
    const { buffer, events } = await open(dir);
    vi.spyOn(proto, "write").mockRejectedValueOnce(Object.assign(new Error("EIO: i/o error, write"), { code: "EIO" }));
    await expect(buffer.push(chunkOf(["a"]), false)).rejects.toMatchObject({ code: "ERR_BUFFER_IO" });
    expect(await buffer.push(chunkOf(["b"]), false)).toBe("accepted");
    expect(events.filter((e) => e.type.startsWith("buffer_write"))).toEqual([
      { type: "buffer_write_failed", reason: "EIO: i/o error, write" },
      { type: "buffer_write_recovered" },
    ]);
  });

  it("after a crash, replays exactly the un-released chunks in order once release progress was written", async () => {
    const dir = tmpDir();
    const { buffer, clock } = await open(dir);
    for (let i = 1; i <= 5; i++) expect(await buffer.push(chunkOf([`c${i}a`, `c${i}b`]), false)).toBe("accepted");
    const pulled = await pullN(buffer, 4);
    finish(pulled[1]!);
    finish(pulled[3]!);
    clock.advance(100);
    await vi.waitFor(async () => {
      const acked = await readAcked(dir);
      expect(acked).toEqual({ tag: "ok", state: { through: -1, released: [[1, 1], [3, 3]], written: 5 } });
    });

    const copy = crashCopy(dir);
    const replay = await open(copy);
    expect(replay.buffer.usage().records).toBe(6);
    expect((await pullN(replay.buffer, 3)).map(ids)).toEqual([
      ["c1a", "c1b"],
      ["c3a", "c3b"],
      ["c5a", "c5b"],
    ]);
    expect(replay.events).toContainEqual({ type: "buffer_replayed", records: 6, chunks: 3 });
    expect(replay.warnings).toContain("durable buffer: took over the lock of a process that is gone");
    // New entries continue after the highest seq found.
    expect(await replay.buffer.push(chunkOf(["new"]), false)).toBe("accepted");
    expect(ids((await pullN(replay.buffer, 1))[0])).toEqual(["new"]);
    expect(segments(copy)).toContain("0000000000000005.seg");
  });

  it("replays un-released chunks after a crash on the same directory, taking over the stale lock", async () => {
    const dir = tmpDir();
    const first = await open(dir);
    for (const id of ["a", "b", "c"]) await first.buffer.push(chunkOf([id]), false);
    await pullN(first.buffer, 1);
    // SIGKILL: the instance is dropped as it is and its lock names a process that is gone.
    fs.rmSync(join(dir, "lock"));
    fs.symlinkSync(`${deadPid()} 1`, join(dir, "lock"));
    const second = await open(dir);
    expect((await pullN(second.buffer, 3)).map(ids)).toEqual([["a"], ["b"], ["c"]]);
    expect(fs.readlinkSync(join(dir, "lock")).split(" ")[0]).toBe(String(process.pid));
  });

  it("never brings back released entries after shutdown and reopen, also when released out of order", async () => {
    const dir = tmpDir();
    const { buffer } = await open(dir, { segmentBytes: 1 });
    for (let i = 0; i < 6; i++) await buffer.push(chunkOf([`r${i}`]), false);
    const pulled = await pullN(buffer, 6);
    for (const i of [4, 1, 2]) finish(pulled[i]!);
    expect(buffer.usage().records).toBe(3);
    await buffer.shutdown();
    expect(fs.lstatSync(join(dir, "lock"), { throwIfNoEntry: false })).toBeUndefined();

    const second = await open(dir);
    expect(second.buffer.usage().records).toBe(3);
    const replayed = await pullN(second.buffer, 3);
    expect(replayed.map(ids)).toEqual([["r0"], ["r3"], ["r5"]]);
    finish(replayed[1]!);
    await second.buffer.shutdown();

    const third = await open(dir);
    expect((await pullN(third.buffer, 2)).map(ids)).toEqual([["r0"], ["r5"]]);
  });

  it("cuts off a torn tail, quarantines it, reports it, and replays the entries before it", async () => {
    const dir = tmpDir();
    const first = await open(dir);
    for (const id of ["a", "b", "c"]) await first.buffer.push(chunkOf([id]), false);
    const [seg] = segments(dir);
    const file = join(dir, seg!);
    const size = fs.statSync(file).size;
    const copy = crashCopy(dir);
    // The last write was cut short mid-entry.
    const copied = join(copy, seg!);
    fs.truncateSync(copied, size - 7);
    const lastEntryStart = fs.readFileSync(copied).lastIndexOf(Buffer.from([0xd1, 0x5c, 0xe0, 0x01]));

    const second = await open(copy);
    expect((await pullN(second.buffer, 2)).map(ids)).toEqual([["a"], ["b"]]);
    expect(second.buffer.usage().records).toBe(2);
    const corrupt = second.events.filter((e) => e.type === "buffer_corrupt");
    expect(corrupt).toEqual([{ type: "buffer_corrupt", entries: 1, bytes: size - 7 - lastEntryStart, reason: "torn_tail" }]);
    expect(fs.statSync(copied).size).toBe(lastEntryStart);
    const quarantined = join(copy, "quarantine", `${seg!.slice(0, -4)}-${lastEntryStart}.bad`);
    expect(fs.readFileSync(quarantined).length).toBe(size - 7 - lastEntryStart);
    expect(second.warnings.some((w) => w.includes("torn tail"))).toBe(true);
    // The seq of the cut entry is not reused in a way that collides: new pushes land in a new segment.
    expect(await second.buffer.push(chunkOf(["d"]), false)).toBe("accepted");
    expect(ids((await pullN(second.buffer, 1))[0])).toEqual(["d"]);
  });

  it("treats half an entry appended after the last one as a torn tail", async () => {
    const dir = tmpDir();
    const first = await open(dir);
    for (const id of ["a", "b"]) await first.buffer.push(chunkOf([id]), false);
    const copy = crashCopy(dir);
    const file = join(copy, segments(copy)[0]!);
    const data = fs.readFileSync(file);
    fs.appendFileSync(file, data.subarray(0, Math.floor(data.length / 4)));
    const second = await open(copy);
    expect((await pullN(second.buffer, 2)).map(ids)).toEqual([["a"], ["b"]]);
    expect(second.events).toContainEqual(expect.objectContaining({ type: "buffer_corrupt", reason: "torn_tail" }));
    expect(fs.statSync(file).size).toBe(data.length);
    expect(fs.readdirSync(join(copy, "quarantine"))).toEqual([`${segments(copy)[0]!.slice(0, -4)}-${data.length}.bad`]);
  });

  it.each([
    ["a flipped byte in the body", "bad_checksum", (data: Buffer, at: number) => (data[at + 20] = data[at + 20]! ^ 0x20)],
    ["an implausible length", "bad_length", (data: Buffer, at: number) => data.writeUInt32LE(0xfffffff0, at + 4)],
    ["a broken magic", "bad_magic", (data: Buffer, at: number) => (data[at] = 0)],
  ])("skips a corrupt entry in the middle (%s) and replays the ones after it", async (_name, reason, corrupt) => {
    const dir = tmpDir();
    const first = await open(dir);
    for (const id of ["a", "b", "c"]) await first.buffer.push(chunkOf([id], { payload: (i) => ({ id: i, pad: "p".repeat(40) }) }), false);
    const copy = crashCopy(dir);
    const file = join(copy, segments(copy)[0]!);
    const data = fs.readFileSync(file);
    const magic = Buffer.from([0xd1, 0x5c, 0xe0, 0x01]);
    const second = data.indexOf(magic, 1);
    const third = data.indexOf(magic, second + 1);
    corrupt(data, second);
    fs.writeFileSync(file, data);

    const reopened = await open(copy);
    expect((await pullN(reopened.buffer, 2)).map(ids)).toEqual([["a"], ["c"]]);
    expect(reopened.buffer.usage().records).toBe(2);
    expect(reopened.events.filter((e) => e.type === "buffer_corrupt")).toEqual([{ type: "buffer_corrupt", entries: 1, bytes: third - second, reason }]);
    expect(fs.readFileSync(join(copy, "quarantine", `${segments(copy)[0]!.slice(0, -4)}-${second}.bad`)).length).toBe(third - second);
    expect(fs.statSync(file).size).toBe(data.length);
  });

  it("skips an entry whose checksum holds but whose body does not decode", async () => {
    const dir = tmpDir();
    const first = await open(dir);
    for (const id of ["a", "b"]) await first.buffer.push(chunkOf([id]), false);
    const copy = crashCopy(dir);
    const file = join(copy, segments(copy)[0]!);
    const data = fs.readFileSync(file);
    const body = Buffer.from('["not an entry"]');
    const header = Buffer.alloc(12);
    header.writeUInt32LE(0x01e05cd1, 0);
    header.writeUInt32LE(body.length, 4);
    header.writeUInt32LE(crc32(body), 8);
    const magic = Buffer.from([0xd1, 0x5c, 0xe0, 0x01]);
    const second = data.indexOf(magic, 1);
    fs.writeFileSync(file, Buffer.concat([data.subarray(0, second), header, body, data.subarray(second)]));
    const reopened = await open(copy);
    expect((await pullN(reopened.buffer, 2)).map(ids)).toEqual([["a"], ["b"]]);
    expect(reopened.events).toContainEqual({ type: "buffer_corrupt", entries: 1, bytes: 12 + body.length, reason: "undecodable" });
  });

  it("quarantines and counts an entry that fails its checksum when read back while running; it never comes back", async () => {
    const dir = tmpDir();
    // One record in memory: every later chunk is read back from disk when pulled.
    const { buffer, events, warnings } = await open(dir, { memory: { maxRecords: 2, maxBytes: 1 << 20 } });
    for (const id of ["a", "b", "c"]) expect(await buffer.push(chunkOf([`${id}1`, `${id}2`], { payload: (i) => ({ id: i, pad: "p".repeat(40) }) }), false)).toBe("accepted");
    const [seg] = segments(dir);
    const file = join(dir, seg!);
    const data = fs.readFileSync(file);
    const magic = Buffer.from([0xd1, 0x5c, 0xe0, 0x01]);
    const second = data.indexOf(magic, 1);
    const third = data.indexOf(magic, second + 1);
    // A byte flips on disk after the entry was written and checked.
    const fd = fs.openSync(file, "r+");
    fs.writeSync(fd, Buffer.from([data[second + 30]! ^ 0x20]), 0, 1, second + 30);
    fs.closeSync(fd);

    const [a] = await pullN(buffer, 1);
    finish(a!);
    const [c] = await pullN(buffer, 1);
    expect(ids(c)).toEqual(["c1", "c2"]);
    expect(events.filter((e) => e.type === "buffer_corrupt")).toEqual([{ type: "buffer_corrupt", entries: 1, bytes: third - second, reason: "bad_checksum", records: 2 }]);
    const quarantined = join(dir, "quarantine", `${seg!.slice(0, -4)}-${second}.bad`);
    expect(fs.readFileSync(quarantined).equals(fs.readFileSync(file).subarray(second, third))).toBe(true);
    expect(warnings.some((w) => w.includes("quarantined, its 2 record(s) are not delivered"))).toBe(true);
    expect(buffer.usage().records).toBe(2);
    finish(c!);
    await buffer.whenEmpty();
    await buffer.shutdown();

    // Released, not left for redelivery: the next run replays nothing and finds nothing corrupt.
    const reopened = await open(dir);
    expect(reopened.buffer.usage()).toEqual({ records: 0, bytes: 0 });
    expect(reopened.events).toEqual([]);
  });

  /** Pushes a, b, c (one segment each) and flips a byte of b on disk: b fails its check when pulled. */
  async function withCorruptSecond(dir: string): Promise<Opened & { bad: string }> {
    const opened = await open(dir, { segmentBytes: 1, memory: { maxRecords: 1, maxBytes: 1 << 20 } });
    for (const id of ["a", "b", "c"]) expect(await opened.buffer.push(chunkOf([id], { payload: (i) => ({ id: i, pad: "p".repeat(40) }) }), false)).toBe("accepted");
    const bad = join(dir, segments(dir)[1]!);
    const fd = fs.openSync(bad, "r+");
    const byte = Buffer.alloc(1);
    fs.readSync(fd, byte, 0, 1, 30);
    fs.writeSync(fd, Buffer.from([byte[0]! ^ 0x20]), 0, 1, 30);
    fs.closeSync(fd);
    return { ...opened, bad };
  }

  /** Makes every quarantine copy fail as on a full disk, until restored. */
  function failQuarantineWrites(): void {
    const realWrite = fsp.writeFile;
    vi.spyOn(fsp, "writeFile").mockImplementation(((path: string, ...rest: unknown[]) =>
      String(path).includes(`${join("quarantine", "")}`)
        ? Promise.reject(Object.assign(new Error("ENOSPC: no space left on device, write"), { code: "ENOSPC" }))
        : (realWrite as (...a: unknown[]) => Promise<unknown>)(path, ...rest)) as typeof fsp.writeFile);
  }

  it("keeps the segment of an entry whose quarantine copy failed, and copies it once writes succeed again", async () => {
    const dir = tmpDir();
    const { buffer, events, warnings, clock, bad } = await withCorruptSecond(dir);
    const corrupt = fs.readFileSync(bad);
    failQuarantineWrites();
    const [a] = await pullN(buffer, 1);
    finish(a!);
    const [c] = await pullN(buffer, 1);
    expect(ids(c)).toEqual(["c"]);
    finish(c!);
    expect(events.filter((e) => e.type === "buffer_corrupt")).toMatchObject([{ reason: "bad_checksum", records: 1 }]);
    expect(warnings.some((w) => w.includes("could not write quarantine file"))).toBe(true);
    // The acked write that would delete released segments: b's must stay, the copy is all there is.
    clock.advance(100);
    await vi.waitFor(async () => expect(await readAcked(dir)).toMatchObject({ tag: "ok", state: { through: 2 } }));
    await buffer.whenEmpty();
    expect(fs.existsSync(bad)).toBe(true);
    expect(fs.readdirSync(join(dir, "quarantine"))).toEqual([]);

    vi.restoreAllMocks();
    await clock.advanceAsync(1000);
    const copy = join(dir, "quarantine", `${bad.split("/").pop()!.slice(0, -4)}-0.bad`);
    await vi.waitFor(() => expect(fs.existsSync(copy)).toBe(true));
    expect(fs.readFileSync(copy).equals(corrupt.subarray(0, fs.readFileSync(copy).length))).toBe(true);
    clock.advance(100);
    await vi.waitFor(() => expect(fs.existsSync(bad)).toBe(false));
    await buffer.shutdown();
  });

  it("leaves a segment whose quarantine copy still fails at shutdown for the next start, which copies it", async () => {
    const dir = tmpDir();
    const { buffer, bad } = await withCorruptSecond(dir);
    failQuarantineWrites();
    for (let i = 0; i < 2; i++) finish((await pullN(buffer, 1))[0]!);
    await buffer.whenEmpty();
    await buffer.shutdown();
    expect(fs.existsSync(bad)).toBe(true);
    vi.restoreAllMocks();

    const reopened = await open(dir);
    const name = bad.split("/").pop()!.slice(0, -4);
    // The lone entry of its segment reads as a torn tail at start.
    expect(reopened.events.filter((e) => e.type === "buffer_corrupt")).toMatchObject([{ reason: "torn_tail", entries: 1 }]);
    expect(fs.readdirSync(join(dir, "quarantine")).filter((f) => f.startsWith(name))).toHaveLength(1);
    expect(fs.existsSync(bad)).toBe(false);
    expect(reopened.buffer.usage()).toEqual({ records: 0, bytes: 0 });
  });

  it("reports the entries of a segment deleted by hand as lost and goes on with the next", async () => {
    const dir = tmpDir();
    const { buffer, events, warnings } = await open(dir, { segmentBytes: 200, memory: { maxRecords: 1, maxBytes: 1 << 20 } });
    for (const id of ["a", "b", "c", "d"]) expect(await buffer.push(chunkOf([id], { payload: (i) => ({ id: i, pad: "p".repeat(60) }) }), false)).toBe("accepted");
    const segs = segments(dir);
    expect(segs.length).toBeGreaterThan(1);
    // a is kept in memory; what follows in the first segment can only be read from disk.
    fs.rmSync(join(dir, segs[0]!));
    const got: string[] = [];
    buffer.close();
    for (let c = await buffer.pull(); c !== undefined; c = await buffer.pull()) {
      got.push(...ids(c));
      finish(c);
    }
    const lost = events.filter((e) => e.type === "buffer_corrupt");
    expect(lost).toHaveLength(1);
    expect(lost[0]).toMatchObject({ reason: "missing", bytes: 0 });
    const entries = (lost[0] as { entries: number }).entries;
    expect(entries).toBeGreaterThan(0);
    expect(got.length + entries).toBe(4);
    expect(got[0]).toBe("a");
    expect(warnings.some((w) => w.includes(`${segs[0]} is gone`))).toBe(true);
    await buffer.whenEmpty();
  });

  it("keeps retrying a read that fails with an I/O error, reports it (not ready) from the second failure, and recovers", async () => {
    const dir = tmpDir();
    const proto = (await fileHandlePrototype(dir)) as unknown as { read: (...args: unknown[]) => Promise<unknown> };
    const { buffer, events, clock } = await open(dir, { memory: { maxRecords: 1, maxBytes: 1 << 20 } });
    expect(await buffer.push(chunkOf(["a"]), false)).toBe("accepted");
    expect(await buffer.push(chunkOf(["b"]), false)).toBe("accepted");
    const [a] = await pullN(buffer, 1);
    const spy = vi.spyOn(proto, "read").mockRejectedValue(Object.assign(new Error("EIO: i/o error, read"), { code: "EIO" }));
    finish(a!);
    let b: Chunk | undefined;
    const pulled = buffer.pull().then((c) => (b = c));
    await vi.waitFor(() => expect(spy).toHaveBeenCalledTimes(1));
    expect(events.some((e) => e.type === "buffer_read_failed")).toBe(false);
    await clock.advanceAsync(1000);
    await vi.waitFor(() => expect(spy).toHaveBeenCalledTimes(2));
    await vi.waitFor(() => expect(events).toContainEqual({ type: "buffer_read_failed", reason: "EIO: i/o error, read" }));
    await clock.advanceAsync(2000);
    await vi.waitFor(() => expect(spy).toHaveBeenCalledTimes(3));
    expect(b).toBeUndefined();
    spy.mockRestore();
    await clock.advanceAsync(4000);
    await pulled;
    expect(ids(b)).toEqual(["b"]);
    expect(events.at(-1)).toEqual({ type: "buffer_read_recovered" });
    expect(events.filter((e) => e.type === "buffer_corrupt")).toEqual([]);
  });

  it("does not report again, on the next start, an entry quarantined when read back whose segment is still there", async () => {
    const dir = tmpDir();
    const { buffer } = await open(dir, { memory: { maxRecords: 1, maxBytes: 1 << 20 } });
    for (const id of ["a", "b", "c"]) expect(await buffer.push(chunkOf([id], { payload: (i) => ({ id: i, pad: "p".repeat(40) }) }), false)).toBe("accepted");
    const file = join(dir, segments(dir)[0]!);
    const data = fs.readFileSync(file);
    const second = data.indexOf(Buffer.from([0xd1, 0x5c, 0xe0, 0x01]), 1);
    data[second + 30] = data[second + 30]! ^ 0x20;
    fs.writeFileSync(file, data);
    const [a] = await pullN(buffer, 1);
    finish(a!);
    await pullN(buffer, 1);
    // c is in flight, not released: its segment stays for the next run, corrupt bytes included.
    await buffer.shutdown();

    const reopened = await open(dir);
    expect(reopened.events.filter((e) => e.type === "buffer_corrupt")).toEqual([]);
    expect((await pullN(reopened.buffer, 1)).map(ids)).toEqual([["c"]]);
    expect(fs.readdirSync(join(dir, "quarantine"))).toHaveLength(1);
  });

  it.each([
    ["the first segment", 0, 3],
    ["a middle segment", 1, 2],
    ["the last segment", 2, 1],
  ])("reports at start, with the count, the entries lost when %s is truncated to zero bytes", async (_name, index, lost) => {
    const dir = tmpDir();
    const first = await open(dir, { segmentBytes: 300 });
    await pushSegments(first.buffer, [["a", "b", "c"], ["d", "e"], ["f"]]);
    expect(segments(dir)).toEqual(["0000000000000000.seg", "0000000000000003.seg", "0000000000000005.seg"]);
    await first.buffer.shutdown();
    const copy = crashCopy(dir);
    fs.truncateSync(join(copy, segments(copy)[index]!), 0);

    const reopened = await open(copy);
    expect(reopened.events.filter((e) => e.type === "buffer_corrupt")).toEqual([{ type: "buffer_corrupt", entries: lost, bytes: 0, reason: "missing" }]);
    expect(reopened.warnings).toContain(
      `durable buffer: ${segments(dir)[index]} (0 bytes) is shorter than the acked index says: ${lost} entr${lost === 1 ? "y" : "ies"} not yet delivered are lost`,
    );
    expect(reopened.buffer.usage().records).toBe(6 - lost);
    // New entries never take a seq the index knows.
    expect(await reopened.buffer.push(chunkOf(["g"]), false)).toBe("accepted");
    expect(segments(copy)).toContain("0000000000000006.seg");
  });

  it("reports at start the entries of a segment file that is gone", async () => {
    const dir = tmpDir();
    const first = await open(dir, { segmentBytes: 300 });
    await pushSegments(first.buffer, [["a", "b"], ["c"]]);
    expect(segments(dir)).toEqual(["0000000000000000.seg", "0000000000000002.seg"]);
    await first.buffer.shutdown();
    fs.rmSync(join(dir, "0000000000000000.seg"));
    const reopened = await open(dir);
    expect(reopened.events.filter((e) => e.type === "buffer_corrupt")).toEqual([{ type: "buffer_corrupt", entries: 2, bytes: 0, reason: "missing" }]);
    expect((await pullN(reopened.buffer, 1)).map(ids)).toEqual([["c"]]);
  });

  it("replays everything still in the log when the acked file is corrupt, and counts it", async () => {
    const dir = tmpDir();
    const first = await open(dir);
    for (const id of ["a", "b", "c"]) await first.buffer.push(chunkOf([id]), false);
    const pulled = await pullN(first.buffer, 3);
    finish(pulled[0]!);
    finish(pulled[2]!);
    await first.buffer.shutdown();
    const acked = await readAcked(dir);
    expect(acked).toEqual({ tag: "ok", state: { through: 0, released: [[2, 2]], written: 3 } });
    const text = fs.readFileSync(join(dir, "acked"), "utf8");
    fs.writeFileSync(join(dir, "acked"), text.replace('"through":0', '"through":9'));

    const second = await open(dir);
    // "a" was released and its seq is under the corrupt file's claim: everything in the segment comes back.
    expect((await pullN(second.buffer, 3)).map(ids)).toEqual([["a"], ["b"], ["c"]]);
    expect(second.events).toContainEqual(expect.objectContaining({ type: "buffer_corrupt", entries: 1, reason: "acked_unreadable" }));
    expect(fs.existsSync(join(dir, "quarantine", "acked.bad"))).toBe(true);
    // A fresh acked file replaces the corrupt one soon after open.
    second.clock.advance(100);
    await vi.waitFor(async () => expect((await readAcked(dir)).tag).toBe("ok"));
  });

  it("applies backpressure at maxBytes: full without wait, FIFO waiting with it, closed on abort and close", async () => {
    const dir = tmpDir();
    const probe = await open(tmpDir());
    await probe.buffer.push(chunkOf(["x0"]), false);
    const entryBytes = probe.buffer.usage().bytes;
    const { buffer } = await open(dir, { maxBytes: entryBytes * 2 });

    expect(await buffer.push(chunkOf(["a0"]), false)).toBe("accepted");
    expect(await buffer.push(chunkOf(["a1"]), false)).toBe("accepted");
    expect(buffer.usage()).toEqual({ records: 2, bytes: entryBytes * 2 });
    expect(await buffer.push(chunkOf(["a2"]), false)).toBe("full");

    const waiting = track(buffer.push(chunkOf(["a3"]), true));
    const aborter = new AbortController();
    const aborted = track(buffer.push(chunkOf(["a4"]), true, aborter.signal));
    const closedLater = track(buffer.push(chunkOf(["a5"]), true));
    const [first] = await pullN(buffer, 1);
    aborter.abort();
    await vi.waitFor(() => expect(aborted.result).toBe("closed"));
    expect(waiting.result).toBeUndefined();

    // Room for one: the waiting pushes are admitted in FIFO order, so a3 goes before a5.
    finish(first!);
    await vi.waitFor(() => expect(waiting.result).toBe("accepted"));
    expect(closedLater.result).toBeUndefined();
    buffer.close();
    await vi.waitFor(() => expect(closedLater.result).toBe("closed"));
    expect(await buffer.push(chunkOf(["a6"]), true)).toBe("closed");
    expect((await pullN(buffer, 2)).map(ids)).toEqual([["a1"], ["a3"]]);
    expect(await buffer.pull()).toBeUndefined();
  });

  it("accepts a chunk larger than maxBytes when the log is empty", async () => {
    const { buffer } = await open(tmpDir(), { maxBytes: 10 });
    expect(await buffer.push(chunkOf(["big", "bigger"]), false)).toBe("accepted");
    expect(await buffer.push(chunkOf(["next"]), false)).toBe("full");
  });

  it("tells the room for records of a given size from the bytes the log has left", async () => {
    const { buffer } = await open(tmpDir(), { maxBytes: 10_000 });
    expect(buffer.room(100)).toBe(Infinity);
    expect(await buffer.push(chunkOf(["a"]), false)).toBe("accepted");
    const left = 10_000 - buffer.usage().bytes;
    expect(buffer.room()).toBe(Infinity);
    expect(buffer.room(100)).toBe(Math.floor(left / 100));
    expect(buffer.room(20_000)).toBe(0);
  });

  it("bounds memory: chunks beyond the limits stay on disk only, pull reads them back in order", async () => {
    const dir = tmpDir();
    const memory = { maxRecords: 50, maxBytes: 1 << 20 };
    const { buffer } = await open(dir, { memory, segmentBytes: 4096 });
    const pushes: Promise<PushResult>[] = [];
    for (let i = 0; i < 100; i++) {
      pushes.push(buffer.push(chunkOf(Array.from({ length: 10 }, (_, j) => `r${i}-${j}`)), false));
      expect(buffer.memoryUsage().records).toBeLessThanOrEqual(50);
    }
    expect(new Set(await Promise.all(pushes))).toEqual(new Set(["accepted"]));
    expect(buffer.memoryUsage()).toEqual({ records: 50, bytes: 500, keptChunks: 5 });
    expect(buffer.usage().records).toBe(1000);

    const seen: string[] = [];
    const inFlight: Chunk[] = [];
    let maxInFlight = 0;
    for (let i = 0; i < 100; i++) {
      const [c] = await pullN(buffer, 1);
      inFlight.push(c!);
      seen.push(...ids(c));
      maxInFlight = Math.max(maxInFlight, inFlight.reduce((n, x) => n + x.records.length, 0));
      expect(buffer.memoryUsage().records).toBeLessThanOrEqual(50);
      // Release the oldest now and then, so in-flight hovers near the bound.
      if (inFlight.length >= 4) finish(inFlight.shift()!);
    }
    expect(maxInFlight).toBeLessThanOrEqual(50);
    expect(seen).toEqual(Array.from({ length: 100 }, (_, i) => Array.from({ length: 10 }, (_, j) => `r${i}-${j}`)).flat());
    for (const c of inFlight) finish(c);
    await buffer.whenEmpty();
    expect(buffer.memoryUsage()).toEqual({ records: 0, bytes: 0, keptChunks: 0 });
  });

  it("pull waits while a further chunk would not fit in flight and goes on when one is released", async () => {
    const { buffer } = await open(tmpDir(), { memory: { maxRecords: 3, maxBytes: 1 << 20 } });
    for (const id of ["a", "b"]) await buffer.push(chunkOf([`${id}1`, `${id}2`]), false);
    const [a] = await pullN(buffer, 1);
    let b: Chunk | undefined;
    void buffer.pull().then((c) => (b = c));
    await new Promise((r) => setImmediate(r));
    expect(b).toBeUndefined();
    finish(a!);
    await vi.waitFor(() => expect(ids(b)).toEqual(["b1", "b2"]));
  });

  it("deletes a segment once all its entries are released and it is no longer written", async () => {
    const dir = tmpDir();
    const { buffer, clock } = await open(dir, { segmentBytes: 1 });
    for (let i = 0; i < 4; i++) await buffer.push(chunkOf([`r${i}`]), false);
    expect(segments(dir)).toHaveLength(4);
    const pulled = await pullN(buffer, 4);
    const rm = vi.spyOn(fsp, "rm");
    finish(pulled[1]!);
    finish(pulled[3]!);
    // Not before `acked` says its entries are released: a crash in between would make them look lost.
    await flush();
    expect(rm).not.toHaveBeenCalled();
    expect(segments(dir)).toHaveLength(4);
    clock.advance(100);
    // r3's segment is the one being written: it stays until a new segment takes over or shutdown.
    await vi.waitFor(() => expect(segments(dir)).toEqual(["0000000000000000.seg", "0000000000000002.seg", "0000000000000003.seg"]));
    finish(pulled[0]!);
    finish(pulled[2]!);
    clock.advance(100);
    await vi.waitFor(() => expect(segments(dir)).toEqual(["0000000000000003.seg"]));
    await buffer.shutdown();
    expect(segments(dir)).toEqual([]);
    expect(await readAcked(dir)).toEqual({ tag: "ok", state: { through: 3, released: [], written: 4 } });

    const reopened = await open(dir);
    expect(reopened.buffer.usage()).toEqual({ records: 0, bytes: 0 });
    expect(await reopened.buffer.push(chunkOf(["later"]), false)).toBe("accepted");
    expect(segments(dir)).toEqual(["0000000000000004.seg"]);
  });

  it("after a crash, never reports as lost the entries of a segment deleted because all were released", async () => {
    const dir = tmpDir();
    const { buffer, clock } = await open(dir, { segmentBytes: 1 });
    for (const id of ["a", "b", "c"]) await buffer.push(chunkOf([id]), false);
    clock.advance(100);
    await vi.waitFor(async () => expect(await readAcked(dir)).toMatchObject({ tag: "ok", state: { written: 3 } }));
    const pulled = await pullN(buffer, 3);
    const rm = vi.spyOn(fsp, "rm");
    finish(pulled[0]!);
    // The crash comes before the next `acked` write: a's segment must still be there.
    await flush();
    expect(rm).not.toHaveBeenCalled();
    const copy = crashCopy(dir);
    const replay = await open(copy);
    expect(replay.events.filter((e) => e.type === "buffer_corrupt")).toEqual([]);
    expect((await pullN(replay.buffer, 3)).map(ids)).toEqual([["a"], ["b"], ["c"]]);
  });

  it("deletes released segments even when the acked write fails (a full disk needs the room)", async () => {
    const dir = tmpDir();
    const { buffer, clock, warnings } = await open(dir, { segmentBytes: 1 });
    for (const id of ["a", "b"]) await buffer.push(chunkOf([id]), false);
    const pulled = await pullN(buffer, 2);
    const realOpen = fsp.open;
    vi.spyOn(fsp, "open").mockImplementation(((path: string, ...rest: unknown[]) =>
      String(path).endsWith("acked.tmp")
        ? Promise.reject(Object.assign(new Error("ENOSPC: no space left on device, open"), { code: "ENOSPC" }))
        : (realOpen as (...a: unknown[]) => Promise<unknown>)(path, ...rest)) as typeof fsp.open);
    finish(pulled[0]!);
    clock.advance(100);
    await vi.waitFor(() => expect(segments(dir)).toEqual(["0000000000000001.seg"]));
    expect(warnings).toContain("durable buffer: could not write the acked file");
  });

  it("close: pull drains every entry, from memory and disk, then ends; whenEmpty waits for every release", async () => {
    const { buffer } = await open(tmpDir(), { memory: { maxRecords: 2, maxBytes: 1 << 20 } });
    for (let i = 0; i < 4; i++) await buffer.push(chunkOf([`r${i}`]), false);
    buffer.close();
    expect(await buffer.push(chunkOf(["late"]), false)).toBe("closed");
    let empty = false;
    void buffer.whenEmpty().then(() => (empty = true));
    const got: string[] = [];
    for (let c = await buffer.pull(); c !== undefined; c = await buffer.pull()) {
      got.push(...ids(c));
      finish(c);
    }
    expect(got).toEqual(["r0", "r1", "r2", "r3"]);
    await vi.waitFor(() => expect(empty).toBe(true));
  });

  it("a graceful stop ends a pull that is retrying a failed read; the entry stays for the next run", async () => {
    // Regression: pull retried the read for ever, ignoring close(true), so a stop hung run().
    const dir = tmpDir();
    const proto = (await fileHandlePrototype(dir)) as unknown as { read: (...args: unknown[]) => Promise<unknown> };
    const { buffer, warnings } = await open(dir, { memory: { maxRecords: 1, maxBytes: 1 << 20 } });
    expect(await buffer.push(chunkOf(["a", "b"]), false)).toBe("accepted");
    vi.spyOn(proto, "read").mockRejectedValue(Object.assign(new Error("EIO: i/o error, read"), { code: "EIO" }));
    const pulled = buffer.pull();
    await vi.waitFor(() => expect(warnings.some((w) => w.includes("could not read an entry"))).toBe(true));
    buffer.close(true);
    expect(await pulled).toBeUndefined();
    await buffer.whenEmpty();
    expect(buffer.memoryUsage()).toEqual({ records: 0, bytes: 0, keptChunks: 0 });
    await buffer.shutdown();
    vi.restoreAllMocks();

    const reopened = await open(dir);
    expect((await pullN(reopened.buffer, 1)).map(ids)).toEqual([["a", "b"]]);
  });

  it("refuses a directory locked by another live instance or process, and takes over a stale lock", async () => {
    const dir = tmpDir();
    const first = await open(dir);
    const second = create(dir);
    const err = await second.buffer.open().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SluiceError);
    expect(err).toMatchObject({ code: "ERR_LOCKED" });
    expect((err as Error).message).toMatch(/in use by this process \(pid \d+\)/);
    await first.buffer.shutdown();

    const child = spawn(process.execPath, ["-e", "setTimeout(() => {}, 60_000)"], { stdio: "ignore" });
    try {
      fs.writeFileSync(join(dir, "lock"), `${child.pid}\n`);
      const third = create(dir);
      await expect(third.buffer.open()).rejects.toMatchObject({ code: "ERR_LOCKED", message: expect.stringContaining(`process ${child.pid}`) });
    } finally {
      child.kill("SIGKILL");
      await new Promise((r) => child.once("exit", r));
    }
    const fourth = await open(dir);
    expect(fourth.warnings).toContain("durable buffer: took over the lock of a process that is gone");
    expect(fs.readlinkSync(join(dir, "lock")).split(" ")[0]).toBe(String(process.pid));
  });

  it("tells a live process from the one that took the lock by its start time: a reused pid does not hold the lock", async () => {
    const dir = tmpDir();
    const child = spawn(process.execPath, ["-e", "setTimeout(() => {}, 60_000)"], { stdio: "ignore" });
    try {
      const stat = fs.readFileSync(`/proc/${child.pid}/stat`, "utf8");
      const started = stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19]!;
      // The lock's process started at another time: its pid now names someone else.
      fs.writeFileSync(join(dir, "lock"), `${child.pid} ${Number(started) - 1}\n`);
      const taken = await open(dir);
      expect(taken.warnings).toContain("durable buffer: took over the lock of a process that is gone");
      expect(fs.readlinkSync(join(dir, "lock"))).toMatch(new RegExp(`^${process.pid} \\d+$`));
      await taken.buffer.shutdown();
      // The same pid and start time: that very process holds it.
      fs.writeFileSync(join(dir, "lock"), `${child.pid} ${started}\n`);
      await expect(create(dir).buffer.open()).rejects.toMatchObject({ code: "ERR_LOCKED", message: expect.stringContaining(`process ${child.pid}`) });
    } finally {
      child.kill("SIGKILL");
      await new Promise((r) => child.once("exit", r));
    }
  });

  it("refuses push and pull before open", async () => {
    const { buffer } = create(tmpDir());
    await expect(buffer.push(chunkOf(["a"]), false)).rejects.toMatchObject({ code: "ERR_INTERNAL" });
    await expect(buffer.pull()).rejects.toMatchObject({ code: "ERR_INTERNAL" });
  });

  it("property: nothing un-released is lost across crashes and restarts; nothing released returns after a shutdown", async () => {
    type Op =
      | { tag: "push"; records: number }
      | { tag: "pull" }
      | { tag: "release"; pick: number }
      | { tag: "crash" }
      | { tag: "restart" }
      | { tag: "tick" }
      | { tag: "wait" };
    const opArb: fc.Arbitrary<Op> = fc.oneof(
      { weight: 4, arbitrary: fc.integer({ min: 1, max: 6 }).map((records): Op => ({ tag: "push", records })) },
      { weight: 3, arbitrary: fc.constant<Op>({ tag: "pull" }) },
      { weight: 3, arbitrary: fc.nat().map((pick): Op => ({ tag: "release", pick })) },
      { weight: 1, arbitrary: fc.constant<Op>({ tag: "crash" }) },
      { weight: 1, arbitrary: fc.constant<Op>({ tag: "restart" }) },
      { weight: 2, arbitrary: fc.constant<Op>({ tag: "tick" }) },
      { weight: 1, arbitrary: fc.constant<Op>({ tag: "wait" }) },
    );
    // Large enough that a pull never waits for room in flight: the memory bound has its own test.
    const options = { maxBytes: 1500, memory: { maxRecords: 10_000, maxBytes: 1 << 20 }, segmentBytes: 200 };

    await fc.assert(
      fc.asyncProperty(fc.array(opArb, { minLength: 1, maxLength: 40 }), async (ops) => {
        let dir = tmpDir();
        let current = await open(dir, options);
        let nextChunk = 0;
        const size = new Map<number, number>();
        /** Accepted and not released. */
        const unreleased = new Set<number>();
        /** Released since the last clean shutdown: a crash may bring these back. */
        const maybe = new Set<number>();
        let unpulled: number[] = [];
        let inFlight: Chunk[] = [];
        const chunkId = (c: Chunk) => Number(c.records[0]!.id.split(":")[0]);

        /** Pulls everything a fresh buffer replays and checks it against the model. */
        const checkReplay = async (clean: boolean) => {
          const replayed = current.events.find((e) => e.type === "buffer_replayed");
          const got = await pullN(current.buffer, replayed?.type === "buffer_replayed" ? replayed.chunks : 0);
          const gotIds = got.map(chunkId);
          expect(gotIds).toEqual([...gotIds].sort((a, b) => a - b));
          for (const id of unreleased) expect(gotIds).toContain(id);
          for (const id of gotIds) {
            expect(unreleased.has(id) || (!clean && maybe.has(id))).toBe(true);
            unreleased.add(id);
          }
          expect(current.buffer.usage().records).toBe(gotIds.reduce((n, id) => n + size.get(id)!, 0));
          // Nothing is torn here (every write finished), so nothing may look corrupt or lost.
          expect(current.events.filter((e) => e.type === "buffer_corrupt")).toEqual([]);
          maybe.clear();
          inFlight = got;
          unpulled = [];
        };

        for (const op of ops) {
          if (op.tag === "push") {
            const id = nextChunk++;
            size.set(id, op.records);
            const result = await current.buffer.push(chunkOf(Array.from({ length: op.records }, (_, j) => `${id}:${j}`)), false);
            if (result === "accepted") {
              unreleased.add(id);
              unpulled.push(id);
            } else expect(result).toBe("full");
          } else if (op.tag === "pull") {
            if (unpulled.length === 0) continue;
            const [c] = await pullN(current.buffer, 1);
            expect(chunkId(c!)).toBe(unpulled.shift());
            inFlight.push(c!);
          } else if (op.tag === "release") {
            if (inFlight.length === 0) continue;
            const [c] = inFlight.splice(op.pick % inFlight.length, 1);
            finish(c!);
            unreleased.delete(chunkId(c!));
            maybe.add(chunkId(c!));
          } else if (op.tag === "tick") {
            // Time for the coalesced `acked` write; a crash may copy the log while it runs.
            current.clock.advance(100);
            await new Promise((r) => setImmediate(r));
          } else if (op.tag === "wait") {
            // Background work (deleting released segments) gets done before what comes next.
            await new Promise((r) => setTimeout(r, 5));
          } else {
            if (op.tag === "crash") {
              const copy = crashCopy(dir);
              await current.buffer.shutdown();
              dir = copy;
            } else {
              await current.buffer.shutdown();
              maybe.clear();
            }
            current = await open(dir, options);
            await checkReplay(op.tag === "restart");
          }
        }
        await current.buffer.shutdown();
        maybe.clear();
        current = await open(dir, options);
        await checkReplay(true);
        await current.buffer.shutdown();
      }),
      { numRuns: 150 },
    );
  });

  it("counts split parts as in flight in memory: pull waits while they fill it, hasRoom against memory, whenPartRoom at the shrink", async () => {
    const dir = tmpDir();
    const { buffer } = await open(dir, { memory: { maxRecords: 10, maxBytes: 1 << 20 } });
    expect(await buffer.push(chunkOf(["a", "b"]), false)).toBe("accepted");
    expect(await buffer.push(chunkOf(["c", "d"]), false)).toBe("accepted");
    const [first] = await pullN(buffer, 1);
    expect(buffer.hasRoom(8, 80)).toBe(true);
    buffer.grow(20, 200);
    expect(buffer.hasRoom(1, 10)).toBe(false);
    let roomed = false;
    const room = buffer.whenPartRoom().then(() => (roomed = true));
    let next: Chunk | undefined;
    const pulling = buffer.pull().then((c) => (next = c));
    // c, d are kept in memory: without the wait, pull would hand them out within this flush.
    await flush();
    expect([roomed, next]).toEqual([false, undefined]);
    expect(buffer.usage().records).toBe(4); // the log's records: parts are not in it
    buffer.shrink(20, 200);
    await Promise.all([room, pulling]);
    expect(roomed).toBe(true);
    expect(buffer.hasRoom(1, 10)).toBe(true);
    expect(ids(next)).toEqual(["c", "d"]);
    finish(first!);
    finish(next!);
    await buffer.whenEmpty();
  });
});
