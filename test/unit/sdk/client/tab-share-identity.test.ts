import { describe, expect, it, vi } from 'vitest';
import { connect, TabRole, type WarrenClient } from '../../../../src/sdk/client/index.js';
import { FakeSocket, opaqueFor, tokenFor, useTabFakes } from './tab-fakes.js';

// Tabs of one browser share a socket only with tabs of the same user: a relay from a socket that belongs
// to anyone else is never shown, whether the tabs were grouped by a name the application chose or one
// tab's token changed hands (a shared workstation where someone else signed in).

describe('tab sharing never crosses users', () => {
  const clients = useTabFakes();

  function tab(getToken: () => string, share: boolean | string): { client: WarrenClient; seen: unknown[] } {
    const client = connect({
      url: 'ws://gateway/ws',
      getToken,
      shareAcrossTabs: share,
      WebSocket: FakeSocket as unknown as typeof WebSocket,
    });
    const seen: unknown[] = [];
    client.on('event', (e) => seen.push(e.data));
    clients.push(client);
    return { client, seen };
  }

  it('keeps its own socket where the browser refuses the lock, instead of waiting for it for good', async () => {
    // Site data blocked, or a sandboxed frame: the lock request rejects at once.
    vi.stubGlobal('navigator', {
      locks: { request: () => Promise.reject(new DOMException('storage blocked', 'SecurityError')) },
    });
    const { client, seen } = tab(() => tokenFor('acme', 'alice'), true);
    const errors: string[] = [];
    client.on('error', (e) => errors.push(e.code));
    await vi.waitFor(() => expect(client.state).toBe('connected'));
    expect(client.role).toBe(TabRole.Own);
    expect(errors).toEqual(['share_unavailable']);
    FakeSocket.all[0]?.event('mine');
    await vi.waitFor(() => expect(seen).toEqual([{ for: 'alice' }]));
  });

  it('joins its tabs once the token endpoint answers again, rather than keeping a socket of its own', async () => {
    let calls = 0;
    const { client } = tab(() => {
      calls += 1;
      if (calls === 1) throw new Error('token endpoint down');
      return tokenFor('acme', 'alice');
    }, true);
    const errors: string[] = [];
    client.on('error', (e) => errors.push(e.code));
    await vi.waitFor(() => expect(client.role).toBe(TabRole.Leader), { timeout: 3000 });
    await vi.waitFor(() => expect(client.state).toBe('connected'));
    expect(errors).toEqual(['token_failed']);
    expect(FakeSocket.all).toHaveLength(1);
  });

  it('keeps users apart even when the application groups their tabs under one name', async () => {
    const alice = tab(() => tokenFor('acme', 'alice'), 'app');
    const bob = tab(() => tokenFor('acme', 'bob'), 'app');
    await vi.waitFor(() => expect(FakeSocket.all).toHaveLength(2));
    const [aliceSocket, bobSocket] = ['alice', 'bob'].map((u) =>
      FakeSocket.all.find((s) => s.user.sub === u),
    );
    await vi.waitFor(() =>
      expect([alice.client.role, bob.client.role]).toEqual([TabRole.Leader, TabRole.Leader]),
    );
    aliceSocket?.event('for-alice');
    bobSocket?.event('for-bob');
    // Each then gets a second event of its own: a relay of the other's first, sent before it, would be in.
    aliceSocket?.event('for-alice-2');
    bobSocket?.event('for-bob-2');
    await vi.waitFor(() => expect(alice.seen).toHaveLength(2));
    await vi.waitFor(() => expect(bob.seen).toHaveLength(2));
    expect(alice.seen).toEqual([{ for: 'alice' }, { for: 'alice' }]);
    expect(bob.seen).toEqual([{ for: 'bob' }, { for: 'bob' }]);
  });

  it('closes a leader whose token comes to name another user: no tab shows that user, a follower takes over', async () => {
    let leaderUser = 'alice';
    const leader = tab(() => tokenFor('acme', leaderUser), true);
    await vi.waitFor(() => expect(leader.client.role).toBe(TabRole.Leader));
    const follower = tab(() => tokenFor('acme', 'alice'), true);
    await vi.waitFor(() => expect(follower.client.state).toBe('connected'));
    FakeSocket.all[0]?.event('shared');
    await vi.waitFor(() => expect(follower.seen).toEqual([{ for: 'alice' }]));

    // Someone else signs in: the leader's socket is told its token expired and reconnects as bob.
    leaderUser = 'bob';
    const errors: string[] = [];
    leader.client.on('error', (e) => errors.push(e.code));
    FakeSocket.all[0]?.end(4001);
    await vi.waitFor(() => expect(leader.client.state).toBe('closed'), { timeout: 5000 });
    expect(errors).toEqual(['identity_changed']);
    const bobs = FakeSocket.all.find((s) => s.user.sub === 'bob');
    expect(bobs?.readyState).toBe(3);
    bobs?.event('bobs');
    // The follower takes over with a socket of its own user.
    await vi.waitFor(() => expect(follower.client.role).toBe(TabRole.Leader));
    await new Promise((r) => setTimeout(r, 50));
    expect(follower.seen).toEqual([{ for: 'alice' }]);
    expect(leader.seen).toEqual([{ for: 'alice' }]);
  });

  it('asks for its token once when it leads from the start', async () => {
    let asked = 0;
    const only = tab(() => {
      asked += 1;
      return tokenFor('acme', 'alice');
    }, true);
    await vi.waitFor(() => expect(only.client.state).toBe('connected'));
    expect(only.client.role).toBe(TabRole.Leader);
    expect(asked).toBe(1);
  });

  it('asks for a new token taking over from a leader that never spoke (frozen), once its own is not new', async () => {
    // The lock is held by a tab that says nothing (frozen in the background), until it lets go.
    let letGo: () => void = () => {};
    void navigator.locks.request(
      'warren|ws://gateway/ws|acme|alice|',
      {},
      () => new Promise<void>((r) => (letGo = r)),
    );
    let asked = 0;
    const follower = tab(() => {
      asked += 1;
      return tokenFor('acme', 'alice');
    }, true);
    await vi.waitFor(() => expect(follower.client.role).toBe(TabRole.Follower));
    expect(asked).toBe(1);
    // A minute on, the frozen tab is discarded and lets go.
    const now = Date.now();
    vi.spyOn(Date, 'now').mockReturnValue(now + 60_000);
    letGo();
    await vi.waitFor(() => expect(follower.client.role).toBe(TabRole.Leader));
    await vi.waitFor(() => expect(asked).toBe(2));
  });

  it('takes over with a token asked for then, not the one it joined with: signed out, it opens no socket', async () => {
    const leader = tab(() => tokenFor('acme', 'alice'), true);
    await vi.waitFor(() => expect(leader.client.role).toBe(TabRole.Leader));
    let signedIn = true;
    let asked = 0;
    const follower = tab(() => {
      asked += 1;
      if (!signedIn) throw new Error('signed out');
      return tokenFor('acme', 'alice');
    }, true);
    await vi.waitFor(() => expect(follower.client.state).toBe('connected'));
    const errors: string[] = [];
    follower.client.on('error', (e) => errors.push(e.code));
    expect(asked).toBe(1);

    // Alice signs out in another tab, which closes the leader's page.
    signedIn = false;
    const sockets = FakeSocket.all.length;
    leader.client.close();
    await vi.waitFor(() => expect(follower.client.role).toBe(TabRole.Leader));
    await vi.waitFor(() => expect(errors).toContain('token_failed'));
    expect(asked).toBeGreaterThan(1);
    // No socket opened with the token the tab joined with.
    expect(FakeSocket.all.length).toBe(sockets);
  });

  it('shares nothing on tokens it cannot read, even under a group name: each tab keeps its own socket', async () => {
    const tabs = [tab(() => opaqueFor('alice'), 'user-alice'), tab(() => opaqueFor('bob'), 'user-alice')];
    await vi.waitFor(() => expect(FakeSocket.all).toHaveLength(2));
    await vi.waitFor(() => expect(tabs.map((t) => t.client.state)).toEqual(['connected', 'connected']));
    expect(tabs.map((t) => t.client.role)).toEqual([TabRole.Own, TabRole.Own]);
    for (const socket of FakeSocket.all) socket.event(`for-${socket.user.sub}`);
    await vi.waitFor(() => expect(tabs.map((t) => t.seen)).toEqual([[{ for: 'alice' }], [{ for: 'bob' }]]));
  });

  it('takes over on the node its leader was on, where it can resume', async () => {
    const random = vi.spyOn(Math, 'random');
    const open = (): WarrenClient => {
      const client = connect({
        url: ['ws://a/ws', 'ws://b/ws'],
        getToken: () => tokenFor('acme', 'alice'),
        shareAcrossTabs: true,
        WebSocket: FakeSocket as unknown as typeof WebSocket,
      });
      clients.push(client);
      return client;
    };
    // The leader's list starts at node a; the follower's own would start at b.
    random.mockReturnValue(0);
    const leader = open();
    await vi.waitFor(() => expect(leader.role).toBe(TabRole.Leader));
    random.mockReturnValue(0.6);
    const follower = open();
    await vi.waitFor(() => expect(follower.state).toBe('connected'));
    expect(FakeSocket.all.map((s) => s.url)).toEqual(['ws://a/ws']);

    leader.close();
    await vi.waitFor(() => expect(follower.role).toBe(TabRole.Leader));
    await vi.waitFor(() => expect(FakeSocket.all).toHaveLength(2));
    expect(FakeSocket.all[1]?.url).toBe('ws://a/ws');
  });

  it('tells the other followers the connection is down when a leader tab vanishes without a word', async () => {
    const [leader, next, third] = [0, 1, 2].map(() => tab(() => tokenFor('acme', 'alice'), true).client);
    await vi.waitFor(() => expect(third?.state).toBe('connected'));
    const states: string[] = [];
    third?.on('state', ({ to }) => states.push(to));
    // The tab is gone: its lock is released, it posts nothing.
    (leader as unknown as { share: { close(): void } }).share.close();
    await vi.waitFor(() => expect(next?.role).toBe(TabRole.Leader));
    await vi.waitFor(() => expect(states).toEqual(['reconnecting', 'connected']));
  });

  it('hands the offset of a gap the node reported to follower tabs, so a take-over resumes past it', async () => {
    const leader = tab(() => tokenFor('acme', 'alice'), true);
    await vi.waitFor(() => expect(leader.client.role).toBe(TabRole.Leader));
    const follower = tab(() => tokenFor('acme', 'alice'), true);
    await vi.waitFor(() => expect(follower.client.state).toBe('connected'));
    const resyncs: string[] = [];
    follower.client.on('resync', (r) => resyncs.push(r.reason));
    FakeSocket.all[0]?.receive({
      type: 'error',
      code: 'events_missed',
      message: 'the node queue was lost',
      offset: 9,
    });
    await vi.waitFor(() => expect(resyncs).toEqual(['history_gap']));

    // The leader tab closes before any later event; the follower takes over on the same node.
    FakeSocket.welcomeOffset = 12;
    leader.client.close();
    await vi.waitFor(() => expect(FakeSocket.all).toHaveLength(2));
    await vi.waitFor(() =>
      expect(FakeSocket.all[1]?.sent).toContainEqual({ type: 'resume', epoch: 'e', offset: 9 }),
    );
    expect(resyncs).toEqual(['history_gap']);
  });

  it('tells follower tabs, once, that the leader reconnected to another node', async () => {
    const leader = tab(() => tokenFor('acme', 'alice'), true);
    await vi.waitFor(() => expect(leader.client.role).toBe(TabRole.Leader));
    const follower = tab(() => tokenFor('acme', 'alice'), true);
    await vi.waitFor(() => expect(follower.client.state).toBe('connected'));
    const resyncs = { leader: [] as string[], follower: [] as string[] };
    leader.client.on('resync', (r) => resyncs.leader.push(r.reason));
    follower.client.on('resync', (r) => resyncs.follower.push(r.reason));

    // A deploy drains the node (4100); the leader reconnects to another one.
    FakeSocket.epoch = 'e2';
    FakeSocket.all[0]?.end(4100);
    await vi.waitFor(() => expect(resyncs.leader).toEqual(['new_node']), { timeout: 5000 });
    await vi.waitFor(() => expect(resyncs.follower).toEqual(['new_node']));
    // Once: a later event reaches the follower with no second notice before it.
    FakeSocket.all[1]?.event('after');
    await vi.waitFor(() => expect(follower.seen).toHaveLength(1));
    expect(resyncs.follower).toEqual(['new_node']);
  });

  it('ignores a relay on its channel that speaks for another user', async () => {
    const leader = tab(() => tokenFor('acme', 'alice'), true);
    await vi.waitFor(() => expect(leader.client.role).toBe(TabRole.Leader));
    const follower = tab(() => tokenFor('acme', 'alice'), true);
    await vi.waitFor(() => expect(follower.client.state).toBe('connected'));
    const errors: string[] = [];
    follower.client.on('error', (e) => errors.push(e.code));
    const intruder = new BroadcastChannel('warren|ws://gateway/ws|acme|alice|');
    intruder.postMessage({
      k: 'frame',
      who: { tid: 'acme', sub: 'mallory' },
      frame: { type: 'event', id: 'x', eventType: 'note', data: { for: 'mallory' }, offset: 9 },
    });
    await vi.waitFor(() => expect(errors).toContain('share_mismatch'));
    intruder.close();
    expect(follower.seen).toEqual([]);
    // The stray message did not silence the real leader.
    FakeSocket.all[0]?.event('legit');
    await vi.waitFor(() => expect(follower.seen).toEqual([{ for: 'alice' }]));
  });
});
