/** The process entry of the `sluice` command: runs the CLI with the process's arguments and sets the exit code. */
import { main } from "./main.js";

process.exitCode = await main(process.argv.slice(2));
