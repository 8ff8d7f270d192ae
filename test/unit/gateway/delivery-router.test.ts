import roaring from 'roaring';
import { describe, expect, it, vi } from 'vitest';
import type { Delivery } from '../../../src/broker/consumer.js';
import { DeliveryRouter, type IdMapCheck } from '../../../src/gateway/delivery-router.js';
import { GatewayMetrics } from '../../../src/gateway/gateway-metrics.js';
import { DeliveryHistory } from '../../../src/gateway/history.js';
import type { PayloadFetcher } from '../../../src/gateway/payload-fetcher.js';
import { RecentDeliveries } from '../../../src/gateway/recent-deliveries.js';
import { ConnectionRegistry } from '../../../src/gateway/registry.js';
import type { Tab } from '../../../src/gateway/tab.js';
import { ControlMessage, DeliveryHeader } from '../../../src/protocol/delivery.js';
import { userKey } from '../../../src/protocol/ids.js';
import { silentLogger } from '../../../src/shared/logger.js';
import { createRegistry } from '../../../src/shared/metrics.js';

// The router between a node-routed delivery and the tabs, with the broker and Redis sides in the test's
// hand: the delivery is a message object, the payload read a promise the test settles.

function fakeTab(tenantId: string, userId: string, frames: string[]): Tab {
  return {
    id: `${tenantId}/${userId}`,
    tenantId,
    userId,
    key: userKey(tenantId, userId),
    ready: true,
    closed: false,
    write: (frame: Uint8Array | string) => {
      frames.push(Buffer.from(frame).toString());
      return true;
    },
    wouldOverflow: () => false,
    end: () => {},
  } as unknown as Tab;
}

/**
 * A router over a registry holding one user of tenant acme, with payload reads the test settles: `bitOf`
 * answers the user's bit when announced.
 */
async function routerFor(userId: string, bitOf: (userId: string) => number, idMap?: IdMapCheck) {
  const registry = new ConnectionRegistry<Tab>(
    { bind: async () => {}, unbind: async () => {} },
    { online: async (_tenant, userIds) => userIds.map(bitOf), offline: async () => {} },
    60_000,
    { onUsersChanged: () => {} },
    silentLogger(),
  );
  const frames: string[] = [];
  await registry.add(fakeTab('acme', userId, frames));
  let settle: (payload: Uint8Array | undefined) => void = () => {};
  let fail: (error: Error) => void = () => {};
  const payloads = {
    get: () =>
      new Promise<Uint8Array | undefined>((resolve, reject) => {
        settle = resolve;
        fail = reject;
      }),
  } as unknown as PayloadFetcher;
  const history = new DeliveryHistory('e', 100, 1 << 20);
  const metrics = new GatewayMetrics(createRegistry({ node: 'n1' }));
  const router = new DeliveryRouter(
    registry,
    new RecentDeliveries(1000),
    history,
    payloads,
    metrics,
    silentLogger(),
    Number.POSITIVE_INFINITY,
    idMap,
  );
  return {
    registry,
    frames,
    router,
    metrics,
    history,
    settle: (payload: Uint8Array | undefined) => settle(payload),
    fail: (error: Error) => fail(error),
  };
}

describe('DeliveryRouter, node-routed and claim-checked', () => {
  it('does not write an event to a user moved off its bit while the payload was being read', async () => {
    const bits = new Map([['ann', 5]]);
    const { registry, frames, router, settle } = await routerFor('ann', (u) => bits.get(u) as number);
    let acked = false;
    const delivery = (id: string, bit: number): Delivery =>
      ({
        message: {
          fields: { routingKey: 'n.n1' },
          properties: {
            messageId: id,
            type: 'doc.attached',
            headers: {
              [DeliveryHeader.Tenant]: 'acme',
              [DeliveryHeader.Job]: 'job-1',
              [DeliveryHeader.Recipients]: new roaring.RoaringBitmap32([bit]).serialize('portable'),
            },
          },
          content: Buffer.alloc(0),
        },
        ack: () => (acked = true),
      }) as unknown as Delivery;

    // An event for bit 5 arrives; its payload is being read.
    router.handle(delivery('for-bit-5', 5));
    // Meanwhile the heartbeat finds that after a failover bit 5 is someone else's, and ann's is 9.
    bits.set('ann', 9);
    await registry.verifyBits(async () => [9]);
    await registry.entry(userKey('acme', 'ann'))?.chain;

    settle(Buffer.from('{"doc":1}'));
    await vi.waitFor(() => expect(acked).toBe(true));
    expect(frames).toEqual([]);

    // Her events now name bit 9, and reach her.
    router.handle(delivery('for-bit-9', 9));
    settle(Buffer.from('{"doc":2}'));
    await vi.waitFor(() => expect(frames).toEqual([expect.stringContaining('"id":"for-bit-9"')]));
  });
});

