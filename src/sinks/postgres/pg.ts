/**
 * The pg client, required (not imported) by the postgres sink's modules: a bundle (the benchmarks'
 * CLI) hoists a static import of a package to its top and would load pg at every start; this
 * module runs only when the sink itself is loaded, on a pipeline's first postgres sink.
 */
import { createRequire } from "node:module";
import type * as Pg from "pg";

export const pg = createRequire(import.meta.url)("pg") as typeof Pg;
