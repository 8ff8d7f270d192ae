import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { WarrenPublisher } from '../../src/sdk/publisher/index.js';
import {
  eventually,
  openTab,
  startTestStack,
  testConfig,
  testPrefix,
  type TestStack,
  type TestTab,
  token,
} from '../support/harness.js';

describe('membership changes take effect for the next event', () => {
  const prefix = testPrefix('members');
  const config = testConfig(prefix);
  let stack: TestStack;
  let warren: WarrenPublisher;
  const tabs = new Map<string, TestTab>();
  let n = 0;

  beforeAll(async () => {
    stack = await startTestStack(config);
    const { gateway } = stack;
    warren = stack.warren;
    for (const user of ['ann', 'bob', 'cid', 'dan']) {
      tabs.set(user, await openTab(gateway.port, await token({ sub: user, tid: 'acme' })));
    }
    tabs.set('other-ann', await openTab(gateway.port, await token({ sub: 'ann', tid: 'globex' })));
  });
  afterAll(async () => {
    for (const tab of tabs.values()) tab.ws.terminate();
    await stack.close();
  });

  /** Publishes an event to `audience`, then a marker to everyone, and returns who got the event. */
  async function reach(
    audience: Parameters<WarrenPublisher['publishEvent']>[0]['audience'],
  ): Promise<string[]> {
    n += 1;
    const id = `e${n}`;
    await warren.publishEvent({ id, tenantId: 'acme', type: 'test.event', audience, data: { n } });
    const marker = `m${n}`;
    await warren.publishEvent({
      id: marker,
      tenantId: 'acme',
      type: 'test.marker',
      audience: { users: ['ann', 'bob', 'cid', 'dan'] },
    });
    const acme = ['ann', 'bob', 'cid', 'dan'];
    await eventually(() => acme.every((u) => tabs.get(u)?.eventIds().includes(marker)), `marker ${marker}`);
    expect(tabs.get('other-ann')?.eventIds()).toEqual([]);
    return acme.filter((u) => tabs.get(u)?.eventIds().includes(id));
  }

  it('direct team membership: added receives, removed does not', async () => {
    expect(await reach({ teams: ['icu'] })).toEqual([]);
    await warren.addUserToTeam('acme', 'ann', 'icu');
    expect(await reach({ teams: ['icu'] })).toEqual(['ann']);
    await warren.removeUserFromTeam('acme', 'ann', 'icu');
    expect(await reach({ teams: ['icu'] })).toEqual([]);
  });

  it('through a group: user added to or removed from a group holding the team', async () => {
    await warren.addTeamToGroup('acme', 'ward', 'nurses');
    expect(await reach({ teams: ['ward'] })).toEqual([]);
    await warren.addUserToGroup('acme', 'bob', 'nurses');
    expect(await reach({ teams: ['ward'] })).toEqual(['bob']);
    expect(await reach({ groups: ['nurses'] })).toEqual(['bob']);
    await warren.removeUserFromGroup('acme', 'bob', 'nurses');
    expect(await reach({ teams: ['ward'] })).toEqual([]);
  });

  it('through a group: team added to or removed from a group', async () => {
    await warren.addUserToGroup('acme', 'cid', 'doctors');
    expect(await reach({ teams: ['er'] })).toEqual([]);
    await warren.addTeamToGroup('acme', 'er', 'doctors');
    expect(await reach({ teams: ['er'] })).toEqual(['cid']);
    await warren.removeTeamFromGroup('acme', 'er', 'doctors');
    expect(await reach({ teams: ['er'] })).toEqual([]);
  });

  it('listed users and exceptUsers, and unions of teams and groups', async () => {
    await warren.addUserToTeam('acme', 'ann', 'lab');
    await warren.addUserToTeam('acme', 'dan', 'lab');
    expect(await reach({ teams: ['lab'], users: ['bob'] })).toEqual(['ann', 'bob', 'dan']);
    expect(await reach({ teams: ['lab'], users: ['bob'], exceptUsers: ['dan'] })).toEqual(['ann', 'bob']);
    expect(await reach({ users: ['nobody-online'] })).toEqual([]);
  });
});

describe('the publisher SDK given a Redis client of the application', () => {
  // A membership change would be split across two key spaces; a payload would land where no gateway looks.
  it.each(['redis', 'payloadRedis'] as const)('refuses a `%s` client with a keyPrefix', async (option) => {
    const client = new Redis(inject('redisUrl'), { keyPrefix: 'app:', lazyConnect: true });
    try {
      await expect(
        WarrenPublisher.connect({
          [option]: client,
          rabbitmqUrl: inject('rabbitmqUrl'),
          prefix: testPrefix('keyprefix'),
        }),
      ).rejects.toThrow(`\`${option}\` client given has keyPrefix "app:"`);
    } finally {
      client.disconnect();
    }
  });
});
