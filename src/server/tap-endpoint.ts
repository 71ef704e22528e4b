/**
 * `GET /tap?stage=&component=&limit=`: live records as NDJSON for `sluice tap`, on the
 * observability listener only, when `observability.tap` is on. The engine queues lines for the
 * reader (see `observability/tap.ts`); this writes them out as the socket takes them, never
 * more than one queue's worth ahead of it, and ends the stream after `limit` records.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import type { TapStage } from "../core/tap.js";
import type { Tap, TapFilter } from "../observability/tap.js";
import { sendJson } from "./router.js";

const STAGES: readonly TapStage[] = ["source", "transform", "sink"];

/** The reader's filter from the query, or why it is not one. */
export function tapFilter(query: URLSearchParams): TapFilter | string {
  const stage = query.get("stage");
  if (stage !== null && !STAGES.includes(stage as TapStage)) return `stage must be one of ${STAGES.join(", ")}`;
  const limitText = query.get("limit");
  const limit = limitText === null ? undefined : Number(limitText);
  if (limit !== undefined && !(Number.isInteger(limit) && limit > 0)) return "limit must be a positive integer";
  const component = query.get("component");
  return { ...(stage !== null ? { stage: stage as TapStage } : {}), ...(component !== null ? { component } : {}), ...(limit !== undefined ? { limit } : {}) };
}

/** Serves one tap reader on `res`; `streams` holds it while open (the mount ends it on close). */
export function serveTap(tap: Tap, req: IncomingMessage, res: ServerResponse, url: URL, headers: Record<string, string>, streams: Map<ServerResponse, string>): void {
  const filter = tapFilter(url.searchParams);
  if (typeof filter === "string") {
    sendJson(res, 400, { error: filter }, headers);
    return;
  }
  // A HEAD gets the headers only: a reader opened for it would never be read.
  if (req.method === "HEAD") {
    res.writeHead(200, { ...headers, "content-type": "application/x-ndjson" }).end();
    return;
  }
  const reader = tap.open(filter);
  if (reader === undefined) {
    sendJson(res, 503, { error: "too many tap readers are open; close one" }, { ...headers, "retry-after": "5" });
    return;
  }
  res.writeHead(200, { ...headers, "content-type": "application/x-ndjson", "cache-control": "no-store" });
  res.flushHeaders();
  streams.set(res, "");
  let blocked = false;
  let scheduled = false;
  const flush = () => {
    scheduled = false;
    if (blocked || res.writableEnded || res.destroyed) return;
    // Lines taken from the queue are written even past the socket's buffer (at most one queue's
    // worth): the next ones wait for `drain`, and meanwhile the queue fills and drops.
    for (const line of reader.drain()) if (!res.write(line)) blocked = true;
    if (!blocked && reader.complete) res.end();
  };
  reader.onLines = () => {
    // Written on the next turn of the loop, not from inside the engine's call.
    if (scheduled || blocked) return;
    scheduled = true;
    setImmediate(flush);
  };
  res.on("drain", () => {
    blocked = false;
    flush();
  });
  res.on("close", () => {
    tap.close(reader);
    streams.delete(res);
  });
}
