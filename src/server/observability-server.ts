/**
 * The observability listener (`observability.listen`): the pipeline's endpoints (see
 * `endpoints.ts`) on a port of their own, 404 for anything else.
 */
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import type { ServiceProbe } from "../components/contracts.js";
import { sendJson } from "./router.js";

/** A running observability listener. */
export interface ObservabilityServer {
  /** The port it listens on (the one chosen when `listen` asked for port 0). */
  readonly port: number;
  /** Stops listening and ends the live streams opened through it (they never end on their own). */
  close(): Promise<void>;
}

/** Starts the observability listener on `host:port`. Resolves once listening; close it when the run ends. */
export async function startObservabilityServer(listen: string, service: ServiceProbe): Promise<ObservabilityServer> {
  const sep = listen.lastIndexOf(":");
  const host = listen.slice(0, sep);
  const mount = service.mount({ tap: true });
  const server = createServer((req, res) => {
    mount.serve(req, res).then(
      (served) => {
        if (!served) sendJson(res, 404, { error: "not found" });
      },
      (err: unknown) => {
        if (res.headersSent) res.destroy();
        else sendJson(res, 500, { error: String(err) });
      },
    );
  });
  server.keepAliveTimeout = 5000;
  await new Promise<void>((resolveListen, reject) => {
    server.once("error", reject);
    server.listen(Number(listen.slice(sep + 1)), host, () => {
      server.off("error", reject);
      resolveListen();
    });
  });
  server.unref();
  return {
    port: (server.address() as AddressInfo).port,
    close: () => {
      mount.close();
      const closed = new Promise<void>((resolveClose) => server.close(() => resolveClose()));
      server.closeIdleConnections();
      return closed;
    },
  };
}
