import type { ConfirmChannel } from 'amqplib';
import { Redis } from 'ioredis';
import { SignJWT } from 'jose';
import { afterEach, beforeEach, describe, expect, inject, it, vi } from 'vitest';
import type { WarrenConfig } from '../../src/config/schema.js';
import type { Gateway } from '../../src/gateway/main.js';
import { ControlMessage, DeliveryHeader } from '../../src/protocol/delivery.js';
import type { Resolver } from '../../src/resolver/main.js';
import { WarrenPublisher } from '../../src/sdk/publisher/index.js';
import { silentLogger } from '../../src/shared/logger.js';
import { Keys } from '../../src/store/keys.js';
import { RevocationStore } from '../../src/store/revocation-store.js';
import { withWarrenCommands } from '../../src/store/redis.js';
import {
  BrokerProbe,
  cleanRedis,
  connectPublisher,
  eventually,
  openTab,
  removeInstallation,
  startTestGateway,
  startTestResolver,
  TEST_SECRET,
  testConfig,
  testPrefix,
  token,
  type TestTab,
} from '../support/harness.js';
import { TcpProxy } from '../support/tcp-proxy.js';
import { WarrenProcess } from '../support/warren-process.js';

// Revoking a user (publisher SDK `revokeUser`, `warren revoke`): their open tabs on every node close with
// 4001, tokens issued up to then are refused while the revocation lasts, and nobody else is touched.

/** A token with the `iat` given (seconds; none when null), as an identity provider would mint it. */
function tokenIssuedAt(sub: string, tid: string, iat: number | null): Promise<string> {
  const jwt = new SignJWT({ tid })
    .setProtectedHeader({ alg: 'HS256' })
    .setSubject(sub)
    .setExpirationTime(Math.floor(Date.now() / 1000) + 3600);
  if (iat !== null) jwt.setIssuedAt(iat);
  return jwt.sign(new TextEncoder().encode(TEST_SECRET));
}

/** Resolves with the close code, or 'welcome' if the tab was welcomed. */
async function outcome(port: number, jwt: string): Promise<number | 'welcome'> {
  try {
    const tab = await openTab(port, jwt);
    tab.ws.terminate();
    return 'welcome';
  } catch (error) {
    const code = /closed with (\d+) before welcome/.exec((error as Error).message)?.[1];
    if (code === undefined) throw error;
    return Number(code);
  }
}

const seconds = (): number => Math.floor(Date.now() / 1000);

