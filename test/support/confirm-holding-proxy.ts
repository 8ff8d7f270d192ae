import { connect, createServer, type Server, type Socket } from 'node:net';
import { throughLocalPort } from './tcp-proxy.js';

// AMQP 0-9-1 frames: type (1 byte), channel (2), payload size (4), payload, frame end 0xCE.
const HEADER = 7;
const METHOD_FRAME = 1;
// basic.ack and basic.nack: from the broker to a client they are only ever publisher confirms.
const BASIC = 60;
const ACK = 80;
const NACK = 120;

/**
 * A TCP proxy between one AMQP client and the broker that lets everything through until the broker sends
 * its first publisher confirm, and from then on holds back everything the broker sends (the client's own
 * frames still pass). The client has published and will never learn that it was confirmed, so it never
 * acks the message it was working on: the window "published, not yet acked" made deterministic without a
 * hook in the code under test.
 */
export class ConfirmHoldingProxy {
  private readonly sockets = new Set<Socket>();
  /** Confirms (and everything after them) kept from the client. */
  held = 0;

  private constructor(
    private readonly server: Server,
    readonly port: number,
  ) {}

  static async start(target: URL): Promise<ConfirmHoldingProxy> {
    const state: { proxy?: ConfirmHoldingProxy } = {};
    const server = createServer((client) => {
      const upstream = connect({ host: target.hostname, port: Number(target.port || 5672) });
      state.proxy?.track(client, upstream);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const address = server.address();
    if (!address || typeof address === 'string') throw new Error('proxy has no port');
    state.proxy = new ConfirmHoldingProxy(server, address.port);
    return state.proxy;
  }

  /** The broker URL with this proxy in place of the broker. */
  url(target: URL): string {
    return throughLocalPort(target, this.port);
  }

  private track(client: Socket, upstream: Socket): void {
    for (const s of [client, upstream]) {
      this.sockets.add(s);
      s.on('close', () => {
        this.sockets.delete(s);
        // Either side gone ends the other, as a dead process's connection ends for the broker.
        client.destroy();
        upstream.destroy();
      });
      s.on('error', () => s.destroy());
    }
    client.pipe(upstream);
    let pending = Buffer.alloc(0);
    let holding = false;
    upstream.on('data', (chunk: Buffer) => {
      pending = Buffer.concat([pending, chunk]);
      while (pending.length >= HEADER) {
        const size = pending.readUInt32BE(3);
        if (pending.length < HEADER + size + 1) break;
        const frame = pending.subarray(0, HEADER + size + 1);
        pending = pending.subarray(HEADER + size + 1);
        if (!holding && isConfirm(frame)) holding = true;
        if (holding) this.held += isConfirm(frame) ? 1 : 0;
        else client.write(frame);
      }
    });
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

function isConfirm(frame: Buffer): boolean {
  if (frame[0] !== METHOD_FRAME || frame.length < HEADER + 4) return false;
  const method = frame.readUInt16BE(HEADER + 2);
  return frame.readUInt16BE(HEADER) === BASIC && (method === ACK || method === NACK);
}
