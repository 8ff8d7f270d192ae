import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { ClientFrame, ServerFrame } from '../../../../src/protocol/frames.js';
import {
  connect,
  type StateChange,
  type WarrenClient,
  type WarrenEvent,
} from '../../../../src/sdk/client/index.js';

/** A scripted stand-in for the browser's WebSocket: the test plays the gateway. */
class ScriptedSocket {
  static all: ScriptedSocket[] = [];
  readyState = 0;
  readonly sent: ClientFrame[] = [];
  onmessage: ((event: { data: unknown }) => void) | null = null;
  onclose: ((event: { code: number }) => void) | null = null;

  constructor(
    readonly url: string,
    readonly protocols: string | string[],
  ) {
    ScriptedSocket.all.push(this);
  }

  send(text: string): void {
    this.sent.push(JSON.parse(text) as ClientFrame);
  }

  close(): void {
    this.readyState = 3;
  }

  receive(frame: ServerFrame): void {
    this.readyState = 1;
    this.onmessage?.({ data: JSON.stringify(frame) });
  }

  welcome(epoch: string, offset: number, gateway = 'gw-1'): void {
    this.receive({
      type: 'welcome',
      connectionId: `c${ScriptedSocket.all.indexOf(this)}`,
      userId: 'u1',
      tenantId: 't1',
      gateway,
      epoch,
      offset,
    });
  }

  event(id: string, offset: number): void {
    this.receive({ type: 'event', id, eventType: 'test.event', data: { id }, offset });
  }

  /** The server (or the network) ends the connection. */
  end(code: number): void {
    this.readyState = 3;
    this.onclose?.({ code });
  }

  get token(): string | undefined {
    const bearer = [this.protocols].flat().find((p) => p.startsWith('bearer.'));
    return bearer?.slice('bearer.'.length);
  }
}

