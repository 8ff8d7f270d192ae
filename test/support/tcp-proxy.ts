import { createServer, connect, type Server, type Socket } from 'node:net';

/** `url` with its host and port replaced by a local proxy's: same credentials, vhost or database. */
export function throughLocalPort(url: string | URL, port: number): string {
  const local = new URL(url.toString());
  local.hostname = '127.0.0.1';
  local.port = String(port);
  return local.toString();
}

/**
 * A TCP proxy the test controls: `cut()` drops every connection through it, `refuse()` makes new
 * connections fail until `accept()`; used to take the broker away from a gateway without touching the broker.
 */
export class TcpProxy {
  private readonly sockets = new Set<Socket>();
  private refusing = false;
  private stalled = false;
  private readonly pairs = new Set<[Socket, Socket]>();
  connections = 0;
  /** Connections turned away while refusing (each one a client's attempt). */
  refused = 0;
  /** Called for each new connection; what it returns reads every chunk the client sends (`tapClient`). */
  private clientTap: (() => (chunk: Buffer) => void) | undefined;
  /** Where new connections go; `retarget` changes it (a failover behind one address). */
  private target: { host: string; port: number } = { host: '', port: 0 };

  private constructor(
    private readonly server: Server,
    readonly port: number,
  ) {}

  /** A proxy to the server a URL names (`amqp:` and `redis:` URLs, their default ports when none is given). */
  static toUrl(url: URL): Promise<TcpProxy> {
    const defaultPort = url.protocol.startsWith('redis') ? 6379 : 5672;
    return TcpProxy.start(url.hostname, Number(url.port || defaultPort));
  }

  static async start(targetHost: string, targetPort: number): Promise<TcpProxy> {
    const state: { proxy?: TcpProxy } = {};
    const server = createServer((client) => {
      const proxy = state.proxy;
      if (!proxy || proxy.refusing) {
        if (proxy) proxy.refused += 1;
        client.destroy();
        return;
      }
      proxy.connections += 1;
      const upstream = connect(proxy.target);
      for (const s of [client, upstream]) {
        proxy.sockets.add(s);
        s.on('close', () => proxy.sockets.delete(s));
        s.on('error', () => {
          client.destroy();
          upstream.destroy();
        });
      }
      const tap = proxy.clientTap?.();
      if (tap) client.on('data', tap);
      proxy.pairs.add([client, upstream]);
      client.on('close', () => proxy.pairs.forEach((p) => p[0] === client && proxy.pairs.delete(p)));
      if (proxy.stalled) return;
      client.pipe(upstream);
      upstream.pipe(client);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const address = server.address();
    if (!address || typeof address === 'string') throw new Error('proxy has no port');
    state.proxy = new TcpProxy(server, address.port);
    state.proxy.retarget(targetHost, targetPort);
    return state.proxy;
  }

  /** Connections through the proxy still open on the client's side. */
  get open(): number {
    return this.pairs.size;
  }

  /** `target` (the service's URL) with this proxy in place of the service. */
  url(target: string | URL): string {
    return throughLocalPort(target, this.port);
  }

  /** Every connection opened from now on hands what its client sends to a reader `perConnection` makes. */
  tapClient(perConnection: () => (chunk: Buffer) => void): void {
    this.clientTap = perConnection;
  }

  /** New connections go to this service from now on; open ones stay where they are until `cut`. */
  retarget(host: string, port: number): void {
    this.target = { host, port };
  }

  cut(): void {
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
  }

  /** Connections stay open but nothing crosses them (a peer that hangs), until `flow`. */
  stall(): void {
    this.stalled = true;
    for (const [client, upstream] of this.pairs) {
      client.unpipe(upstream);
      upstream.unpipe(client);
      client.pause();
      upstream.pause();
    }
  }

  /**
   * The connections open now go silent for good, neither side told (a peer gone, a NAT entry dropped);
   * new connections go through.
   */
  blackhole(): void {
    for (const [client, upstream] of this.pairs) {
      client.unpipe(upstream);
      upstream.unpipe(client);
      client.pause();
      upstream.pause();
    }
    this.pairs.clear();
  }

  /**
   * What the clients of the connections open now send stops reaching the server, while what the server
   * sends still reaches them (RabbitMQ under a resource alarm reads nothing from a connection that
   * publishes, and still writes to it), until `flow`.
   */
  stallToServer(): void {
    for (const [client, upstream] of this.pairs) {
      client.unpipe(upstream);
      client.pause();
    }
  }

  flow(): void {
    this.stalled = false;
    for (const [client, upstream] of this.pairs) {
      // Unpiped first: a direction `stallToServer` left flowing would otherwise be piped twice.
      client.unpipe(upstream);
      upstream.unpipe(client);
      client.pipe(upstream);
      upstream.pipe(client);
    }
  }

  refuse(): void {
    this.refusing = true;
  }

  accept(): void {
    this.refusing = false;
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
