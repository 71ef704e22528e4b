/**
 * The `postgres` sink: one row per record (or, with `upsert_latest`, one row per key) in a
 * PostgreSQL table, written with COPY, idempotently, one transaction per batch, with typed columns
 * filled from payload fields. Records PostgreSQL rejects are found within their batch and reported
 * alone; the rest of the batch commits.
 */
import { userInfo } from "node:os";
import type { Pool, PoolClient, QueryResult } from "pg";
import { SluiceError } from "../../core/errors.js";
import type { SluiceRecord } from "../../core/record.js";
import type { PreferredWrite, RecordFailure, Sink, WriteResult } from "../../components/contracts.js";
import { rowLayout } from "./encoding.js";
import { abortedError, classifyPostgresError, connectionLost, scopeOf, sqlstate } from "./errors.js";
import type { PostgresSinkSettings } from "./options.js";
import { pg } from "./pg.js";
import { copyIn, CopyRows } from "./protocol.js";
import { SAVEPOINT, statements } from "./statements.js";

/** How long `connect` and a write wait for a free or new connection, in ms; then a retryable error. */
const CONNECT_TIMEOUT_MS = 10_000;

/** Idle connections close after this long, in ms (a new one recreates its staging table). */
const IDLE_TIMEOUT_MS = 30_000;

/**
 * The write the sink prefers when batches pile up (the engine joins waiting batches up to it):
 * one COPY and one commit for up to this many records, which is what makes a backlog cheap on the
 * server (fewer commits, fewer WAL flushes).
 */
const PREFERRED_WRITE: PreferredWrite = { maxRecords: 10_000, maxBytes: 32 * 1024 * 1024 };

/**
 * Makes the OS user the one a URL without a user connects as, as psql (libpq) does. pg looks only
 * at `$USER`, and where that is unset (cron, systemd units, containers) sends no user at all, which
 * the server refuses: "no PostgreSQL user name specified". Set on pg's defaults, so the URL's user
 * and `PGUSER` still come first, and only when pg found none: nothing that connected before changes.
 */
function defaultUserFromOs(): void {
  if (pg.defaults.user) return;
  try {
    pg.defaults.user = userInfo().username;
  } catch {
    // A uid without a passwd entry has no name to take: pg's own error then says what is missing.
  }
}

/** What writing the rows of a write did besides storing them. */
interface Applied {
  /** Records late (upsert_latest): not applied because a record of their key at least as new was there first. */
  readonly late: number;
  /** Rows (index among the rows written) whose record the table already held, or held one at least as new (upsert_latest). */
  readonly present: number[];
}

/** A checked-out connection, with what happened to it while it was out. */
interface Lease {
  readonly client: PoolClient;
  /** Set when the connection must not go back to the pool. */
  broken: unknown;
  done(): void;
}

/**
 * Builds a PostgreSQL sink (what the `postgres` definition's factory returns). Exported for
 * library users and tests that set what the config does not expose (the insert write path).
 *
 * Write path: each `write` (one batch, or several the engine joined: {@link PREFERRED_WRITE}) is
 * COPY-encoded once (text format) and written on one connection, in one transaction: `maxInFlight`
 * is `pool_size`, so a write never waits for a connection. `insert` mode COPYs it straight into
 * the table; a duplicate id (a redelivery) makes that COPY fail as a whole, and that batch then
 * goes through a per-connection temporary staging table: COPY into it, then
 * `INSERT INTO table SELECT .. FROM stage ON CONFLICT (id) DO NOTHING` in the same transaction.
 * Redeliveries come in runs, so later batches stage too until one inserts every row.
 * `upsert_latest` always stages, then keeps the newest record per key within the batch
 * (`DISTINCT ON`) and upserts it `ON CONFLICT (key) DO UPDATE .. WHERE excluded.version >
 * table.version`, so an older record never overwrites a newer row; records not applied because a
 * record at least as new was there first are counted as `records_late`.
 *
 * Each write reports its records already present: none after a direct COPY (which fails whole on
 * one duplicate); in `insert` mode the staged records the INSERT did not return (`RETURNING id`);
 * in `upsert_latest` those not applied because their key's row held them or a record at least as new.
 *
 * A data error (class 22, 23, trigger errors) makes the sink bisect the batch inside one
 * transaction with savepoints: about 2·log2(n) statements per bad record; the bad records are
 * reported with their SQLSTATE, the rest commits. Any other error fails the whole batch
 * (retryable or not, by {@link classifyPostgresError}); a connection that failed is discarded.
 *
 * Gotchas: `insert` keeps the first copy of an id (a redelivered record whose payload changed does
 * not update the row). jsonb and text cannot hold U+0000: a record with one is dead-lettered
 * (22P05 or 22021). Needs a session per connection (pgbouncer in transaction mode breaks the
 * temporary staging table).
 */
