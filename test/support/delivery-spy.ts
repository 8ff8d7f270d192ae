import amqp, { type ChannelModel, type ConsumeMessage } from 'amqplib';
import { inject } from 'vitest';

/**
 * A queue bound to `<prefix>.deliveries` with `#`: it gets a copy of every delivery message a resolver
 * publishes, so a test sees exactly whom each event was routed to (routing key plus CC), and how often.
 */
export class DeliverySpy {
  readonly messages: ConsumeMessage[] = [];
  private readonly byEvent = new Map<string, ConsumeMessage[]>();

  private constructor(
    private readonly model: ChannelModel,
    readonly queue: string,
  ) {}

  static async start(prefix: string): Promise<DeliverySpy> {
    const model = await amqp.connect(inject('rabbitmqUrl'));
    const channel = await model.createChannel();
    const queue = `${prefix}.spy`;
    // Exclusive: the queue goes with this connection, whatever the test does.
    await channel.assertQueue(queue, { exclusive: true });
    await channel.bindQueue(queue, `${prefix}.deliveries`, '#');
    const spy = new DeliverySpy(model, queue);
    await channel.consume(queue, (m) => m && spy.record(m), { noAck: true });
    return spy;
  }

  private record(message: ConsumeMessage): void {
    this.messages.push(message);
    const id = String(message.properties.messageId);
    const list = this.byEvent.get(id) ?? [];
    list.push(message);
    this.byEvent.set(id, list);
  }

  /** Delivery messages (chunks, and copies from redelivery) seen for an event. */
  copies(eventId: string): number {
    return this.byEvent.get(eventId)?.length ?? 0;
  }

  /** Every recipient key of every message seen for an event, sorted; a key twice means routed twice. */
  recipients(eventId: string): string[] {
    const keys: string[] = [];
    for (const m of this.byEvent.get(eventId) ?? []) {
      const cc = (m.properties.headers?.['CC'] as unknown[] | undefined) ?? [];
      keys.push(m.fields.routingKey, ...cc.map((k) => (Buffer.isBuffer(k) ? k.toString() : String(k))));
    }
    return keys.sort();
  }

  async close(): Promise<void> {
    await this.model.close().catch(() => {});
  }
}
