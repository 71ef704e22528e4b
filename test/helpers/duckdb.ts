/**
 * Reads a Parquet lake back with DuckDB (the dev dependency `@duckdb/node-api`), as users query
 * the `parquet` sink's output: one in-memory database per call.
 */
import { DuckDBInstance } from "@duckdb/node-api";

/** A row as DuckDB's JSON-friendly form gives it (timestamps as text, BIGINT as text). */
export type DuckRow = Record<string, unknown>;

/** Runs `sql` (any number of statements; the last one's rows are returned) in a fresh in-memory DuckDB. */
export async function duckQuery(sql: string): Promise<DuckRow[]> {
  const db = await DuckDBInstance.create(":memory:");
  const conn = await db.connect();
  try {
    const reader = await conn.runAndReadAll(sql);
    return reader.getRowObjectsJson() as DuckRow[];
  } finally {
    conn.closeSync();
    db.closeSync();
  }
}

/** `read_parquet` over every file under `dir`, partition columns from the directory names, columns matched by name across files. */
export function lake(dir: string): string {
  return `read_parquet('${dir.replace(/'/g, "''")}/**/*.parquet', hive_partitioning = true, union_by_name = true)`;
}