describe('DeliveryRouter, claim-checked deliveries naming a user of another tenant', () => {
  const delivery = (tenantId: string, id: string, keys: string[], jobId?: string): Delivery =>
    ({
      message: {
        fields: { routingKey: keys[0] },
        properties: {
          messageId: id,
          type: 'doc.attached',
          headers: {
            [DeliveryHeader.Tenant]: tenantId,
            ...(jobId === undefined ? {} : { [DeliveryHeader.Job]: jobId }),
            CC: keys.slice(1),
          },
        },
        content: Buffer.from('{"doc":0}'),
      },
      ack: () => {},
    }) as unknown as Delivery;

  it('gives the stray user no place in line: neither its offsets nor its deliveries wait on the payload', async () => {
    const { registry, frames, router, metrics, settle } = await routerFor('ann', () => 1);
    const gus: string[] = [];
    await registry.add(fakeTab('globex', 'gus', gus));
    const gusKey = userKey('globex', 'gus');
    // acme has delivered three events on this node; globex none.
    for (const id of ['a1', 'a2', 'a3']) router.handle(delivery('acme', id, [userKey('acme', 'ann')]));
    expect(frames).toHaveLength(3);
    expect(router.welcomeOffset('globex', gusKey)).toBe(0);
    // A claim-checked acme event for no one held here takes no offset (nor reads its payload).
    router.handle(delivery('acme', 'a-elsewhere', [userKey('acme', 'zoe')], 'job-0'));
    expect(router.welcomeOffset('acme', userKey('acme', 'zoe'))).toBe(3);

    // An acme event whose recipients (wrongly) include gus, its payload being read.
    router.handle(delivery('acme', 'a4', [userKey('acme', 'ann'), gusKey], 'job-1'));
    // A tab of gus opening now is welcomed at globex's offset, not at one counted among acme's deliveries.
    expect(router.welcomeOffset('globex', gusKey)).toBe(0);
    // And gus's own events are not held behind acme's payload.
    router.handle(delivery('globex', 'g1', [gusKey]));
    expect(gus).toEqual([expect.stringContaining('"id":"g1"')]);

    settle(Buffer.from('{"doc":4}'));
    await vi.waitFor(() => expect(frames).toHaveLength(4));
    expect(frames[3]).toContain('"id":"a4","eventType":"doc.attached","offset":4,');
    expect(gus).toHaveLength(1);
    // Refused, and counted, once.
    const refused = (await metrics.refused.get()).values;
    expect(refused).toEqual([expect.objectContaining({ labels: { reason: 'tenant_mismatch' }, value: 1 })]);
  });
});

describe('DeliveryRouter, a tab filed under another user’s key', () => {
  it('writes nothing to it: each tab’s own identity is checked against the recipient key', async () => {
    const { registry, frames, router, metrics } = await routerFor('ann', () => 1);
    // A registry mistake, never made on purpose: bob's tab (his token) held under ann's key.
    const bob: string[] = [];
    await registry.add({ ...fakeTab('acme', 'bob', bob), key: userKey('acme', 'ann') } as Tab);
    expect(registry.entry(userKey('acme', 'ann'))?.tabs).toHaveLength(2);
    router.handle({
      message: {
        fields: { routingKey: userKey('acme', 'ann') },
        properties: { messageId: 'for-ann', type: 'note', headers: { [DeliveryHeader.Tenant]: 'acme' } },
        content: Buffer.from('{"phi":1}'),
      },
      ack: () => {},
    } as unknown as Delivery);
    await vi.waitFor(() => expect(frames).toEqual([expect.stringContaining('"id":"for-ann"')]));
    expect(bob).toEqual([]);
    const refused = (await metrics.refused.get()).values;
    expect(refused).toEqual([expect.objectContaining({ labels: { reason: 'identity_mismatch' }, value: 1 })]);
  });
});

