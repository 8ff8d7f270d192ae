import roaring from 'roaring';
import type { Publisher } from '../broker/publisher.js';
import { DeliveryHeader } from '../protocol/delivery.js';
import { nodeKey } from '../protocol/ids.js';
import type { OnlineSet } from './online-set.js';

const { RoaringBitmap32 } = roaring;
type Bitmap = InstanceType<typeof RoaringBitmap32>;

// Room kept in the header table for everything but the recipients (tenant, job, table and array framing).
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

/**
 * Splits a recipient bitmap into pieces of at most `maxCount` bits whose portable serialisation fits in
 * `budget` bytes (the recipients header of one node-routed message). Returns `bits` itself when it fits;
 * otherwise new bitmaps, which the caller clears.
 */
export function chunkBits(bits: Bitmap, budget: number, maxCount = Infinity): Bitmap[] {
  if (bits.size <= maxCount && bits.getSerializationSizeInBytes('portable') <= budget) return [bits];
  const values = bits.toUint32Array();
  const chunks: Bitmap[] = [];
  const split = (from: number, to: number): void => {
    const piece = new RoaringBitmap32(values.subarray(from, to));
    if (to - from > 1 && piece.getSerializationSizeInBytes('portable') > budget) {
      piece.clear();
      const middle = (from + to) >>> 1;
      split(from, middle);
      split(middle, to);
    } else {
      chunks.push(piece);
    }
  };
  const pieces = Math.ceil(values.length / Math.min(maxCount, values.length));
  const size = Math.ceil(values.length / pieces);
  for (let from = 0; from < values.length; from += size) split(from, Math.min(from + size, values.length));
  return chunks;
}

/**
 * How deliveries are routed. `nodes`: one message per event to the gateway nodes holding recipients
 * (routing key `n.<node>` plus CC), the recipients as a bitmap in a header; a few hundred bytes whatever
 * the audience, and the broker routes by a handful of keys. `users`: the recipients' own keys as routing
 * key plus CC (DESIGN.md §3), so the broker's bindings alone decide which nodes get a copy.
 */
export type Routing = 'nodes' | 'users';

type Headers = Record<string, string | Buffer>;

interface Message {
  routingKey: string;
  cc: string[];
  headers: Headers;
}

export interface Delivery {
  eventId: string;
  eventType: string;
  tenantId: string;
  /** Serialised `data`, or empty when `jobId` names a claim-checked payload. */
  body: Buffer;
  jobId?: string | undefined;
  /** The stamp of the Redis server the recipients' bits come from, for node-routed messages. */
  idMap?: string | undefined;
}

/** Publishes one message per chunk of recipients on the deliveries exchange; resolves when all are confirmed. */
export class DeliveryPublisher {
  constructor(
    private readonly publisher: Publisher,
    private readonly exchange: string,
    private readonly headerBudget: () => number,
    private readonly maxRecipients: number,
    private readonly routing: Routing = 'nodes',
  ) {}

  /**
   * Publishes `delivery` to the online users `recipients` (bits of the tenant's id map, all of them online
   * in `online`); resolves with the number of messages once every one is confirmed. Throws at once, before
   * publishing anything, when the recipients cannot be routed (a bug or corrupt state, not a broker problem).
   */
  publish(delivery: Delivery, recipients: Bitmap, online: OnlineSet): Promise<number> {
    const headers: Headers = { [DeliveryHeader.Tenant]: delivery.tenantId };
    if (delivery.jobId) headers[DeliveryHeader.Job] = delivery.jobId;
    // Bits name the recipients only when node-routed; user keys name them themselves.
    if (this.routing === 'nodes' && delivery.idMap !== undefined)
      headers[DeliveryHeader.IdMap] = delivery.idMap;
    const messages: Message[] =
      this.routing === 'nodes'
        ? this.byNode(recipients, online, headers)
        : chunkKeys(online.keysOf(recipients), this.headerBudget(), this.maxRecipients).map(
            ([first, ...cc]) => ({ routingKey: first as string, cc, headers }),
          );
    const confirms = Promise.all(
      messages.map(({ routingKey, cc, headers }) =>
        this.publisher.publish(this.exchange, routingKey, delivery.body, {
          messageId: delivery.eventId,
          type: delivery.eventType,
          contentType: 'application/json',
          headers,
          ...(cc.length > 0 ? { CC: cc } : {}),
        }),
      ),
    );
    return confirms.then(() => messages.length);
  }

  private byNode(recipients: Bitmap, online: OnlineSet, headers: Headers): Message[] {
    const nodes = online.nodesHolding(recipients);
    // The node keys of the whole audience bound what each chunk's CC can cost.
    const ccCost = nodes.reduce(
      (sum, nodeId) => sum + ENTRY_OVERHEAD + Buffer.byteLength(nodeKey(nodeId)),
      0,
    );
    const budget = this.headerBudget() - HEADER_RESERVE - ccCost;
    const messages: Message[] = [];
    for (const chunk of chunkBits(recipients, budget, this.maxRecipients)) {
      const holding = chunk === recipients ? nodes : online.nodesHolding(chunk);
      const serialised = chunk.serialize('portable');
      // A view of it typed as this project's Buffer (roaring's typings name an older one).
      const bits = Buffer.from(serialised.buffer, serialised.byteOffset, serialised.byteLength);
      if (chunk !== recipients) chunk.clear();
      // Every recipient is online on some live node, so each chunk has at least one.
      if (holding.length === 0) continue;
      const [first, ...cc] = holding.map(nodeKey);
      messages.push({
        routingKey: first as string,
        cc,
        headers: { ...headers, [DeliveryHeader.Recipients]: bits },
      });
    }
    return messages;
  }
}
