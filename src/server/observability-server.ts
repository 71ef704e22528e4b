/** Serves `/metrics`, `/health/live` and `/health/ready` when `observability.listen` is set. */
import { createServer, type Server } from "node:http";
import type { Registry } from "prom-client";

/** What the server asks the pipeline. */
export interface HealthProbe {
  /** Why the pipeline is not ready (starting, stopping, a component in trouble): one line per component; empty when ready. */
  unready(): string[];
}

/**
 * Starts the observability server on `host:port`. Resolves once listening; the returned server is
 * closed by the caller when the run ends.
 */
export async function startObservabilityServer(listen: string, registry: Registry, health: HealthProbe): Promise<Server> {
  const sep = listen.lastIndexOf(":");
  const host = listen.slice(0, sep);
  const port = Number(listen.slice(sep + 1));
  const server = createServer((req, res) => {
    const path = (req.url ?? "/").split("?")[0];
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.writeHead(405, { allow: "GET, HEAD" }).end();
      return;
    }
    if (path === "/metrics") {
      registry.metrics().then(
        (text) => res.writeHead(200, { "content-type": registry.contentType }).end(text),
        (err: unknown) => res.writeHead(500, { "content-type": "text/plain" }).end(String(err)),
      );
    } else if (path === "/health/live") {
      res.writeHead(200, { "content-type": "application/json" }).end('{"status":"live"}');
    } else if (path === "/health/ready") {
      const reasons = health.unready();
      const body = reasons.length === 0 ? { status: "ready" } : { status: "not_ready", reasons };
      res.writeHead(reasons.length === 0 ? 200 : 503, { "content-type": "application/json" }).end(JSON.stringify(body));
    } else {
      res.writeHead(404, { "content-type": "application/json" }).end('{"error":"not found"}');
    }
  });
  server.keepAliveTimeout = 5000;
  await new Promise<void>((resolveListen, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      resolveListen();
    });
  });
  server.unref();
  return server;
}