describe('client core (scripted socket, fake timers)', () => {
  let client: WarrenClient;
  let tokens: number;
  let events: WarrenEvent[];
  let states: StateChange[];

  const latest = (): ScriptedSocket => {
    const s = ScriptedSocket.all.at(-1);
    if (!s) throw new Error('no socket opened');
    return s;
  };

  /** Lets the client's pending token promise and reconnect timer run. */
  const nextAttempt = async (): Promise<ScriptedSocket> => {
    const before = ScriptedSocket.all.length;
    await vi.advanceTimersByTimeAsync(60_000);
    expect(ScriptedSocket.all.length).toBe(before + 1);
    return latest();
  };

  /** The reasons of the resync events from now on. */
  const resyncsSeen = (): string[] => {
    const resyncs: string[] = [];
    client.on('resync', (r) => resyncs.push(r.reason));
    return resyncs;
  };

  /** The codes of the error events from now on. */
  const errorCodesSeen = (): string[] => {
    const errors: string[] = [];
    client.on('error', (e) => errors.push(e.code));
    return errors;
  };

  beforeEach(async () => {
    vi.useFakeTimers();
    ScriptedSocket.all = [];
    tokens = 0;
    events = [];
    states = [];
    client = connect({
      url: ['ws://a/ws', 'ws://b/ws'],
      getToken: () => `token-${++tokens}`,
      WebSocket: ScriptedSocket as unknown as typeof WebSocket,
      pingIntervalMs: 0,
      // Attempts here last as long as the test plays them; the bound has a test of its own.
      connectTimeoutMs: 0,
    });
    client.on('event', (e) => events.push(e));
    client.on('state', (s) => states.push(s));
    await vi.advanceTimersByTimeAsync(0);
  });

  afterEach(() => {
    client.close();
    vi.useRealTimers();
  });

  it('sends the token as a sub-protocol and reports connecting → connected', () => {
    const socket = latest();
    expect(socket.protocols).toEqual(['warren', 'bearer.token-1']);
    expect(client.state).toBe('connecting');
    socket.welcome('e1', 0);
    expect(client.state).toBe('connected');
    expect(client.session).toMatchObject({ userId: 'u1', tenantId: 't1', gateway: 'gw-1' });
  });

  it('shows each event id once, even when the gateway replays it after a reconnect', async () => {
    const first = latest();
    first.welcome('e1', 5);
    first.event('a', 6);
    first.event('a', 6);
    first.end(1006);
    expect(client.state).toBe('reconnecting');

    const second = await nextAttempt();
    second.welcome('e1', 9);
    // Same node: the client asks for what it missed since the last offset it saw.
    expect(second.sent).toEqual([{ type: 'resume', epoch: 'e1', offset: 6 }]);
    second.event('a', 6);
    second.event('b', 8);
    second.receive({ type: 'resumed', epoch: 'e1', replayed: 2, offset: 9 });
    second.event('c', 10);
    expect(events.map((e) => e.id)).toEqual(['a', 'b', 'c']);
    expect(events[1]).toEqual({ id: 'b', type: 'test.event', data: { id: 'b' } });
  });

  it('reports a payload_unavailable once, even when the gateway replays it after a reconnect', async () => {
    const errors: { code: string; eventId?: string }[] = [];
    client.on('error', (e) => errors.push({ code: e.code, eventId: e.eventId }));
    const gone = {
      type: 'error',
      code: 'payload_unavailable',
      message: 'the payload of event big is no longer available',
      id: 'big',
    } as const;
    const first = latest();
    first.welcome('e1', 5);
    first.receive(gone);
    first.end(1006);
    const second = await nextAttempt();
    second.welcome('e1', 6);
    // The error carries no offset: the resume asks from before it, and the node replays it.
    expect(second.sent).toEqual([{ type: 'resume', epoch: 'e1', offset: 5 }]);
    second.receive(gone);
    second.receive({ type: 'resumed', epoch: 'e1', replayed: 1, offset: 6 });
    expect(errors).toEqual([{ code: 'payload_unavailable', eventId: 'big' }]);
    // A later copy of the event whose payload was read after all (a redelivery) is still shown, once.
    second.event('big', 7);
    second.event('big', 7);
    expect(events.map((e) => e.id)).toEqual(['big']);
    second.receive(gone);
    expect(errors).toHaveLength(1);
  });

  it('asks again from how far the replay got when the socket drops before it is complete', async () => {
    const first = latest();
    first.welcome('e1', 5);
    first.event('a', 6);
    first.end(1006);

    const second = await nextAttempt();
    second.welcome('e1', 20);
    expect(second.sent).toEqual([{ type: 'resume', epoch: 'e1', offset: 6 }]);
    // A live event (after the welcome) and part of the replay, then the socket drops.
    second.event('live', 21);
    second.event('b', 8);
    second.end(1006);

    const third = await nextAttempt();
    third.welcome('e1', 22);
    // From the replay's progress (8), not from 21, which would skip the rest of it (offsets 9–20).
    expect(third.sent).toEqual([{ type: 'resume', epoch: 'e1', offset: 8 }]);
    third.receive({ type: 'resumed', epoch: 'e1', replayed: 0, offset: 22 });
    third.end(1006);
    const fourth = await nextAttempt();
    fourth.welcome('e1', 30);
    expect(fourth.sent).toEqual([{ type: 'resume', epoch: 'e1', offset: 22 }]);
  });

  it('after history_gap does not ask again from the old offset on the next reconnect', async () => {
    const resyncs = resyncsSeen();
    latest().welcome('e1', 5);
    latest().end(1006);
    const second = await nextAttempt();
    second.welcome('e1', 50);
    second.receive({ type: 'error', code: 'resume_unavailable', message: 'gone' });
    expect(resyncs).toEqual(['history_gap']);
    second.end(1006);
    const third = await nextAttempt();
    third.welcome('e1', 50);
    expect(third.sent).toEqual([]);
    expect(resyncs).toEqual(['history_gap']);
  });

  it('resynchronises when the node says it missed events, and keeps receiving', async () => {
    const resyncs = resyncsSeen();
    const events: string[] = [];
    client.on('event', (e) => events.push(e.id));
    latest().welcome('e1', 5);
    latest().receive({ type: 'error', code: 'events_missed', message: 'the node queue was lost', offset: 9 });
    expect(resyncs).toEqual(['history_gap']);
    // Back on the same node: from the gap on, not from before it (which would be refused).
    latest().end(1006);
    const second = await nextAttempt();
    second.welcome('e1', 12);
    expect(second.sent).toEqual([{ type: 'resume', epoch: 'e1', offset: 9 }]);
    second.event('later', 13);
    expect(events).toEqual(['later']);
    expect(resyncs).toEqual(['history_gap']);
  });

  it('after events_missed while its resume is unanswered, asks the node again from the gap', async () => {
    const resyncs = resyncsSeen();
    latest().welcome('e1', 5);
    latest().end(1006);
    const second = await nextAttempt();
    second.welcome('e1', 20);
    expect(second.sent).toEqual([{ type: 'resume', epoch: 'e1', offset: 5 }]);
    // The node finds a gap (at 21) before it answers the resume, then the socket drops.
    second.receive({ type: 'error', code: 'events_missed', message: 'queue lost', offset: 21 });
    second.end(1006);
    const third = await nextAttempt();
    third.welcome('e1', 25);
    // From before the gap the node would refuse it: a second resynchronisation, nothing replayed.
    expect(third.sent).toEqual([{ type: 'resume', epoch: 'e1', offset: 21 }]);
    expect(resyncs).toEqual(['history_gap']);
  });

  it('reports frames that are not what the protocol says as bad_frame, and goes on as if they never came', async () => {
    const errors = errorCodesSeen();
    const first = latest();
    first.welcome('e1', 5);
    first.event('a', 6);
    const raw = (frame: object): void => first.onmessage?.({ data: JSON.stringify(frame) });
    raw({ type: 'event', eventType: 'test.event', data: {}, offset: 7 });
    raw({ type: 'event', id: 'b', eventType: 'test.event', data: {}, offset: '7' });
    raw({ type: 'welcome', connectionId: 'c', gateway: 'gw-1', epoch: 'e1', offset: 7 });
    raw({ type: 'resumed', epoch: 'e1', replayed: 0 });
    raw({ type: 'error', message: 'no code' });
    raw([{ type: 'event' }]);
    // A type this client does not know (a newer gateway's) is passed over in silence.
    raw({ type: 'notice', text: 'hello' });
    raw({ type: 'constructor' });
    first.event('c', 8);
    expect(events.map((e) => e.id)).toEqual(['a', 'c']);
    expect(client.state).toBe('connected');
    expect(errors).toEqual(Array(6).fill('bad_frame'));
    first.end(1006);
    const second = await nextAttempt();
    second.welcome('e1', 9);
    expect(second.sent).toEqual([{ type: 'resume', epoch: 'e1', offset: 8 }]);
  });

  it('hands listeners after one that called close() nothing more: no later state, no event', async () => {
    latest().welcome('e1', 0);
    const after: string[] = [];
    client.on('event', () => client.close());
    client.on('event', (e) => after.push(e.id));
    client.on('state', ({ to }) => after.push(to));
    latest().event('x', 1);
    expect(after).toEqual(['closed']);
    expect(client.state).toBe('closed');
  });

  it('tells a listener removed by an earlier one in the same dispatch nothing', async () => {
    latest().welcome('e1', 0);
    const heard: string[] = [];
    const second = (e: WarrenEvent) => heard.push(e.id);
    client.on('event', () => client.off('event', second));
    client.on('event', second);
    latest().event('x', 1);
    expect(heard).toEqual([]);
  });

  it('leaves no later state to listeners after one that closed the client on a drop', async () => {
    latest().welcome('e1', 0);
    client.on('state', ({ to }) => {
      if (to === 'reconnecting') client.close();
    });
    const badge: string[] = [];
    client.on('state', ({ to }) => badge.push(to));
    latest().end(1006);
    expect(client.state).toBe('closed');
    expect(badge).toEqual(['closed']);
  });

  it('does not resume on another node but says events may have been missed', async () => {
    const resyncs = resyncsSeen();
    latest().welcome('e1', 5);
    latest().end(4100);
    const second = await nextAttempt();
    second.welcome('e2', 100, 'gw-2');
    expect(second.sent).toEqual([]);
    expect(resyncs).toEqual(['new_node']);
  });

  describe('told to move (handoff)', () => {
    const handoff = (socket: ScriptedSocket): void =>
      socket.receive({ type: 'handoff', reason: 'lifetime', closeInMs: 5000 });

    /** The first connection, welcomed and then told to move. */
    const toldToMove = (): ScriptedSocket => {
      const first = latest();
      first.welcome('e1', 5);
      handoff(first);
      return first;
    };

    /** The first connection told to move, and the second one welcomed on another node. */
    const movedOnce = async (): Promise<{ first: ScriptedSocket; second: ScriptedSocket }> => {
      const first = toldToMove();
      const second = await nextAttempt();
      second.welcome('e2', 100, 'gw-2');
      return { first, second };
    };

    it('connects to another node first and switches at its welcome: no gap, no resync, no state change', async () => {
      const resyncs = resyncsSeen();
      const first = latest();
      first.welcome('e1', 5);
      first.event('a', 6);
      handoff(first);
      const second = await nextAttempt();
      expect(second.url).not.toBe(first.url);
      expect(second.token).toBe('token-1');
      // Until the new one is welcomed the old one still delivers, with its offsets.
      first.event('b', 7);
      second.welcome('e2', 100, 'gw-2');
      expect(client.session?.gateway).toBe('gw-2');
      // Routed before the new node bound the user: only the old one brings it; routed after: both do.
      first.event('c', 8);
      first.event('d', 9);
      second.event('d', 101);
      second.event('e', 102);
      expect(events.map((e) => e.id)).toEqual(['a', 'b', 'c', 'd', 'e']);
      expect(resyncs).toEqual([]);
      expect(second.sent).toEqual([]);
      expect(states.map((s) => s.to)).toEqual(['connected']);
      // The old one is closed after a moment, by the client: its close then changes nothing.
      await vi.advanceTimersByTimeAsync(1000);
      expect(first.readyState).toBe(3);
      first.end(4101);
      await vi.advanceTimersByTimeAsync(60_000);
      expect(ScriptedSocket.all).toHaveLength(2);
      expect(client.state).toBe('connected');

      // A later reconnect to the new node resumes from the new node's offsets, not the old one's.
      second.end(1006);
      const third = await nextAttempt();
      third.welcome('e2', 110, 'gw-2');
      expect(third.sent).toEqual([{ type: 'resume', epoch: 'e2', offset: 102 }]);
    });

    it('shows an event once when the old connection brings it after more than the dedup window of others', async () => {
      const { first, second } = await movedOnce();
      // Routed after the new node bound the user: the new node, keeping up, brings it and a busy user's
      // next thousand; the old node, behind its queue, brings it only then.
      second.event('d', 101);
      for (let i = 0; i < 1000; i += 1) second.event(`x${i}`, 102 + i);
      first.event('d', 9);
      expect(events.filter((e) => e.id === 'd')).toHaveLength(1);
      expect(first.readyState).toBe(3);
    });

    it('says resync when the old node closes the connection moved from other than as it said it would', async () => {
      const resyncs = resyncsSeen();
      const { first, second } = await movedOnce();
      // Too slow (its frames were dropped), or the node gone: what only it had on its way is lost.
      first.end(4009);
      expect(resyncs).toEqual(['history_gap']);
      expect(client.state).toBe('connected');

      // Its close as said (having told events_missed first if it was behind): nothing more to say.
      handoff(second);
      const third = await nextAttempt();
      third.welcome('e3', 0, 'gw-3');
      second.end(4101);
      expect(resyncs).toEqual(['history_gap']);
    });

    it('keeps the old connection long enough for a node behind its queue to close it itself', async () => {
      const resyncs = resyncsSeen();
      const first = latest();
      first.welcome('e1', 5);
      first.receive({ type: 'handoff', reason: 'draining', closeInMs: 0 });
      await vi.advanceTimersByTimeAsync(0);
      const second = latest();
      second.welcome('e2', 100, 'gw-2');
      // The node's probe of its own queue takes up to 1 s before its events_missed and close.
      await vi.advanceTimersByTimeAsync(1500);
      expect(first.readyState).not.toBe(3);
      first.receive({ type: 'error', code: 'events_missed', message: 'behind', offset: 9 });
      first.end(4100);
      expect(resyncs).toEqual(['history_gap']);
    });

    it('gives a move up, saying bad_frame, when the new connection opens with a welcome it cannot read', async () => {
      const errors = errorCodesSeen();
      const first = toldToMove();
      const second = await nextAttempt();
      // A welcome naming no user: not taken, and the welcome is a connection's first frame.
      second.receive({ type: 'welcome', tenantId: 't1', epoch: 'e2', offset: 100 } as unknown as ServerFrame);
      expect(second.readyState).toBe(3);
      expect(errors).toEqual(['bad_frame']);
      // The old connection goes on meanwhile; its close reconnects as after any close.
      first.event('a', 6);
      expect(events.map((e) => e.id)).toEqual(['a']);
      expect(client.session?.gateway).toBe('gw-1');
    });

    it('reconnects as before when the old connection closes before the new one is welcomed', async () => {
      const resyncs = resyncsSeen();
      const first = toldToMove();
      const pending = await nextAttempt();
      first.end(4101);
      // The move is given up; the reconnect after the close opens a socket of its own.
      expect(pending.readyState).toBe(3);
      const third = await nextAttempt();
      third.welcome('e2', 100, 'gw-2');
      expect(resyncs).toEqual(['new_node']);
      expect(states.map((s) => s.to)).toEqual(['connected', 'reconnecting', 'connected']);
    });

    it('a move given up does not count as a move: the close after it goes to another node, not back', async () => {
      const errors: string[] = [];
      client.on('error', (e) => errors.push(e.message));
      const first = toldToMove();
      await vi.advanceTimersByTimeAsync(0);
      const refused = latest();
      expect(refused.url).not.toBe(first.url);
      // Refused (that node is down too, or not ready yet); then the draining node closes.
      refused.end(1006);
      first.end(4100);
      const next = await nextAttempt();
      expect(next.url).not.toBe(first.url);
      next.welcome('e3', 0, 'gw-3');
      expect(errors).toEqual([]);
    });

    it('stays on the old connection when the new one is refused, until the old one closes', async () => {
      const first = toldToMove();
      const refused = await nextAttempt();
      refused.end(1006);
      first.event('a', 6);
      expect(events.map((e) => e.id)).toEqual(['a']);
      expect(client.state).toBe('connected');
      first.end(4101);
      const next = await nextAttempt();
      next.welcome('e3', 0, 'gw-3');
      expect(client.state).toBe('connected');
    });

    it('says events may be missing when it moves while its resume is still being answered', async () => {
      const resyncs = resyncsSeen();
      const first = latest();
      first.welcome('e1', 5);
      first.event('a', 6);
      first.end(1006);
      const second = await nextAttempt();
      second.welcome('e1', 9);
      expect(second.sent).toEqual([{ type: 'resume', epoch: 'e1', offset: 6 }]);
      // Told to move before the replay of 7..9 (only the old node has it) has come.
      handoff(second);
      const third = await nextAttempt();
      third.welcome('e2', 100, 'gw-2');
      second.event('b', 7);
      // The rest of the replay is not through when the old connection is left.
      await vi.advanceTimersByTimeAsync(2500);
      expect(second.readyState).toBe(3);
      expect(events.map((e) => e.id)).toEqual(['a', 'b']);
      expect(resyncs).toEqual(['history_gap']);
      expect(client.state).toBe('connected');
    });

    it('tells of a gap or an unreadable payload the old connection reports after the move', async () => {
      const resyncs = resyncsSeen();
      const errors: { code: string; eventId?: string }[] = [];
      client.on('error', (e) => errors.push({ code: e.code, ...(e.eventId ? { eventId: e.eventId } : {}) }));
      const { first, second } = await movedOnce();
      // Routed before the new node bound the user: only the old node could bring them, and it could not.
      first.receive({ type: 'error', code: 'payload_unavailable', message: 'expired', id: 'p' });
      first.receive({ type: 'error', code: 'events_missed', message: 'queue full', offset: 9 });
      expect(errors).toEqual([{ code: 'payload_unavailable', eventId: 'p' }]);
      expect(resyncs).toEqual(['history_gap']);
      // The old node's offset counts for nothing on the new one.
      second.end(1006);
      const third = await nextAttempt();
      third.welcome('e2', 110, 'gw-2');
      expect(third.sent).toEqual([{ type: 'resume', epoch: 'e2', offset: 100 }]);
    });

    it('told to move again during the overlap, still shows what the first node had on its way', async () => {
      const first = toldToMove();
      await vi.advanceTimersByTimeAsync(0);
      const second = latest();
      second.welcome('e2', 100, 'gw-2');
      // The new node drains too (a rolling restart), at once.
      handoff(second);
      await vi.advanceTimersByTimeAsync(0);
      const third = latest();
      expect(third).not.toBe(second);
      third.welcome('e3', 200, 'gw-3');
      // Routed to the first node before the second bound the user: it reaches the first one only.
      first.event('a', 6);
      second.event('b', 101);
      expect(events.map((e) => e.id)).toEqual(['a', 'b']);
      // Each kept until its node's close (closeInMs, and a grace) at the latest.
      await vi.advanceTimersByTimeAsync(7500);
      expect([first.readyState, second.readyState]).toEqual([3, 3]);
      expect(client.state).toBe('connected');
    });

    it('keeps the old connection until it has caught up with the new one, or until its node closes it', async () => {
      const first = toldToMove();
      await vi.advanceTimersByTimeAsync(0);
      const second = latest();
      second.welcome('e2', 100, 'gw-2');
      // The old node is behind (a claim-checked payload slow to read): routed before the new node bound
      // the user, this one reaches the old connection only, late.
      await vi.advanceTimersByTimeAsync(1500);
      first.event('late', 6);
      expect(events.map((e) => e.id)).toEqual(['late']);
      // An event through both: the old node has passed the new one's bind, nothing more is due there.
      second.event('x', 101);
      expect(first.readyState).not.toBe(3);
      first.event('x', 7);
      expect(first.readyState).toBe(3);
      expect(events.map((e) => e.id)).toEqual(['late', 'x']);

      // A quiet user: the old connection is kept until its node closes it (closeInMs), not past it.
      second.receive({ type: 'handoff', reason: 'lifetime', closeInMs: 5000 });
      await vi.advanceTimersByTimeAsync(0);
      const third = latest();
      third.welcome('e3', 200, 'gw-3');
      await vi.advanceTimersByTimeAsync(4000);
      expect(second.readyState).not.toBe(3);
      second.end(4101);
      third.event('y', 201);
      await vi.advanceTimersByTimeAsync(60_000);
      expect(client.state).toBe('connected');
      expect(ScriptedSocket.all).toHaveLength(3);
      expect(vi.getTimerCount()).toBe(0);
    });

    it('close() while moving or during the overlap leaves no socket open and no timer', async () => {
      const first = toldToMove();
      const pending = await nextAttempt();
      client.close();
      expect([first.readyState, pending.readyState]).toEqual([3, 3]);
      expect(vi.getTimerCount()).toBe(0);

      client = connect({
        url: ['ws://a/ws', 'ws://b/ws'],
        getToken: () => 'token',
        WebSocket: ScriptedSocket as unknown as typeof WebSocket,
        connectTimeoutMs: 5000,
      });
      await vi.advanceTimersByTimeAsync(0);
      const old = latest();
      old.welcome('e1', 5);
      handoff(old);
      await vi.advanceTimersByTimeAsync(0);
      const moved = latest();
      moved.welcome('e2', 0, 'gw-2');
      client.close();
      expect([old.readyState, moved.readyState]).toEqual([3, 3]);
      expect(vi.getTimerCount()).toBe(0);
    });

    it('closes, showing nothing, when the new connection welcomes someone else', async () => {
      const errors = errorCodesSeen();
      toldToMove();
      const second = await nextAttempt();
      second.receive({
        type: 'welcome',
        connectionId: 'x',
        userId: 'someone-else',
        tenantId: 't1',
        gateway: 'gw-2',
        epoch: 'e2',
        offset: 0,
      });
      expect(errors).toEqual(['identity_changed']);
      expect(client.state).toBe('closed');
    });
  });

  it('moves to the next URL on 4100 and keeps the token', async () => {
    const first = latest();
    first.welcome('e1', 0);
    first.end(4100);
    const second = await nextAttempt();
    expect(second.url).not.toBe(first.url);
    expect(second.token).toBe('token-1');
    expect(states.at(-1)).toEqual({ from: 'connected', to: 'reconnecting', code: 4100 });
  });

  it('fetches a new token after 4001', async () => {
    latest().welcome('e1', 0);
    latest().end(4001);
    const second = await nextAttempt();
    expect(second.token).toBe('token-2');
  });

  it('closes, showing nothing, when a new token names another user (someone else signed in)', async () => {
    const errors = errorCodesSeen();
    latest().welcome('e1', 3);
    latest().event('a', 3);
    latest().end(4001);
    const second = await nextAttempt();
    second.receive({
      type: 'welcome',
      connectionId: 'c1',
      userId: 'u2',
      tenantId: 't1',
      gateway: 'gw-1',
      epoch: 'e1',
      offset: 9,
    });
    expect(second.readyState).toBe(3);
    second.event('theirs', 10);
    expect(errors).toEqual(['identity_changed']);
    expect(client.state).toBe('closed');
    // No resume for the other user from the first one's cursor, and none of their events shown.
    expect(second.sent).toEqual([]);
    expect(events.map((e) => e.id)).toEqual(['a']);
    expect(client.session).toMatchObject({ userId: 'u1' });
    expect(ScriptedSocket.all).toHaveLength(2);
    await vi.advanceTimersByTimeAsync(120_000);
    expect(ScriptedSocket.all).toHaveLength(2);
  });

  it('fetches a new token after repeated failures before welcome (a browser’s view of HTTP 401)', async () => {
    latest().end(1006);
    expect((await nextAttempt()).token).toBe('token-1');
    latest().end(1006);
    expect((await nextAttempt()).token).toBe('token-2');
    expect(client.state).toBe('connecting');
  });

  it('keeps trying when a url function throws, and keeps reconnect defaults given as undefined', async () => {
    client.close();
    let calls = 0;
    const errors: string[] = [];
    // The jitter draw in the middle: the first retry waits 250 ms (half of the 500 ms base).
    const random = vi.spyOn(Math, 'random').mockReturnValue(0.5);
    client = connect({
      url: () => {
        calls += 1;
        if (calls === 1) throw new Error('no gateway known yet');
        return 'ws://later/ws';
      },
      getToken: () => 'token',
      WebSocket: ScriptedSocket as unknown as typeof WebSocket,
      pingIntervalMs: 0,
      // Attempts here last as long as the test plays them; the bound has a test of its own.
      connectTimeoutMs: 0,
      reconnect: { capMs: undefined },
    });
    client.on('error', (e) => errors.push(e.message));
    await vi.advanceTimersByTimeAsync(0);
    expect(errors).toEqual(['cannot open (url option): no gateway known yet']);
    const before = ScriptedSocket.all.length;
    // A real backoff (not a NaN delay firing at once): nothing after 200 ms…
    await vi.advanceTimersByTimeAsync(200);
    expect(ScriptedSocket.all.length).toBe(before);
    // …and a socket to the URL the function gives next, after the delay.
    const socket = await nextAttempt();
    expect(socket.url).toBe('ws://later/ws');
    random.mockRestore();
  });

  it('stops for good on close()', async () => {
    latest().welcome('e1', 0);
    client.close();
    expect(client.state).toBe('closed');
    latest().end(1000);
    await vi.advanceTimersByTimeAsync(120_000);
    expect(ScriptedSocket.all).toHaveLength(1);
  });
});

