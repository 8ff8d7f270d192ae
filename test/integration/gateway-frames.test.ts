import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import type { Gateway } from '../../src/gateway/main.js';
import {
  BrokerProbe,
  cleanRedis,
  counter,
  eventually,
  openTab,
  removeInstallation,
  startTestGateway,
  testConfig,
  testPrefix,
  TestTab,
  token,
} from '../support/harness.js';
import WebSocket from 'ws';
import { TcpProxy } from '../support/tcp-proxy.js';

describe('client frames, limits and connection lifetime', () => {
  const prefix = testPrefix('frames');
  let gateway: Gateway;
  let probe: BrokerProbe;

  beforeAll(async () => {
    gateway = await startTestGateway(
      testConfig(prefix, {
        gateway: {
          maxFrameBytes: 256,
          badFrameLimit: 3,
          maxBackpressureBytes: 256 * 1024,
          historyEvents: 100,
        },
      }),
    );
    probe = await BrokerProbe.open();
  });
  afterAll(async () => {
    await gateway.close();
    await probe.deleteExchangesAndQueues(prefix, [gateway.queue]);
    await probe.close();
    await cleanRedis(prefix);
  });

  it('answers ping with pong, and bad frames with error frames, then closes with 4008 on repeated abuse', async () => {
    const tab = await openTab(gateway.port, await token({ sub: 'p1', tid: 't1' }));
    tab.send({ type: 'ping' });
    await eventually(() => tab.frames.some((f) => f.type === 'pong'), 'pong');

    tab.send('{not json');
    tab.send({ type: 'subscribe', channel: 'everything' });
    tab.send({ type: 'ping', padding: 'x'.repeat(300) });
    await eventually(() => tab.frames.filter((f) => f.type === 'error').length === 3, 'three error frames');
    const codes = tab.frames.flatMap((f) => (f.type === 'error' ? [f.code] : []));
    expect(codes).toEqual(['bad_frame', 'bad_frame', 'frame_too_large']);
    expect(tab.closeCode).toBeUndefined();

    tab.ws.send(Buffer.from([1, 2, 3]), { binary: true });
    expect(await tab.closed).toBe(4008);
  });

  it('answers a burst of pings, then refuses more than one a second as bad frames (4008 past the limit)', async () => {
    const tab = await openTab(gateway.port, await token({ sub: 'p4', tid: 't1' }));
    for (let i = 0; i < 9; i += 1) tab.send({ type: 'ping' });
    await eventually(() => tab.closeCode !== undefined, 'closed');
    // The burst (5) answered; the next three refused (badFrameLimit 3), and one more closes the tab.
    expect(tab.frames.filter((f) => f.type === 'pong')).toHaveLength(5);
    const errors = tab.frames.flatMap((f) => (f.type === 'error' ? [f.message] : []));
    expect(errors).toEqual(Array(3).fill('too many pings: 5 at once, then one a second'));
    expect(tab.closeCode).toBe(4008);
  });

  it('keeps answering pings sent a second apart, after a burst', async () => {
    const tab = await openTab(gateway.port, await token({ sub: 'p5', tid: 't1' }));
    for (let i = 0; i < 5; i += 1) tab.send({ type: 'ping' });
    await eventually(() => tab.frames.filter((f) => f.type === 'pong').length === 5, 'five pongs');
    for (let i = 0; i < 2; i += 1) {
      await new Promise((resolve) => setTimeout(resolve, 1050));
      tab.send({ type: 'ping' });
    }
    await eventually(() => tab.frames.filter((f) => f.type === 'pong').length === 7, 'seven pongs');
    expect(tab.frames.some((f) => f.type === 'error')).toBe(false);
    tab.ws.terminate();
  });

  it('closes with 1009 a frame far over the limit, saying why, and drops past 4 times that', async () => {
    // maxFrameBytes 256: up to 64 KiB an error frame, then 1009 up to 256 KiB, then uWS drops the socket.
    const jwt = await token({ sub: 'p3', tid: 't1' });
    const big = await openTab(gateway.port, jwt);
    big.ws.send('x'.repeat(70_000));
    expect(await big.closed).toBe(1009);
    // Binary or text: the bound is on the frame's size.
    const bigBinary = await openTab(gateway.port, jwt);
    bigBinary.ws.send(Buffer.alloc(70_000), { binary: true });
    expect(await bigBinary.closed).toBe(1009);
    const huge = await openTab(gateway.port, jwt);
    huge.ws.send('x'.repeat(300 * 1024));
    expect(await huge.closed).toBe(1006);
    // uWebSockets.js drops a text frame that is not UTF-8 before Warren sees it (as the README says).
    const garbled = await openTab(gateway.port, jwt);
    garbled.ws.send(Buffer.from([0x7b, 0xff, 0x7d]), { binary: false });
    expect(await garbled.closed).toBe(1006);
  });

  it('answers frames sent before the welcome after it: the welcome is always a tab’s first frame', async () => {
    const jwt = await token({ sub: 'early', tid: 't1' });
    const ws = new WebSocket(`ws://127.0.0.1:${gateway.port}/ws?token=${jwt}`);
    const tab = new TestTab(ws);
    // At once: the user's first bind is still on its way to the broker.
    ws.on('open', () => {
      ws.send('not json');
      ws.send(JSON.stringify({ type: 'ping' }));
      ws.send(JSON.stringify({ type: 'resume', epoch: 'e', offset: 1 }));
      // Each ping is answered: a client counting its pings unanswered must not be one short for good.
      ws.send(JSON.stringify({ type: 'ping' }));
    });
    await eventually(() => tab.frames.length >= 5, 'welcome, error, pongs and the resume’s answer');
    await new Promise((resolve) => setTimeout(resolve, 100));
    // The resume is answered last, as if sent right after the welcome (here: not this node's epoch).
    expect(tab.frames.map((f) => (f.type === 'error' ? `error: ${f.code}` : f.type))).toEqual([
      'welcome',
      'error: bad_frame',
      'pong',
      'pong',
      'error: resume_unavailable',
    ]);
    ws.terminate();
  });

  it('never takes identity from a client frame', async () => {
    const tab = await openTab(gateway.port, await token({ sub: 'p2', tid: 't1' }));
    tab.send({ type: 'ping', userId: 'someone-else', tenantId: 't2' });
    await eventually(() => tab.frames.some((f) => f.type === 'error'), 'error frame');
    await probe.deliver(prefix, ['u.t2.someone-else'], { id: 'not-yours', tenantId: 't2' });
    await probe.deliver(prefix, ['u.t1.p2'], { id: 'yours', tenantId: 't1' });
    await eventually(() => tab.eventIds().includes('yours'), 'own event');
    expect(tab.eventIds()).toEqual(['yours']);
    tab.ws.terminate();
  });

  it('closes a tab that does not read with 4009 while a healthy tab of the same user keeps receiving', async () => {
    const jwt = await token({ sub: 'slow', tid: 't1' });
    const slow = await openTab(gateway.port, jwt);
    const healthy = await openTab(gateway.port, jwt);
    slow.ws.pause();
    const data = { blob: 'x'.repeat(32 * 1024) };
    let sent = 0;
    while (slow.closeCode === undefined && sent < 3000) {
      const batch = Array.from({ length: 50 }, (_, i) =>
        probe.deliver(prefix, ['u.t1.slow'], { id: `big-${sent + i}`, tenantId: 't1', data }),
      );
      await Promise.all(batch);
      sent += batch.length;
      await eventually(() => healthy.eventIds().length === sent, `healthy tab has ${sent}`, 20_000);
      if ((await counter(gateway, 'warren_gateway_closes_total', { code: '4009' })) > 0) slow.ws.resume();
    }
    expect(await slow.closed).toBe(4009);
    await probe.deliver(prefix, ['u.t1.slow'], { id: 'after-slow', tenantId: 't1' });
    await eventually(() => healthy.eventIds().includes('after-slow'), 'healthy tab still receives');
    expect(new Set(healthy.eventIds()).size).toBe(sent + 1);
    expect(healthy.closeCode).toBeUndefined();
    healthy.ws.terminate();
  });

  it('replays missed deliveries on resume to the same node, and says when it cannot', async () => {
    const jwt = await token({ sub: 'r1', tid: 't1' });
    const keeper = await openTab(gateway.port, jwt);
    const first = await openTab(gateway.port, jwt);
    await probe.deliver(prefix, ['u.t1.r1'], { id: 'seen', tenantId: 't1' });
    await eventually(() => first.eventIds().includes('seen'), 'seen');
    const lastSeen = first.events().at(-1)?.offset ?? 0;
    const epoch = first.welcome?.epoch ?? '';
    first.ws.terminate();
    await probe.deliver(prefix, ['u.t1.r1'], { id: 'missed', tenantId: 't1' });
    await eventually(() => keeper.eventIds().includes('missed'), 'missed reached the node');

    const back = await openTab(gateway.port, jwt);
    // Delivered after the welcome and before the resume: written live, so not replayed a second time.
    await probe.deliver(prefix, ['u.t1.r1'], { id: 'live', tenantId: 't1' });
    await eventually(() => back.eventIds().includes('live'), 'live');
    back.send({ type: 'resume', epoch, offset: lastSeen });
    await eventually(() => back.frames.some((f) => f.type === 'resumed'), 'resumed');
    expect(back.eventIds()).toEqual(['live', 'missed']);

    // Once per connection: a second resume would only replay the same frames again.
    back.send({ type: 'resume', epoch, offset: lastSeen });
    await eventually(() => back.frames.some((f) => f.type === 'error' && f.code === 'bad_frame'), 'refused');
    expect(back.eventIds()).toEqual(['live', 'missed']);

    const elsewhere = await openTab(gateway.port, jwt);
    elsewhere.send({ type: 'resume', epoch: 'another-node', offset: 1 });
    await eventually(
      () => elsewhere.frames.some((f) => f.type === 'error' && f.code === 'resume_unavailable'),
      'resume_unavailable',
    );
    // Said as it is: not an offset out of reach, an epoch of another node (or of this one before a restart).
    expect(elsewhere.frames.find((f) => f.type === 'error')).toMatchObject({
      message: 'that epoch is not this node’s (another node, or this one restarted); resynchronise',
    });
    for (const tab of [keeper, back, elsewhere]) tab.ws.terminate();
  });

  it('replays missed deliveries to a tab that sends resume at once, before its welcome', async () => {
    // A raw client reconnecting to the node it knows need not wait for the welcome to ask. Redis through a
    // proxy, stalled while the tab opens: its welcome waits for the revocation read, so its frames surely
    // come first.
    const own = testPrefix('frames-early-resume');
    const target = new URL(inject('redisUrl'));
    const proxy = await TcpProxy.toUrl(target);
    const early = await startTestGateway(
      testConfig(own, { redis: { url: proxy.url(target) }, gateway: { historyEvents: 100 } }),
    );
    try {
      const jwt = await token({ sub: 'r3', tid: 't1' });
      const keeper = await openTab(early.port, jwt);
      await probe.deliver(own, ['u.t1.r3'], { id: 'seen', tenantId: 't1' });
      await eventually(() => keeper.eventIds().includes('seen'), 'seen');
      const cursor = { epoch: keeper.welcome?.epoch ?? '', offset: keeper.events().at(-1)?.offset ?? 0 };
      await probe.deliver(own, ['u.t1.r3'], { id: 'missed', tenantId: 't1' });
      await eventually(() => keeper.eventIds().includes('missed'), 'missed reached the node');

      proxy.stall();
      const ws = new WebSocket(`ws://127.0.0.1:${early.port}/ws?token=${jwt}`);
      const back = new TestTab(ws);
      const sent = new Promise<void>((resolve) =>
        ws.on('open', () => {
          back.send({ type: 'resume', ...cursor });
          // One resume a connection, welcomed or not.
          back.send({ type: 'resume', ...cursor });
          resolve();
        }),
      );
      try {
        await sent;
        await new Promise((resolve) => setTimeout(resolve, 300));
        expect(back.frames).toEqual([]);
      } finally {
        proxy.flow();
      }
      await eventually(() => back.frames.some((f) => f.type === 'resumed'), 'resumed');
      expect(back.frames.map((f) => (f.type === 'event' ? f.id : f.type))).toEqual([
        'welcome',
        'error',
        'missed',
        'resumed',
      ]);
      expect(back.frames[1]).toMatchObject({
        code: 'bad_frame',
        message: 'this connection has already resumed',
      });
      for (const tab of [keeper, back]) tab.ws.terminate();
    } finally {
      await early.close();
      await proxy.close();
      await probe.deleteExchangesAndQueues(own, [early.queue]);
      await cleanRedis(own);
    }
  });

  it('replays nothing older than gateway.resumeWindowMs to a new connection resuming from far back', async () => {
    const own = testPrefix('frames-window');
    const windowed = await startTestGateway(
      testConfig(own, { gateway: { historyEvents: 100, resumeWindowMs: 1000 } }),
    );
    try {
      const jwt = await token({ sub: 'w1', tid: 't1' });
      const keeper = await openTab(windowed.port, jwt);
      await probe.deliver(own, ['u.t1.w1'], { id: 'before-removal', tenantId: 't1' });
      await eventually(() => keeper.eventIds().includes('before-removal'), 'delivered');
      const epoch = keeper.welcome?.epoch ?? '';
      // Inside the window, a new connection could get it again by resuming from 0; past it, not.
      await new Promise((r) => setTimeout(r, 1200));
      const again = await openTab(windowed.port, jwt);
      again.send({ type: 'resume', epoch, offset: 0 });
      await eventually(
        () => again.frames.some((f) => f.type === 'error' && f.code === 'resume_unavailable'),
        'resume_unavailable',
      );
      expect(again.eventIds()).toEqual([]);
      for (const tab of [keeper, again]) tab.ws.terminate();
    } finally {
      await windowed.close();
      await probe.deleteExchangesAndQueues(own, [windowed.queue]);
      await cleanRedis(own);
    }
  });

  it('says it cannot resume, rather than closing the tab, when the missed events pass its buffer limit', async () => {
    const jwt = await token({ sub: 'r2', tid: 't1' });
    const keeper = await openTab(gateway.port, jwt);
    const first = await openTab(gateway.port, jwt);
    await probe.deliver(prefix, ['u.t1.r2'], { id: 'seen', tenantId: 't1' });
    await eventually(() => first.eventIds().includes('seen'), 'seen');
    const lastSeen = first.events().at(-1)?.offset ?? 0;
    const epoch = first.welcome?.epoch ?? '';
    first.ws.terminate();
    // 3 × 120 KiB missed: within what history keeps, past the 256 KiB a tab may buffer.
    for (const id of ['big-1', 'big-2', 'big-3'])
      await probe.deliver(prefix, ['u.t1.r2'], { id, tenantId: 't1', data: 'x'.repeat(120 * 1024) });
    await eventually(() => keeper.eventIds().includes('big-3'), 'the missed events reached the node');

    const back = await openTab(gateway.port, jwt);
    back.send({ type: 'resume', epoch, offset: lastSeen });
    await eventually(
      () => back.frames.some((f) => f.type === 'error' && f.code === 'resume_unavailable'),
      'resume_unavailable',
    );
    expect(back.eventIds()).toEqual([]);
    // Still open and receiving.
    await probe.deliver(prefix, ['u.t1.r2'], { id: 'after', tenantId: 't1' });
    await eventually(() => back.eventIds().includes('after'), 'after');
    expect(back.closeCode).toBeUndefined();
    for (const tab of [keeper, back]) tab.ws.terminate();
  });
});

