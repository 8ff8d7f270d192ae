import { afterEach, beforeEach, describe, expect, inject, it } from 'vitest';
import { BrokerConnection } from '../../src/broker/connection.js';
import { Publisher } from '../../src/broker/publisher.js';
import { fulfilsWithin } from '../../src/shared/lifecycle.js';
import { silentLogger } from '../../src/shared/logger.js';
import { capturingLogger, eventually, testBrokerConnection, testPrefix } from '../support/harness.js';
import { TcpProxy } from '../support/tcp-proxy.js';

describe('broker connection', () => {
  let proxy: TcpProxy;
  let broker: BrokerConnection;

  beforeEach(async () => {
    const target = new URL(inject('rabbitmqUrl'));
    proxy = await TcpProxy.toUrl(target);
    broker = testBrokerConnection(testPrefix('connection'), proxy.url(target));
  });
  afterEach(async () => {
    proxy.flow();
    await broker.close();
    await proxy.close();
  });

  it('drops the connection of a broker that does not answer the close, so that nothing waits on it', async () => {
    const publisher = new Publisher(broker, silentLogger());
    await publisher.start();
    await broker.start();
    proxy.stall();
    // Unconfirmed (the broker is silent), on a publisher left open: only the connection going ends it.
    const publishing = publisher.publish('', testPrefix('connection-q'), Buffer.from('x'));
    publishing.catch(() => {});
    await broker.close();
    // Settled once amqplib sees the socket go, not when its heartbeat gives up (20 s on at 10 s beats).
    expect(
      await fulfilsWithin(
        publishing.catch(() => {}),
        2000,
      ),
    ).toBe(true);
    await expect(publishing).rejects.toMatchObject({ retryable: true });
  });

  it('makes a second close wait for the first, on a broker that does not answer it', async () => {
    await broker.start();
    proxy.stall();
    const settled: string[] = [];
    // The first waits out its bound for the broker's answer, then drops the connection: a second caller
    // told "closed" before that would go on while the connection is still open.
    const first = broker.close().then(() => settled.push('first'));
    const second = broker.close().then(() => settled.push('second'));
    await Promise.all([first, second]);
    expect(settled).toEqual(['first', 'second']);
  });

  it('lets many calls wait for the broker without a listener warning, and settles them all', async () => {
    const warnings: string[] = [];
    const onWarning = (warning: Error): void => void warnings.push(`${warning.name}: ${warning.message}`);
    process.on('warning', onWarning);
    try {
      await broker.start();
      proxy.refuse();
      proxy.cut();
      await eventually(() => !broker.connected, 'the connection seen lost');
      const waiting = Array.from({ length: 20 }, () => broker.waitConnected(20_000));
      proxy.accept();
      const models = await Promise.all(waiting);
      expect(new Set(models).size).toBe(1);
      // Again, told of the close instead of the broker's return.
      proxy.refuse();
      proxy.cut();
      await eventually(() => !broker.connected, 'the connection seen lost again');
      const closing = Array.from({ length: 20 }, () => broker.waitConnected(20_000));
      await broker.close();
      const outcomes = await Promise.allSettled(closing);
      expect(
        outcomes.map((o) => (o.status === 'rejected' ? (o.reason as { code?: string }).code : o.status)),
      ).toEqual(Array(20).fill('WARREN_ERR_CLOSED'));
      // Process warnings are emitted on a later tick.
      await new Promise((resolve) => setImmediate(resolve));
      expect(warnings.filter((w) => w.startsWith('MaxListenersExceededWarning'))).toEqual([]);
    } finally {
      process.off('warning', onWarning);
    }
  });
});

describe('broker reconnects', () => {
  it('wait a full-jitter delay under min(cap, base·2^(n−1)) before each attempt, one attempt per delay', async () => {
    const target = new URL(inject('rabbitmqUrl'));
    const proxy = await TcpProxy.toUrl(target);
    const { logger, lines } = capturingLogger('debug');
    const [baseMs, capMs] = [20, 80];
    const broker = new BrokerConnection(
      {
        url: proxy.url(target),
        frameMax: 131_072,
        heartbeatSec: 10,
        reconnectBaseMs: baseMs,
        reconnectCapMs: capMs,
        connectTimeoutMs: 10_000,
        connectionName: `warren-test-${testPrefix('backoff')}`,
      },
      logger,
    );
    try {
      await broker.start();
      const scheduled = (): { attempt: number; delay: number }[] =>
        lines
          .filter((l) => l['msg'] === 'broker reconnect scheduled')
          .map((l) => ({ attempt: Number(l['attempt']), delay: Number(l['delay']) }));
      proxy.refuse();
      const lostAt = performance.now();
      proxy.cut();
      // Twelve attempts under an 80 ms cap take about half a second; uncapped, the twelfth alone would
      // wait up to 41 s.
      await eventually(() => scheduled().length >= 12, 'twelve reconnects scheduled', 10_000);
      proxy.accept();
      await eventually(() => broker.connected, 'reconnected');
      const backAt = performance.now();

      const delays = scheduled();
      expect(delays.map((d) => d.attempt)).toEqual(delays.map((_, i) => i + 1));
      for (const { attempt, delay } of delays) {
        expect(Number.isInteger(delay)).toBe(true);
        expect(delay).toBeGreaterThanOrEqual(0);
        expect(delay).toBeLessThan(Math.min(capMs, baseMs * 2 ** (attempt - 1)));
      }
      // Drawn over the cap from the third attempt on, not over the base, and spread (each of these fails
      // by chance once in a million runs or less).
      const capped = delays.filter((d) => d.attempt >= 3).map((d) => d.delay);
      expect(capped.some((d) => d >= baseMs)).toBe(true);
      expect(new Set(capped).size).toBeGreaterThan(1);
      // Every delay ended in one attempt: all refused but the last, which connected.
      expect(proxy.refused).toBe(delays.length - 1);
      expect(proxy.connections).toBe(2);
      // And each was waited out (a timer may fire up to a millisecond early on Node's clock).
      const waited = delays.reduce((sum, d) => sum + d.delay, 0);
      expect(backAt - lostAt).toBeGreaterThanOrEqual(waited - delays.length);
    } finally {
      await broker.close();
      await proxy.close();
    }
  });
});