describe('client: an attempt that fails before any socket', () => {
  afterEach(() => {
    vi.restoreAllMocks();
    vi.useRealTimers();
  });

  it('stays on its URL when getToken fails: the node was never tried', async () => {
    vi.useFakeTimers();
    vi.spyOn(Math, 'random').mockReturnValue(0);
    ScriptedSocket.all = [];
    let calls = 0;
    const client = connect({
      url: ['ws://a/ws', 'ws://b/ws'],
      getToken: () => {
        calls += 1;
        if (calls === 1) throw new Error('token endpoint down');
        return 'token';
      },
      WebSocket: ScriptedSocket as unknown as typeof WebSocket,
      pingIntervalMs: 0,
      // Attempts here last as long as the test plays them; the bound has a test of its own.
      connectTimeoutMs: 0,
    });
    const errors: string[] = [];
    client.on('error', (e) => errors.push(`${e.code}: ${e.message}`));
    await vi.advanceTimersByTimeAsync(60_000);
    expect(ScriptedSocket.all.map((s) => s.url)).toEqual(['ws://a/ws']);
    // The application's reason, not only that it failed.
    expect(errors).toEqual(['token_failed: getToken failed: token endpoint down']);
    client.close();
  });

  it('moves on to the next URL when the browser refuses to open one (a ws:// URL on an https page)', async () => {
    vi.useFakeTimers();
    // The list's random start is its first URL.
    vi.spyOn(Math, 'random').mockReturnValue(0);
    const tried: string[] = [];
    class Refusing extends ScriptedSocket {
      constructor(url: string, protocols: string | string[]) {
        tried.push(url);
        if (url.startsWith('ws://a')) throw new Error('SecurityError: insecure WebSocket');
        super(url, protocols);
      }
    }
    ScriptedSocket.all = [];
    const client = connect({
      url: ['ws://a/ws', 'wss://b/ws'],
      getToken: () => 'token',
      WebSocket: Refusing as unknown as typeof WebSocket,
      pingIntervalMs: 0,
      // Attempts here last as long as the test plays them; the bound has a test of its own.
      connectTimeoutMs: 0,
    });
    client.on('error', () => {});
    await vi.advanceTimersByTimeAsync(60_000);
    expect(tried.slice(0, 2)).toEqual(['ws://a/ws', 'wss://b/ws']);
    client.close();
  });
});

