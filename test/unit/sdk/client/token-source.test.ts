import { describe, expect, it, vi } from 'vitest';
import { readClaims, TokenSource } from '../../../../src/sdk/client/token-source.js';

function jwt(payload: Record<string, unknown>): string {
  const part = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');
  return `${part({ alg: 'HS256' })}.${part(payload)}.signature`;
}

describe('readClaims', () => {
  it('reads sub, tid and exp of a JWT, including base64url characters and unicode', () => {
    const claims = readClaims(jwt({ sub: 'ü-user?>>', tid: 'acme', exp: 1_700_000_000, other: 1 }));
    expect(claims).toEqual({ sub: 'ü-user?>>', tid: 'acme', exp: 1_700_000_000 });
  });

  it('gives undefined for opaque or broken tokens', () => {
    expect(readClaims('opaque-token')).toBeUndefined();
    expect(readClaims('a.%%%.c')).toBeUndefined();
    expect(readClaims(`x.${Buffer.from('"str"').toString('base64url')}.y`)).toBeUndefined();
  });
});

describe('TokenSource', () => {
  it('reuses the token until asked to refresh', async () => {
    let calls = 0;
    const source = new TokenSource(() => jwt({ n: ++calls }));
    const first = await source.get(false);
    expect(await source.get(false)).toBe(first);
    expect(calls).toBe(1);
    expect(await source.get(true)).not.toBe(first);
    expect(calls).toBe(2);
  });

  it('fetches again when the cached token’s exp has passed', async () => {
    let now = 1_000_000;
    let calls = 0;
    const source = new TokenSource(
      () => jwt({ exp: Math.floor(now / 1000) + 60, n: ++calls }),
      () => now,
    );
    await source.get(false);
    now += 30_000;
    await source.get(false);
    expect(calls).toBe(1);
    now += 31_000;
    await source.get(false);
    expect(calls).toBe(2);
  });

  it('gives up a pending getToken when its signal aborts, and clears its timer', async () => {
    vi.useFakeTimers();
    try {
      const source = new TokenSource(() => new Promise<string>(() => {}));
      const closing = new AbortController();
      const token = source.getWithin(false, 20_000, closing.signal);
      expect(vi.getTimerCount()).toBe(1);
      closing.abort();
      await expect(token).rejects.toThrow('closed while getToken was pending');
      expect(vi.getTimerCount()).toBe(0);
      // Already aborted: given up at once.
      await expect(source.getWithin(false, 0, closing.signal)).rejects.toThrow('closed');
    } finally {
      vi.useRealTimers();
    }
  });

  it('trims a token read as text, and refuses one no WebSocket can carry without caching it', async () => {
    const given = [' a.b.c\n', 'a.b c', 'a."b".c', 'ä.b.c', 'a.b.c'];
    const source = new TokenSource(() => given.shift() ?? '');
    expect(await source.get(false)).toBe('a.b.c');
    for (let i = 0; i < 3; i += 1)
      await expect(source.get(true)).rejects.toMatchObject({
        code: 'token_failed',
        message: expect.stringContaining('characters no JWT has') as unknown,
      });
    // Nothing refused was cached: asked again, the application's next token is used.
    expect(await source.get(true)).toBe('a.b.c');
    expect(given).toEqual([]);
  });

  it('rejects an empty token', async () => {
    await expect(new TokenSource(() => '').get(false)).rejects.toThrow(TypeError);
    await expect(new TokenSource(() => ' \n').get(false)).rejects.toThrow(TypeError);
  });
});
