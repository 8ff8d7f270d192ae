import { MessageChannel, type MessagePort } from 'node:worker_threads';
import { SignJWT } from 'jose';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { BlockingTokenVerifier } from '../../../src/gateway/blocking-verifier.js';
import { isWarrenError } from '../../../src/shared/errors.js';
import { silentLogger } from '../../../src/shared/logger.js';

const SECRET = 'unit-secret-unit-secret-unit-secret';

function sign(claims: Record<string, unknown>, secret = SECRET, expiresIn = 3600): Promise<string> {
  return new SignJWT(claims)
    .setProtectedHeader({ alg: 'HS256' })
    .setExpirationTime(Math.floor(Date.now() / 1000) + expiresIn)
    .sign(new TextEncoder().encode(secret));
}

function refusal(run: () => unknown): string {
  try {
    run();
  } catch (error) {
    if (isWarrenError(error)) return error.code;
    throw error;
  }
  throw new Error('expected the token to be refused');
}

describe('BlockingTokenVerifier', () => {
  let verifier: BlockingTokenVerifier;

  beforeAll(async () => {
    verifier = await BlockingTokenVerifier.start({ secret: SECRET, clockToleranceSec: 0 }, silentLogger());
  });
  afterAll(() => verifier.close());

  it('returns the identity synchronously, one answer per request, in order', async () => {
    const tokens = await Promise.all(['ann', 'bob', 'cid'].map((sub) => sign({ sub, tid: 'acme' })));
    const identities = tokens.map((t) => verifier.verify(t));
    expect(identities.map((i) => i.userId)).toEqual(['ann', 'bob', 'cid']);
    expect(identities[0]?.tenantId).toBe('acme');
    expect(identities[0]?.expiresAt).toBeGreaterThan(Date.now());
  });

  it('refuses missing, forged, expired and identity-less tokens as unauthorized', async () => {
    expect(refusal(() => verifier.verify(undefined))).toBe('WARREN_ERR_UNAUTHORIZED');
    const forged = await sign({ sub: 'ann', tid: 'acme' }, 'another-secret-another-secret-xx');
    expect(refusal(() => verifier.verify(forged))).toBe('WARREN_ERR_UNAUTHORIZED');
    const expired = await sign({ sub: 'ann', tid: 'acme' }, SECRET, -60);
    expect(refusal(() => verifier.verify(expired))).toBe('WARREN_ERR_UNAUTHORIZED');
    const dotted = await sign({ sub: 'ann', tid: 'acme.other' });
    expect(refusal(() => verifier.verify(dotted))).toBe('WARREN_ERR_UNAUTHORIZED');
    // Still answering after refusals.
    expect(verifier.verify(await sign({ sub: 'dan', tid: 'acme' })).userId).toBe('dan');
  });

  it('refuses what is not a compact JWT, or is far too long, without asking its worker', () => {
    const internals = verifier as unknown as { port: MessagePort };
    const asked = vi.spyOn(internals.port, 'postMessage');
    for (const junk of ['', 'garbage', 'a.b', 'a.b.', 'a.b.c.d', 'a b.c.d', `${'a'.repeat(9000)}.b.c`])
      expect(
        refusal(() => verifier.verify(junk)),
        junk.slice(0, 20),
      ).toBe('WARREN_ERR_UNAUTHORIZED');
    expect(asked).not.toHaveBeenCalled();
    asked.mockRestore();
  });

  it('answers at once while its worker is replaced, then verifies again', async () => {
    const good = await sign({ sub: 'eve', tid: 'acme' });
    // The worker dies (a crash, an out-of-memory kill): no upgrade waits for it.
    await (verifier as unknown as { worker: { terminate(): Promise<number> } }).worker.terminate();
    // Refused without waiting out the verify timeout: "unavailable", not "timed out"; and said so, so that
    // the node reports itself not ready meanwhile.
    expect(() => verifier.verify(good)).toThrow('token verification unavailable');
    expect(verifier.available).toBe(false);
    await vi.waitFor(() => expect(verifier.verify(good).userId).toBe('eve'), {
      timeout: 10_000,
      interval: 50,
    });
    expect(verifier.available).toBe(true);
  });

  it('after a worker that stopped answering times out once, answers at once until it is replaced', async () => {
    const good = await sign({ sub: 'fay', tid: 'acme' });
    // A worker that hangs: requests go to a port nobody reads.
    const internals = verifier as unknown as { port: MessagePort };
    internals.port = new MessageChannel().port1;
    expect(() => verifier.verify(good)).toThrow('token verification timed out');
    // The next upgrade, in the same turn, is refused as unavailable instead of waiting out the timeout
    // again on the dying worker.
    expect(() => verifier.verify(good)).toThrow('token verification unavailable');
    await vi.waitFor(() => expect(verifier.verify(good).userId).toBe('fay'), {
      timeout: 10_000,
      interval: 50,
    });
  });

  it('fails to start with a configuration error when no key is configured', async () => {
    const failed = await BlockingTokenVerifier.start({ clockToleranceSec: 0 }, silentLogger()).catch(
      (e: unknown) => e,
    );
    expect(isWarrenError(failed, 'WARREN_ERR_CONFIG')).toBe(true);
  });
});
