import type { Publisher } from '../broker/publisher.js';
import { DeliveryHeader } from '../protocol/delivery.js';

// Room kept in the header table for everything but the CC list (tenant, job, table and array framing).
const HEADER_RESERVE = 1024;
// Each CC entry costs a type byte and a 4-byte length besides its characters.
const ENTRY_OVERHEAD = 5;

/**
 * Splits recipients into chunks of at most `maxKeys` whose CC header fits in one header frame (and in
 * amqplib's header table buffer). The first key of a chunk is its routing key and costs nothing in the header.
 */
export function chunkKeys(keys: readonly string[], headerBudget: number, maxKeys = Infinity): string[][] {
  const budget = headerBudget - HEADER_RESERVE;
  const chunks: string[][] = [];
  let chunk: string[] = [];
  let used = 0;
  for (const key of keys) {
    const cost = ENTRY_OVERHEAD + Buffer.byteLength(key);
    if (chunk.length > 0 && (used + cost > budget || chunk.length >= maxKeys)) {
      chunks.push(chunk);
      chunk = [];
      used = 0;
    }
    if (chunk.length > 0) used += cost;
    chunk.push(key);
  }
  if (chunk.length > 0) chunks.push(chunk);
  return chunks;
}

export interface Delivery {
  eventId: string;
  eventType: string;
  tenantId: string;
  /** Serialised `data`, or empty when `jobId` names a claim-checked payload. */
  body: Buffer;
  jobId?: string | undefined;
}

/** Publishes one message per chunk of recipients on the deliveries exchange; resolves when all are confirmed. */
export class DeliveryPublisher {
  constructor(
    private readonly publisher: Publisher,
    private readonly exchange: string,
    private readonly headerBudget: () => number,
    private readonly maxKeys: number,
  ) {}

  async publish(delivery: Delivery, keys: readonly string[]): Promise<number> {
    const chunks = chunkKeys(keys, this.headerBudget(), this.maxKeys);
    const headers: Record<string, string> = { [DeliveryHeader.Tenant]: delivery.tenantId };
    if (delivery.jobId) headers[DeliveryHeader.Job] = delivery.jobId;
    await Promise.all(
      chunks.map(([first, ...cc]) =>
        this.publisher.publish(this.exchange, first as string, delivery.body, {
          messageId: delivery.eventId,
          type: delivery.eventType,
          contentType: 'application/json',
          headers,
          ...(cc.length > 0 ? { CC: cc } : {}),
        }),
      ),
    );
    return chunks.length;
  }
}