describe('revoking a user', () => {
  let config: Readonly<WarrenConfig>;
  let gateways: Gateway[] = [];
  let resolver: Resolver | undefined;
  let warren: WarrenPublisher;
  let tabs: TestTab[] = [];

  beforeEach(async () => {
    config = testConfig(testPrefix('revoke'));
    gateways = [await startTestGateway(config), await startTestGateway(config)];
    resolver = await startTestResolver(config);
    warren = await connectPublisher(config);
  });
  afterEach(async () => {
    for (const tab of tabs) tab.ws.terminate();
    tabs = [];
    await removeInstallation(config.prefix, { warren, resolvers: [resolver], gateways });
  });

  const open = async (node: number, tid: string, sub: string, jwt?: string): Promise<TestTab> => {
    const tab = await openTab((gateways[node] as Gateway).port, jwt ?? (await token({ sub, tid })));
    tabs.push(tab);
    return tab;
  };
  const port = (node: number): number => (gateways[node] as Gateway).port;

  it('closes the user’s tabs on every node with 4001, and no one else’s', async () => {
    const [a1, a2, a3] = [await open(0, 't1', 'A'), await open(1, 't1', 'A'), await open(1, 't1', 'A')];
    const b = await open(1, 't1', 'B');
    const otherTenant = await open(0, 't2', 'A');

    await warren.revokeUser('t1', 'A');

    expect(await Promise.all([a1, a2, a3].map((tab) => tab.closed))).toEqual([4001, 4001, 4001]);
    // The others still receive, and were not closed.
    await warren.publishEvent({ id: 'e1', tenantId: 't1', type: 'x', audience: { users: ['A', 'B'] } });
    await warren.publishEvent({ id: 'e2', tenantId: 't2', type: 'x', audience: { users: ['A'] } });
    await eventually(() => b.eventIds().includes('e1'), 'B of t1 receives');
    await eventually(() => otherTenant.eventIds().includes('e2'), 'A of t2 receives');
    expect(b.closeCode).toBeUndefined();
    expect(otherTenant.closeCode).toBeUndefined();
  });

  it('refuses tokens issued up to the revocation, on any node, and takes those issued after it', async () => {
    const before = await tokenIssuedAt('A', 't1', seconds() - 60);
    const withoutIat = await tokenIssuedAt('A', 't1', null);
    // Minted before it, but saying it was issued later: by an issuer whose clock runs an hour ahead, and by
    // one that wrote `iat` in milliseconds. Their `iat` tells nothing; it must not let them in after it.
    const ahead = await tokenIssuedAt('A', 't1', seconds() + 3600);
    const inMs = await tokenIssuedAt('A', 't1', Date.now());
    await warren.revokeUser('t1', 'A');

    expect(await outcome(port(0), before)).toBe(4001);
    expect(await outcome(port(1), before)).toBe(4001);
    expect(await outcome(port(0), withoutIat)).toBe(4001);
    expect(await outcome(port(0), ahead)).toBe(4001);
    expect(await outcome(port(1), inMs)).toBe(4001);
    // Issued in the revocation's second by a clock within the tolerance: it may be the issuer's clock
    // running ahead of the revocation's.
    expect(await outcome(port(1), await tokenIssuedAt('A', 't1', seconds()))).toBe(4001);
    // Issued after it, past the gateways' clock tolerance: an identity provider's next token.
    await new Promise((r) => setTimeout(r, (config.jwt.clockToleranceSec + 1) * 1000));
    const after = await tokenIssuedAt('A', 't1', seconds());
    // Another user, and the same user id in another tenant, are not revoked.
    expect(await outcome(port(0), await tokenIssuedAt('B', 't1', seconds() - 60))).toBe('welcome');
    expect(await outcome(port(0), await tokenIssuedAt('A', 't2', seconds() - 60))).toBe('welcome');
    const tab = await open(1, 't1', 'A', after);
    await warren.publishEvent({ id: 'e3', tenantId: 't1', type: 'x', audience: { users: ['A'] } });
    await eventually(() => tab.eventIds().includes('e3'), 'the new token’s tab receives');

    const metrics = await (await fetch(`http://127.0.0.1:${port(0)}/metrics`)).text();
    expect(metrics).toMatch(/^warren_gateway_auth_failures_total\{reason="revoked",node="\w+"\} 3$/m);
  });

  it('closes open tabs whose token’s iat is ahead of the gateway’s clock: it says nothing of when it was issued', async () => {
    // An issuer whose clock runs an hour ahead, and one that wrote `iat` in milliseconds: both tokens are
    // taken, and their tabs are open when the user is revoked.
    const ahead = await open(0, 't1', 'A', await tokenIssuedAt('A', 't1', seconds() + 3600));
    const inMs = await open(1, 't1', 'A', await tokenIssuedAt('A', 't1', Date.now()));
    await warren.revokeUser('t1', 'A');
    await eventually(() => ahead.closeCode === 4001 && inMs.closeCode === 4001, 'both tabs close with 4001');
  });

  it('lasts its ttl, then the old tokens are taken again', async () => {
    const old = await tokenIssuedAt('A', 't1', seconds() - 60);
    await warren.revokeUser('t1', 'A', { ttlSec: 1 });
    expect(await outcome(port(0), old)).toBe(4001);
    await new Promise((r) => setTimeout(r, 1100));
    await eventually(async () => (await outcome(port(0), old)) === 'welcome', 'the revocation lapses', 3000);
  });

  it('never moves a stored revocation back nor cuts its lifetime short', async () => {
    // A revocation stored with a later instant than the one being made: two operators revoking at once, or
    // an SDK's write resent after a reconnect, landing after a later revocation's.
    const later = Date.now() + 60_000;
    const redis = withWarrenCommands(new Redis(inject('redisUrl')));
    try {
      const store = new RevocationStore(redis, new Keys(config.prefix));
      expect((await store.revoke('t1', 'A', 3600, later)).revokedAt).toBe(later);
      // What is in force comes back, not what was asked.
      const inForce = await warren.revokeUser('t1', 'A', { ttlSec: 5 });
      expect(inForce.revokedAt).toBe(later);
      expect(inForce.lapsesAt - Date.now()).toBeGreaterThan(3_500_000);
      const kept = await store.revocation('t1', 'A');
      expect(kept?.revokedAt).toBe(later);
      expect((kept?.lapsesAt ?? 0) - Date.now()).toBeGreaterThan(3_500_000);
      // Issued 30 s from now, past the clock tolerance: refused, as the later revocation says.
      expect(await outcome(port(0), await tokenIssuedAt('A', 't1', seconds() + 30))).toBe(4001);
      // An earlier instant given explicitly does not replace it either.
      expect((await store.revoke('t1', 'A', 60, later - 120_000)).revokedAt).toBe(later);
      expect((await store.revocation('t1', 'A'))?.revokedAt).toBe(later);
    } finally {
      redis.disconnect();
    }
  });

  it('keeps a revocation Warren did not write, read as refusing every token, and closes the tabs', async () => {
    const redis = withWarrenCommands(new Redis(inject('redisUrl')));
    try {
      const keys = new Keys(config.prefix);
      for (const [user, value] of [
        ['A', 'inf'],
        ['B', '99999999999999999999'],
        ['C', 'forever'],
      ] as const) {
        // Issued a minute from now: only a revocation of every token covers it.
        const tab = await open(0, 't1', user, await tokenIssuedAt(user, 't1', seconds() + 60));
        await redis.set(keys.revoked('t1', user), value, 'EX', 10);
        const inForce = await warren.revokeUser('t1', user, { ttlSec: 60 });
        expect(inForce.revokedAt, value).toBe(Number.POSITIVE_INFINITY);
        expect(await tab.closed, value).toBe(4001);
        expect(await redis.get(keys.revoked('t1', user)), value).toBe(value);
        // Lasting the longer of the two lifetimes.
        expect(await redis.pttl(keys.revoked('t1', user)), value).toBeGreaterThan(59_000);
      }
    } finally {
      redis.disconnect();
    }
  });

  it('reads a value Warren did not write as the revocation script does: refusing every token', async () => {
    const redis = withWarrenCommands(new Redis(inject('redisUrl')));
    try {
      const keys = new Keys(config.prefix);
      const store = new RevocationStore(redis, keys);
      // Not a whole number of ms as Warren writes one, yet a number to JavaScript (0, -1, 31, 10): the
      // script keeps each as refusing every token, and so must the gateways reading it.
      for (const [user, value] of [
        ['A', ''],
        ['B', '-1'],
        ['C', '0x1f'],
        ['D', '1e1'],
      ] as const) {
        await redis.set(keys.revoked('t1', user), value, 'EX', 60);
        expect(await store.revokedAt('t1', user), value).toBe(Number.POSITIVE_INFINITY);
        expect((await store.revocation('t1', user))?.revokedAt, value).toBe(Number.POSITIVE_INFINITY);
        // A token issued a minute from now: only a revocation of every token covers it.
        expect(await outcome(port(0), await tokenIssuedAt(user, 't1', seconds() + 60)), value).toBe(4001);
      }
    } finally {
      redis.disconnect();
    }
  });

  it('tells the gateways the instant stored, which closes tabs a later revocation covers', async () => {
    const later = Date.now() + 60_000;
    const redis = withWarrenCommands(new Redis(inject('redisUrl')));
    try {
      // Issued 30 s from now: only the stored, later instant covers it; Redis's clock now does not.
      const tab = await open(0, 't1', 'A', await tokenIssuedAt('A', 't1', seconds() + 30));
      await new RevocationStore(redis, new Keys(config.prefix)).revoke('t1', 'A', 3600, later);
      await warren.revokeUser('t1', 'A');
      expect(await tab.closed).toBe(4001);
    } finally {
      redis.disconnect();
    }
  });

  it('refuses bad ids and lifetimes before touching Redis or the broker', async () => {
    await expect(warren.revokeUser('t.1', 'A')).rejects.toThrow(/invalid tenant id/);
    await expect(warren.revokeUser('t1', 'A*')).rejects.toThrow(/invalid user id/);
    await expect(warren.revokeUser('t1', 'A', { ttlSec: 0 })).rejects.toThrow(/ttlSec/);
    await expect(warren.revokeUser('t1', 'A', { ttlSec: 1.5 })).rejects.toThrow(/ttlSec/);
  });

  it('says the revocation is stored but not told when the broker refuses its message, so a retry is known safe', async () => {
    // An installation whose gateways never declared the deliveries exchange: the message has nowhere to go.
    const prefix = testPrefix('revoke-untold');
    const probe = await BrokerProbe.open();
    await probe.channel.assertExchange(`${prefix}.events`, 'topic', { durable: false, autoDelete: false });
    const sdk = await WarrenPublisher.connect({
      rabbitmqUrl: inject('rabbitmqUrl'),
      redisUrl: inject('redisUrl'),
      prefix,
      declareTopology: false,
      logger: silentLogger(),
    });
    try {
      await expect(sdk.revokeUser('t1', 'A')).rejects.toThrow(
        /the revocation is stored \(new connections are refused\) but the gateways were not told.*revoke again/,
      );
      const redis = new Redis(inject('redisUrl'));
      try {
        expect(
          await new RevocationStore(withWarrenCommands(redis), new Keys(prefix)).revokedAt('t1', 'A'),
        ).toBeDefined();
      } finally {
        redis.disconnect();
      }
    } finally {
      await sdk.close();
      await probe.channel.deleteExchange(`${prefix}.events`);
      await probe.close();
      await cleanRedis(prefix);
    }
  });

  it('drops a control message it does not understand, or one naming another tenant than its key', async () => {
    const tab = await open(0, 't1', 'A');
    const probe = await BrokerProbe.open();
    const control = (key: string, headers: Record<string, unknown>) =>
      new Promise<void>((resolve, reject) =>
        (probe.channel as ConfirmChannel).publish(
          `${config.prefix}.deliveries`,
          key,
          Buffer.alloc(0),
          { headers },
          (err: unknown) => (err ? reject(err as Error) : resolve()),
        ),
      );
    try {
      const now = Date.now();
      await control('u.t1.A', { [DeliveryHeader.Control]: 'explode', [DeliveryHeader.Tenant]: 't1' });
      await control('u.t1.A', {
        [DeliveryHeader.Control]: ControlMessage.Revoke,
        [DeliveryHeader.Tenant]: 't2',
        [DeliveryHeader.RevokedAt]: now,
      });
      await control('u.t1.A', {
        [DeliveryHeader.Control]: ControlMessage.Revoke,
        [DeliveryHeader.Tenant]: 't1',
        [DeliveryHeader.RevokedAt]: 'soon',
      });
      // Behind them in the node's queue: once it arrives, they were handled.
      await probe.deliver(config.prefix, ['u.t1.A'], { id: 'after', tenantId: 't1' });
      await eventually(() => tab.eventIds().includes('after'), 'the event behind them arrives');
      expect(tab.closeCode).toBeUndefined();
      const metrics = await (await fetch(`http://127.0.0.1:${port(0)}/metrics`)).text();
      expect(metrics).toMatch(/^warren_gateway_refused_total\{reason="malformed",node="\w+"\} 3$/m);
      // A well-formed one closes the tab: the three above were refused for what they got wrong.
      await control('u.t1.A', {
        [DeliveryHeader.Control]: ControlMessage.Revoke,
        [DeliveryHeader.Tenant]: 't1',
        [DeliveryHeader.RevokedAt]: Date.now(),
      });
      expect(await tab.closed).toBe(4001);
    } finally {
      await probe.close();
    }
  });

  it('warren revoke does it from the command line', async () => {
    const tab = await open(0, 't1', 'A');
    const env = {
      WARREN_PREFIX: config.prefix,
      WARREN_REDIS_URL: inject('redisUrl'),
      WARREN_RABBITMQ_URL: inject('rabbitmqUrl'),
    };
    const ok = WarrenProcess.start(['revoke', '--tenant', 't1', '--user', 'A', '--ttl', '600'], env);
    expect(await ok.exited).toBe(0);
    await eventually(() => ok.lines.length > 0, 'its line');
    expect(ok.lines).toHaveLength(1);
    const told =
      /revoked A of t1: the gateways holding them close their open tabs \(4001\); tokens issued up to (\S+) are refused until (\S+)$/.exec(
        ok.lines[0] ?? '',
      );
    expect(told, ok.lines[0]).not.toBeNull();
    const [revokedAt, until] = [Date.parse(told?.[1] ?? ''), Date.parse(told?.[2] ?? '')];
    expect(Math.abs(revokedAt - Date.now())).toBeLessThan(5000);
    expect(until - revokedAt).toBeGreaterThan(599_000);
    // The lapse is the CLI's clock plus what Redis has left: a millisecond or so either way.
    expect(until - revokedAt).toBeLessThan(601_000);
    expect(await tab.closed).toBe(4001);

    // A shorter lifetime keeps the longer one in force, and says so.
    const again = WarrenProcess.start(['revoke', '--tenant', 't1', '--user', 'A', '--ttl', '60'], env);
    expect(await again.exited).toBe(0);
    await eventually(() => again.lines.length > 0, 'its line');
    const untilAgain = Date.parse(/are refused until (\S+)$/.exec(again.lines[0] ?? '')?.[1] ?? '');
    expect(Math.abs(untilAgain - until)).toBeLessThan(2000);

    // Over a revocation Warren did not write (every token refused), and one without a lifetime.
    const redis = new Redis(inject('redisUrl'));
    try {
      await redis.set(new Keys(config.prefix).revoked('t1', 'D'), 'inf');
    } finally {
      redis.disconnect();
    }
    const foreign = WarrenProcess.start(['revoke', '--tenant', 't1', '--user', 'D'], env);
    expect(await foreign.exited).toBe(0);
    await eventually(() => foreign.lines.length > 0, 'its line');
    expect(foreign.lines[0]).toMatch(
      /all their tokens \(a revocation not written by Warren was in force\) are refused for good/,
    );

    // A broker it cannot reach: the operator is told that nothing was revoked, and how to mend it.
    const cut = WarrenProcess.start(['revoke', '--tenant', 't1', '--user', 'E'], {
      ...env,
      WARREN_RABBITMQ_URL: 'amqp://guest:guest@127.0.0.1:1',
      WARREN_RABBITMQ_CONNECT_TIMEOUT_MS: '1000',
    });
    expect(await cut.exited).toBe(1);
    expect(cut.lines.join('\n')).toMatch(
      /^WARREN_ERR_BROKER_UNAVAILABLE: cannot connect to RabbitMQ at .*\. Nothing was revoked: run warren revoke again once it answers \(rabbitmq\.url, WARREN_RABBITMQ_URL\)$/,
    );

    const bad = WarrenProcess.start(['revoke', '--tenant', 't1', '--ttl', '0'], env);
    expect(await bad.exited).toBe(2);
    await eventually(() => bad.lines.length > 0, 'its usage error');
    expect(bad.lines[0]).toMatch(/--user is required; --ttl must be a whole number/);
  });
});