export function createPostgresSink(settings: PostgresSinkSettings): Sink {
  const target = settings.schema === undefined ? pg.escapeIdentifier(settings.table) : `${pg.escapeIdentifier(settings.schema)}.${pg.escapeIdentifier(settings.table)}`;
  const location = `postgres ${target}`;
  const upsert = settings.mode === "upsert_latest";
  const direct = !upsert && (settings.insertPath ?? "copy_direct") === "copy_direct";

  const layout = rowLayout(settings);
  const sql = statements(target, layout);

  /**
   * Creates the table, under a transaction-scoped advisory lock on its name: CREATE TABLE IF NOT
   * EXISTS is not safe against itself, and a fleet of workers started at once on a new table
   * would otherwise fail all but one with a unique violation on pg_type (SQLSTATE 23505). The
   * second one waits for the first to commit and then finds the table.
   */
  async function createTable(client: PoolClient): Promise<void> {
    await client.query("BEGIN");
    try {
      await client.query("SELECT pg_advisory_xact_lock(hashtext($1))", [`sluice create ${target}`]);
      await client.query(sql.createTable);
      await client.query("COMMIT");
    } catch (err) {
      await client.query("ROLLBACK").catch(() => undefined);
      throw err;
    }
  }
  let pool: Pool | undefined;
  /** insert mode: a batch hit an id already stored and no staged batch since was all new; staging skips the doomed direct COPY. */
  let duplicatesSeen = false;
  /** Connections whose session has the staging table (a new connection is a new session). */
  const staged = new WeakSet<PoolClient>();

  /** A connection from the pool, ended when `signal` aborts. */
  async function lease(p: Pool, signal: AbortSignal): Promise<Lease> {
    const client = await p.connect();
    const l: Lease = {
      client,
      broken: undefined,
      done() {
        client.removeListener("error", onError);
        signal.removeEventListener("abort", onAbort);
        client.release(l.broken === undefined ? undefined : l.broken instanceof Error ? l.broken : true);
      },
    };
    // A checked-out client has no pool listener: without this, a socket error between two queries would crash the process.
    const onError = (err: Error) => {
      l.broken ??= err;
    };
    // Ending the connection fails the statement in flight; the server rolls the transaction back.
    const onAbort = () => {
      l.broken ??= abortedError(signal);
      client.end().catch(() => undefined);
    };
    client.on("error", onError);
    signal.addEventListener("abort", onAbort, { once: true });
    // Aborted while the connection was opening: nothing was sent on it.
    if (signal.aborted) onAbort();
    return l;
  }

  async function ensureStage(client: PoolClient): Promise<void> {
    if (staged.has(client)) return;
    await client.query(sql.createStage);
    staged.add(client);
  }

  /**
   * Runs the apply statement on staged lines [lo, hi) (all when absent), whose record ids are
   * `ids`; resolves to the records late (upsert_latest) and the lines already present.
   */
  async function apply(client: PoolClient, ids: readonly string[], lo?: number, hi?: number, then = ""): Promise<Applied> {
    const res = (await client.query(sql.apply(lo, hi) + then)) as QueryResult | QueryResult[];
    const first = Array.isArray(res) ? res[0]! : res;
    if (upsert) {
      const row = first.rows[0] as { late: number; present: number[] } | undefined;
      return { late: row?.late ?? 0, present: row?.present ?? [] };
    }
    const inserted = new Set((first.rows as { id: string }[]).map((r) => r.id));
    const present: number[] = [];
    // Deleted when seen, so of two lines with one id (both in this statement) the second is already present.
    for (let i = lo ?? 0; i < (hi ?? ids.length); i++) if (!inserted.delete(ids[i]!)) present.push(i);
    return { late: 0, present };
  }

  async function rollback(l: Lease, sql = "ROLLBACK"): Promise<void> {
    if (l.broken !== undefined) return;
    try {
      await l.client.query(sql);
    } catch (err) {
      l.broken = err;
    }
  }

  /** The whole batch through the staging table in one transaction. */
  async function staging(l: Lease, rows: CopyRows, ids: readonly string[]): Promise<Applied> {
    await ensureStage(l.client);
    try {
      await l.client.query("BEGIN");
      await copyIn(l.client, sql.stageCopy, rows.staged(0, rows.length));
      const applied = await apply(l.client, ids);
      await l.client.query("COMMIT");
      // Every row new: the redelivered range is over, direct COPY is the fast path again.
      if (!upsert && applied.present.length === 0) duplicatesSeen = false;
      return applied;
    } catch (err) {
      await rollback(l);
      throw err;
    }
  }

  /**
   * Finds the records PostgreSQL rejects, in one transaction: each range is tried under a
   * savepoint, a failing range is halved, a failing single record is reported (its index into
   * `rows`). Depth-first and left before right, so ranges commit in batch order and upsert_latest
   * ends where the whole batch would have.
   */
  async function bisect(l: Lease, rows: CopyRows, ids: readonly string[], failures: RecordFailure[]): Promise<Applied> {
    const { client } = l;
    await ensureStage(client);
    let late = 0;
    const present: number[] = [];
    try {
      // Deferred constraints checked per statement, so a bad record fails its own range, not the COMMIT.
      await client.query(`BEGIN; SET CONSTRAINTS ALL IMMEDIATE; SAVEPOINT ${SAVEPOINT}`);
      const mid = rows.length >> 1;
      const stack: [number, number][] = mid === 0 ? [[0, rows.length]] : [[mid, rows.length], [0, mid]];
      for (let range = stack.pop(); range !== undefined; range = stack.pop()) {
        const [lo, hi] = range;
        try {
          await copyIn(client, sql.stageCopy, rows.staged(lo, hi));
          const applied = await apply(client, ids, lo, hi, `; RELEASE SAVEPOINT ${SAVEPOINT}; SAVEPOINT ${SAVEPOINT}`);
          late += applied.late;
          present.push(...applied.present);
        } catch (err) {
          if (scopeOf(err) !== "record" || connectionLost(err)) throw err;
          await client.query(`ROLLBACK TO SAVEPOINT ${SAVEPOINT}`);
          if (hi - lo === 1) {
            failures.push({ index: lo, error: classifyPostgresError(err, "ERR_SINK_WRITE", "ERR_SINK_REJECTED", location) });
          } else {
            const half = (lo + hi) >> 1;
            stack.push([half, hi], [lo, half]);
          }
        }
      }
      await client.query("COMMIT");
      return { late, present };
    } catch (err) {
      await rollback(l);
      throw err;
    }
  }

  async function writeRows(l: Lease, rows: CopyRows, ids: readonly string[], failures: RecordFailure[]): Promise<Applied> {
    if (direct && !duplicatesSeen) {
      try {
        await copyIn(l.client, sql.directCopy, rows.message());
        return { late: 0, present: [] };
      } catch (err) {
        if (connectionLost(err)) throw err;
        // A duplicate id (a redelivery) goes through the staging path, which skips it; a bad record is searched for at once.
        if (sqlstate(err) !== "23505") {
          if (scopeOf(err) !== "record") throw err;
          return bisect(l, rows, ids, failures);
        }
        // Redeliveries come in runs (the range after a restart): stage the next batches too, not fail a COPY for each.
        duplicatesSeen = true;
      }
    }
    try {
      return await staging(l, rows, ids);
    } catch (err) {
      if (scopeOf(err) !== "record" || connectionLost(err)) throw err;
      return bisect(l, rows, ids, failures);
    }
  }

  return {
    maxInFlight: settings.poolSize,
    preferredWrite: PREFERRED_WRITE,

    async connect(signal: AbortSignal) {
      if (pool !== undefined) return;
      defaultUserFromOs();
      const p = new pg.Pool({
        connectionString: settings.url,
        max: settings.poolSize,
        keepAlive: true,
        connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
        idleTimeoutMillis: IDLE_TIMEOUT_MS,
        application_name: "sluice",
      });
      // An idle connection's failure (a server restart) surfaces here; the pool drops it and the next write opens a new one.
      // Logged only, not the sink being down: with no traffic nothing would ever clear it (readiness stuck false).
      p.on("error", (err) =>
        settings.emit({ type: "component_error", component: settings.name, code: "ERR_SINK_WRITE", message: classifyPostgresError(err, "ERR_SINK_WRITE", "ERR_SINK_WRITE", location).message }),
      );
      try {
        const l = await lease(p, signal);
        try {
          if (settings.createTable) {
            const exists = await l.client.query<{ found: boolean }>("SELECT to_regclass($1) IS NOT NULL AS found", [target]);
            // Checked first: CREATE .. IF NOT EXISTS needs the CREATE privilege even when the table exists.
            if (exists.rows[0]?.found !== true) await createTable(l.client);
          }
          await ensureStage(l.client);
          // The write statement once on an empty staging table: a missing column, a type that does not
          // fit or a missing unique index on the conflict column fails here, not on every batch.
          await l.client.query("BEGIN");
          try {
            await apply(l.client, []);
          } finally {
            await rollback(l);
          }
        } catch (err) {
          if (connectionLost(err)) l.broken ??= err;
          throw err;
        } finally {
          l.done();
        }
        pool = p;
      } catch (err) {
        await p.end().catch(() => undefined);
        if (signal.aborted) throw abortedError(signal);
        throw classifyPostgresError(err, "ERR_SINK_CONNECT", "ERR_SINK_CONNECT", location);
      }
    },

    async write(records: readonly SluiceRecord[], signal: AbortSignal): Promise<WriteResult | void> {
      const p = pool;
      if (p === undefined) throw new SluiceError("ERR_INTERNAL", "postgres sink: write before connect", { location });
      if (signal.aborted) throw abortedError(signal);
      if (records.length === 0) return {};

      const failures: RecordFailure[] = [];
      const present: number[] = [];
      const rows = new CopyRows(records.length);
      // Only a record that cannot be a row is bad: a payload JSON cannot represent (a cycle, a BigInt), a time out of range, no key.
      const live = layout.encode(records, rows, (i, err) => {
        failures.push({
          index: i,
          error: new SluiceError("ERR_SINK_REJECTED", `postgres sink: record ${records[i]!.id} cannot be stored: ${err.message}`, { cause: err, location }),
        });
      });
      const ids = live.map((i) => records[i]!.id);

      if (rows.length > 0) {
        let l: Lease;
        try {
          l = await lease(p, signal);
        } catch (err) {
          throw signal.aborted ? abortedError(signal) : classifyPostgresError(err, "ERR_SINK_WRITE", "ERR_SINK_REJECTED", location);
        }
        const bad: RecordFailure[] = [];
        try {
          const applied = await writeRows(l, rows, ids, bad);
          if (applied.late > 0) settings.emit({ type: "records_late", sink: settings.name, count: applied.late });
          for (const line of applied.present) present.push(live[line]!);
        } catch (err) {
          if (connectionLost(err)) l.broken ??= err;
          throw signal.aborted ? abortedError(signal) : classifyPostgresError(err, "ERR_SINK_WRITE", "ERR_SINK_REJECTED", location);
        } finally {
          l.done();
        }
        for (const f of bad) failures.push({ index: live[f.index]!, error: f.error });
      }
      failures.sort((a, b) => a.index - b.index);
      present.sort((a, b) => a - b);
      return failures.length > 0 || present.length > 0 ? { failures, alreadyPresent: present } : {};
    },

    async close() {
      const p = pool;
      pool = undefined;
      await p?.end();
    },
  };
}
