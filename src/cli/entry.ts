/**
 * The process entry of the `sluice` command: runs the CLI with the process's arguments and sets the
 * exit code; an error nothing caught ends it with one line and exit 1 (see crash.ts).
 */
import { exitOnCrash } from "./crash.js";
import { main } from "./main.js";
import { EXIT } from "./run-command.js";

exitOnCrash(EXIT.runtime);
process.exitCode = await main(process.argv.slice(2));
