/**
 * What `sluice top` shows of one instance, read from its /metrics: counters per component, totals,
 * buffer fill; rates from the difference of two scrapes.
 */
import type { Sample } from "../../observability/prometheus-text.js";

/** A row's kind: a source, a transform stage (its dead letters), a sink. */
export type ComponentKind = "source" | "transform" | "sink";

/** Counters of one component at one scrape. */
export interface ComponentCounts {
  readonly kind: ComponentKind;
  readonly name: string;
  /** Records received (source) or delivered (sink); undefined for a transform. */
  readonly total: number | undefined;
  readonly deadLettered: number;
  readonly retried: number;
  /** From `sluice_sink_up` / `sluice_source_up`: undefined when the component has no connection. */
  readonly up: boolean | undefined;
}

/** Counts of the whole instance. */
export interface Totals {
  readonly received: number;
  readonly delivered: number;
  readonly deadLettered: number;
  readonly dropped: number;
  readonly retried: number;
}

/** One scrape of one instance. */
export interface Scrape {
  /** When it was read, ms. */
  readonly at: number;
  readonly components: readonly ComponentCounts[];
  readonly totals: Totals;
  readonly buffer: { readonly records: number; readonly bytes: number; readonly maxRecords: number | undefined; readonly maxBytes: number | undefined };
}

/** A component's row: its counts, and its rate (per second) since the previous scrape. */
export interface ComponentRow extends ComponentCounts {
  /** Records per second received or delivered; undefined on the first scrape or after a counter reset. */
  readonly rate: number | undefined;
  readonly deadLetteredRate: number | undefined;
}

const sum = (samples: readonly Sample[], name: string) => samples.reduce((n, s) => (s.name === name ? n + s.value : n), 0);
const single = (samples: readonly Sample[], name: string) => samples.find((s) => s.name === name)?.value;

/** Reads a scrape's samples into counts per component. */
export function scrapeOf(samples: readonly Sample[], at: number): Scrape {
  const rows = new Map<string, { kind: ComponentKind; name: string; total: number | undefined; deadLettered: number; retried: number; up: boolean | undefined }>();
  const row = (kind: ComponentKind, name: string) => {
    const key = `${kind}\u0000${name}`;
    let r = rows.get(key);
    if (r === undefined) {
      r = { kind, name, total: kind === "transform" ? undefined : 0, deadLettered: 0, retried: 0, up: undefined };
      rows.set(key, r);
    }
    return r;
  };
  for (const s of samples) {
    const { source, sink } = s.labels;
    switch (s.name) {
      case "sluice_records_received_total":
        if (source !== undefined) row("source", source).total! += s.value;
        break;
      case "sluice_records_delivered_total":
        if (sink !== undefined) row("sink", sink).total! += s.value;
        break;
      case "sluice_records_retried_total":
        if (sink !== undefined) row("sink", sink).retried += s.value;
        break;
      case "sluice_records_dead_lettered_total": {
        // Stages dead-letter too: `source:<name>` (malformed input), `transform:<type>`.
        if (sink === undefined) break;
        const [kind, name] = sink.startsWith("source:") ? (["source", sink.slice(7)] as const) : sink.startsWith("transform:") ? (["transform", sink.slice(10)] as const) : (["sink", sink] as const);
        row(kind, name).deadLettered += s.value;
        break;
      }
      case "sluice_sink_up":
        if (sink !== undefined) row("sink", sink).up = s.value === 1;
        break;
      case "sluice_source_up":
        if (source !== undefined) row("source", source).up = s.value === 1;
        break;
    }
  }
  const order: Record<ComponentKind, number> = { source: 0, transform: 1, sink: 2 };
  return {
    at,
    components: [...rows.values()].sort((a, b) => order[a.kind] - order[b.kind] || a.name.localeCompare(b.name)),
    totals: {
      received: sum(samples, "sluice_records_received_total"),
      delivered: sum(samples, "sluice_records_delivered_total"),
      deadLettered: sum(samples, "sluice_records_dead_lettered_total"),
      dropped: sum(samples, "sluice_records_dropped_total"),
      retried: sum(samples, "sluice_records_retried_total"),
    },
    buffer: {
      records: single(samples, "sluice_buffer_records") ?? 0,
      bytes: single(samples, "sluice_buffer_bytes") ?? 0,
      maxRecords: single(samples, "sluice_buffer_max_records"),
      maxBytes: single(samples, "sluice_buffer_max_bytes"),
    },
  };
}

/** Per second between two readings of a counter; undefined without a previous one, or when it went back (the instance restarted). */
export function ratePerSecond(now: number, before: number | undefined, ms: number): number | undefined {
  if (before === undefined || now < before || ms <= 0) return undefined;
  return ((now - before) * 1000) / ms;
}

/** The rows of `current`, with rates against `previous` (the scrape before, if any). */
export function rowsOf(current: Scrape, previous: Scrape | undefined): ComponentRow[] {
  const ms = previous === undefined ? 0 : current.at - previous.at;
  return current.components.map((c) => {
    const before = previous?.components.find((p) => p.kind === c.kind && p.name === c.name);
    return {
      ...c,
      rate: c.total === undefined ? undefined : ratePerSecond(c.total, before?.total, ms),
      deadLetteredRate: ratePerSecond(c.deadLettered, before?.deadLettered, ms),
    };
  });
}
