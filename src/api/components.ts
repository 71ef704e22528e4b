/**
 * Typed factories of the built-in components for the library API. Each takes the same options as
 * its YAML form (validated by the same schema) and returns a factory the builder instantiates.
 */
import type { z } from "zod";
import { fromDefinition, type Factory, type SinkFactory, type SourceFactory } from "./builder.js";
import type { DeadLetterStore, Sink, Source, Transform } from "../components/contracts.js";
import { definition as deadLetterSqlite } from "../sinks/dead-letter-sqlite.js";
import { definition as blackhole } from "../sinks/blackhole.js";
import { definition as fileSink } from "../sinks/file.js";
import { definition as natsJetStream } from "../sinks/nats-jetstream.js";
import { definition as parquet } from "../sinks/parquet/sink.js";
import { definition as postgres } from "../sinks/postgres/sink.js";
import { definition as rabbitmq } from "../sinks/rabbitmq.js";
import { definition as redisStreams } from "../sinks/redis-streams.js";
import { definition as sqlite } from "../sinks/sqlite.js";
import { definition as stdout } from "../sinks/stdout.js";
import { definition as fileSource } from "../sources/file/source.js";
import { definition as generator } from "../sources/generator.js";
import { definition as httpSource } from "../sources/http.js";
import { definition as redisStreamsSource } from "../sources/redis-streams.js";
import { definition as natsJetStreamSource } from "../sources/nats-jetstream.js";
import { definition as mqttSource } from "../sources/mqtt/source.js";
import { definition as rabbitmqSource } from "../sources/rabbitmq/source.js";
import { definition as moduleTransform } from "../transforms/module.js";
import { definition as validate } from "../transforms/validate.js";
import type { ComponentContext } from "../components/contracts.js";

/** A payload of the `generator` source: the seed's sensor reading. */
export type SensorReading = {
  id: string;
  sensor: string;
  value: number;
  unit: string;
  ts: string;
  seq: number;
  pad?: string;
};

/** Built-in sources. `file` is generic: name the payload type its lines hold. */
export const sources = {
  generator: (options: z.input<typeof generator.options>): SourceFactory<SensorReading> => fromDefinition(generator, options),
  file: <P extends object>(options: z.input<typeof fileSource.options>): SourceFactory<P> => fromDefinition(fileSource, options),
  /** An ingest endpoint (`POST /v1/events`); name the payload type producers send. */
  http: <P extends object>(options: z.input<typeof httpSource.options> = {}): SourceFactory<P> => fromDefinition(httpSource, options),
  /** A Redis Streams consumer group; name the payload type its entries' bodies hold. */
  redisStreams: <P extends object>(options: z.input<typeof redisStreamsSource.options>): SourceFactory<P> => fromDefinition(redisStreamsSource, options),
  /** A NATS JetStream durable pull consumer; name the payload type the stream's messages hold. */
  natsJetStream: <P extends object>(options: z.input<typeof natsJetStreamSource.options>): SourceFactory<P> => fromDefinition(natsJetStreamSource, options),
  /** An MQTT subscription in a persistent session; name the payload type the messages hold. */
  mqtt: <P extends object>(options: z.input<typeof mqttSource.options>): SourceFactory<P> => fromDefinition(mqttSource, options),
  /** A RabbitMQ queue consumed with manual acks; name the payload type its messages hold. */
  rabbitmq: <P extends object>(options: z.input<typeof rabbitmqSource.options>): SourceFactory<P> => fromDefinition(rabbitmqSource, options),
  /** A source you implement against the {@link Source} contract. */
  custom: <P extends object>(type: string, create: (ctx: ComponentContext) => Source): SourceFactory<P> => ({ type, create }),
};

/** Built-in sinks; each accepts any payload. */
export const sinks = {
  sqlite: (options: z.input<typeof sqlite.options>): SinkFactory<object> => fromDefinition(sqlite, options),
  postgres: (options: z.input<typeof postgres.options>): SinkFactory<object> => fromDefinition(postgres, options),
  file: (options: z.input<typeof fileSink.options>): SinkFactory<object> => fromDefinition(fileSink, options),
  stdout: (options: z.input<typeof stdout.options> = {}): SinkFactory<object> => fromDefinition(stdout, options),
  blackhole: (): SinkFactory<object> => fromDefinition(blackhole, {}),
  redisStreams: (options: z.input<typeof redisStreams.options>): SinkFactory<object> => fromDefinition(redisStreams, options),
  natsJetStream: (options: z.input<typeof natsJetStream.options>): SinkFactory<object> => fromDefinition(natsJetStream, options),
  rabbitmq: (options: z.input<typeof rabbitmq.options>): SinkFactory<object> => fromDefinition(rabbitmq, options),
  /** Parquet files in a directory with Hive-style partitions (a data lake). */
  parquet: (options: z.input<typeof parquet.options>): SinkFactory<object> => fromDefinition(parquet, options),
  /** A sink you implement against the {@link Sink} contract, typed by the payloads it accepts. */
  custom: <P extends object>(type: string, create: (ctx: ComponentContext) => Sink): SinkFactory<P> => ({ type, create }),
};

/** Built-in transform components, for `builder.use(...)`. In code, `map`/`filter`/`flatMap` are usually simpler. */
export const transforms = {
  module: (options: z.input<typeof moduleTransform.options>): Factory<Transform> => fromDefinition(moduleTransform, options),
  validate: (options: z.input<typeof validate.options>): Factory<Transform> => fromDefinition(validate, options),
};

/** Built-in dead-letter stores. */
export const deadLetters = {
  sqlite: (options: z.input<typeof deadLetterSqlite.options> = {}): Factory<DeadLetterStore> => fromDefinition(deadLetterSqlite, options),
};