describe('DeliveryRouter, a claim-checked payload gone while its user was between tabs', () => {
  const delivery = (id: string, jobId?: string): Delivery =>
    ({
      message: {
        fields: { routingKey: userKey('acme', 'ann') },
        properties: {
          messageId: id,
          type: 'doc.attached',
          headers: {
            [DeliveryHeader.Tenant]: 'acme',
            ...(jobId === undefined ? {} : { [DeliveryHeader.Job]: jobId }),
          },
        },
        content: Buffer.from('{"doc":0}'),
      },
      ack: () => {},
    }) as unknown as Delivery;

  it('keeps its payload_unavailable in history at the event’s offset, so the next tab’s resume has it', async () => {
    const { registry, frames, router, history, settle } = await routerFor('ann', () => 1);
    const key = userKey('acme', 'ann');
    router.handle(delivery('e1'));
    expect(frames).toEqual([expect.stringContaining('"id":"e1"')]);
    const cursor = history.offset('acme');
    // The page reloads: the user is in the grace period when a claim-checked event arrives, whose payload
    // has expired; then an inline one.
    const [first] = registry.entry(key)?.tabs ?? [];
    registry.remove(first as Tab);
    router.handle(delivery('e2', 'job-2'));
    settle(undefined);
    await vi.waitFor(() => expect(router.welcomeOffset('acme', key)).toBe(cursor + 1));
    router.handle(delivery('e3'));
    // The new page resumes from the last offset the old one saw.
    const replay = history.since('e', 'acme', cursor, key, router.welcomeOffset('acme', key));
    expect(replay?.map((frame) => JSON.parse(Buffer.from(frame).toString()) as object)).toEqual([
      expect.objectContaining({ type: 'error', code: 'payload_unavailable', id: 'e2' }),
      expect.objectContaining({ type: 'event', id: 'e3', offset: cursor + 2 }),
    ]);
  });
});

describe('DeliveryRouter, node-routed deliveries stamped with a Redis server', () => {
  async function routerAccepting(current: { stamp: string }) {
    let dropped = 0;
    const { frames, router, settle } = await routerFor('dave', () => 5, {
      // As a gateway that reads INFO takes them: its own server's stamp only.
      accepts: (stamp) => stamp === current.stamp,
      dropped: () => (dropped += 1),
    });
    const acks: string[] = [];
    const deliver = (id: string, stamp: unknown, job?: string): void =>
      router.handle({
        message: {
          fields: { routingKey: 'n.n1' },
          properties: {
            messageId: id,
            type: 'note',
            headers: {
              [DeliveryHeader.Tenant]: 'acme',
              [DeliveryHeader.Recipients]: new roaring.RoaringBitmap32([5]).serialize('portable'),
              ...(stamp === undefined ? {} : { [DeliveryHeader.IdMap]: stamp }),
              ...(job ? { [DeliveryHeader.Job]: job } : {}),
            },
          },
          content: Buffer.from('{}'),
        },
        ack: () => acks.push(id),
      } as unknown as Delivery);
    return { frames, acks, deliver, dropped: () => dropped, settle };
  }

  it('writes bits read from this node’s server, drops (and acks) those of another', async () => {
    const { frames, acks, deliver, dropped } = await routerAccepting({ stamp: 'new-server' });
    // Bit 5 was ann's on the server that is gone; on this one it is dave's.
    deliver('old', 'old-server');
    deliver('old-as-bytes', Buffer.from('old-server'));
    deliver('garbled', 42);
    deliver('new', 'new-server');
    deliver('new-as-bytes', Buffer.from('new-server'));
    // A resolver that cannot read INFO stamps nothing: its bits cannot be told this server's.
    deliver('unstamped', undefined);
    await vi.waitFor(() => expect(acks).toHaveLength(6));
    const written = frames.map((f) => (JSON.parse(f) as { id: string }).id);
    expect(written).toEqual(['new', 'new-as-bytes']);
    expect(dropped()).toBe(4);
    expect(acks.sort()).toEqual(['garbled', 'new', 'new-as-bytes', 'old', 'old-as-bytes', 'unstamped']);
  });

  it('drops a claim-checked one whose server stopped being this node’s while its payload was read', async () => {
    const current = { stamp: 'first' };
    const { frames, acks, deliver, dropped, settle } = await routerAccepting(current);
    deliver('doc', 'first', 'job-1');
    current.stamp = 'second';
    settle(Buffer.from('{"doc":1}'));
    await vi.waitFor(() => expect(acks).toEqual(['doc']));
    expect(frames).toEqual([]);
    expect(dropped()).toBe(1);
  });
});

