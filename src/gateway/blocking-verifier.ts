import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';
import { MessageChannel, Worker, receiveMessageOnPort, type MessagePort } from 'node:worker_threads';
import { ErrorCode, WarrenError } from '../shared/errors.js';
import type { Logger } from '../shared/logger.js';
import { RefusalReason, TokenRefused, type Identity, type JwtSettings } from './auth.js';
import type { TokenAnswer, TokenWorkerData } from './token-worker.js';

// A verify takes well under a millisecond; this bounds how long a stuck worker can hold the event loop.
const VERIFY_TIMEOUT_MS = 250;
// Longer than any token a browser should send in a header (JWKS-signed RS256 tokens are ~1 KiB).
const MAX_TOKEN_LENGTH = 8192;
// Compact JWS: three base64url parts (the last, the signature, never empty for the algorithms allowed);
// padding is tolerated, as jose tolerates it.
const JWS_COMPACT = /^[A-Za-z0-9_-]+={0,2}\.[A-Za-z0-9_-]+={0,2}\.[A-Za-z0-9_-]+={0,2}$/;
const RESPAWN_DELAY_MS = 1000;

// Run from the TypeScript sources (tests, benches), the worker registers tsx before loading its entry:
// Node 20 does not apply `--import` loaders to worker threads.
const TS_SHIM = `const { workerData } = require('node:worker_threads');
import(workerData.tsx).then((api) => { api.register(); return import(workerData.entry); });`;

function tsxApi(): string {
  // The package's `require` entry, with the file name of its `import` one (same folder, .mjs).
  const cjs = createRequire(import.meta.url).resolve('tsx/esm/api');
  return pathToFileURL(cjs.replace(/\.cjs$/, '.mjs')).href;
}

/**
 * Verifies tokens synchronously, so the gateway can upgrade inside uWS's own `upgrade` handler. An upgrade
 * completed later (after an await) must be corked, and in uWS v20 a cork around an asynchronous upgrade
 * can shut the new socket down right after `open` (uNetworking/uWebSockets#1928: 1 fresh connection in 6
 * here), while an uncorked one prints a warning on stderr for every connection. jose only verifies
 * asynchronously, so it runs in a worker thread and the main thread waits for its answer (tens of µs).
 */
export class BlockingTokenVerifier {
  private readonly signal = new Int32Array(new SharedArrayBuffer(4));
  private port!: MessagePort;
  private worker!: Worker;
  private nextId = 0;
  private closing = false;
  /** False while a worker is being replaced: upgrades are answered 503 at once instead of waiting. */
  private ready = false;

  private constructor(
    private readonly settings: JwtSettings,
    private readonly logger: Logger,
  ) {}

  /** Whether tokens can be verified now (false while a worker is being replaced, or cannot be). */
  get available(): boolean {
    return this.ready;
  }

  static async start(settings: JwtSettings, logger: Logger): Promise<BlockingTokenVerifier> {
    const verifier = new BlockingTokenVerifier(settings, logger);
    await verifier.spawn();
    return verifier;
  }

  private async spawn(): Promise<void> {
    const { port1, port2 } = new MessageChannel();
    const data: TokenWorkerData = { settings: this.settings, port: port2, signal: this.signal };
    const fromSources = import.meta.url.endsWith('.ts');
    const entry = new URL(`./token-worker${fromSources ? '.ts' : '.js'}`, import.meta.url);
    const worker = fromSources
      ? new Worker(TS_SHIM, {
          eval: true,
          workerData: { ...data, entry: entry.href, tsx: tsxApi() },
          transferList: [port2],
        })
      : new Worker(entry, { workerData: data, transferList: [port2] });
    const ready = await new Promise<{ ready?: true; failed?: string }>((resolve, reject) => {
      port1.once('message', resolve);
      worker.once('error', reject);
    });
    if (ready.failed) {
      await worker.terminate();
      throw new WarrenError(ErrorCode.Config, ready.failed);
    }
    // From here on answers are taken with receiveMessageOnPort only.
    port1.removeAllListeners('message');
    port1.unref();
    worker.unref();
    worker.on('exit', (code) => {
      this.ready = false;
      if (this.closing) return;
      this.logger.error({ code }, 'token worker exited; starting another');
      this.respawn();
    });
    this.port = port1;
    this.worker = worker;
    this.ready = true;
  }

  private respawn(): void {
    this.spawn().catch((error: unknown) => {
      this.logger.error({ err: String(error) }, 'token worker failed to start; retrying');
      setTimeout(() => this.respawn(), RESPAWN_DELAY_MS).unref();
    });
  }

  /**
   * The identity a token proves. Throws WARREN_ERR_UNAUTHORIZED for a bad token, and a retryable
   * WARREN_ERR_TIMEOUT when the worker does not answer.
   */
  verify(token: string | undefined): Identity {
    // Refused here, without the worker round trip: nothing this cheap to send should cost the thread
    // that carries every delivery a wait.
    if (token === undefined || token.length > MAX_TOKEN_LENGTH || !JWS_COMPACT.test(token)) {
      throw new TokenRefused(
        RefusalReason.Malformed,
        token === undefined ? 'missing token' : 'not a signed JWT',
      );
    }
    if (!this.ready) {
      throw new WarrenError(ErrorCode.Timeout, 'token verification unavailable', { retryable: true });
    }
    const id = (this.nextId += 1);
    Atomics.store(this.signal, 0, 0);
    this.port.postMessage({ id, token });
    const deadline = Date.now() + VERIFY_TIMEOUT_MS;
    for (;;) {
      const received = receiveMessageOnPort(this.port) as { message: TokenAnswer } | undefined;
      if (received?.message.id === id) {
        const answer = received.message;
        if (!answer.ok) throw new TokenRefused(answer.reason, answer.message);
        const { userId, tenantId, expiresAt, issuedAt } = answer;
        return { userId, tenantId, expiresAt, issuedAt };
      }
      // An answer to an earlier request that timed out is dropped.
      if (received) continue;
      const left = deadline - Date.now();
      if (left <= 0) {
        // Replace a worker that stopped answering rather than make every upgrade wait for it.
        this.logger.error('token worker did not answer; replacing it');
        // Unavailable at once, not when its exit event comes: until then every upgrade would wait the
        // full timeout on the worker being terminated, one after the other.
        this.ready = false;
        void this.worker.terminate();
        throw new WarrenError(ErrorCode.Timeout, 'token verification timed out', { retryable: true });
      }
      Atomics.wait(this.signal, 0, 0, left);
      Atomics.store(this.signal, 0, 0);
    }
  }

  async close(): Promise<void> {
    this.closing = true;
    this.port.close();
    await this.worker.terminate();
  }
}
