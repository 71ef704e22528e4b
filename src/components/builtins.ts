/**
 * The one list of built-in component types. Registration is this explicit list, never an import
 * side effect: a type is available exactly when it is named here. The config schema, `sluice
 * components`, `sluice validate`'s checks and the library's factories (`api/components.ts`) all
 * read it.
 *
 * What is imported here is each type's definition only (options, summary, checks). Types whose
 * implementation needs a client library or server code (postgres, http) are declared with
 * `defineLazyComponent`: their implementation loads when a pipeline creates one.
 */
import { definition as deadLetterSqlite } from "../sinks/dead-letter-sqlite.js";
import { definition as blackholeSink } from "../sinks/blackhole.js";
import { definition as fileSink } from "../sinks/file.js";
import { definition as natsJetStreamSink } from "../sinks/nats-jetstream.js";
import { definition as parquetSink } from "../sinks/parquet/sink.js";
import { definition as postgresSink } from "../sinks/postgres/options.js";
import { definition as rabbitmqSink } from "../sinks/rabbitmq.js";
import { definition as redisStreamsSink } from "../sinks/redis-streams.js";
import { definition as sqliteSink } from "../sinks/sqlite.js";
import { definition as stdoutSink } from "../sinks/stdout.js";
import { definition as fileSource } from "../sources/file/source.js";
import { definition as generatorSource } from "../sources/generator.js";
import { definition as httpSource } from "../sources/http-options.js";
import { definition as redisStreamsSource } from "../sources/redis-streams.js";
import { definition as natsJetStreamSource } from "../sources/nats-jetstream.js";
import { definition as mqttSource } from "../sources/mqtt/source.js";
import { definition as rabbitmqSource } from "../sources/rabbitmq/source.js";
import type { DeadLetterDefinition, SinkDefinition, SourceDefinition } from "./contracts.js";
import { TRANSFORM_TYPES, TRANSFORMS } from "./builtin-transforms.js";

/** Source definitions by their `type:` name (each key is its definition's `type`). */
export const SOURCE_TYPES = {
  generator: generatorSource,
  file: fileSource,
  http: httpSource,
  redis_streams: redisStreamsSource,
  nats_jetstream: natsJetStreamSource,
  mqtt: mqttSource,
  rabbitmq: rabbitmqSource,
} as const;

export { TRANSFORM_TYPES, TRANSFORMS };

/** Sink definitions by their `type:` name. */
export const SINK_TYPES = {
  sqlite: sqliteSink,
  postgres: postgresSink,
  file: fileSink,
  stdout: stdoutSink,
  blackhole: blackholeSink,
  redis_streams: redisStreamsSink,
  nats_jetstream: natsJetStreamSink,
  rabbitmq: rabbitmqSink,
  parquet: parquetSink,
} as const;

/** Dead-letter store definitions by their `type:` name. */
export const DEAD_LETTER_TYPES = {
  sqlite: deadLetterSqlite,
} as const;

/** Source types, in the order they are listed. */
export const SOURCES: readonly SourceDefinition[] = Object.values(SOURCE_TYPES);

/** Sink types, in the order they are listed. */
export const SINKS: readonly SinkDefinition[] = Object.values(SINK_TYPES);

/** Dead-letter store types, in the order they are listed. */
export const DEAD_LETTER_STORES: readonly DeadLetterDefinition[] = Object.values(DEAD_LETTER_TYPES);
