/**
 * Counts the AMQP 0-9-1 methods a client sends, read off the bytes of its connections (a TcpProxy tap):
 * what the broker was asked to do, not what the client says it asked. Only method frames are counted;
 * content headers, bodies and heartbeats are skipped.
 */
export class AmqpMethods {
  private readonly counts = new Map<string, number>();
  /** Why a connection's bytes could not be read as AMQP frames, if they could not. */
  private unreadable: string | undefined;

  /** Method names by class and method id (AMQP 0-9-1), for the ones tests ask about. */
  static readonly NAMES: Readonly<Record<string, string>> = {
    '40.10': 'exchange.declare',
    '40.20': 'exchange.delete',
    '50.10': 'queue.declare',
    '50.20': 'queue.bind',
    '50.40': 'queue.delete',
    '50.50': 'queue.unbind',
    '60.20': 'basic.consume',
    '60.40': 'basic.publish',
  };

  /** How many times the clients sent `method` (`queue.bind`, or `50.20`) so far. */
  count(method: string): number {
    // Counts read off bytes that were not understood would be no count at all.
    if (this.unreadable) throw new Error(`AMQP methods not counted: ${this.unreadable}`);
    return this.counts.get(method) ?? 0;
  }

  /** A reader for one connection's client-to-server bytes, to hand to `TcpProxy.tapClient`. */
  reader(): (chunk: Buffer) => void {
    let pending: Buffer = Buffer.alloc(0);
    let headerSeen = false;
    return (chunk) => {
      if (this.unreadable) return;
      pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk]);
      if (!headerSeen) {
        // The protocol header, "AMQP" 0 0 9 1, comes once before any frame.
        if (pending.length < 8) return;
        if (pending.toString('latin1', 0, 4) !== 'AMQP') {
          this.unreadable = 'a connection began without the AMQP protocol header';
          return;
        }
        pending = pending.subarray(8);
        headerSeen = true;
      }
      // A frame: type (1), channel (2), payload size (4), payload, frame end (0xCE).
      while (pending.length >= 7) {
        const size = pending.readUInt32BE(3);
        if (pending.length < 7 + size + 1) return;
        if (pending[7 + size] !== 0xce) {
          this.unreadable = 'a frame without its frame-end octet';
          return;
        }
        if (pending[0] === 1 && size >= 4) {
          const id = `${pending.readUInt16BE(7)}.${pending.readUInt16BE(9)}`;
          for (const key of [id, AmqpMethods.NAMES[id]])
            if (key) this.counts.set(key, (this.counts.get(key) ?? 0) + 1);
        }
        pending = pending.subarray(7 + size + 1);
      }
    };
  }
}