describe('DeliveryRouter, a delivery whose routing key is not one a resolver gives it', () => {
  // The broker checks only the routing key against a publisher's topic permission, not the keys in CC:
  // headers naming another tenant than the routing key do not come from a resolver.
  const delivery = (routingKey: string, headers: Record<string, unknown>, acks: string[]): Delivery =>
    ({
      message: {
        fields: { routingKey },
        properties: { messageId: routingKey, type: 'alert.raised', headers },
        content: Buffer.from('{"forged":true}'),
      },
      ack: () => acks.push(routingKey),
    }) as unknown as Delivery;

  it('writes nothing when user-routed by another tenant’s key, or node-routed by a user key', async () => {
    const { frames, router, metrics } = await routerFor('ann', () => 5);
    const acks: string[] = [];
    const annOfAcme = userKey('acme', 'ann');
    router.handle(delivery('u.globex.eve', { [DeliveryHeader.Tenant]: 'acme', CC: [annOfAcme] }, acks));
    router.handle(
      delivery(
        'u.globex.mallory',
        {
          [DeliveryHeader.Tenant]: 'acme',
          [DeliveryHeader.Recipients]: new roaring.RoaringBitmap32([5]).serialize('portable'),
          CC: ['n.n1'],
        },
        acks,
      ),
    );
    expect(acks).toEqual(['u.globex.eve', 'u.globex.mallory']);
    expect(frames).toEqual([]);
    const refused = (await metrics.refused.get()).values;
    expect(refused).toEqual([expect.objectContaining({ labels: { reason: 'tenant_mismatch' }, value: 2 })]);
    // Routed as a resolver routes it, the same delivery is written.
    router.handle(delivery(annOfAcme, { [DeliveryHeader.Tenant]: 'acme' }, acks));
    expect(frames).toEqual([expect.stringContaining(`"id":"${annOfAcme}"`)]);
  });
});

describe('DeliveryRouter, a recipients header roaring cannot be trusted with', () => {
  it('drops, as malformed, a bitmap whose bitset holds more bits than it states', async () => {
    const { frames, router, metrics } = await routerFor('ann', () => 5);
    // Ann's bit and 5,001 others: a bitset container. Bit 6 set besides, its stated cardinality left as it
    // was: roaring reads it without complaint, and listing its bits writes past what it allocated.
    const values = [5];
    for (let v = 10_000; v <= 15_000; v += 1) values.push(v);
    const bits = Buffer.from(new roaring.RoaringBitmap32(values).serialize('portable'));
    bits[16] = (bits[16] as number) | 0x40;
    const acks: string[] = [];
    router.handle({
      message: {
        fields: { routingKey: 'n.n1' },
        properties: {
          messageId: 'e1',
          type: 'note',
          headers: { [DeliveryHeader.Tenant]: 'acme', [DeliveryHeader.Recipients]: bits },
        },
        content: Buffer.from('{}'),
      },
      ack: () => acks.push('e1'),
    } as unknown as Delivery);
    expect(acks).toEqual(['e1']);
    expect(frames).toEqual([]);
    const refused = (await metrics.refused.get()).values;
    expect(refused).toEqual([expect.objectContaining({ labels: { reason: 'malformed' }, value: 1 })]);
  });
});

