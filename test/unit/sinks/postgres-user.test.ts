/**
 * A PostgreSQL URL without a user connects as the OS user, as psql does, also where `$USER` is
 * unset (`env -u USER`). A stand-in server reads the startup packet and says which user was sent;
 * pg reads `$USER` when it loads, so the sink runs in a child process with that environment.
 */
import { spawn } from "node:child_process";
import { once } from "node:events";
import { createServer, type AddressInfo, type Socket } from "node:net";
import { userInfo } from "node:os";
import { resolve } from "node:path";
import { afterEach, describe, expect, it } from "vitest";

const SINK = resolve(import.meta.dirname, "../../../src/sinks/postgres/options.ts");

/** The parameters of the first startup packet a client sends to a server on a free port. */
async function startupParameters(connect: (port: number) => () => void): Promise<Record<string, string>> {
  const server = createServer();
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const stop = connect((server.address() as AddressInfo).port);
  try {
    const [socket] = (await once(server, "connection")) as [Socket];
    let data = Buffer.alloc(0);
    for await (const chunk of socket) {
      data = Buffer.concat([data, chunk as Buffer]);
      if (data.length >= 4 && data.length >= data.readInt32BE(0)) break;
    }
    socket.destroy();
    // int32 length, int32 protocol version, then name\0value\0 pairs and a final \0.
    const fields = data.subarray(8, data.readInt32BE(0) - 1).toString("utf8").split("\0");
    const params: Record<string, string> = {};
    for (let i = 0; i + 1 < fields.length; i += 2) params[fields[i]!] = fields[i + 1]!;
    return params;
  } finally {
    stop();
    server.close();
  }
}

const children: ReturnType<typeof spawn>[] = [];
afterEach(() => {
  for (const c of children.splice(0)) c.kill("SIGKILL");
});

/** Starts a child that connects a postgres sink to `url`, with `env`. */
function connectInChild(url: string, env: NodeJS.ProcessEnv): () => void {
  const script = `
    const { definition } = await import(${JSON.stringify(SINK)});
    const sink = await definition.create(definition.options.parse({ url: ${JSON.stringify(url)}, table: "t" }), { name: "db", emit: () => {} });
    await sink.connect(new AbortController().signal).catch(() => {});
    process.exit(0);
  `;
  const child = spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], { env, stdio: "ignore" });
  children.push(child);
  return () => child.kill("SIGKILL");
}

describe("postgres sink: the user of a URL without one", () => {
  const { USER: _user, PGUSER: _pguser, ...withoutUser } = process.env;

  it("is the OS user where $USER is unset", async () => {
    const params = await startupParameters((port) => connectInChild(`postgres://127.0.0.1:${port}/app`, withoutUser));
    expect(params.user).toBe(userInfo().username);
    expect(params.database).toBe("app");
  });

  it("is still the URL's user, or PGUSER, when given", async () => {
    expect((await startupParameters((port) => connectInChild(`postgres://bob@127.0.0.1:${port}/app`, withoutUser))).user).toBe("bob");
    expect((await startupParameters((port) => connectInChild(`postgres://127.0.0.1:${port}/app`, { ...withoutUser, PGUSER: "carol" }))).user).toBe("carol");
  });
});
