/**
 * The built-in transform types: part of the one list in `builtins.ts`, in a file of its own so a
 * transform worker thread (`src/workers/`) loads the transforms without every source and sink.
 */
import { definition as moduleTransform } from "../transforms/module.js";
import { definition as validateTransform } from "../transforms/validate.js";
import type { TransformDefinition } from "./contracts.js";

/** Transform definitions by their `type:` name. */
export const TRANSFORM_TYPES = {
  module: moduleTransform,
  validate: validateTransform,
} as const;

/** Transform types, in the order they are listed. */
export const TRANSFORMS: readonly TransformDefinition[] = Object.values(TRANSFORM_TYPES);
