/**
 * The SQL the `postgres` sink runs, built once per sink from its table and row layout: the table's
 * DDL, the per-connection staging table, the COPY statements, and the statement that moves staged
 * rows into the table (insert: `ON CONFLICT (id) DO NOTHING`; upsert_latest: newest per key).
 */
import { pg } from "./pg.js";
import type { RowLayout } from "./encoding.js";

/** The per-connection staging table: temporary, so private to the session, never WAL-logged. */
export const STAGE = "pg_temp.sluice_stage";

/** The savepoint bisecting a batch moves along. */
export const SAVEPOINT = "sluice_bisect";

/** The statements of one sink. */
export interface Statements {
  /** `CREATE TABLE IF NOT EXISTS` with the base columns, the layout's others, and upsert_latest's unique key. */
  readonly createTable: string;
  /** The session's staging table: `seq` (the line's index in the write), then one positional column per layout column. */
  readonly createStage: string;
  /** COPY straight into the table (insert mode's fast path). */
  readonly directCopy: string;
  /** COPY into the staging table. */
  readonly stageCopy: string;
  /**
   * Moves staged lines [lo, hi) (all when absent) into the table. insert: returns the ids inserted
   * (`RETURNING id`); upsert_latest: one row `{ late, present }` (count of late records, seqs not applied).
   */
  apply(lo?: number, hi?: number): string;
}

/** The statements writing `target` (an already quoted, maybe schema-qualified name) rows of `layout`. */
export function statements(target: string, layout: RowLayout): Statements {
  const { columns, keyIndex, versionIndex } = layout;
  const upsert = keyIndex >= 0;
  const quoted = columns.map((s) => pg.escapeIdentifier(s.name));
  const columnList = quoted.join(", ");
  // Staging columns are positional (`s0`, `s1`, ...), so no user column name can clash with `seq`.
  const stageNames = columns.map((_, i) => `s${i}`);
  // insert: jsonb columns are staged as text and parsed only for the rows that go into the table: a
  // rerun's redelivered range, which is what staging is for, then never parses a payload it will not
  // store. upsert_latest compares and joins on staged columns (a jsonb key), so it stages them as they are.
  const asText = (type: string) => !upsert && type === "jsonb";
  const stageList = columns.map((c, i) => (asText(c.type) ? `${stageNames[i]}::jsonb` : stageNames[i])).join(", ");

  const createTable =
    `CREATE TABLE IF NOT EXISTS ${target} (id text PRIMARY KEY, key text, payload jsonb, event_time timestamptz, ingested_at timestamptz DEFAULT now()` +
    columns
      .slice(4)
      .map((s) => `, ${pg.escapeIdentifier(s.name)} ${s.type}`)
      .join("") +
    (upsert ? `, UNIQUE (${quoted[keyIndex]})` : "") +
    ")";

  function apply(lo?: number, hi?: number): string {
    const where = lo === undefined ? "" : ` WHERE seq >= ${lo} AND seq < ${hi}`;
    // Rows whose id is stored are left out before anything is cast (the anti-join); ON CONFLICT still
    // catches an id twice in the batch and a row another writer commits meanwhile. RETURNING the ids
    // inserted: none on a rerun's redelivered range, which is when staging runs. ORDER BY seq: rows
    // go in in batch order whatever plan the anti-join gets (a hash join over several batches, once
    // the table outgrows work_mem, returns them out of order, and a key's later version would commit
    // before an earlier one).
    if (!upsert) {
      const fresh = `${where === "" ? " WHERE" : `${where} AND`} NOT EXISTS (SELECT 1 FROM ${target} t WHERE t.id = ${STAGE}.s0)`;
      return `INSERT INTO ${target} (${columnList}) SELECT ${stageList} FROM ${STAGE}${fresh} ORDER BY seq ON CONFLICT (id) DO NOTHING RETURNING id`;
    }
    const k = stageNames[keyIndex]!;
    const v = stageNames[versionIndex]!;
    const kq = quoted[keyIndex]!;
    const vq = quoted[versionIndex]!;
    const updates = [...quoted.map((q) => `${q} = excluded.${q}`), "ingested_at = now()"].join(", ");
    // The main query and the CTE read one snapshot: `cur` is the row as it was before this statement.
    // Late: a record at least as new was there first, stored (and not this record) or earlier in the batch.
    // Present: not applied because the row held this record or one at least as new (late, or a redelivery).
    return (
      `WITH newest AS (SELECT DISTINCT ON (${k}) * FROM ${STAGE}${where} ORDER BY ${k}, ${v} DESC, seq), ` +
      `up AS (INSERT INTO ${target} AS t (${columnList}) SELECT ${stageList} FROM newest ` +
      `ON CONFLICT (${kq}) DO UPDATE SET ${updates} WHERE t.${vq} IS NULL OR excluded.${vq} > t.${vq}) ` +
      `SELECT count(*) FILTER (WHERE (cur.${vq} >= w.v AND cur.id IS DISTINCT FROM w.id) OR w.prev >= w.v)::int AS late, ` +
      `coalesce(array_agg(w.seq) FILTER (WHERE cur.${vq} >= w.v OR w.prev >= w.v), '{}') AS present FROM ` +
      `(SELECT seq, s0 AS id, ${k} AS k, ${v} AS v, max(${v}) OVER (PARTITION BY ${k} ORDER BY seq ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev FROM ${STAGE}${where}) w ` +
      `LEFT JOIN ${target} cur ON cur.${kq} = w.k`
    );
  }

  return {
    createTable,
    createStage: `CREATE TEMP TABLE IF NOT EXISTS sluice_stage (seq integer, ${columns.map((s, i) => `${stageNames[i]} ${asText(s.type) ? "text" : s.type}`).join(", ")}) ON COMMIT DELETE ROWS`,
    directCopy: `COPY ${target} (${columnList}) FROM STDIN`,
    stageCopy: `COPY ${STAGE} FROM STDIN`,
    apply,
  };
}
