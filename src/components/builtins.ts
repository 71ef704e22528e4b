/**
 * The one list of built-in component types. Registration is this explicit list, never an import
 * side effect: a type is available exactly when it is named here.
 */
import { definition as deadLetterSqlite } from "../sinks/dead-letter-sqlite.js";
import { definition as blackholeSink } from "../sinks/blackhole.js";
import { definition as fileSink } from "../sinks/file.js";
import { definition as natsJetStreamSink } from "../sinks/nats-jetstream.js";
import { definition as parquetSink } from "../sinks/parquet/sink.js";
import { definition as postgresSink } from "../sinks/postgres/sink.js";
import { definition as rabbitmqSink } from "../sinks/rabbitmq.js";
import { definition as redisStreamsSink } from "../sinks/redis-streams.js";
import { definition as sqliteSink } from "../sinks/sqlite.js";
import { definition as stdoutSink } from "../sinks/stdout.js";
import { definition as fileSource } from "../sources/file/source.js";
import { definition as generatorSource } from "../sources/generator.js";
import { definition as httpSource } from "../sources/http.js";
import { definition as redisStreamsSource } from "../sources/redis-streams.js";
import { definition as natsJetStreamSource } from "../sources/nats-jetstream.js";
import { definition as mqttSource } from "../sources/mqtt/source.js";
import { definition as rabbitmqSource } from "../sources/rabbitmq/source.js";
import type { DeadLetterDefinition, SinkDefinition, SourceDefinition } from "./contracts.js";
import { TRANSFORMS } from "./builtin-transforms.js";

/** Source types by their `type:` name. */
export const SOURCES: readonly SourceDefinition[] = [generatorSource, fileSource, httpSource, redisStreamsSource, natsJetStreamSource, mqttSource, rabbitmqSource];

export { TRANSFORMS };

/** Sink types by their `type:` name. */
export const SINKS: readonly SinkDefinition[] = [sqliteSink, postgresSink, fileSink, stdoutSink, blackholeSink, redisStreamsSink, natsJetStreamSink, rabbitmqSink, parquetSink];

/** Dead-letter store types by their `type:` name. */
export const DEAD_LETTER_STORES: readonly DeadLetterDefinition[] = [deadLetterSqlite];