describe('client: an attempt that fails', () => {
  afterEach(() => {
    vi.restoreAllMocks();
    vi.useRealTimers();
  });

  it('tells the application of every attempt closed before its welcome, without the token', async () => {
    vi.useFakeTimers();
    vi.spyOn(Math, 'random').mockReturnValue(0);
    ScriptedSocket.all = [];
    const client = connect({
      url: 'ws://a/ws',
      getToken: () => 'secret-token',
      tokenTransport: 'query',
      WebSocket: ScriptedSocket as unknown as typeof WebSocket,
      pingIntervalMs: 0,
      connectTimeoutMs: 0,
    });
    const errors: string[] = [];
    const states: string[] = [];
    client.on('error', (e) => errors.push(`${e.code}: ${e.message}`));
    client.on('state', ({ to }) => states.push(to));
    await vi.advanceTimersByTimeAsync(0);
    ScriptedSocket.all[0]?.end(1006);
    await vi.advanceTimersByTimeAsync(1000);
    ScriptedSocket.all[1]?.end(4008);
    // A node draining before its welcome is moved on from without an error.
    await vi.advanceTimersByTimeAsync(60_000);
    expect(ScriptedSocket.all).toHaveLength(3);
    ScriptedSocket.all[2]?.end(4100);
    expect(errors).toEqual([
      'socket_failed: no connection to ws://a/ws: refused (a token the gateway does not accept, a node not ready) or unreachable; retrying',
      'socket_failed: no connection to ws://a/ws: closed with 4008; retrying',
    ]);
    expect(ScriptedSocket.all[0]?.url).toContain('secret-token');
    // Still connecting: there was no connection to lose.
    expect(states).toEqual([]);
    // Once welcomed, a drop is a state change, not an error.
    await vi.advanceTimersByTimeAsync(60_000);
    const last = ScriptedSocket.all[ScriptedSocket.all.length - 1];
    last?.welcome('e1', 0);
    last?.end(1006);
    expect(errors).toHaveLength(2);
    expect(states).toEqual(['connected', 'reconnecting']);
    client.close();
  });

  it('keeps the token out of the error when the WebSocket refuses a URL that carries it', async () => {
    vi.useFakeTimers();
    // What browsers and the ws package throw for a URL they cannot take: the URL, token and all
    // (Chromium: "The URL '…' is invalid.", or the fragment the query was appended to).
    class RefusingSocket {
      constructor(url: string) {
        throw new SyntaxError(`Failed to construct 'WebSocket': The URL '${url}' is invalid.`);
      }
    }
    const token = 'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1MSJ9.c2lnbmF0dXJl';
    const client = connect({
      url: 'wss://gateway:99999/ws',
      getToken: () => token,
      tokenTransport: 'query',
      WebSocket: RefusingSocket as unknown as typeof WebSocket,
      pingIntervalMs: 0,
      connectTimeoutMs: 0,
    });
    const errors: { message: string; cause: unknown }[] = [];
    client.on('error', (e) => errors.push({ message: e.message, cause: e.cause }));
    await vi.advanceTimersByTimeAsync(0);
    expect(errors).toHaveLength(1);
    const [error] = errors;
    expect(error?.message).toBe(
      "cannot open wss://gateway:99999/ws: Failed to construct 'WebSocket': The URL 'wss://gateway:99999/ws?token=***' is invalid.",
    );
    // Nor in what an application's logger prints of the error's cause.
    expect(JSON.stringify(error, Object.getOwnPropertyNames(error))).not.toContain('c2lnbmF0dXJl');
    expect(String((error?.cause as Error | undefined)?.message)).not.toContain('c2lnbmF0dXJl');
    client.close();
  });
});

