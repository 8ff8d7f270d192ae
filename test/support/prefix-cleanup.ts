import type { Channel } from 'amqplib';
import type { Redis } from 'ioredis';
import { topologyNames } from '../../src/broker/topology.js';

/** What tests and benches leave behind under their own prefix, removed. Shared by both. */

/** Deletes every Redis key of a prefix: tenant keys are `{prefix:tenant}:…`, global ones `prefix:…`. */
export async function deletePrefixKeys(redis: Redis, prefix: string): Promise<void> {
  for (const pattern of [`{${prefix}:*`, `${prefix}:*`]) {
    let cursor = '0';
    do {
      const [next, keys] = await redis.scan(cursor, 'MATCH', pattern, 'COUNT', 1000);
      cursor = next;
      if (keys.length > 0) await redis.unlink(...keys);
    } while (cursor !== '0');
  }
}

/**
 * Deletes a prefix's shared queues and exchanges, plus `extra` ones (gateway queues, with each one's
 * dropped-deliveries queue; a bench's own).
 * Missing ones are skipped; the channel's errors are swallowed (a 404 closes it, so each goes on its own).
 */
export async function deleteTopology(
  channel: Channel,
  prefix: string,
  extra: { queues?: string[]; exchanges?: string[] } = {},
): Promise<void> {
  const names = topologyNames(prefix);
  channel.on('error', () => {});
  for (const queue of [
    names.resolver,
    names.memberships,
    names.resolverRetry,
    names.dead,
    ...(extra.queues ?? []).flatMap((queue) => [queue, `${queue}.dropped`, `${queue}.dropped.lost`]),
  ])
    await channel.deleteQueue(queue).catch(() => {});
  for (const exchange of [
    names.events,
    names.membership,
    names.deliveries,
    names.dlx,
    ...(extra.exchanges ?? []),
  ])
    await channel.deleteExchange(exchange).catch(() => {});
}
