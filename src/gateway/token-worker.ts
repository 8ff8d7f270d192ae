import { parentPort, workerData, type MessagePort } from 'node:worker_threads';
import { errorMessage } from '../shared/errors.js';
import { RefusalReason, TokenRefused, TokenVerifier, type JwtSettings } from './auth.js';

/**
 * Worker thread behind BlockingTokenVerifier: verifies tokens with jose (asynchronous) while the gateway's
 * main thread waits on `signal`. One request at a time; each answer carries the request's id.
 */

export interface TokenWorkerData {
  settings: JwtSettings;
  port: MessagePort;
  signal: Int32Array;
}

export interface TokenRequest {
  id: number;
  token: string | undefined;
}

export type TokenAnswer =
  | {
      id: number;
      ok: true;
      userId: string;
      tenantId: string;
      expiresAt: number;
      issuedAt?: number | undefined;
    }
  | { id: number; ok: false; message: string; reason: RefusalReason };

const { settings, port, signal } = workerData as TokenWorkerData;

function answer(message: TokenAnswer | { ready: true } | { failed: string }): void {
  port.postMessage(message);
  Atomics.store(signal, 0, 1);
  Atomics.notify(signal, 0);
}

TokenVerifier.create(settings).then(
  (verifier) => {
    port.on('message', ({ id, token }: TokenRequest) => {
      verifier.verify(token).then(
        (identity) => answer({ id, ok: true, ...identity }),
        (error: unknown) =>
          answer({
            id,
            ok: false,
            message: errorMessage(error),
            reason: error instanceof TokenRefused ? error.reason : RefusalReason.Malformed,
          }),
      );
    });
    answer({ ready: true });
  },
  (error: unknown) => answer({ failed: errorMessage(error) }),
);
parentPort?.unref();
