/**
 * How `sluice top` draws its instances: a screen (a terminal, redrawn in place) or plain
 * `key=value` lines (anything else: a pipe, a file), from the same states.
 */
import { formatCount } from "../format.js";
import { ratePerSecond, rowsOf, type ComponentRow, type Scrape } from "./model.js";

/** Where one instance stands. */
export type InstanceState =
  /** Not answered yet. */
  | { readonly tag: "waiting" }
  | { readonly tag: "up"; readonly current: Scrape; readonly previous: Scrape | undefined }
  /** Its last scrape failed (since `since`, ms); `top` keeps trying. */
  | { readonly tag: "down"; readonly reason: string; readonly since: number };

/** One instance: its /metrics URL and state. */
export interface Instance {
  readonly url: string;
  readonly state: InstanceState;
}

const count = formatCount;
const perSecond = (n: number | undefined) => (n === undefined ? "-" : n >= 100 ? count(n) : n.toFixed(1));
const percent = (part: number, whole: number | undefined) => (whole === undefined || whole <= 0 ? "" : ` (${Math.round((part / whole) * 100)}%)`);
const clock = (ms: number) => new Date(ms).toISOString().slice(11, 19);

function bytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB"];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${u === 0 ? v : v.toFixed(1)} ${units[u]}`;
}

function state(r: ComponentRow): string {
  return r.up === undefined ? "" : r.up ? "up" : "connecting";
}

function table(rows: readonly ComponentRow[]): string[] {
  const header = ["KIND", "NAME", "RATE/S", "TOTAL", "DEAD-LETTERED", "RETRIED", "STATE"];
  const cells = rows.map((r) => [r.kind, r.name, r.total === undefined ? "-" : perSecond(r.rate), r.total === undefined ? "-" : count(r.total), count(r.deadLettered), r.kind === "sink" ? count(r.retried) : "-", state(r)]);
  const widths = header.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i]!.length)));
  // Names and kinds left-aligned, numbers right-aligned.
  const line = (c: readonly string[]) => c.map((v, i) => (i < 2 || i === 6 ? v.padEnd(widths[i]!) : v.padStart(widths[i]!))).join("  ").trimEnd();
  return [line(header), ...cells.map(line)].map((l) => `  ${l}`);
}

function upLines(s: Extract<InstanceState, { tag: "up" }>): string[] {
  const { current: c, previous: p } = s;
  const ms = p === undefined ? 0 : c.at - p.at;
  const t = c.totals;
  const b = c.buffer;
  return [
    `  received ${count(t.received)} (${perSecond(ratePerSecond(t.received, p?.totals.received, ms))}/s)  delivered ${count(t.delivered)} (${perSecond(ratePerSecond(t.delivered, p?.totals.delivered, ms))}/s)  dead-lettered ${count(t.deadLettered)}  dropped ${count(t.dropped)}  retried ${count(t.retried)}`,
    `  buffer ${count(b.records)}${b.maxRecords === undefined ? "" : ` / ${count(b.maxRecords)}`} records${percent(b.records, b.maxRecords)}  ${bytes(b.bytes)}${b.maxBytes === undefined ? "" : ` / ${bytes(b.maxBytes)}`}${percent(b.bytes, b.maxBytes)}`,
    ...table(rowsOf(c, p)),
  ];
}

/**
 * The screen: a title line, then per instance its URL and state, its totals, its buffer and a
 * row per component. Lines are cut to `width` columns.
 */
export function screen(instances: readonly Instance[], now: number, intervalMs: number, width: number): string[] {
  const title = `sluice top - ${instances.length} instance${instances.length === 1 ? "" : "s"}, every ${intervalMs / 1000} s - q: quit`;
  const lines = [`${title}${clock(now).padStart(Math.max(1, width - title.length))}`];
  for (const { url, state: s } of instances) {
    lines.push("");
    if (s.tag === "waiting") lines.push(`${url}  connecting...`);
    else if (s.tag === "down") lines.push(`${url}  DOWN since ${clock(s.since)}: ${s.reason} (retrying)`);
    else lines.push(`${url}  up`, ...upLines(s));
  }
  return lines.map((l) => (l.length > width ? l.slice(0, width) : l));
}

/** One refresh as plain lines, each `<ISO time> <url> ...key=value`: an instance line, then a line per component. */
export function plainLines(instances: readonly Instance[], now: number): string[] {
  const at = new Date(now).toISOString();
  const lines: string[] = [];
  for (const { url, state: s } of instances) {
    const head = `${at} ${url}`;
    if (s.tag === "waiting") continue;
    if (s.tag === "down") {
      lines.push(`${head} down since=${new Date(s.since).toISOString()} error=${JSON.stringify(s.reason)}`);
      continue;
    }
    const { current: c, previous: p } = s;
    const ms = p === undefined ? 0 : c.at - p.at;
    const t = c.totals;
    const rate = (n: number | undefined) => (n === undefined ? "-" : n.toFixed(1));
    const b = c.buffer;
    lines.push(
      `${head} up received=${t.received} received_per_s=${rate(ratePerSecond(t.received, p?.totals.received, ms))} delivered=${t.delivered} delivered_per_s=${rate(ratePerSecond(t.delivered, p?.totals.delivered, ms))} dead_lettered=${t.deadLettered} dropped=${t.dropped} retried=${t.retried} buffer_records=${b.records}${b.maxRecords === undefined ? "" : ` buffer_max_records=${b.maxRecords}`} buffer_bytes=${b.bytes}${b.maxBytes === undefined ? "" : ` buffer_max_bytes=${b.maxBytes}`}`,
    );
    for (const r of rowsOf(c, p)) {
      const total = r.total === undefined ? "" : ` total=${r.total} per_s=${rate(r.rate)}`;
      const retried = r.kind === "sink" ? ` retried=${r.retried}` : "";
      const up = r.up === undefined ? "" : ` up=${r.up ? 1 : 0}`;
      lines.push(`${head} ${r.kind} ${r.name}${total} dead_lettered=${r.deadLettered}${retried}${up}`);
    }
  }
  return lines;
}