describe('client: an attempt that hangs', () => {
  afterEach(() => {
    vi.restoreAllMocks();
    vi.useRealTimers();
  });

  it('gives up on a gateway that accepts and never welcomes, and tries the next node', async () => {
    vi.useFakeTimers();
    vi.spyOn(Math, 'random').mockReturnValue(0);
    ScriptedSocket.all = [];
    const client = connect({
      url: ['ws://a/ws', 'ws://b/ws'],
      getToken: () => 'token',
      WebSocket: ScriptedSocket as unknown as typeof WebSocket,
      pingIntervalMs: 0,
      connectTimeoutMs: 5000,
    });
    const errors: string[] = [];
    client.on('error', (e) => errors.push(`${e.code}: ${e.message}`));
    await vi.advanceTimersByTimeAsync(4999);
    expect(ScriptedSocket.all).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(errors).toEqual(['socket_failed: no welcome within 5000 ms']);
    expect(ScriptedSocket.all[0]?.readyState).toBe(3);
    await vi.advanceTimersByTimeAsync(1000);
    expect(ScriptedSocket.all.map((s) => s.url)).toEqual(['ws://a/ws', 'ws://b/ws']);
    // A welcome in time ends the bound: no more attempts.
    ScriptedSocket.all[1]?.welcome('e1', 0);
    await vi.advanceTimersByTimeAsync(60_000);
    expect(ScriptedSocket.all).toHaveLength(2);
    expect(client.state).toBe('connected');
    client.close();
  });

  it('gives up on a token that never comes when reconnecting after a connection it had', async () => {
    vi.useFakeTimers();
    vi.spyOn(Math, 'random').mockReturnValue(0);
    ScriptedSocket.all = [];
    let calls = 0;
    const client = connect({
      url: 'ws://a/ws',
      getToken: () => {
        calls += 1;
        return calls === 2 ? new Promise<string>(() => {}) : `token-${calls}`;
      },
      WebSocket: ScriptedSocket as unknown as typeof WebSocket,
      pingIntervalMs: 0,
      connectTimeoutMs: 5000,
    });
    const errors: string[] = [];
    client.on('error', (e) => errors.push(`${e.code}: ${e.message}`));
    await vi.advanceTimersByTimeAsync(0);
    ScriptedSocket.all[0]?.welcome('e1', 0);
    // Expired: the reconnect asks for a new token, which hangs.
    ScriptedSocket.all[0]?.end(4001);
    await vi.advanceTimersByTimeAsync(6000);
    expect(errors).toEqual(['token_failed: getToken did not settle within 5000 ms']);
    expect(ScriptedSocket.all.map((s) => s.token)).toEqual(['token-1', 'token-3']);
    ScriptedSocket.all[1]?.welcome('e1', 0);
    expect(client.state).toBe('connected');
    client.close();
  });

  it('gives up on a getToken that never settles, stays on its URL, and ignores the token if it comes late', async () => {
    vi.useFakeTimers();
    vi.spyOn(Math, 'random').mockReturnValue(0);
    ScriptedSocket.all = [];
    let calls = 0;
    let late: (token: string) => void = () => {};
    const client = connect({
      url: ['ws://a/ws', 'ws://b/ws'],
      getToken: () => {
        calls += 1;
        return calls === 1 ? new Promise<string>((resolve) => (late = resolve)) : 'token-2';
      },
      WebSocket: ScriptedSocket as unknown as typeof WebSocket,
      pingIntervalMs: 0,
      connectTimeoutMs: 5000,
    });
    const errors: string[] = [];
    client.on('error', (e) => errors.push(`${e.code}: ${e.message}`));
    await vi.advanceTimersByTimeAsync(5000);
    expect(errors).toEqual(['token_failed: getToken did not settle within 5000 ms']);
    await vi.advanceTimersByTimeAsync(1000);
    expect(ScriptedSocket.all.map((s) => [s.url, s.token])).toEqual([['ws://a/ws', 'token-2']]);
    // The first attempt's token, long after it was given up: no second socket.
    late('token-1');
    await vi.advanceTimersByTimeAsync(0);
    expect(ScriptedSocket.all).toHaveLength(1);
    client.close();
  });

  it('leaves no timer behind when closed while getToken is pending', async () => {
    vi.useFakeTimers();
    ScriptedSocket.all = [];
    const client = connect({
      url: 'ws://a/ws',
      getToken: () => new Promise<string>(() => {}),
      WebSocket: ScriptedSocket as unknown as typeof WebSocket,
      pingIntervalMs: 0,
      connectTimeoutMs: 20_000,
    });
    const errors: string[] = [];
    client.on('error', (e) => errors.push(e.message));
    await vi.advanceTimersByTimeAsync(10);
    expect(vi.getTimerCount()).toBe(1);
    client.close();
    await vi.advanceTimersByTimeAsync(0);
    expect(vi.getTimerCount()).toBe(0);
    expect(errors).toEqual([]);
  });
});

