import type { ConsumeMessage } from 'amqplib';
import { describe, expect, it } from 'vitest';
import { topologyNames } from '../../../src/broker/topology.js';
import { originOf, parseMessage } from '../../../src/resolver/message-parser.js';

const names = topologyNames('warren');
const LIMIT = 1024 * 1024;

function message(
  exchange: string,
  routingKey: string,
  body: unknown,
  headers: Record<string, unknown> = {},
): ConsumeMessage {
  return {
    content: Buffer.from(JSON.stringify(body)),
    fields: { exchange, routingKey, deliveryTag: 1, redelivered: false, consumerTag: 'c' },
    properties: { contentType: 'application/json', headers },
  } as unknown as ConsumeMessage;
}

const event = { id: 'e1', tenantId: 't1', type: 'note.created', audience: { users: ['ann'] } };
const membership = { op: 'add', tenantId: 't1', userId: 'ann', teamId: 'ward' };
// What a copy back from the retry queue says about where it was first published.
const from = (exchange: string, routingKey: string) => ({
  'x-warren-original-exchange': exchange,
  'x-warren-original-routing-key': routingKey,
});

describe('parseMessage and originOf: events back from the retry queue', () => {
  it('takes a returned event’s origin from its copy, and checks its routing key against its tenant again', () => {
    const back = message('', names.resolver, event, from(names.events, 't1.note.created'));
    expect(originOf(back, names)).toEqual({ exchange: names.events, routingKey: 't1.note.created' });
    expect(parseMessage(back, names, LIMIT)).toMatchObject({ kind: 'event', event: { id: 'e1' } });

    const otherTenant = message('', names.resolver, event, from(names.events, 't2.note.created'));
    expect(parseMessage(otherTenant, names, LIMIT)).toMatchObject({
      kind: 'invalid',
      code: 'routing_mismatch',
    });
  });

  it('trusts origin headers only on a message addressed to the resolver queue by the default exchange', () => {
    // Published to the events exchange with forged headers: its own routing key is what counts.
    const forged = message(names.events, 't2.note.created', event, from(names.events, 't1.note.created'));
    expect(originOf(forged, names)).toEqual({ exchange: names.events, routingKey: 't2.note.created' });
    expect(parseMessage(forged, names, LIMIT)).toMatchObject({ kind: 'invalid', code: 'routing_mismatch' });
    // By the default exchange to another queue's name (a CC of it, say): not a returned copy either.
    const elsewhere = message('', 'warren.dead', event, from(names.events, 't1.note.created'));
    expect(originOf(elsewhere, names)).toEqual({ exchange: '', routingKey: 'warren.dead' });
  });

  it('refuses an event sent to the resolver queue by name, past the events exchange', () => {
    for (const headers of [{}, from('amq.topic', 't1.note.created')])
      expect(parseMessage(message('', names.resolver, event, headers), names, LIMIT)).toMatchObject({
        kind: 'invalid',
        code: 'routing_mismatch',
        reason: expect.stringContaining('events are published to warren.events') as unknown,
      });
  });

  it('never reads a membership change off a header: only the membership exchange itself gives one', () => {
    expect(parseMessage(message(names.membership, 't1', membership), names, LIMIT)).toMatchObject({
      kind: 'membership',
    });
    const back = message('', names.resolver, membership, from(names.membership, 't1'));
    expect(parseMessage(back, names, LIMIT)).toMatchObject({ kind: 'invalid', code: 'invalid_event' });
  });

  it('takes a membership change only under its own tenant’s routing key', () => {
    for (const key of ['t2', 't1.x', '#', ''])
      expect(parseMessage(message(names.membership, key, membership), names, LIMIT)).toMatchObject({
        kind: 'invalid',
        code: 'routing_mismatch',
      });
  });
});

describe('parseMessage: size', () => {
  it('dead-letters a body over the limit unread, and takes one at the limit', () => {
    const padded = (bytes: number) => {
      const body = { ...event, data: { pad: '' } };
      body.data.pad = 'x'.repeat(bytes - Buffer.byteLength(JSON.stringify(body)));
      return message(names.events, 't1.note.created', body);
    };
    expect(padded(4096).content.length).toBe(4096);
    expect(parseMessage(padded(4096), names, 4096)).toMatchObject({ kind: 'event' });
    expect(parseMessage(padded(4097), names, 4096)).toEqual({
      kind: 'invalid',
      code: 'too_large',
      reason:
        'body of 4097 bytes is over resolver.maxMessageBytes (4096); publish large data through the claim check',
    });
    // Whatever it is: not even its JSON is looked at.
    const junk = { ...padded(4097), content: Buffer.alloc(4097, 0xff) } as ConsumeMessage;
    expect(parseMessage(junk, names, 4096)).toMatchObject({ code: 'too_large' });
  });
});
