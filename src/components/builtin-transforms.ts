/**
 * The built-in transform types: part of the one list in `builtins.ts`, in a file of its own so a
 * transform worker thread (`src/workers/`) loads the transforms without every source and sink.
 */
import { definition as moduleTransform } from "../transforms/module.js";
import { definition as validateTransform } from "../transforms/validate.js";
import type { TransformDefinition } from "./contracts.js";

/** Transform types by their `type:` name. */
export const TRANSFORMS: readonly TransformDefinition[] = [moduleTransform, validateTransform];
