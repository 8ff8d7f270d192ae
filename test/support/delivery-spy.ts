import amqp, { type ChannelModel, type ConsumeMessage } from 'amqplib';
import { Redis } from 'ioredis';
import roaring from 'roaring';
import { inject } from 'vitest';
import { DeliveryHeader, isProbe } from '../../src/protocol/delivery.js';
import { userKey } from '../../src/protocol/ids.js';
import { Keys } from '../../src/store/keys.js';

const { RoaringBitmap32 } = roaring;

interface Seen {
  message: ConsumeMessage;
  /** The recipients' keys `u.<tenant>.<user>`, whichever way the message named them. */
  keys: string[];
}

/**
 * A queue bound to `<prefix>.deliveries` with `#`: it gets a copy of every delivery message a resolver
 * publishes, so a test sees exactly whom each event was routed to, and how often. Node-routed messages
 * name recipients by bit; the spy reads their ids back from Redis (independently of the gateway) before it
 * counts the message, so `copies` and `recipients` always agree.
 */
export class DeliverySpy {
  readonly messages: ConsumeMessage[] = [];
  private readonly byEvent = new Map<string, Seen[]>();
  private recording: Promise<void> = Promise.resolve();

  private constructor(
    private readonly model: ChannelModel,
    private readonly redis: Redis,
    private readonly keys: Keys,
    readonly queue: string,
  ) {}

  static async start(prefix: string): Promise<DeliverySpy> {
    const model = await amqp.connect(inject('rabbitmqUrl'));
    const channel = await model.createChannel();
    const queue = `${prefix}.spy`;
    // Exclusive: the queue goes with this connection, whatever the test does.
    await channel.assertQueue(queue, { exclusive: true });
    await channel.bindQueue(queue, `${prefix}.deliveries`, '#');
    const spy = new DeliverySpy(model, new Redis(inject('redisUrl')), new Keys(prefix), queue);
    // In arrival order, each after the previous one's ids are read.
    await channel.consume(queue, (m) => m && (spy.recording = spy.recording.then(() => spy.record(m))), {
      noAck: true,
    });
    return spy;
  }

  private async record(message: ConsumeMessage): Promise<void> {
    // A gateway checking its own bindings, not a delivery.
    if (isProbe(message.properties.headers)) return;
    const keys = await this.recipientKeys(message);
    this.messages.push(message);
    const id = String(message.properties.messageId);
    const list = this.byEvent.get(id) ?? [];
    list.push({ message, keys });
    this.byEvent.set(id, list);
  }

  private async recipientKeys(message: ConsumeMessage): Promise<string[]> {
    const headers = message.properties.headers ?? {};
    const bits: unknown = headers[DeliveryHeader.Recipients];
    if (bits === undefined) {
      const cc = (headers['CC'] as unknown[] | undefined) ?? [];
      return [message.fields.routingKey, ...cc.map((k) => (Buffer.isBuffer(k) ? k.toString() : String(k)))];
    }
    const tenantId = String(headers[DeliveryHeader.Tenant]);
    const positions = Array.from(RoaringBitmap32.deserialize(bits as Buffer, 'portable').toUint32Array());
    if (positions.length === 0) return [];
    const ids = await this.redis.hmget(this.keys.reverseIds(tenantId), ...positions.map(String));
    return ids.map((userId, i) => userKey(tenantId, userId ?? `<unknown bit ${positions[i]}>`));
  }

  /** Delivery messages (chunks, and copies from redelivery) seen for an event. */
  copies(eventId: string): number {
    return this.byEvent.get(eventId)?.length ?? 0;
  }

  /** Every recipient key of every message seen for an event, sorted; a key twice means routed twice. */
  recipients(eventId: string): string[] {
    return (this.byEvent.get(eventId) ?? []).flatMap((seen) => seen.keys).sort();
  }

  /** The routing key and CC of every message seen for an event (node keys when node-routed). */
  routes(eventId: string): string[][] {
    return (this.byEvent.get(eventId) ?? []).map(({ message }) => {
      const cc = (message.properties.headers?.['CC'] as unknown[] | undefined) ?? [];
      return [message.fields.routingKey, ...cc.map(String)];
    });
  }

  async close(): Promise<void> {
    await this.model.close().catch(() => {});
    this.redis.disconnect();
  }
}