describe('revoking a user while a gateway is away from the broker', () => {
  afterEach(() => vi.restoreAllMocks());

  /**
   * A gateway behind a proxy with tabs of A and B (t1), a resolver routing by nodes, cut off from the
   * broker; `whileAway` runs then (the revocation of A among it), and the gateway comes back.
   */
  async function away(
    name: string,
    whileAway: (parts: {
      probe: BrokerProbe;
      warren: WarrenPublisher;
      queue: string;
      prefix: string;
    }) => Promise<void>,
    then: (parts: {
      a: TestTab;
      b: TestTab;
      /** Tabs of `others`, in order. */
      more: TestTab[];
      warren: WarrenPublisher;
      probe: BrokerProbe;
      queue: string;
    }) => Promise<void>,
    overrides: Parameters<typeof testConfig>[1] = {},
    /** Users with a tab each beside A and B of t1. */
    others: { sub: string; tid: string }[] = [],
  ): Promise<void> {
    const prefix = testPrefix(name);
    const target = new URL(inject('rabbitmqUrl'));
    const proxy = await TcpProxy.toUrl(target);
    const gateway = await startTestGateway(
      testConfig(prefix, { ...overrides, rabbitmq: { url: proxy.url(target) } }),
    );
    const resolver = await startTestResolver(testConfig(prefix));
    const warren = await connectPublisher(testConfig(prefix));
    const probe = await BrokerProbe.open();
    const tabs: TestTab[] = [];
    try {
      const a = await openTab(gateway.port, await token({ sub: 'A', tid: 't1' }));
      const b = await openTab(gateway.port, await token({ sub: 'B', tid: 't1' }));
      tabs.push(a, b);
      const more: TestTab[] = [];
      for (const claims of others) more.push(await openTab(gateway.port, await token(claims)));
      tabs.push(...more);
      proxy.refuse();
      proxy.cut();
      await whileAway({ probe, warren, queue: gateway.queue, prefix });
      proxy.accept();
      await then({ a, b, more, warren, probe, queue: gateway.queue });
    } finally {
      for (const tab of tabs) tab.ws.terminate();
      await probe.close();
      await removeInstallation(prefix, { warren, resolvers: [resolver], gateways: [gateway] });
      await proxy.close();
    }
  }

  /** Events to A and B, published every 20 ms from after the revocation until A's tab is closed. */
  async function publishUntilClosed(a: TestTab, warren: WarrenPublisher): Promise<string[]> {
    const published: string[] = [];
    const deadline = Date.now() + 15_000;
    while (a.closeCode === undefined && Date.now() < deadline) {
      const id = `after-${published.length}`;
      await warren.publishEvent({ id, tenantId: 't1', type: 'x', audience: { users: ['A', 'B'] } });
      published.push(id);
      await new Promise((r) => setTimeout(r, 20));
    }
    return published;
  }

  const deleteQueue = async (probe: BrokerProbe, queue: string): Promise<void> => {
    const channel = await probe.model.createChannel();
    await channel.deleteQueue(queue);
    await channel.close();
  };

  it('closes the tabs its lost queue would have told it to, before writing them anything more', async () => {
    // A slow read (a loaded Redis, thousands of keys to bind again) leaves time for events to come.
    const read = RevocationStore.prototype.revokedAtMany;
    vi.spyOn(RevocationStore.prototype, 'revokedAtMany').mockImplementation(async function (
      this: RevocationStore,
      users,
    ) {
      await new Promise((r) => setTimeout(r, 1000));
      return read.call(this, users);
    });
    await away(
      'revoke-lost',
      async ({ probe, warren, queue }) => {
        // The queue gone, as after a broker restart: the revocation's message reaches no queue of it.
        await deleteQueue(probe, queue);
        await warren.revokeUser('t1', 'A');
      },
      async ({ a, b, warren, probe, queue }) => {
        // From when the node has its queue again (what came before went nowhere, and is not the point).
        await eventually(() => probe.queueExists(queue), 'the queue declared again', 15_000);
        const published = await publishUntilClosed(a, warren);
        // Some published while A was still open (the read takes a second): with none, neither what A was
        // not written nor what B was held back for would be checked.
        expect(published.length).toBeGreaterThan(0);
        expect(await a.closed).toBe(4001);
        expect(a.eventIds()).toEqual([]);
        // Held back meanwhile, not lost: B gets every one.
        await eventually(() => published.every((id) => b.eventIds().includes(id)), 'B receives them all');
        expect(b.closeCode).toBeUndefined();
      },
    );
  });

  it('closes the tabs whose revocation its full queue dropped while it was away', async () => {
    await away(
      'revoke-dropped',
      async ({ probe, warren, prefix }) => {
        await warren.revokeUser('t1', 'A');
        // Five more than the queue holds: the revocation's message is the first dropped.
        for (let i = 0; i < 5; i++)
          await probe.deliver(prefix, ['u.t1.A', 'u.t1.B'], { id: `after-${i}`, tenantId: 't1' });
      },
      async ({ a, b }) => {
        expect(await a.closed).toBe(4001);
        expect(a.eventIds()).toEqual([]);
        await eventually(() => b.eventIds().includes('after-4'), 'B receives what the queue kept');
      },
      { gateway: { queueMaxLength: 3 } },
    );
  });

  /** A revocation's message, published by hand on the probe's channel: no revocation written to Redis. */
  const revokeMessage = (
    probe: BrokerProbe,
    prefix: string,
    routingKey: string,
    headers: Record<string, unknown>,
  ): Promise<void> =>
    new Promise<void>((resolve, reject) =>
      (probe.channel as ConfirmChannel).publish(
        `${prefix}.deliveries`,
        routingKey,
        Buffer.alloc(0),
        {
          headers: {
            [DeliveryHeader.Control]: ControlMessage.Revoke,
            [DeliveryHeader.RevokedAt]: Date.now(),
            ...headers,
          },
        },
        (err: unknown) => (err ? reject(err as Error) : resolve()),
      ),
    );

  it('acts on a revocation’s message its full queue dropped as Redis has it, not as the message says', async () => {
    await away(
      'revoke-dead-letter',
      async ({ probe, prefix }) => {
        // The message alone, with no revocation in Redis: its word is not enough.
        await revokeMessage(probe, prefix, 'u.t1.A', { [DeliveryHeader.Tenant]: 't1' });
        for (let i = 0; i < 5; i++)
          await probe.deliver(prefix, ['u.t1.A', 'u.t1.B'], { id: `after-${i}`, tenantId: 't1' });
      },
      async ({ a, b }) => {
        await eventually(() => a.eventIds().includes('after-4'), 'A receives what the queue kept');
        await eventually(() => b.eventIds().includes('after-4'), 'B receives what the queue kept');
        expect(a.closeCode).toBeUndefined();
      },
      { gateway: { queueMaxLength: 3 } },
    );
  });

  it('does not let a message dropped from its full queue name another tenant’s user in a forged x-death', async () => {
    await away(
      'revoke-forged-death',
      async ({ probe, prefix, queue }) => {
        // A service of t2 may publish to its own users' keys only (a topic permission on u.t2.*), and writes
        // an x-death entry that names the node's queue and the reason RabbitMQ gives a full queue's drop:
        // RabbitMQ counts its drop into that entry and keeps its routing keys, naming A of t1.
        await revokeMessage(probe, prefix, 'u.t2.X', {
          [DeliveryHeader.Tenant]: 't1',
          'x-death': [
            {
              count: 1,
              reason: 'maxlen',
              queue,
              time: { '!': 'timestamp', value: Math.floor(Date.now() / 1000) },
              exchange: `${prefix}.deliveries`,
              'routing-keys': ['u.t1.A'],
            },
          ],
        });
        for (let i = 0; i < 5; i++)
          await probe.deliver(prefix, ['u.t1.A', 'u.t1.B'], { id: `after-${i}`, tenantId: 't1' });
      },
      async ({ a, more }) => {
        await eventually(() => a.eventIds().includes('after-4'), 'A receives what the queue kept');
        expect(a.closeCode).toBeUndefined();
        expect(more[0]?.closeCode).toBeUndefined();
      },
      { gateway: { queueMaxLength: 3 } },
      [{ sub: 'X', tid: 't2' }],
    );
  });

  it('closes its tabs with 1013 when it cannot read the revocations it may have missed', async () => {
    vi.spyOn(RevocationStore.prototype, 'revokedAtMany').mockRejectedValue(new Error('Redis is away'));
    await away(
      'revoke-unread',
      async ({ probe, queue }) => deleteQueue(probe, queue),
      async ({ a, b }) => {
        // Nothing written to them unchecked meanwhile; they reconnect, and are checked then.
        expect(await a.closed).toBe(1013);
        expect(await b.closed).toBe(1013);
      },
    );
  });
});

