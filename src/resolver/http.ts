import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { errorMessage } from '../shared/errors.js';
import type { Registry } from '../shared/metrics.js';

export interface ResolverReadiness {
  broker: boolean;
  redis: boolean;
  /** The payloads' own Redis (`claimCheck.redisUrl`), when one is set: reported, not required. */
  payloadRedis?: boolean;
  closing: boolean;
}

/**
 * The resolver's own small HTTP listener (`resolver.metricsPort`): `/metrics` for Prometheus (dead letters,
 * requeued events…), `/healthz` (alive) and `/readyz` (broker and Redis connected, not closing), the same
 * paths a gateway serves. Labels hold no tenant or user.
 */
export class ResolverHttp {
  private constructor(private readonly server: Server) {}

  static async start(
    host: string,
    port: number,
    registry: Registry,
    readiness: () => ResolverReadiness,
  ): Promise<ResolverHttp> {
    const server = createServer((req, res) => {
      const json = (status: number, body: object): void => {
        res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
      };
      const path = (req.url ?? '/').split('?')[0];
      if (req.method !== 'GET') return json(405, { error: 'method not allowed' });
      if (path === '/healthz') return json(200, { status: 'ok' });
      if (path === '/readyz') {
        const r = readiness();
        const ready = r.broker && r.redis && !r.closing;
        return json(ready ? 200 : 503, { ready, ...r });
      }
      if (path === '/metrics') {
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
    return new ResolverHttp(server);
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
