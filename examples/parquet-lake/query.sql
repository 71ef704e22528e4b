-- The lake, read by DuckDB: partition columns (date, sensor) come from the directory names.
-- A record delivered twice (a retry, a restart after a crash) is in two files: keep one row per id.
CREATE VIEW readings AS
SELECT * EXCLUDE (copy)
FROM (
  SELECT *, row_number() OVER (PARTITION BY id ORDER BY ingested_at) AS copy
  FROM read_parquet('lake/**/*.parquet', hive_partitioning = true, union_by_name = true)
)
WHERE copy = 1;

SELECT date, sensor, count(*) AS readings, round(avg(value), 2) AS avg_value, count(*) FILTER (WHERE NOT ok) AS not_ok
FROM readings
GROUP BY ALL
ORDER BY ALL;
