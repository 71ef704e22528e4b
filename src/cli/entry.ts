/**
 * The process entry of the `sluice` command: runs the CLI with the process's arguments and sets the
 * exit code; an error nothing caught ends it with one line and exit 1 (see crash.ts).
 */
import { exitOnCrash } from "./crash.js";
import { main } from "./main.js";
import { EXIT } from "./run-command.js";

exitOnCrash(EXIT.runtime);
process.exitCode = await main(process.argv.slice(2));
// The command is over. A source left behind at shutdown_timeout (one that did not return when
// stopped) may still hold the event loop with a socket or a read in the kernel: it must not keep
// the process alive. Unref'd, so a process with nothing left exits at once, as before; output
// still on its way to a pipe is waited for, not cut.
const exitOnceFlushed = (): void => {
  if (process.stdout.writableLength + process.stderr.writableLength > 0) setTimeout(exitOnceFlushed, 250).unref();
  else process.exit();
};
setTimeout(exitOnceFlushed, 250).unref();
