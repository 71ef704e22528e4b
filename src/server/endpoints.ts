/**
 * The pipeline's own HTTP endpoints, one table for every listener: `/health/live`,
 * `/health/ready`, `/metrics`, and the live dashboard (the page at `/`, its files under
 * `/dashboard/`, its server-sent events at `/dashboard/events`). The observability listener
 * serves them alone; the http source mounts them beside its ingest path (through
 * `ServiceProbe.mount`). `/tap` (live records, `observability.tap`) only where the mount asks
 * for it: the observability listener.
 */
import type { ServerResponse } from "node:http";
import { readinessAnswer, type EndpointMount, type MountOptions, type Readiness } from "../components/contracts.js";
import type { LiveSnapshot } from "../observability/live-stats.js";
import type { Tap } from "../observability/tap.js";
import { DASHBOARD_FILES, dashboardAsset } from "./dashboard-assets.js";
import { END_EVENT, LiveFeed } from "./live-feed.js";
import { Router, sendJson } from "./router.js";
import { serveTap } from "./tap-endpoint.js";

/** What the endpoints read from the pipeline. */
export interface EndpointsOptions {
  readonly readiness: () => Readiness;
  readonly metrics: () => Promise<{ contentType: string; text: string }>;
  /** The dashboard's snapshot of the pipeline now; without it there is no dashboard. */
  readonly live?: () => Promise<LiveSnapshot>;
  /** Live records for `sluice tap` (`observability.tap`), served by mounts that ask for it. */
  readonly tap?: Tap;
}

/** The endpoints of one pipeline; {@link mount} them once per server. */
export class Endpoints {
  private readonly feed: LiveFeed | undefined;

  constructor(private readonly o: EndpointsOptions) {
    this.feed = o.live ? new LiveFeed(o.live) : undefined;
  }

  /** The endpoints as served by one server, with that server's readiness, guard and headers. */
  mount(options: MountOptions = {}): EndpointMount {
    const readiness = options.readiness ?? this.o.readiness;
    const guard = options.guard ?? (() => {});
    const headers = options.headers ?? (() => ({}));
    /** Streams opened through this mount (dashboard feeds, taps), with what to write last when it closes them. */
    const streams = new Map<ServerResponse, string>();
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
    const feed = this.feed;
    if (feed) {
      for (const path of Object.keys(DASHBOARD_FILES)) {
        router.get(path, async (req, res) => {
          guard(req);
          const asset = await dashboardAsset(path);
          res.writeHead(200, { ...headers(), "content-type": asset.type, "content-length": asset.body.length, "cache-control": "no-cache" }).end(asset.body);
        });
      }
      router.get("/dashboard/events", (req, res) => {
        guard(req);
        // A HEAD gets the headers only: a stream opened for it would never end.
        if (req.method === "HEAD") {
          res.writeHead(200, { ...headers(), "content-type": "text/event-stream" }).end();
          return;
        }
        if (!feed.open(res, headers())) {
          sendJson(res, 503, { error: "too many dashboard streams are open; close one" }, { ...headers(), "retry-after": "5" });
          return;
        }
        // Closed with its server, the page learns that the run is over, not that it lost the server.
        streams.set(res, END_EVENT);
        res.on("close", () => streams.delete(res));
      });
    }
    const tap = this.o.tap;
    if (tap && options.tap === true) router.get("/tap", (req, res, url) => serveTap(tap, req, res, url, headers(), streams));
    return {
      serve: (req, res) => router.serve(req, res, headers()),
      close: () => {
        // A stream its client does not read would hold its server open: cut it.
        for (const [res, last] of streams) {
          if (res.writableNeedDrain) res.destroy();
          else res.end(last);
        }
        streams.clear();
      },
    };
  }
}
