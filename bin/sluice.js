#!/usr/bin/env node
// The npm bin: the compiled CLI entry (`npm run build` makes dist/). Tests run src/cli/entry.ts instead.
import "../dist/cli/entry.js";
