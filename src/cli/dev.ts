import { randomBytes } from 'node:crypto';
import { loadConfig } from '../config/load.js';
import type { WarrenConfig } from '../config/schema.js';
import { mintDevToken } from '../gateway/dev-tokens.js';
import { startGateway } from '../gateway/main.js';
import { startResolver } from '../resolver/main.js';
import { runSteps } from '../shared/lifecycle.js';
import { createLogger } from '../shared/logger.js';
import { untilSignal } from './signals.js';

/** Gateway and resolver in one process. Without a JWT key configured, a random dev secret is made and printed. */
export async function runDev(loaded: Readonly<WarrenConfig>): Promise<number> {
  const { jwt } = loaded;
  const generated = !jwt.secret && !jwt.publicKey && !jwt.jwksFile;
  const secret = generated ? randomBytes(24).toString('base64url') : jwt.secret;
  const config = generated ? loadConfig({ overrides: { jwt: { secret } } }) : loaded;
  const logger = createLogger(config.log.level, { mode: 'dev' });
  const resolver = await startResolver(config, { logger });
  const gateway = await startGateway(config, { logger });

  const url = `ws://localhost:${gateway.port}/ws`;
  console.log(`\nWarren dev is running.\n  WebSocket: ${url}?token=<jwt>`);
  if (secret) {
    const sample = await mintDevToken(secret, 'demo', 'alice');
    console.log(`  JWT secret (HS256${generated ? ', generated for this run' : ''}): ${secret}`);
    console.log(`  Token for user alice of tenant demo (1 h): ${sample}`);
  }
  console.log('  Stop with Ctrl-C.\n');

  return untilSignal(
    () =>
      runSteps(
        [
          { name: 'gateway', run: () => gateway.close() },
          { name: 'resolver', run: () => resolver.close() },
        ],
        logger,
      ),
    logger,
  );
}
