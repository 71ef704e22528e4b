/**
 * Typed factories of the built-in components for the library API, derived from the one list of
 * built-ins (`components/builtins.ts`): every type there has a factory here, named in camelCase
 * (`redis_streams` -> `redisStreams`, `nats_jetstream` -> `natsJetStream`). Each takes the same options as its YAML form (validated by
 * the same schema, at the call) and returns a factory the builder instantiates.
 */
import type { z } from "zod";
import { fromDefinition, type Factory, type SinkFactory, type SourceFactory } from "./builder.js";
import { DEAD_LETTER_TYPES, SINK_TYPES, SOURCE_TYPES, TRANSFORM_TYPES } from "../components/builtins.js";
import type { ComponentContext, ComponentDefinition, DeadLetterStore, Sink, Source, Transform } from "../components/contracts.js";

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

/** `redis_streams` -> `redisStreams`. */
type CamelCase<S extends string> = S extends `${infer Head}_${infer Tail}` ? `${Head}${Capitalize<CamelCase<Tail>>}` : S;

/** A factory's name: its type in camelCase, except where the product's own spelling differs (JetStream). */
type FactoryName<S extends string> = S extends "nats_jetstream" ? "natsJetStream" : CamelCase<S>;

/** The options a definition takes, as written (before defaults). */
type OptionsOf<D> = D extends ComponentDefinition<infer O, unknown> ? z.input<O> : never;

/** A factory's parameters: the options, optional when every key has a default. */
type OptionArgs<D> = Record<never, never> extends OptionsOf<D> ? [options?: OptionsOf<D>] : [options: OptionsOf<D>];

/** Source factories, generic in the payload type the source's records hold (name it). */
type SourceFactories<M> = { [K in keyof M & string as FactoryName<K>]: <P extends object>(...args: OptionArgs<M[K]>) => SourceFactory<P> };

/** Factories of one kind of component whose instances are `T`. */
type Factories<M, T> = { [K in keyof M & string as FactoryName<K>]: (...args: OptionArgs<M[K]>) => T };

/** See {@link FactoryName}. */
export function factoryName(type: string): string {
  return type === "nats_jetstream" ? "natsJetStream" : type.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase());
}

/** One factory per definition of `types`, keyed by its camelCase type name. */
function factoriesOf(types: Record<string, ComponentDefinition<z.ZodObject, unknown>>): Record<string, (options?: object) => Factory<unknown>> {
  return Object.fromEntries(Object.entries(types).map(([type, def]) => [factoryName(type), (options: object = {}) => fromDefinition(def, options as never)]));
}

/**
 * Built-in sources: `generator` (payloads are {@link SensorReading}s), `file`, `http`,
 * `redisStreams`, `natsJetStream`, `mqtt`, `rabbitmq`; name the payload type their records hold
 * (`sources.file<Reading>({ path })`). `custom` wraps a source you implement against the
 * {@link Source} contract.
 */
export const sources = {
  ...(factoriesOf(SOURCE_TYPES) as SourceFactories<Omit<typeof SOURCE_TYPES, "generator">>),
  generator: (options: OptionsOf<typeof SOURCE_TYPES.generator>): SourceFactory<SensorReading> => fromDefinition(SOURCE_TYPES.generator, options),
  custom: <P extends object>(type: string, create: (ctx: ComponentContext) => Source | Promise<Source>): SourceFactory<P> => ({ type, create }),
};

/**
 * Built-in sinks; each accepts any payload. `custom` wraps a sink you implement against the
 * {@link Sink} contract, typed by the payloads it accepts.
 */
export const sinks = {
  ...(factoriesOf(SINK_TYPES) as Factories<typeof SINK_TYPES, SinkFactory<object>>),
  custom: <P extends object>(type: string, create: (ctx: ComponentContext) => Sink | Promise<Sink>): SinkFactory<P> => ({ type, create }),
};

/** Built-in transform components, for `builder.use(...)`. In code, `map`/`filter`/`flatMap` are usually simpler. */
export const transforms = factoriesOf(TRANSFORM_TYPES) as Factories<typeof TRANSFORM_TYPES, Factory<Transform>>;

/** Built-in dead-letter stores. */
export const deadLetters = factoriesOf(DEAD_LETTER_TYPES) as Factories<typeof DEAD_LETTER_TYPES, Factory<DeadLetterStore>>;