describe('DeliveryRouter.writeTo (resume replays)', () => {
  it('shares the per-turn slice with live deliveries and keeps the replay in order, its last frame after it', async () => {
    const { router } = await routerFor('ann', () => 1);
    const written: string[] = [];
    const tab = fakeTab('acme', 'bob', written);
    const large = (n: number) => Buffer.alloc(3 * 1024 * 1024, String(n));
    router.writeTo(tab, [large(1), large(2), large(3), large(4), Buffer.from('resumed')]);
    // 12 MiB of replay is not copied into the socket in one turn: about 4 MiB goes now, the rest later.
    expect(written.length).toBe(2);
    for (let i = 0; i < 10 && written.length < 5; i += 1) await new Promise((r) => setImmediate(r));
    expect(written.map((frame) => frame.slice(0, 1))).toEqual(['1', '2', '3', '4', 'r']);
  });
});

describe('DeliveryRouter, a revoke control message', () => {
  /** A registry holding tabs of acme/ann (not yet welcomed, issued at the times given) and acme/bob. */
  async function held(issued: (number | undefined)[]) {
    const registry = new ConnectionRegistry<Tab>(
      { bind: async () => {}, unbind: async () => {} },
      { online: async (_tenant, userIds) => userIds.map((_, i) => i), offline: async () => {} },
      60_000,
      { onUsersChanged: () => {} },
      silentLogger(),
    );
    const closed: string[] = [];
    const tab = (userId: string, id: string, issuedAt: number | undefined): Tab => {
      const t = {
        ...fakeTab('acme', userId, []),
        id,
        issuedAt,
        // Still waiting for its welcome (bound, announced, not yet written to).
        ready: false,
        end: (code: number, reason: string) => {
          t.closed = true;
          closed.push(`${id} ${code} ${reason}`);
        },
      };
      return t as unknown as Tab;
    };
    await Promise.all(issued.map((at, i) => registry.add(tab('ann', `ann-${i}`, at))));
    await registry.add(tab('bob', 'bob', 0));
    const router = new DeliveryRouter(
      registry,
      new RecentDeliveries(1000),
      new DeliveryHistory('e', 100, 1 << 20),
      {} as PayloadFetcher,
      new GatewayMetrics(createRegistry({ node: 'n1' })),
      silentLogger(),
    );
    return { router, closed };
  }
  const revoke = (key: string, tenant: string, at: number) => {
    let acked = false;
    const delivery = {
      message: {
        fields: { routingKey: key },
        properties: {
          headers: {
            [DeliveryHeader.Control]: ControlMessage.Revoke,
            [DeliveryHeader.Tenant]: tenant,
            [DeliveryHeader.RevokedAt]: at,
          },
        },
        content: Buffer.alloc(0),
      },
      ack: () => (acked = true),
    } as unknown as Delivery;
    return { delivery, acked: () => acked };
  };

  it('closes the user’s tabs issued up to it, welcomed or not, and leaves later tokens and other users', async () => {
    const { router, closed } = await held([1000, 2000, 2001, undefined]);
    const message = revoke('u.acme.ann', 'acme', 2000);
    router.handle(message.delivery);
    expect(closed).toEqual([
      'ann-0 4001 token revoked',
      'ann-1 4001 token revoked',
      'ann-3 4001 token revoked',
    ]);
    expect(message.acked()).toBe(true);
  });

  it('closes nothing when its key and its tenant header disagree', async () => {
    const { router, closed } = await held([1000]);
    const message = revoke('u.acme.ann', 'globex', 2000);
    router.handle(message.delivery);
    expect(closed).toEqual([]);
    expect(message.acked()).toBe(true);
  });
});

