import { Redis } from 'ioredis';
import { afterEach, describe, expect, inject, it } from 'vitest';
import type { WarrenConfig } from '../../src/config/schema.js';
import type { Gateway } from '../../src/gateway/main.js';
import type { ServerFrame } from '../../src/protocol/frames.js';
import { LEFT_GRACE_MS } from '../../src/sdk/client/socket-link.js';
import { Keys } from '../../src/store/keys.js';
import { withWarrenCommands } from '../../src/store/redis.js';
import { RevocationStore } from '../../src/store/revocation-store.js';
import {
  BrokerProbe,
  cleanRedis,
  eventually,
  openTab,
  payloadRedisUrl,
  startTestGateway,
  testConfig,
  testPrefix,
  token,
  type TestTab,
} from '../support/harness.js';
import { TcpProxy } from '../support/tcp-proxy.js';

// A node about to close a tab (a drain, the connection's lifetime) tells it to move first (`handoff`) and
// keeps delivering to it meanwhile: a client welcomed on another node before the close misses nothing.

const handoffOf = (tab: TestTab): ServerFrame | undefined => tab.frames.find((f) => f.type === 'handoff');
const missed = (tab: TestTab): boolean =>
  tab.frames.some((f) => f.type === 'error' && f.code === 'events_missed');