describe('client options', () => {
  it('refuses options that would turn backoff into a loop, naming each', () => {
    ScriptedSocket.all = [];
    const attempt = (extra: object) => () =>
      connect({
        url: 'ws://a/ws',
        getToken: () => 'token',
        WebSocket: ScriptedSocket as unknown as typeof WebSocket,
        ...extra,
      });
    expect(attempt({ reconnect: { baseMs: 0, capMs: Number.NaN } })).toThrow(
      'warren client: reconnect.baseMs must be a number from 10 to 2147483647 (got 0); reconnect.capMs must be a number from 1000 to 2147483647 (got NaN)',
    );
    // Every delay would be 0 ms: jitter draws below a 1 ms window.
    expect(attempt({ reconnect: { capMs: 1 } })).toThrow('reconnect.capMs');
    expect(attempt({ reconnect: { baseMs: 5000, capMs: 2000 } })).toThrow(
      'reconnect.capMs must be a number from 5000',
    );
    expect(attempt({ connectTimeoutMs: 2 ** 31 })).toThrow('connectTimeoutMs');
    // Too short to work: a connection closed at once would reset the backoff, every attempt given up.
    expect(attempt({ reconnect: { stableMs: 0 } })).toThrow('reconnect.stableMs');
    expect(attempt({ connectTimeoutMs: 50 })).toThrow('connectTimeoutMs must be a number from 1000');
    expect(attempt({ pingIntervalMs: 1 })).toThrow('pingIntervalMs');
    expect(ScriptedSocket.all).toHaveLength(0);
    // 0 turns them off.
    attempt({ connectTimeoutMs: 0, pingIntervalMs: 0 })().close();
    expect(attempt({ reconnect: { stableMs: null } })).toThrow('reconnect.stableMs');
    expect(attempt({ connectTimeoutMs: -1 })).toThrow('connectTimeoutMs');
    expect(ScriptedSocket.all).toHaveLength(0);
  });
});