describe('DeliveryRouter.droppedRecipients: whose tabs hear of a dropped delivery', () => {
  const death = (keys: unknown[]) => [{ reason: 'maxlen', queue: 'q', 'routing-keys': keys }];

  it('names the users held here among the keys it was routed with, of its own tenant only', async () => {
    const { router } = await routerFor('ann', () => 1);
    expect(
      router.droppedRecipients({
        [DeliveryHeader.Tenant]: 'acme',
        // Another tenant's key (a forged x-death, or one the broker kept) is not told; nor a user not here.
        'x-death': death([Buffer.from('u.acme.ann'), 'u.acme.bob', 'u.other.ann']),
      }),
    ).toEqual(new Set(['u.acme.ann']));
    expect(
      router.droppedRecipients({ [DeliveryHeader.Tenant]: 'other', 'x-death': death(['u.acme.ann']) }),
    ).toEqual(new Set());
  });

  it('names the users held here whose bits it carried, node-routed', async () => {
    const { router } = await routerFor('ann', () => 5);
    const bits = (...b: number[]) => new roaring.RoaringBitmap32(b).serialize('portable');
    const headers = (b: ReturnType<typeof bits>) => ({
      [DeliveryHeader.Tenant]: 'acme',
      [DeliveryHeader.Recipients]: b,
      'x-death': death(['n.n1']),
    });
    expect(router.droppedRecipients(headers(bits(5, 7)))).toEqual(new Set(['u.acme.ann']));
    expect(router.droppedRecipients(headers(bits(6)))).toEqual(new Set());
  });

  it('says nothing (every tab is told) when the message does not say, and nobody for a control message', async () => {
    const { router } = await routerFor('ann', () => 5);
    expect(router.droppedRecipients({})).toBeUndefined();
    expect(router.droppedRecipients({ [DeliveryHeader.Tenant]: 'acme' })).toBeUndefined();
    expect(
      router.droppedRecipients({
        [DeliveryHeader.Tenant]: 'acme',
        [DeliveryHeader.Recipients]: Buffer.from('x'),
      }),
    ).toBeUndefined();
    expect(
      router.droppedRecipients({
        [DeliveryHeader.Control]: ControlMessage.Revoke,
        'x-death': death(['u.acme.ann']),
      }),
    ).toEqual(new Set());
  });
});

describe('DeliveryRouter, a claim-checked event delivered twice whose payload is gone', () => {
  /** Copy `n` of a claim-checked event to ann, acked into `acked`. */
  const claimChecked =
    (id: string, jobId: string, acked: string[]) =>
    (n: number): Delivery =>
      ({
        message: {
          fields: { routingKey: userKey('acme', 'ann') },
          properties: {
            messageId: id,
            type: 'doc.attached',
            headers: { [DeliveryHeader.Tenant]: 'acme', [DeliveryHeader.Job]: jobId },
          },
          content: Buffer.alloc(0),
        },
        ack: () => acked.push(`copy-${n}`),
      }) as unknown as Delivery;

  it('writes its payload_unavailable to a tab once, as it would the event', async () => {
    const { frames, router, history, settle } = await routerFor('ann', () => 1);
    const key = userKey('acme', 'ann');
    const acked: string[] = [];
    const delivery = claimChecked('evt-1', 'job-1', acked);
    const cursor = history.offset('acme');
    // The resolver published the event twice (it crashed before acking it); the payload has expired.
    router.handle(delivery(1));
    settle(undefined);
    await vi.waitFor(() => expect(acked).toEqual(['copy-1']));
    router.handle(delivery(2));
    settle(undefined);
    await vi.waitFor(() => expect(acked).toEqual(['copy-1', 'copy-2']));
    const unavailable = (frame: string | Uint8Array): boolean =>
      Buffer.from(frame).toString().includes('"code":"payload_unavailable"');
    expect(frames.filter(unavailable)).toHaveLength(1);
    // Nor does a resume from before them replay it twice.
    const replay = history.since('e', 'acme', cursor, key, router.welcomeOffset('acme', key));
    expect(replay?.filter(unavailable)).toHaveLength(1);
  });

  it('still writes the event from a later copy whose payload is read, after a read that failed', async () => {
    const { frames, router, settle, fail } = await routerFor('ann', () => 1);
    const acked: string[] = [];
    const delivery = claimChecked('evt-2', 'job-2', acked);
    // Redis timed out on the first copy's read; the redelivery reads the payload, still there.
    router.handle(delivery(1));
    fail(new Error('Command timed out'));
    await vi.waitFor(() => expect(acked).toEqual(['copy-1']));
    router.handle(delivery(2));
    settle(Buffer.from('{"n":1}'));
    await vi.waitFor(() => expect(acked).toEqual(['copy-1', 'copy-2']));
    const text = frames.map((frame) => Buffer.from(frame).toString());
    expect(text.filter((frame) => frame.includes('"code":"payload_unavailable"'))).toHaveLength(1);
    // The client shows such a later copy (it keeps payload_unavailable apart from the events it showed).
    expect(text.filter((frame) => frame.includes('"type":"event"') && frame.includes('evt-2'))).toHaveLength(
      1,
    );
  });
});
