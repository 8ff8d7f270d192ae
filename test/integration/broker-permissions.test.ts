import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import amqp from 'amqplib';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import type { Gateway } from '../../src/gateway/main.js';
import type { Resolver } from '../../src/resolver/main.js';
import { WarrenPublisher } from '../../src/sdk/publisher/index.js';
import {
  eventually,
  openTab,
  removeInstallation,
  startTestGateway,
  startTestResolver,
  testConfig,
  testPrefix,
  token,
} from '../support/harness.js';
import { TcpProxy } from '../support/tcp-proxy.js';

// The broker accounts the README's "Broker permissions" section gives Warren's processes and the services
// that publish to it, created for real: the installation runs under them, and a service's account can
// publish events and nothing else. Needs rabbitmqctl able to reach the broker (the local services; not a
// container), and skips without it.
const run = promisify(execFile);
const ctl = (...args: string[]) => run('rabbitmqctl', args, { timeout: 30_000 });
// Asks the broker itself (not only whether the command is installed): the Erlang cookie must let it in.
const local = await ctl('-q', 'list_users').then(
  () => true,
  () => false,
);
const rabbitmqUrl = inject('rabbitmqUrl');
const brokerIsLocal = ['127.0.0.1', 'localhost'].includes(new URL(rabbitmqUrl).hostname);