describe('connection lifetime', () => {
  it('closes with 4101 when the maximum lifetime is reached, each tab at a moment of its own', async () => {
    const prefix = testPrefix('lifetime');
    const gateway = await startTestGateway(
      testConfig(prefix, { gateway: { maxLifetimeMs: 1000, lifetimeJitter: 0.5 } }),
    );
    try {
      // Eight tabs opened together: with the lifetime spread over 0.5-1.5 s, all eight closing within
      // 0.1 s of each other has odds below one in a million. Without the jitter they close together, and
      // a deploy's reconnect wave comes back as one.
      const lives = await Promise.all(
        Array.from({ length: 8 }, async (_, i) => {
          const tab = await openTab(gateway.port, await token({ sub: `l${i}`, tid: 't1' }));
          const welcomed = Date.now();
          return { code: await tab.closed, ms: Date.now() - welcomed };
        }),
      );
      expect(lives.map((l) => l.code)).toEqual(Array(8).fill(4101));
      const ms = lives.map((l) => l.ms);
      expect(Math.min(...ms)).toBeGreaterThanOrEqual(450);
      expect(Math.max(...ms) - Math.min(...ms)).toBeGreaterThan(100);
    } finally {
      await removeInstallation(prefix, { gateways: [gateway] });
    }
  });

  // One test, as it must wait out the smallest idle timeout uWebSockets.js takes (8 s; it checks every
  // 4 s): about 8 s.
  it('closes a tab that answers none of its automatic pings after gateway.idleTimeoutSec, and keeps one that does', async () => {
    const prefix = testPrefix('idle');
    const gateway = await startTestGateway(testConfig(prefix, { gateway: { idleTimeoutSec: 8 } }));
    try {
      const url = async (sub: string): Promise<string> =>
        `ws://127.0.0.1:${gateway.port}/ws?token=${await token({ sub, tid: 't1' })}`;
      // Neither sends anything of its own; the silent one does not even answer pings (a peer gone quiet
      // without closing: a sleeping laptop, a dropped NAT entry).
      const silent = new TestTab(new WebSocket(await url('silent'), { autoPong: false }));
      const answering = new TestTab(new WebSocket(await url('answering')));
      const pings = { silent: 0, answering: 0 };
      silent.ws.on('ping', () => (pings.silent += 1));
      answering.ws.on('ping', () => (pings.answering += 1));
      await eventually(() => silent.welcome !== undefined && answering.welcome !== undefined, 'welcomes');
      await eventually(() => silent.closeCode !== undefined, 'the silent tab closed', 20_000);
      // Asked before it was closed: closed for not answering, not merely for being quiet.
      expect(pings.silent).toBeGreaterThan(0);
      // The server pings a tab again only once it answered the previous ping (unanswered, it closes it):
      // a second ping is the answering tab kept past the moment the silent one was closed.
      await eventually(() => pings.answering >= 2, 'a second ping to the answering tab', 10_000);
      expect(answering.closeCode).toBeUndefined();
      expect(await counter(gateway, 'warren_gateway_connections')).toBe(1);
      answering.ws.terminate();
    } finally {
      await removeInstallation(prefix, { gateways: [gateway] });
    }
  });
});
