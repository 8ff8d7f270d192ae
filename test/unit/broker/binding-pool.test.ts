import { EventEmitter } from 'node:events';
import type { ChannelModel } from 'amqplib';
import { describe, expect, it } from 'vitest';
import { BindingPool } from '../../../src/broker/binding-pool.js';
import type { BrokerConnection } from '../../../src/broker/connection.js';
import { silentLogger } from '../../../src/shared/logger.js';

// The pool's own scheduling, with amqplib's channels in the test's hand: binds against a real broker are
// exercised by the gateway's integration tests; here a bind waits for as long as the test wants.

class FakeChannel extends EventEmitter {
  static opened = 0;
  readonly id = FakeChannel.opened++;
  readonly binds: string[] = [];
  private readonly waiting: (() => void)[] = [];

  bindQueue(_queue: string, _exchange: string, key: string): Promise<void> {
    this.binds.push(key);
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  finish(): void {
    for (const resolve of this.waiting.splice(0)) resolve();
  }

  close(): Promise<void> {
    this.emit('close');
    return Promise.resolve();
  }
}

async function pool(size: number): Promise<{ pool: BindingPool; channels: FakeChannel[] }> {
  const channels: FakeChannel[] = [];
  const model = Object.assign(new EventEmitter(), {
    createChannel: async () => {
      const channel = new FakeChannel();
      channels.push(channel);
      return channel;
    },
  }) as unknown as ChannelModel;
  const broker = Object.assign(new EventEmitter(), {
    onConnect: async (hook: (m: ChannelModel) => Promise<void>) => hook(model),
    waitConnected: async () => model,
  }) as unknown as BrokerConnection;
  const p = new BindingPool(broker, size, { onBind: () => {}, onUnbind: () => {} }, silentLogger());
  await p.start();
  return { pool: p, channels };
}

describe('BindingPool', () => {
  it('spreads binds started together over its channels', async () => {
    const { pool: p, channels } = await pool(4);
    const binds = Array.from({ length: 8 }, (_, i) => p.bind('q', 'x', `u.t.${i}`));
    await new Promise((r) => setImmediate(r));
    expect(channels.map((c) => c.binds.length)).toEqual([2, 2, 2, 2]);
    for (const channel of channels) channel.finish();
    await Promise.all(binds);
  });

  it('reopens a closed channel once for every operation that finds it closed', async () => {
    const { pool: p, channels } = await pool(1);
    await channels[0]?.close();
    const binds = Array.from({ length: 5 }, (_, i) => p.bind('q', 'x', `u.t.${i}`));
    await new Promise((r) => setImmediate(r));
    expect(channels).toHaveLength(2);
    expect(channels[1]?.binds).toHaveLength(5);
    channels[1]?.finish();
    await Promise.all(binds);
  });

  it('waits for the connection while its channels open, and lets go of one whose setup failed', async () => {
    const channels: FakeChannel[] = [];
    const opening: (() => void)[] = [];
    const modelOf = () =>
      Object.assign(new EventEmitter(), {
        // Each channel opens when the test says so.
        createChannel: () =>
          new Promise<FakeChannel>((resolve) =>
            opening.push(() => {
              const channel = new FakeChannel();
              channels.push(channel);
              resolve(channel);
            }),
          ),
      }) as unknown as ChannelModel;
    let hook: (m: ChannelModel) => Promise<void> = async () => {};
    let connected: (m: ChannelModel) => void = () => {};
    const broker = Object.assign(new EventEmitter(), {
      onConnect: async (h: (m: ChannelModel) => Promise<void>) => {
        hook = h;
      },
      waitConnected: () => new Promise<ChannelModel>((resolve) => (connected = resolve)),
    }) as unknown as BrokerConnection;
    const p = new BindingPool(broker, 1, { onBind: () => {}, onUnbind: () => {} }, silentLogger());
    await p.start();

    // A reconnect's setup is opening the pool's channel: a bind now waits for the connection to be up.
    const first = modelOf();
    const setup = hook(first);
    const bind = p.bind('q', 'x', 'u.t.a');
    for (const open of opening.splice(0)) open();
    await setup;
    connected(first);
    await new Promise((r) => setImmediate(r));
    expect(channels[0]?.binds).toEqual(['u.t.a']);
    channels[0]?.finish();
    await bind;

    // A later setup hook failed: the connection is closed without a 'disconnected'. The next bind waits
    // for the one after it rather than using the dead connection's channel.
    first.emit('close');
    const next = p.bind('q', 'x', 'u.t.b');
    const second = modelOf();
    const again = hook(second);
    for (const open of opening.splice(0)) open();
    await again;
    connected(second);
    await new Promise((r) => setImmediate(r));
    expect(channels[0]?.binds).toEqual(['u.t.a']);
    expect(channels[1]?.binds).toEqual(['u.t.b']);
    channels[1]?.finish();
    await next;
  });

  it('counts the binds and unbinds it sends the broker, not those that failed before reaching it', async () => {
    let connected = true;
    const model = Object.assign(new EventEmitter(), {
      createChannel: async () => Object.assign(new FakeChannel(), { unbindQueue: async () => {} }),
    }) as unknown as ChannelModel;
    const broker = Object.assign(new EventEmitter(), {
      onConnect: async (hook: (m: ChannelModel) => Promise<void>) => hook(model),
      waitConnected: async () => {
        if (connected) return model;
        throw new Error('broker not connected within 10000 ms');
      },
    }) as unknown as BrokerConnection;
    const counted = { binds: 0, unbinds: 0 };
    const p = new BindingPool(
      broker,
      1,
      { onBind: () => (counted.binds += 1), onUnbind: () => (counted.unbinds += 1) },
      silentLogger(),
    );
    await p.start();
    await p.unbind('q', 'x', 'u.t.a');
    expect(counted).toEqual({ binds: 0, unbinds: 1 });

    // The broker away: an unbind fails at once and a bind once its wait is over; neither was sent.
    connected = false;
    broker.emit('disconnected', new Error('gone'));
    await expect(p.unbind('q', 'x', 'u.t.a')).rejects.toThrow();
    await expect(p.bind('q', 'x', 'u.t.b')).rejects.toThrow();
    expect(counted).toEqual({ binds: 0, unbinds: 1 });
  });
});
