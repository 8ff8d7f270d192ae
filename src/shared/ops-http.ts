import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { errorMessage } from './errors.js';
import type { Registry } from './metrics.js';

/** What `/readyz` answers: whether the process is ready, and the parts that say why. */
export type Readiness = { ready: boolean } & Record<string, unknown>;

/**
 * A small HTTP listener for operators, on a port of its own (`resolver.metricsPort`,
 * `gateway.metricsPort`): `/metrics` for Prometheus, `/healthz` (alive) and `/readyz` (503 when not ready).
 * Labels hold no tenant or user.
 */
export class OpsHttp {
  private constructor(private readonly server: Server) {}

  static async start(
    host: string,
    port: number,
    registry: Registry,
    readiness: () => Readiness,
  ): Promise<OpsHttp> {
    const server = createServer((req, res) => {
      // node:http leaves the body out of a HEAD answer itself, and its length too unless told.
      const json = (status: number, value: object, headers: Record<string, string> = {}): void => {
        const body = JSON.stringify(value);
        const length = String(Buffer.byteLength(body));
        res
          .writeHead(status, { 'content-type': 'application/json', 'content-length': length, ...headers })
          .end(body);
      };
      const path = (req.url ?? '/').split('?')[0];
      // As the gateway's own listener answers: the path first (404 whatever the method), then the methods
      // it takes, named in `allow`.
      const allowed = (methods: string): boolean => {
        if (methods.split(', ').includes(req.method ?? '')) return true;
        json(405, { error: 'method not allowed' }, { allow: methods });
        return false;
      };
      if (path === '/healthz') {
        if (allowed('GET, HEAD')) json(200, { status: 'ok' });
        return;
      }
      if (path === '/readyz') {
        if (!allowed('GET, HEAD')) return;
        const r = readiness();
        return json(r.ready ? 200 : 503, r);
      }
      if (path === '/metrics') {
        // Prometheus asks with GET; the exposition is not computed for a HEAD.
        if (!allowed('GET')) return;
        registry.metrics().then(
          (text) => res.writeHead(200, { 'content-type': registry.contentType }).end(text),
          (error: unknown) => res.writeHead(500, { 'content-type': 'text/plain' }).end(errorMessage(error)),
        );
        return;
      }
      json(404, { error: 'not found' });
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    return new OpsHttp(server);
  }

  get port(): number {
    return (this.server.address() as AddressInfo).port;
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }
}
