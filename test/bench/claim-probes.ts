import { createRequire } from 'node:module';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { dirname, join } from 'node:path';
import type { Channel, ChannelModel, ConsumeMessage } from 'amqplib';
import { isProbe } from '../../src/protocol/delivery.js';
import { throughLocalPort } from '../support/tcp-proxy.js';

/**
 * Independent witnesses for the claim check, shared by its integration test and its bench: what crossed
 * the broker (a spy queue) and what a gateway read from Redis (a TCP tap between the two). Neither asks
 * Warren's own metrics, so a counting bug in the gateway cannot hide a second read.
 */

// amqplib's own encoder gives the exact size of a content-header frame; it is not an exported path, so it
// is loaded by file name next to the package's entry point.
const requireCjs = createRequire(import.meta.url);
const amqpDefs = requireCjs(join(dirname(requireCjs.resolve('amqplib')), 'lib', 'defs.js')) as {
  BasicProperties: number;
  encodeProperties(id: number, channel: number, size: number, fields: object): Buffer;
};

export interface SpiedMessage {
  exchange: string;
  routingKey: string;
  messageId: string | undefined;
  headers: Record<string, unknown>;
  /** Recipients in the CC header. */
  cc: number;
  bodyBytes: number;
  /** The whole content-header frame: properties and headers (CC included), with frame overhead. */
  headerBytes: number;
  /** The content-header frame as it would be without the CC list (the routing part of the header). */
  headerBytesWithoutCc: number;
  content: Buffer;
}

function headerFrameBytes(message: ConsumeMessage, withoutCc: boolean): number {
  const properties = { ...message.properties, headers: { ...(message.properties.headers ?? {}) } };
  if (withoutCc) delete properties.headers['CC'];
  return amqpDefs.encodeProperties(amqpDefs.BasicProperties, 1, message.content.length, properties).length;
}

/** An exclusive queue bound with `#` to an exchange: it receives one copy of every message published there. */
export class SpyQueue {
  readonly messages: SpiedMessage[] = [];

  private constructor(
    private readonly channel: Channel,
    /** Keep message bodies (tests compare them; benches only count). */
    private readonly keepContent: boolean,
  ) {}

  static async open(model: ChannelModel, exchange: string, keepContent = true): Promise<SpyQueue> {
    const channel = await model.createChannel();
    channel.on('error', () => {});
    const { queue } = await channel.assertQueue('', { exclusive: true, autoDelete: true });
    await channel.bindQueue(queue, exchange, '#');
    const spy = new SpyQueue(channel, keepContent);
    await channel.consume(queue, (m) => m && spy.record(m), { noAck: true });
    return spy;
  }

  private record(message: ConsumeMessage): void {
    const headers = (message.properties.headers ?? {}) as Record<string, unknown>;
    // A gateway checking its own bindings, not a delivery.
    if (isProbe(headers)) return;
    const cc = headers['CC'];
    this.messages.push({
      exchange: message.fields.exchange,
      routingKey: message.fields.routingKey,
      messageId: message.properties.messageId as string | undefined,
      headers,
      cc: Array.isArray(cc) ? cc.length : 0,
      bodyBytes: message.content.length,
      headerBytes: headerFrameBytes(message, false),
      headerBytesWithoutCc: headerFrameBytes(message, true),
      content: this.keepContent ? message.content : Buffer.alloc(0),
    });
  }

  of(messageId: string): SpiedMessage[] {
    return this.messages.filter((m) => m.messageId === messageId);
  }

  async close(): Promise<void> {
    await this.channel.close().catch(() => {});
  }
}

// A read of a claim-checked payload as it crosses the wire: `GET <key>` in RESP, the key ending
// `:job:<jobId>`. Case-insensitive: clients send command names in either case.
const JOB_READ = /\*2\r\n\$\d+\r\n(?:GET|GETEX|GETDEL)\r\n\$\d+\r\n[^\r]*:job:([A-Za-z0-9_-]{1,64})\r\n/gi;
// Longer than any one job read, so a read split across two TCP chunks is still seen whole once.
const CARRY = 512;

/**
 * A TCP proxy in front of Redis that counts, in the bytes a client sends, the commands reading a job
 * payload, per job id, and the bytes Redis sent back. Point one gateway's Redis URL at it.
 */
export class RedisTap {
  private readonly sockets = new Set<Socket>();
  private readonly reads = new Map<string, number>();
  /** Bytes Redis sent to clients through this tap. */
  bytesFromRedis = 0;

  private constructor(
    private readonly server: Server,
    readonly port: number,
  ) {}

  static async start(redisUrl: string): Promise<RedisTap> {
    const target = new URL(redisUrl);
    const state: { tap?: RedisTap } = {};
    const server = createServer((client) => state.tap?.pipe(client, target));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const address = server.address();
    if (!address || typeof address === 'string') throw new Error('tap has no port');
    state.tap = new RedisTap(server, address.port);
    return state.tap;
  }

  /** The Redis URL to give a gateway (same database and credentials as the real one). */
  url(redisUrl: string): string {
    return throughLocalPort(redisUrl, this.port);
  }

  /** Reads of one job's payload seen so far, or of all jobs without an argument. */
  jobReads(jobId?: string): number {
    if (jobId !== undefined) return this.reads.get(jobId) ?? 0;
    let total = 0;
    for (const n of this.reads.values()) total += n;
    return total;
  }

  private pipe(client: Socket, target: URL): void {
    const upstream = connect({ host: target.hostname, port: Number(target.port || 6379) });
    for (const s of [client, upstream]) {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
      s.on('error', () => {
        client.destroy();
        upstream.destroy();
      });
    }
    let carry = '';
    client.on('data', (chunk: Buffer) => {
      const text = carry + chunk.toString('latin1');
      for (const match of text.matchAll(JOB_READ)) {
        // Matches lying wholly in the carried tail were counted with the previous chunk.
        if (match.index + match[0].length <= carry.length) continue;
        const jobId = match[1] as string;
        this.reads.set(jobId, (this.reads.get(jobId) ?? 0) + 1);
      }
      carry = text.slice(-CARRY);
    });
    upstream.on('data', (chunk: Buffer) => {
      this.bytesFromRedis += chunk.length;
    });
    client.pipe(upstream);
    upstream.pipe(client);
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