describe('revoking a user while a gateway’s queue overflows', () => {
  it('reads every revocation again while drops come (a dead letter may be lost with them)', async () => {
    const prefix = testPrefix('revoke-overflow');
    // Payload reads stall (their Redis through a proxy), so the node stops taking deliveries and its queue
    // overflows while it stays connected.
    const target = new URL(inject('redisUrl'));
    const proxy = await TcpProxy.toUrl(target);
    const gateway = await startTestGateway(
      testConfig(prefix, {
        claimCheck: { redisUrl: proxy.url(target) },
        gateway: { prefetch: 2, lineLimit: 1, queueMaxLength: 2 },
      }),
    );
    const warren = await connectPublisher(testConfig(prefix));
    const probe = await BrokerProbe.open();
    const redis = new Redis(inject('redisUrl'));
    const tabs: TestTab[] = [];
    try {
      const a = await openTab(gateway.port, await token({ sub: 'A', tid: 't1' }));
      const c = await openTab(gateway.port, await token({ sub: 'C', tid: 't1' }));
      tabs.push(a, c);
      // C revoked with no message at all: as if its dead letter had been lost too. Only a read finds it.
      await new RevocationStore(withWarrenCommands(redis), new Keys(prefix)).revoke('t1', 'C', 60);
      const jobId = await warren.putPayload('t1', { big: true });
      proxy.stall();
      await probe.deliver(prefix, ['u.t1.A'], { id: 'held', tenantId: 't1', jobId });
      for (let i = 0; i < 10; i++)
        await probe.deliver(prefix, ['u.t1.A'], { id: `behind-${i}`, tenantId: 't1', data: {} });

      expect(await c.closed).toBe(4001);
      expect(a.closeCode).toBeUndefined();
    } finally {
      proxy.flow();
      for (const tab of tabs) tab.ws.terminate();
      redis.disconnect();
      await probe.close();
      await removeInstallation(prefix, { warren, gateways: [gateway] });
      await proxy.close();
    }
  });
});