describe('handoff before a drain or a lifetime close', () => {
  let prefix = '';
  let gateways: Gateway[] = [];
  let tabs: TestTab[] = [];
  let probe: BrokerProbe | undefined;

  afterEach(async () => {
    for (const tab of tabs) tab.ws.terminate();
    for (const gateway of gateways) await gateway.close();
    const p = probe ?? (await BrokerProbe.open());
    await p.deleteExchangesAndQueues(
      prefix,
      gateways.map((g) => g.queue),
    );
    await p.close();
    await cleanRedis(prefix);
    gateways = [];
    tabs = [];
    probe = undefined;
  });

  async function open(gateway: Gateway, sub: string, expiresIn?: number): Promise<TestTab> {
    const tab = await openTab(
      gateway.port,
      await token({ sub, tid: 't1', ...(expiresIn ? { expiresIn } : {}) }),
    );
    tabs.push(tab);
    return tab;
  }

  /**
   * Runs `test` with a gateway reaching the broker through a proxy (no heartbeats: a stall is not a loss),
   * then lets the proxy flow again and closes the gateway through it (afterEach deletes what it leaves).
   */
  async function throughBrokerProxy(
    gatewayOptions: Partial<WarrenConfig['gateway']>,
    test: (old: Gateway, proxy: TcpProxy) => Promise<void>,
  ): Promise<void> {
    const target = new URL(inject('rabbitmqUrl'));
    const proxy = await TcpProxy.toUrl(target);
    try {
      const old = await startTestGateway(
        testConfig(prefix, {
          rabbitmq: { url: proxy.url(target), heartbeatSec: 0 },
          gateway: { drainWindowMs: 0, ...gatewayOptions },
        }),
      );
      gateways = [old];
      await test(old, proxy);
    } finally {
      proxy.flow();
      for (const gateway of gateways) await gateway.close();
      await proxy.close();
    }
  }

  it('on a drain: tells each tab to move and keeps delivering to it until its close (4100)', async () => {
    prefix = testPrefix('handoff-drain');
    const config = testConfig(prefix, { gateway: { drainWindowMs: 0, handoffMs: 3000 } });
    const old = await startTestGateway(config);
    const other = await startTestGateway(config);
    gateways = [old, other];
    probe = await BrokerProbe.open();
    const a = await open(old, 'A');
    const b = await open(old, 'B');

    const drained = old.drain();
    await eventually(() => handoffOf(a) !== undefined && handoffOf(b) !== undefined, 'told to move');
    expect(handoffOf(a)).toEqual({ type: 'handoff', reason: 'draining', closeInMs: 3000 });
    // Still delivered to while it moves.
    await probe.deliver(prefix, ['u.t1.A'], { id: 'during', tenantId: 't1' });
    await eventually(() => a.eventIds().includes('during'), 'delivered during the handoff');
    expect(a.closeCode).toBeUndefined();

    // A moves as the client does: welcomed on the other node, then it closes the old socket; from the
    // new welcome on, deliveries reach it there (and also here until it closed: the client drops repeats).
    const moved = await open(other, 'A');
    await probe.deliver(prefix, ['u.t1.A'], { id: 'after-move', tenantId: 't1' });
    await eventually(() => moved.eventIds().includes('after-move'), 'delivered on the new node');
    await a.close();
    // B does not move: closed with 4100 when its time is up.
    expect(await b.closed).toBe(4100);
    await drained;
    expect(b.eventIds()).toEqual([]);
    // The node had every delivery of its queue when it closed B: nothing to resynchronise for.
    expect(missed(b)).toBe(false);
  });

  it('on a drain: a tab closed while its node is behind its queue is told events_missed first', async () => {
    prefix = testPrefix('handoff-behind');
    await throughBrokerProxy({ handoffMs: 1000, drainTimeoutMs: 4000 }, async (old, proxy) => {
      probe = await BrokerProbe.open();
      const a = await open(old, 'A');
      const drained = old.drain().catch(() => {});
      await eventually(() => handoffOf(a) !== undefined, 'told to move');
      // The node reads nothing more of its queue (here: cut off; as well: far behind it), and a delivery
      // routed before the user's new node bound them waits there: the client, moved, would take the close
      // for the end of what this node had for it.
      proxy.stall();
      await probe.deliver(prefix, ['u.t1.A'], { id: 'stuck', tenantId: 't1' });
      expect(await a.closed).toBe(4100);
      expect(a.eventIds()).toEqual([]);
      expect(missed(a)).toBe(true);
      proxy.flow();
      await drained;
    });
  });

  it('on a drain: a node behind its queue closes its moved tabs before their clients give up on them', async () => {
    prefix = testPrefix('handoff-bound');
    const handoffMs = 1000;
    await throughBrokerProxy({ handoffMs, drainTimeoutMs: 6000 }, async (old, proxy) => {
      const moved = [await open(old, 'A'), await open(old, 'B'), await open(old, 'C')];
      const drained = old.drain().catch(() => {});
      await eventually(() => moved.every((tab) => handoffOf(tab) !== undefined), 'told to move');
      const toldAt = Date.now();
      proxy.stall();
      // A moved client keeps the old connection a little past the time it was given (the SDK's
      // LEFT_GRACE_MS, 2.5 s), then closes it itself: the node's events_missed, written later, would reach
      // no one. The node takes at most its probe's second; the rest of the grace is the spare a busy node
      // (and a loaded test machine) has. Waiting on the stalled broker instead takes the drain's 6 s.
      const closedAt = await Promise.all(moved.map((tab) => tab.closed.then(() => Date.now())));
      for (const tab of moved) expect(missed(tab)).toBe(true);
      expect(Math.max(...closedAt) - toldAt).toBeLessThan(handoffMs + LEFT_GRACE_MS);
      proxy.flow();
      await drained;
    });
  });

  it('on a drain: a tab is told events_missed when a delivery for it reached the node while its probe was on its way, its payload still being read at the close', async () => {
    prefix = testPrefix('handoff-reading');
    const target = new URL(inject('rabbitmqUrl'));
    const brokerProxy = await TcpProxy.toUrl(target);
    const payloadTarget = new URL(payloadRedisUrl());
    const payloadProxy = await TcpProxy.toUrl(payloadTarget);
    try {
      const handoffMs = 1000;
      const old = await startTestGateway(
        testConfig(prefix, {
          rabbitmq: { url: brokerProxy.url(target), heartbeatSec: 0 },
          claimCheck: { redisUrl: payloadProxy.url(payloadTarget) },
          gateway: { drainWindowMs: 0, handoffMs, drainTimeoutMs: 6000 },
        }),
      );
      gateways = [old];
      probe = await BrokerProbe.open();
      const a = await open(old, 'A');
      const drained = old.drain().catch(() => {});
      await eventually(() => handoffOf(a) !== undefined, 'told to move');
      const toldAt = Date.now();
      // A claim-checked delivery routed before the close waits on its way to the node (nothing crosses to
      // it), and its payload's read will hang: at the close, nothing is held for A yet, so the node probes.
      brokerProxy.stall();
      payloadProxy.stall();
      await probe.deliver(prefix, ['u.t1.A'], { id: 'slow', tenantId: 't1', jobId: 'job-slow' });
      // The close has begun (the probe is on its way, behind the delivery): both reach the node now, the
      // delivery first; its payload is still being read when the probe comes back.
      await new Promise((resolve) => setTimeout(resolve, toldAt + handoffMs + 300 - Date.now()));
      brokerProxy.flow();
      expect(await a.closed).toBe(4100);
      expect(a.eventIds()).toEqual([]);
      // Closed with the event still on its way to it: the moved client must be told to resynchronise.
      expect(missed(a)).toBe(true);
      payloadProxy.flow();
      await drained;
    } finally {
      brokerProxy.flow();
      payloadProxy.flow();
      for (const gateway of gateways) await gateway.close();
      await brokerProxy.close();
      await payloadProxy.close();
      await cleanRedis(prefix, payloadRedisUrl());
    }
  });

  it('on a drain: a record lost by the full dropped-deliveries queue still has every revocation read again', async () => {
    prefix = testPrefix('handoff-lost');
    const old = await startTestGateway(
      testConfig(prefix, { gateway: { drainWindowMs: 0, handoffMs: 10_000, drainTimeoutMs: 15_000 } }),
    );
    gateways = [old];
    probe = await BrokerProbe.open();
    const a = await open(old, 'A');
    const drained = old.drain();
    await eventually(() => handoffOf(a) !== undefined, 'told to move');
    // A is revoked, and its message was among the records the dropped-deliveries queue lost in its turn
    // (its overflow, marked in <dropped>.lost): only a read of every revocation finds it. The tab still
    // gets deliveries while it moves.
    const redis = withWarrenCommands(new Redis(inject('redisUrl')));
    try {
      await new RevocationStore(redis, new Keys(prefix)).revoke('t1', 'A', 60, Date.now() + 1);
    } finally {
      redis.disconnect();
    }
    probe.channel.sendToQueue(`${old.queue}.dropped.lost`, Buffer.from('null'));
    expect(await a.closed).toBe(4001);
    await a.close();
    await drained;
  });

  it('ends a drain once its tabs have moved, not when their handoff time is up', async () => {
    prefix = testPrefix('handoff-early');
    const gateway = await startTestGateway(
      testConfig(prefix, { gateway: { drainWindowMs: 0, handoffMs: 20_000 } }),
    );
    gateways = [gateway];
    const a = await open(gateway, 'A');
    let done = false;
    const drained = gateway.drain().then(() => (done = true));
    await eventually(() => handoffOf(a) !== undefined, 'told to move');
    // Still waiting for the tab.
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(done).toBe(false);
    await a.close();
    await eventually(() => done, 'drained once the tab left', 5000);
    await drained;
  });

  it('on a drain with handoffMs 0: closes with 4100 at once, no handoff frame', async () => {
    prefix = testPrefix('handoff-off');
    const gateway = await startTestGateway(
      testConfig(prefix, { gateway: { drainWindowMs: 0, handoffMs: 0 } }),
    );
    gateways = [gateway];
    const a = await open(gateway, 'A');
    await gateway.drain();
    expect(await a.closed).toBe(4100);
    expect(handoffOf(a)).toBeUndefined();
  });

  it('at its lifetime: tells the tab to move, then closes it with 4101 after handoffMs', async () => {
    prefix = testPrefix('handoff-life');
    const gateway = await startTestGateway(
      testConfig(prefix, { gateway: { maxLifetimeMs: 1000, lifetimeJitter: 0, handoffMs: 1500 } }),
    );
    gateways = [gateway];
    probe = await BrokerProbe.open();
    const a = await open(gateway, 'A');
    await eventually(() => handoffOf(a) !== undefined, 'told to move', 5000);
    const toldAt = Date.now();
    expect(handoffOf(a)).toEqual({ type: 'handoff', reason: 'lifetime', closeInMs: 1500 });
    await probe.deliver(prefix, ['u.t1.A'], { id: 'during', tenantId: 't1' });
    await eventually(() => a.eventIds().includes('during'), 'delivered during the handoff');
    expect(await a.closed).toBe(4101);
    expect(Date.now() - toldAt).toBeGreaterThanOrEqual(1000);
    // Nothing was left in the node's queue: no resynchronisation asked for.
    expect(missed(a)).toBe(false);
  });

  it('closes with 4001 at the token’s expiry when it comes before the end of the handoff', async () => {
    prefix = testPrefix('handoff-exp');
    const gateway = await startTestGateway(
      testConfig(prefix, { gateway: { maxLifetimeMs: 500, lifetimeJitter: 0, handoffMs: 20_000 } }),
    );
    gateways = [gateway];
    const a = await open(gateway, 'A', 3);
    await eventually(() => handoffOf(a) !== undefined, 'told to move', 5000);
    expect(await a.closed).toBe(4001);
  });
});
