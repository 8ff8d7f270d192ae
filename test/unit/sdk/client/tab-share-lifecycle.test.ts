import { describe, expect, it, vi } from 'vitest';
import { connect, TabRole, type WarrenClient } from '../../../../src/sdk/client/index.js';
import { FakeSocket, tokenFor, useTabFakes } from './tab-fakes.js';

// Applications call close() from their own listeners (a user signed out, a page that keeps one active
// tab): a client closed on the way to opening a socket must open none and let its tabs' lock go, or the
// other tabs wait for good on a leader that is not there. And a follower waiting on a leader that cannot
// connect hears why, as a tab with its own socket would.

describe('shared tabs: closing from a listener, failures told to followers', () => {
  const clients = useTabFakes();

  function tab(getToken: () => string = () => tokenFor('acme', 'alice')): WarrenClient {
    const client = connect({
      url: 'ws://gateway/ws',
      getToken,
      shareAcrossTabs: true,
      WebSocket: FakeSocket as unknown as typeof WebSocket,
    });
    clients.push(client);
    return client;
  }

  const open = (): FakeSocket[] => FakeSocket.all.filter((s) => s.readyState !== 3);

  /** A leader tab, then a follower, each connected before the next step. */
  async function connectedPair(): Promise<{ leader: WarrenClient; follower: WarrenClient }> {
    const leader = tab();
    await vi.waitFor(() => expect(leader.state).toBe('connected'));
    const follower = tab();
    await vi.waitFor(() => expect(follower.state).toBe('connected'));
    return { leader, follower };
  }

  it('a tab closed by its application as it takes over opens no socket and hands the lead on', async () => {
    const leader = tab();
    await vi.waitFor(() => expect(leader.role).toBe(TabRole.Leader));
    const next = tab();
    await vi.waitFor(() => expect(next.state).toBe('connected'));
    // Closed as soon as the connection is lost: the take-over is under way when the listener runs.
    next.on('state', ({ to }) => {
      if (to === 'reconnecting') next.close();
    });
    const third = tab();
    await vi.waitFor(() => expect(third.state).toBe('connected'));
    const seen: unknown[] = [];
    third.on('event', (e) => seen.push(e.id));

    leader.close();
    await vi.waitFor(() => expect(third.role).toBe(TabRole.Leader));
    await vi.waitFor(() => expect(third.state).toBe('connected'));
    expect(next.state).toBe('closed');
    // The first leader's socket (closed) and the third tab's: none of the closed tab's.
    expect(FakeSocket.all).toHaveLength(2);
    expect(open()).toHaveLength(1);
    open()[0]?.event('e1');
    expect(seen).toEqual(['e1']);
  });

  it('followers of a leader told to move (handoff) miss nothing and are not told to resynchronise', async () => {
    const { follower } = await connectedPair();
    const seen: unknown[] = [];
    const resyncs: unknown[] = [];
    const states: unknown[] = [];
    follower.on('event', (e) => seen.push(e.id));
    follower.on('resync', (r) => resyncs.push(r.reason));
    follower.on('state', (s) => states.push(s.to));
    const [old] = open();
    old?.event('e1');

    FakeSocket.epoch = 'e-other';
    old?.receive({ type: 'handoff', reason: 'draining', closeInMs: 5000 });
    // The new socket is welcomed, and the old one closed by the leader once it has caught up (an event
    // through both).
    await vi.waitFor(() => expect(FakeSocket.all).toHaveLength(2));
    const moved = FakeSocket.all[1];
    await vi.waitFor(() => expect(moved?.readyState).toBe(1));
    moved?.event('e2');
    old?.event('e2');
    expect(old?.readyState).toBe(3);
    expect(open()).toEqual([moved]);
    await vi.waitFor(() => expect(seen).toEqual(['e1', 'e2']));
    expect(resyncs).toEqual([]);
    expect(states).toEqual([]);
    expect(follower.state).toBe('connected');
  });

  it('followers are told to resynchronise when the leader moves before its resume is answered', async () => {
    const { leader, follower } = await connectedPair();
    const resyncs: unknown[] = [];
    follower.on('resync', (r) => resyncs.push(r.reason));
    const [first] = open();
    first?.event('e1');
    // Back on the same node, which delivered 2..5 meanwhile: the leader asks for them.
    FakeSocket.welcomeOffset = 5;
    first?.end(1006);
    await vi.waitFor(() => expect(FakeSocket.all).toHaveLength(2));
    const again = FakeSocket.all[1];
    await vi.waitFor(() => expect(again?.sent).toEqual([{ type: 'resume', epoch: 'e', offset: 1 }]));
    await vi.waitFor(() => expect(follower.state).toBe('connected'));
    // Told to move before the replay came: it comes through the old socket only, if in time.
    FakeSocket.epoch = 'e-other';
    again?.receive({ type: 'handoff', reason: 'draining', closeInMs: 5000 });
    await vi.waitFor(() => expect(FakeSocket.all).toHaveLength(3));
    await vi.waitFor(() => expect(resyncs).toEqual(['history_gap']));
    expect(leader.state).toBe('connected');
    expect(follower.state).toBe('connected');
  });

  it('followers get what the connection moved from still brings while the leader reconnects, and its gap', async () => {
    const { leader, follower } = await connectedPair();
    const shown = { leader: [] as string[], follower: [] as string[] };
    const resyncs = { leader: [] as string[], follower: [] as string[] };
    leader.on('event', (e) => shown.leader.push(e.id));
    follower.on('event', (e) => shown.follower.push(e.id));
    leader.on('resync', (r) => resyncs.leader.push(r.reason));
    follower.on('resync', (r) => resyncs.follower.push(r.reason));
    const [old] = open();
    FakeSocket.epoch = 'e-other';
    old?.receive({ type: 'handoff', reason: 'draining', closeInMs: 5000 });
    await vi.waitFor(() => expect(FakeSocket.all[1]?.readyState).toBe(1));
    // The new connection drops during the overlap (its node went away) and the leader cannot get back
    // at once; the old node, behind its queue, still has the user's events on their way.
    FakeSocket.refuse = true;
    FakeSocket.all[1]?.end(1006);
    await vi.waitFor(() => expect(follower.state).toBe('reconnecting'));
    old?.event('tail');
    // Then the old node goes too, before it had caught up: what it still had is lost, and said so.
    old?.end(1006);
    await vi.waitFor(() => expect(shown.follower).toEqual(shown.leader));
    await vi.waitFor(() => expect(resyncs.follower).toEqual(resyncs.leader));
    expect(shown.leader).toEqual(['tail']);
    expect(resyncs.leader).toEqual(['history_gap']);
  });

  it('a tab taking over from a leader that went during a move says events may be missing, once caught up not', async () => {
    const { leader, follower } = await connectedPair();
    const third = tab();
    await vi.waitFor(() => expect(third.state).toBe('connected'));
    const resyncs = { follower: [] as string[], third: [] as string[] };
    follower.on('resync', (r) => resyncs.follower.push(r.reason));
    third.on('resync', (r) => resyncs.third.push(r.reason));
    const [old] = open();
    old?.receive({ type: 'handoff', reason: 'draining', closeInMs: 5000 });
    await vi.waitFor(() => expect(FakeSocket.all[1]?.readyState).toBe(1));
    // The leader's tab goes while the old node may still have the user's events on their way: they reach
    // no tab now, and the node moved to never had them.
    leader.close();
    await vi.waitFor(() => expect(follower.role).toBe(TabRole.Leader));
    await vi.waitFor(() => expect(follower.state).toBe('connected'));
    await vi.waitFor(() => expect(resyncs.third).toEqual(['history_gap']));
    expect(resyncs.follower).toEqual(['history_gap']);

    // Moved again, and the old connection caught up (an event through both) before the next leader goes:
    // nothing is missing.
    const current = open()[0];
    current?.receive({ type: 'handoff', reason: 'draining', closeInMs: 5000 });
    await vi.waitFor(() => expect(open()).toHaveLength(2));
    const moved = open()[1];
    await vi.waitFor(() => expect(moved?.readyState).toBe(1));
    moved?.event('both');
    current?.event('both');
    expect(open()).toEqual([moved]);
    // Its word that it has caught up reaches the other tab before it goes (a lock can be granted to the
    // next tab before the channel delivers what was posted just before: then it says resync to be safe).
    await new Promise((r) => setTimeout(r, 20));
    follower.close();
    await vi.waitFor(() => expect(third.role).toBe(TabRole.Leader));
    await vi.waitFor(() => expect(third.state).toBe('connected'));
    await new Promise((r) => setTimeout(r, 50));
    expect(resyncs.third).toEqual(['history_gap']);
  });

  it('a client closed from its role listener as it joins opens no socket and holds no lock', async () => {
    const leader = tab();
    await vi.waitFor(() => expect(leader.state).toBe('connected'));
    const second = tab();
    // A page that wants one active tab closes any tab told it follows.
    second.on('role', (role) => {
      if (role === TabRole.Follower) second.close();
    });
    await vi.waitFor(() => expect(second.state).toBe('closed'));
    const third = tab();
    await vi.waitFor(() => expect(third.state).toBe('connected'));
    leader.close();
    // The lock goes to the third tab, not to a request the closed one left in line.
    await vi.waitFor(() => expect(third.role).toBe(TabRole.Leader));
    await vi.waitFor(() => expect(third.state).toBe('connected'));
    expect(FakeSocket.all).toHaveLength(2);
  });

  it('tells a tab it follows only when another tab leads: the first tab of a user is a leader from the start', async () => {
    const first = tab();
    const firstRoles: string[] = [];
    first.on('role', (role) => firstRoles.push(role));
    await vi.waitFor(() => expect(first.state).toBe('connected'));
    expect(firstRoles).toEqual([TabRole.Leader]);

    const second = tab();
    const secondRoles: string[] = [];
    second.on('role', (role) => secondRoles.push(role));
    await vi.waitFor(() => expect(second.state).toBe('connected'));
    expect(secondRoles).toEqual([TabRole.Follower]);
    first.close();
    await vi.waitFor(() => expect(second.role).toBe(TabRole.Leader));
    expect(secondRoles).toEqual([TabRole.Follower, TabRole.Leader]);
  });

  it('a client closed from its token_failed listener asks for no token again', async () => {
    vi.useFakeTimers();
    let calls = 0;
    const client = tab(() => {
      calls += 1;
      throw new Error('signed out');
    });
    client.on('error', (e) => {
      if (e.code === 'token_failed') client.close();
    });
    await vi.advanceTimersByTimeAsync(0);
    expect(client.state).toBe('closed');
    await vi.advanceTimersByTimeAsync(60_000);
    expect(calls).toBe(1);
    expect(FakeSocket.all).toHaveLength(0);
  });

  it('followers hear of every attempt of the leader that fails before its welcome', async () => {
    const { leader, follower } = await connectedPair();
    const told: { leader: string[]; follower: string[] } = { leader: [], follower: [] };
    leader.on('error', (e) => told.leader.push(`${e.code}: ${e.message}`));
    follower.on('error', (e) => told.follower.push(`${e.code}: ${e.message}`));

    FakeSocket.refuse = true;
    FakeSocket.all[0]?.end(1006);
    await vi.waitFor(() => expect(told.leader.length).toBeGreaterThanOrEqual(2), { timeout: 5000 });
    await vi.waitFor(() => expect(told.follower).toHaveLength(told.leader.length));
    expect(told.follower).toEqual(
      told.leader.map((m) => m.replace(': ', ': the tab holding the connection: ')),
    );
    expect(told.follower[0]).toMatch(/^socket_failed: the tab holding the connection: .*ws:\/\/gateway\/ws/);
    expect(follower.state).toBe('reconnecting');

    FakeSocket.refuse = false;
    await vi.waitFor(() => expect(follower.state).toBe('connected'), { timeout: 5000 });
  });
});