describe.skipIf(!local || !brokerIsLocal)('broker permissions from the README', () => {
  const prefix = testPrefix('perms');
  const escaped = prefix.replace(/[.*+?^${}()|[\]\\-]/g, '\\$&');
  const password = randomBytes(12).toString('hex');
  const accounts = {
    // Gateways and resolvers: everything under the prefix, and the default exchange (the resolver's
    // retry queue sends events back to its queue through it).
    warren: {
      user: `${prefix}-warren`,
      configure: `^${escaped}\\.`,
      write: `^(${escaped}\\..*|amq\\.default)$`,
      read: `^${escaped}\\.`,
    },
    // A service of tenant acme: publishes acme's events and membership changes, nothing else (its topic
    // permissions below).
    service: {
      user: `${prefix}-service`,
      configure: '^$',
      write: `^${escaped}\\.(events|membership)$`,
      read: '^$',
    },
  };
  const vhost = decodeURIComponent(new URL(rabbitmqUrl).pathname.slice(1)) || '/';
  const urlFor = (user: string) => {
    const url = new URL(rabbitmqUrl);
    url.username = user;
    url.password = password;
    return url.toString();
  };
  /**
   * What the broker said to a use of a fresh channel of `model`: 'allowed', or its reason (a refusal closes
   * the channel, its reason on the channel's error event).
   */
  const outcome = async (
    model: amqp.ChannelModel,
    use: (channel: amqp.ConfirmChannel) => Promise<unknown>,
  ): Promise<string> => {
    const channel = await model.createConfirmChannel();
    let reason: string | undefined;
    channel.on('error', (error: Error) => (reason = error.message));
    return use(channel).then(
      () => 'allowed',
      (error: Error) => reason ?? error.message,
    );
  };
  const published = (channel: amqp.ConfirmChannel, exchange: string, key: string, body: unknown) =>
    new Promise<void>((resolve, reject) =>
      channel.publish(exchange, key, Buffer.from(JSON.stringify(body)), {}, (error: unknown) =>
        error ? reject(error as Error) : resolve(),
      ),
    );
  /** Publishes events for ann (in acme) until one reaches her tab: `what` says what that shows. */
  const reachesAnn = async (
    idPrefix: string,
    audience: { users?: string[]; teams?: string[] },
    what: string,
  ) => {
    const ann = await openTab(gateway.port, await token({ sub: 'ann', tid: 'acme' }));
    try {
      await eventually(async () => {
        await warren.publishEvent({
          id: `${idPrefix}-${Date.now()}`,
          tenantId: 'acme',
          type: 'note.created',
          audience,
        });
        return ann.eventIds().some((id) => id.startsWith(`${idPrefix}-`));
      }, what);
    } finally {
      ann.ws.terminate();
    }
  };
  let gateway: Gateway;
  let resolver: Resolver;
  let warren: WarrenPublisher;

  beforeAll(async () => {
    for (const { user, configure, write, read } of Object.values(accounts)) {
      await ctl('add_user', user, password);
      await ctl('set_permissions', '-p', vhost, user, configure, write, read);
    }
    // Routing keys name the tenant (<tenant>.<type> for events, <tenant> for memberships): the broker
    // checks them against the account's topic permissions.
    const { user } = accounts.service;
    await ctl('set_topic_permissions', '-p', vhost, user, `${prefix}.events`, '^acme\\.', '^$');
    await ctl('set_topic_permissions', '-p', vhost, user, `${prefix}.membership`, '^acme$', '^$');

    const config = testConfig(prefix, { rabbitmq: { url: urlFor(accounts.warren.user) } });
    gateway = await startTestGateway(config);
    resolver = await startTestResolver(config);
    warren = await WarrenPublisher.connect({
      rabbitmqUrl: urlFor(accounts.service.user),
      redisUrl: inject('redisUrl'),
      prefix,
      declareTopology: false,
    });
  });
  afterAll(async () => {
    // Set unless start-up failed (in which case the installation left is removed all the same).
    const started = (gateway as Gateway | undefined) ? [gateway] : [];
    await removeInstallation(prefix, {
      warren: warren as WarrenPublisher | undefined,
      resolvers: [resolver as Resolver | undefined],
      gateways: started,
    });
    for (const { user } of Object.values(accounts)) await ctl('delete_user', user).catch(() => {});
  });

  it('a service account without configure rights cannot connect to an installation that is not there yet', async () => {
    // A prefix nothing was declared for (the check declares nothing, and needs no permission).
    const absent = testPrefix('perms-absent');
    const connecting = WarrenPublisher.connect({
      rabbitmqUrl: urlFor(accounts.service.user),
      redisUrl: inject('redisUrl'),
      prefix: absent,
      declareTopology: false,
      connectTimeoutMs: 1500,
    });
    await expect(connecting).rejects.toThrow(`exchange ${absent}.events does not exist`);
  });

  it('tells a service whose account may not declare to connect with declareTopology: false, at the first refusal', async () => {
    const url = new URL(urlFor(accounts.service.user));
    // Through a proxy of the test's own, which counts the attempts.
    const proxy = await TcpProxy.toUrl(url);
    try {
      const connecting = WarrenPublisher.connect({
        rabbitmqUrl: proxy.url(url),
        redisUrl: inject('redisUrl'),
        prefix,
        // Far beyond the test's run: what ends the wait is the refusal, not the timeout.
        connectTimeoutMs: 25_000,
      });
      await expect(connecting).rejects.toMatchObject({
        message: expect.stringMatching(/ACCESS_REFUSED.*connect with declareTopology: false/),
        retryable: false,
      });
      expect(proxy.connections).toBe(1);
    } finally {
      await proxy.close();
    }
  });

  it('runs gateways and resolvers under the Warren account, and a service publishes under its own', async () => {
    const ann = await openTab(gateway.port, await token({ sub: 'ann', tid: 'acme' }));
    await warren.publishEvent({
      id: 'under-least-privilege',
      tenantId: 'acme',
      type: 'note.created',
      audience: { users: ['ann'] },
      data: { ok: true },
    });
    await eventually(() => ann.eventIds().includes('under-least-privilege'), 'the event delivered');
    ann.ws.terminate();
  });

  it('a service account confined to its tenant cannot publish another tenant’s events', async () => {
    const publishing = warren.publishEvent({
      id: 'for-globex',
      tenantId: 'globex',
      type: 'note.created',
      audience: { users: ['gus'] },
      data: { ok: true },
    });
    await expect(publishing).rejects.toMatchObject({
      code: 'WARREN_ERR_PUBLISH_REJECTED',
      message: expect.stringMatching(/ACCESS_REFUSED.*'globex\.note\.created'/),
      // Sending it again cannot help.
      retryable: false,
    });
    // And it goes on publishing its own.
    await reachesAnn(
      'after-refusal',
      { users: ['ann'] },
      'its own tenant’s event delivered after the refusal',
    );
  });

  it('revokeUser under an account that may not write to the deliveries exchange says so, and events still go', async () => {
    const publishing = warren.publishEvent({
      id: `beside-revoke-${Date.now()}`,
      tenantId: 'acme',
      type: 'note.created',
      audience: { users: ['nobody'] },
    });
    const revoking = warren.revokeUser('acme', 'revoked-user', { ttlSec: 60 });
    await expect(revoking).rejects.toMatchObject({
      code: 'WARREN_ERR_PUBLISH_REJECTED',
      // Revoking again cannot get past the permission: it says what to grant instead.
      retryable: false,
      message: expect.stringContaining(`must be allowed to write to ${prefix}.deliveries`) as unknown,
    });
    // The notice's refusal closed a channel of its own, not the one the event beside it went on.
    await expect(publishing).resolves.toBeUndefined();
    await reachesAnn('after-revoke-refusal', { users: ['ann'] }, 'an event delivered after the refusal');
  });

  it('a service account changes its own tenant’s memberships by message, and no other tenant’s', async () => {
    const model = await amqp.connect(urlFor(accounts.service.user));
    try {
      const send = (tenantId: string) =>
        outcome(model, (channel) =>
          published(channel, `${prefix}.membership`, tenantId, {
            op: 'add',
            tenantId,
            userId: 'ann',
            teamId: 'ward',
          }),
        );
      expect(await send('globex')).toMatch(/ACCESS_REFUSED/);
      expect(await send('acme')).toBe('allowed');
      await reachesAnn('to-ward', { teams: ['ward'] }, 'the membership change applied');
    } finally {
      await model.close();
    }
  });

  it('a service allowed to revoke its tenant’s users (README) cannot write to another tenant’s tabs through CC', async () => {
    // Write on the deliveries exchange, confined to acme's user keys by a topic permission, as the README
    // gives a service that calls revokeUser.
    const revoker = `${prefix}-revoker`;
    await ctl('add_user', revoker, password);
    const ann = await openTab(gateway.port, await token({ sub: 'ann', tid: 'acme' }));
    const gus = await openTab(gateway.port, await token({ sub: 'gus', tid: 'globex' }));
    try {
      await ctl('set_permissions', '-p', vhost, revoker, '^$', `^${escaped}\\.deliveries$`, '^$');
      await ctl('set_topic_permissions', '-p', vhost, revoker, `${prefix}.deliveries`, '^u\\.acme\\.', '^$');
      const model = await amqp.connect(urlFor(revoker));
      try {
        const deliver = (id: string, tenantId: string, cc: string[]) =>
          outcome(
            model,
            (channel) =>
              new Promise<void>((resolve, reject) =>
                channel.publish(
                  `${prefix}.deliveries`,
                  'u.acme.ann',
                  Buffer.from('{"forged":true}'),
                  { messageId: id, type: 'alert.raised', headers: { 'x-warren-tenant': tenantId, CC: cc } },
                  (error: unknown) => (error ? reject(error as Error) : resolve()),
                ),
              ),
          );
        // The broker checks the routing key against the topic permission, not the keys in CC (RabbitMQ
        // before 4.0): both are routed to the gateway holding gus.
        expect(await deliver('forged-globex', 'globex', ['u.globex.gus'])).toBe('allowed');
        expect(await deliver('forged-acme', 'acme', ['u.globex.gus'])).toBe('allowed');
        // Behind them in the node's queue: once ann has it, they have been handled.
        expect(await deliver('marker', 'acme', [])).toBe('allowed');
        await eventually(() => ann.eventIds().includes('marker'), 'the marker reaches ann');
        expect(gus.eventIds()).toEqual([]);
      } finally {
        await model.close();
      }
    } finally {
      ann.ws.terminate();
      gus.ws.terminate();
      await ctl('delete_user', revoker).catch(() => {});
    }
  });

  it('a service account cannot put a message on a Warren queue by name, nor declare anything', async () => {
    const model = await amqp.connect(urlFor(accounts.service.user));
    try {
      const refused = (use: (channel: amqp.ConfirmChannel) => Promise<unknown>) => outcome(model, use);
      // Straight to the gateway's queue, past the resolver: the broker refuses.
      const direct = await refused((channel) => published(channel, '', gateway.queue, {}));
      expect(direct).toMatch(/ACCESS_REFUSED/);
      expect(await refused((channel) => channel.assertQueue(`${prefix}.mine`))).toMatch(/ACCESS_REFUSED/);
      expect(
        await refused((channel) => channel.bindQueue(gateway.queue, `${prefix}.deliveries`, '#')),
      ).toMatch(/ACCESS_REFUSED/);
      expect(await refused((channel) => channel.consume(`${prefix}.dead`, () => {}))).toMatch(
        /ACCESS_REFUSED/,
      );
    } finally {
      await model.close();
    }
  });
});
