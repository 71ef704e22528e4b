/**
 * Rows in a SQLite sink's `records` table while a run writes it, cheaply: the largest rowid,
 * which equals the count because rows are only inserted (`ON CONFLICT (id) DO NOTHING` uses no
 * rowid for a skipped row). A count(*) per poll would scan the table and slow the run it watches.
 * 0 while the database or table does not exist yet.
 */
import Database from "better-sqlite3";

export function countRows(db: string): number {
  let conn: Database.Database | undefined;
  try {
    conn = new Database(db, { fileMustExist: true, readonly: true });
    return (conn.prepare("SELECT coalesce(max(rowid), 0) AS n FROM records").get() as { n: number }).n;
  } catch {
    return 0;
  } finally {
    conn?.close();
  }
}
