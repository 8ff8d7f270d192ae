import { describe, expect, it } from 'vitest';
import { AmqpMethods } from '../../support/amqp-methods.js';

/** A frame as AMQP 0-9-1 lays it out: type, channel, size, payload, frame end. */
function frame(type: number, payload: Buffer): Buffer {
  const head = Buffer.alloc(7);
  head.writeUInt8(type, 0);
  head.writeUInt16BE(1, 1);
  head.writeUInt32BE(payload.length, 3);
  return Buffer.concat([head, payload, Buffer.from([0xce])]);
}

function method(classId: number, methodId: number): Buffer {
  const payload = Buffer.alloc(8);
  payload.writeUInt16BE(classId, 0);
  payload.writeUInt16BE(methodId, 2);
  return frame(1, payload);
}

describe('AmqpMethods (test support: counts what a client asked the broker)', () => {
  it('counts method frames across chunk boundaries, by name and by id, and skips other frames', () => {
    const sent = new AmqpMethods();
    const read = sent.reader();
    const bytes = Buffer.concat([
      Buffer.from('AMQP\x00\x00\x09\x01', 'latin1'),
      method(50, 20),
      frame(2, Buffer.alloc(14)), // a content header
      frame(8, Buffer.alloc(0)), // a heartbeat
      method(50, 20),
      method(50, 50),
    ]);
    // One byte at a time: every frame arrives split.
    for (let i = 0; i < bytes.length; i += 1) read(bytes.subarray(i, i + 1));
    expect(sent.count('queue.bind')).toBe(2);
    expect(sent.count('50.20')).toBe(2);
    expect(sent.count('queue.unbind')).toBe(1);
    expect(sent.count('basic.publish')).toBe(0);
  });

  it('refuses to count bytes it could not read as AMQP', () => {
    const sent = new AmqpMethods();
    sent.reader()(Buffer.from('GET / HTTP/1.1\r\n'));
    expect(() => sent.count('queue.bind')).toThrow(/protocol header/);
    const other = new AmqpMethods();
    const read = other.reader();
    read(Buffer.from('AMQP\x00\x00\x09\x01', 'latin1'));
    read(Buffer.concat([method(50, 20).subarray(0, 15), Buffer.from([0x00])]));
    expect(() => other.count('queue.bind')).toThrow(/frame-end/);
  });
});
