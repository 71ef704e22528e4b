/**
 * The pipeline's own HTTP endpoints, one table for every listener: `/health/live`,
 * `/health/ready`, `/metrics`. The observability listener serves them alone; the http source
 * mounts them beside its ingest path (through `ServiceProbe.mount`).
 */
import { readinessAnswer, type EndpointMount, type MountOptions, type Readiness } from "../components/contracts.js";
import { Router, sendJson } from "./router.js";

/** What the endpoints read from the pipeline. */
export interface EndpointsOptions {
  readonly readiness: () => Readiness;
  readonly metrics: () => Promise<{ contentType: string; text: string }>;
}

/** The endpoints of one pipeline; {@link mount} them once per server. */
export class Endpoints {
  constructor(private readonly o: EndpointsOptions) {}

  /** The endpoints as served by one server, with that server's readiness, guard and headers. */
  mount(options: MountOptions = {}): EndpointMount {
    const readiness = options.readiness ?? this.o.readiness;
    const guard = options.guard ?? (() => {});
    const headers = options.headers ?? (() => ({}));
    const router = new Router()
      .get("/health/live", (_req, res) => sendJson(res, 200, { status: "live" }, headers()))
      .get("/health/ready", (_req, res) => {
        const answer = readinessAnswer(readiness());
        sendJson(res, answer.status, answer.body, headers());
      })
      .get("/metrics", async (req, res) => {
        guard(req);
        const m = await this.o.metrics();
        res.writeHead(200, { ...headers(), "content-type": m.contentType }).end(m.text);
      });
    return {
      serve: (req, res) => router.serve(req, res, headers()),
      // Nothing is streamed yet: every answer ends at once.
      close: () => {},
    };
  }
}
