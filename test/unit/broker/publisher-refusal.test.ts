import { describe, expect, it } from 'vitest';
import { refuses } from '../../../src/broker/publisher.js';

// Which publishes a channel's close reason refuses for good (retryable: false), as RabbitMQ words them.

const closed = (code: number, message: string): Error => Object.assign(new Error(message), { code });
const topic = (key: string) =>
  closed(
    403,
    `Channel closed by server: 403 (ACCESS-REFUSED) with message "ACCESS_REFUSED - write access to topic '${key}' in exchange 'warren.events' in vhost '/' refused for user 'svc-acme'"`,
  );

describe('refuses', () => {
  it('takes a topic refusal as this publish’s only when it names this routing key', () => {
    expect(refuses(topic('globex.note.created'), 'warren.events', 'globex.note.created')).toBe(true);
    // A publish beside it on the same channel: not refused itself.
    expect(refuses(topic('globex.note.created'), 'warren.events', 'acme.note.created')).toBe(false);
  });

  it('takes a refusal of the whole exchange as every publish’s to it', () => {
    const exchange = closed(
      403,
      `ACCESS_REFUSED - write access to exchange 'warren.events' in vhost '/' refused for user 'svc'`,
    );
    expect(refuses(exchange, 'warren.events', 'acme.note.created')).toBe(true);
    expect(refuses(exchange, 'warren.membership', 'acme')).toBe(false);
  });

  it('matches a routing key the broker cut short', () => {
    const key = `${'t'.repeat(120)}.${'x'.repeat(100)}`;
    // As amqplib words it: the broker's text, cut to 252 bytes and "...", in quotes.
    const cut = closed(
      403,
      `Channel closed by server: 403 (ACCESS-REFUSED) with message "ACCESS_REFUSED - write access to topic '${key.slice(0, 180)}..."`,
    );
    expect(refuses(cut, 'warren.events', key)).toBe(true);
    expect(refuses(cut, 'warren.events', `other.${key}`)).toBe(false);
  });

  it('refuses nothing for good on another reason', () => {
    const gone = closed(404, `NOT_FOUND - no exchange 'warren.events' in vhost '/'`);
    expect(refuses(gone, 'warren.events', 'acme.note.created')).toBe(false);
  });
});
