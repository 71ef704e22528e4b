#!/bin/sh
':' //; case " $NODE_OPTIONS " in *" --max-semi-space-size"*) exec node "$0" "$@" ;; *) exec node --max-semi-space-size=64 "$0" "$@" ;; esac
// The npm bin: the compiled CLI entry (`npm run build` makes dist/). Tests run src/cli/entry.ts instead.
// Started as a command, the line above is a shell line that replaces the shell with node (same
// process, `exec`) and a larger young generation: --max-semi-space-size=64 (MiB; V8's default is
// 16) cut the CLI's CPU by 6-9% on allocation-heavy pipelines (docs/architecture.md, "The sluice
// command's node flags"), and a process flag cannot be set from inside. A --max-semi-space-size in
// NODE_OPTIONS is left to win. For node, that line is a string and a comment; `node bin/sluice.js`
// runs the CLI without the flag.
import "../dist/cli/entry.js";
