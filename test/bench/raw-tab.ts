import { randomBytes } from 'node:crypto';
import { connect, type Socket } from 'node:net';

/**
 * A WebSocket client cut down to what the claim-check bench's simulated browsers need: it keeps the first
 * bytes of each message (enough for its event id) and only counts the rest, instead of assembling every
 * megabyte into a buffer as a full client library does. The bench's tabs read 100 MiB per large event on
 * the same two cores as the gateways; a browser does that on its own machine. Text and binary messages,
 * fragmentation, and pings (answered) are handled; extensions are never negotiated.
 */

const HEAD_BYTES = 300;
const READ_BUFFER = Buffer.alloc(256 * 1024);

export interface RawTabHandlers {
  /** A whole message: its first bytes, and its length. */
  message(head: Buffer, length: number): void;
  close(code: number): void;
}

export class RawTab {
  private pending: Buffer = Buffer.alloc(0);
  private upgraded = false;
  private closed = false;
  // The frame being read.
  private remaining = 0;
  private inFrame = false;
  private frameOpcode = 0;
  private frameFin = false;
  private control: Buffer[] = [];
  // The message being read (a data frame and its continuations).
  private head: Buffer[] = [];
  private headLength = 0;
  private length = 0;

  private constructor(
    private readonly socket: Socket,
    private readonly handlers: RawTabHandlers,
    private readonly upgradedNow: () => void,
  ) {
    socket.setNoDelay(true);
    socket.on('close', () => this.end(1006));
    socket.on('error', () => this.end(1006));
  }

  /** Opens `ws://127.0.0.1:<port><path>`; resolves once the server has switched protocols. */
  static open(port: number, path: string, handlers: RawTabHandlers): Promise<RawTab> {
    return new Promise((resolve, reject) => {
      let tab: RawTab | undefined = undefined;
      // Read into one buffer of the process's, reused for every read of every tab: megabytes a second
      // are only counted, so none of them needs a buffer of its own (what is kept is copied out).
      const socket = connect({
        host: '127.0.0.1',
        port,
        onread: {
          buffer: READ_BUFFER,
          callback: (bytes: number, buffer: Uint8Array) => {
            tab?.data(Buffer.from(buffer.buffer, buffer.byteOffset, bytes));
            return true;
          },
        },
      });
      tab = new RawTab(
        socket,
        { ...handlers, close: (code) => (tab ? handlers.close(code) : undefined) },
        () => resolve(tab as RawTab),
      );
      socket.once('error', reject);
      socket.once('connect', () => {
        const key = randomBytes(16).toString('base64');
        socket.write(
          `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
            `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
        );
      });
      socket.once('close', () => reject(new Error('closed before the upgrade')));
    });
  }

  terminate(): void {
    this.closed = true;
    this.socket.destroy();
  }

  private end(code: number): void {
    if (this.closed) return;
    this.closed = true;
    this.socket.destroy();
    this.handlers.close(code);
  }

  /** Bytes read from the socket, valid only during this call (the read buffer is shared). */
  data(chunk: Buffer): void {
    let data: Buffer = this.pending.length > 0 ? Buffer.concat([this.pending, chunk]) : chunk;
    this.pending = Buffer.alloc(0);
    if (!this.upgraded) {
      const end = data.indexOf('\r\n\r\n');
      if (end < 0) {
        this.pending = Buffer.from(data);
        return;
      }
      if (!data.toString('latin1', 0, 12).startsWith('HTTP/1.1 101')) {
        this.end(Number(data.toString('latin1', 9, 12)) || 1006);
        return;
      }
      this.upgraded = true;
      this.upgradedNow();
      data = data.subarray(end + 4);
    }
    let at = 0;
    while (at < data.length && !this.closed) {
      if (!this.inFrame) {
        const header = this.header(data, at);
        if (header === undefined) {
          this.pending = Buffer.from(data.subarray(at));
          return;
        }
        at = header;
        if (this.remaining === 0) this.frameDone();
        continue;
      }
      const take = Math.min(this.remaining, data.length - at);
      const bytes = data.subarray(at, at + take);
      if (this.frameOpcode >= 8) this.control.push(Buffer.from(bytes));
      else {
        if (this.headLength < HEAD_BYTES) {
          const kept = bytes.subarray(0, HEAD_BYTES - this.headLength);
          this.head.push(Buffer.from(kept));
          this.headLength += kept.length;
        }
        this.length += take;
      }
      this.remaining -= take;
      at += take;
      if (this.remaining === 0) this.frameDone();
    }
  }

  /** Reads a frame header at `at`; returns where its payload starts, or undefined if it is incomplete. */
  private header(data: Buffer, at: number): number | undefined {
    if (data.length - at < 2) return undefined;
    const b0 = data[at] as number;
    const b1 = data[at + 1] as number;
    let length = b1 & 0x7f;
    let start = at + 2;
    if (length === 126) {
      if (data.length - at < 4) return undefined;
      length = data.readUInt16BE(at + 2);
      start = at + 4;
    } else if (length === 127) {
      if (data.length - at < 10) return undefined;
      length = Number(data.readBigUInt64BE(at + 2));
      start = at + 10;
    }
    this.frameFin = (b0 & 0x80) !== 0;
    this.frameOpcode = b0 & 0x0f;
    this.remaining = length;
    this.inFrame = true;
    if (this.frameOpcode >= 8) this.control = [];
    else if (this.frameOpcode !== 0) {
      this.head = [];
      this.headLength = 0;
      this.length = 0;
    }
    return start;
  }

  private frameDone(): void {
    this.inFrame = false;
    if (this.frameOpcode === 0x9) this.pong(Buffer.concat(this.control));
    else if (this.frameOpcode === 0x8) {
      const payload = Buffer.concat(this.control);
      this.end(payload.length >= 2 ? payload.readUInt16BE(0) : 1005);
    } else if (this.frameOpcode < 8 && this.frameFin) {
      this.handlers.message(Buffer.concat(this.head), this.length);
    }
  }

  /** Client frames are masked (RFC 6455 §5.3). */
  private pong(payload: Buffer): void {
    const mask = randomBytes(4);
    const masked = Buffer.from(payload);
    for (let i = 0; i < masked.length; i += 1) masked[i] = (masked[i] as number) ^ (mask[i % 4] as number);
    this.socket.write(Buffer.concat([Buffer.from([0x8a, 0x80 | masked.length]), mask, masked]));
  }
}
