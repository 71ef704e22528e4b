/**
 * The router of sluice's own HTTP endpoints, on node:http: a table of exact paths to handlers.
 * Every listener (the observability listener, the http source's port) mounts the same table
 * (see `endpoints.ts`), so an endpoint answers alike wherever it is served.
 */
import type { IncomingMessage, ServerResponse } from "node:http";

/** Answers one request. May be async; a rejection goes back to the caller of {@link Router.serve}. */
export type Handler = (req: IncomingMessage, res: ServerResponse, url: URL) => void | Promise<void>;

/** Exact paths to handlers; every route answers GET and HEAD. */
export class Router {
  private readonly routes = new Map<string, Handler>();

  /** Adds a route for GET (and HEAD) on `path`. */
  get(path: string, handler: Handler): this {
    this.routes.set(path, handler);
    return this;
  }

  /** True when `path` (without its query) is one of the routes. */
  has(path: string): boolean {
    return this.routes.has(path);
  }

  /**
   * Answers `req` when its path is one of the routes and resolves true; resolves false, having
   * written nothing, when it is not (the caller answers it). A route asked with another method
   * than GET or HEAD is answered 405 with `Allow`. `headers` go on every answer written here.
   */
  async serve(req: IncomingMessage, res: ServerResponse, headers: Record<string, string> = {}): Promise<boolean> {
    // The host does not matter: only the path and query are read.
    const url = new URL(req.url ?? "/", "http://sluice");
    const handler = this.routes.get(url.pathname);
    if (handler === undefined) return false;
    if (req.method !== "GET" && req.method !== "HEAD") {
      sendJson(res, 405, { error: `use GET on ${url.pathname}` }, { ...headers, allow: "GET, HEAD" });
      return true;
    }
    await handler(req, res, url);
    return true;
  }
}

/** Writes a JSON answer with its length. */
export function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const json = JSON.stringify(body);
  res.writeHead(status, { ...headers, "content-type": "application/json", "content-length": Buffer.byteLength(json) }).end(json);
}
