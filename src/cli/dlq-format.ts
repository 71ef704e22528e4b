/** How `sluice dlq` prints entries: NDJSON for scripts, a table or whole entries for people. */
import type { DeadLetterStatus, StoredDeadLetter } from "../components/contracts.js";

const iso = (ms: number | undefined): string | null => (ms === undefined ? null : new Date(ms).toISOString());

/** The payload as JSON (its text when that is not JSON), or null. */
function payloadValue(text: string | undefined): unknown {
  if (text === undefined) return null;
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return text;
  }
}

/**
 * An entry's fields, named as scripts read them: `seq`, `record_id`, `source`, `sink`, `status`,
 * `code`, `message`, `attempts`, `first_failure_at`, `last_failure_at`, `replayed_at`,
 * `resolved_at` (ISO 8601 or null), `payload` (the JSON value, or null), `raw` (the unparsable
 * input, or null).
 */
function entryFields(e: StoredDeadLetter) {
  return {
    seq: e.seq,
    record_id: e.recordId,
    source: e.source,
    sink: e.sink,
    status: e.status,
    code: e.code,
    message: e.message,
    attempts: e.attempts,
    first_failure_at: iso(e.firstFailureAt),
    last_failure_at: iso(e.lastFailureAt),
    replayed_at: iso(e.replayedAt),
    resolved_at: iso(e.resolvedAt),
    payload: payloadValue(e.payload),
    raw: e.raw ?? null,
  };
}

/** One entry as a JSON line, with the fixed field names of {@link entryFields}. */
export function entryJson(e: StoredDeadLetter): string {
  return JSON.stringify(entryFields(e));
}

function clip(text: string, width: number): string {
  const line = text.replace(/\s+/g, " ");
  return line.length <= width ? line : `${line.slice(0, width - 1)}…`;
}

/** "3 entries: 2 pending, 1 replayed; by sink: db 3; by code: ERR_SINK_REJECTED 3". */
export function countSummary(entries: readonly StoredDeadLetter[]): string {
  const tally = (key: (e: StoredDeadLetter) => string) => {
    const counts = new Map<string, number>();
    for (const e of entries) counts.set(key(e), (counts.get(key(e)) ?? 0) + 1);
    return [...counts].map(([k, n]) => `${k} ${n}`).join(", ");
  };
  const statuses: DeadLetterStatus[] = ["pending", "replayed", "resolved"];
  const byStatus = statuses
    .map((s) => [s, entries.filter((e) => e.status === s).length] as const)
    .filter(([, n]) => n > 0)
    .map(([s, n]) => `${n} ${s}`)
    .join(", ");
  const head = `${entries.length} entr${entries.length === 1 ? "y" : "ies"}`;
  if (entries.length === 0) return head;
  return `${head}: ${byStatus}; by sink: ${tally((e) => e.sink)}; by code: ${tally((e) => e.code)}`;
}

/** The entries as a table, one line each, the message clipped; then the count summary. */
export function entryTable(entries: readonly StoredDeadLetter[]): string {
  const header = ["SEQ", "RECORD ID", "SINK", "STATUS", "CODE", "ATTEMPTS", "LAST FAILURE", "MESSAGE"];
  const rows = entries.map((e) => [String(e.seq), e.recordId, e.sink, e.status, e.code, String(e.attempts), iso(e.lastFailureAt) ?? "-", clip(e.message, 60)]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: readonly string[]) =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!)))
      .join("  ")
      .trimEnd();
  const lines = entries.length === 0 ? [] : [line(header), ...rows.map(line)];
  lines.push(countSummary(entries));
  return `${lines.join("\n")}\n`;
}

/** One entry in full, a field a line (null as `-`), the payload as indented JSON. */
export function entryBlock(e: StoredDeadLetter): string {
  const { seq, ...fields } = entryFields(e);
  const shown = (v: unknown): string => (v === null ? "-" : typeof v === "string" ? v : JSON.stringify(v, null, 2));
  const indent = " ".repeat(20);
  const lines = [`entry ${seq}`, ...Object.entries(fields).map(([k, v]) => `  ${k.padEnd(18)}${shown(v).split("\n").join(`\n${indent}`)}`)];
  return `${lines.join("\n")}\n`;
}
