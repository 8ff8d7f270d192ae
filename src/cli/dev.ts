import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import amqp from 'amqplib';
import { explainConnectFailure, refusedForGood } from '../broker/connection.js';
import { findPackageRoot, loadConfig } from '../config/load.js';
import type { WarrenConfig } from '../config/schema.js';
import { DEMO_DIRECTORY, seedDemoMemberships } from '../gateway/demo/demo-directory.js';
import { demoRoutes } from '../gateway/demo/demo-routes.js';
import { mintDevToken } from '../gateway/dev-tokens.js';
import { startGateway } from '../gateway/main.js';
import { startResolver } from '../resolver/main.js';
import { WarrenPublisher } from '../sdk/publisher/index.js';
import { runSteps } from '../shared/lifecycle.js';
import { errorMessage, withoutCredentials } from '../shared/errors.js';
import { createLogger, writeAfterLogs, type Logger } from '../shared/logger.js';
import { untilSignal } from './signals.js';

/**
 * Says once, in words, that RabbitMQ is not answering: dev is the command tried first, often before a broker
 * runs, and the resolver's start-up then only logs a JSON warning per attempt, for as long as it waits.
 * One attempt of its own, beside the resolver's: the servers' waiting is left as it is.
 */
async function sayIfBrokerDown(config: Readonly<WarrenConfig>): Promise<void> {
  const { url, connectTimeoutMs } = config.rabbitmq;
  try {
    const model = await amqp.connect(url, {
      timeout: connectTimeoutMs,
      clientProperties: { connection_name: 'warren-dev-check' },
    });
    await model.close().catch(() => {});
  } catch (error) {
    // A refused password or permission stops the resolver's start with its own message.
    if (error instanceof Error && refusedForGood(error)) return;
    const why = explainConnectFailure(error, url);
    // The broker answered and said no (a virtual host it will not open, a connection limit): it runs.
    const answered = why !== errorMessage(error);
    console.log(
      answered
        ? `\nRabbitMQ at ${withoutCredentials(url)} refused the connection (${why}).\n` +
            'warren dev keeps trying, and starts once it is let in.\n'
        : `\nRabbitMQ at ${withoutCredentials(url)} is not answering (${why}).\n` +
            'Start it (or set WARREN_RABBITMQ_URL): warren dev keeps trying, and starts once it answers.\n',
    );
  }
}

/** What to try dev with, printed in one piece: a log line written in its middle split it. */
async function banner(
  port: number,
  secret: string | undefined,
  generated: boolean,
  mint: ((tenantId: string, userId: string) => Promise<string>) | undefined,
  logger: Logger,
): Promise<string> {
  const lines = [
    '',
    'Warren dev is running.',
    `  Demo page: http://localhost:${port}/`,
    `  WebSocket: ws://localhost:${port}/ws?token=<jwt>`,
  ];
  const sample = DEMO_DIRECTORY[0];
  const sampleUser = sample?.users[0];
  if (secret && mint && sample && sampleUser) {
    const token = await mint(sample.id, sampleUser.id);
    // A secret of the operator's own is never echoed: it may be shared with a real installation.
    if (generated) lines.push(`  JWT secret (HS256, generated for this run): ${secret}`);
    lines.push(`  Token for user ${sampleUser.id} of tenant ${sample.id} (1 h): ${token}`);
  }
  if (secret && !generated) {
    // The demo's token endpoint signs whatever user it is asked for: with a secret shared with a real
    // installation, its tokens would open sockets there too.
    const warning =
      'warren dev signs demo tokens with the configured jwt.secret: use a secret of its own, never one a real installation accepts (unset it and dev makes one per run)';
    logger.warn(warning);
    lines.push(`  Warning: ${warning}.`);
  }
  lines.push('  Stop with Ctrl-C.', '');
  return lines.join('\n');
}

/**
 * Gateway and resolver in one process, plus the demo page at `/` and its dev-only endpoints (token minting,
 * publishing to demo teams). Without a JWT key configured, a random dev secret is made and printed.
 */
export async function runDev(loaded: Readonly<WarrenConfig>): Promise<number> {
  const { jwt } = loaded;
  const generated = !jwt.secret && !jwt.publicKey && !jwt.jwksFile;
  const secret = generated ? randomBytes(24).toString('base64url') : jwt.secret;
  const config = generated ? loadConfig({ overrides: { jwt: { secret } } }) : loaded;
  const logger = createLogger(config.log.level, { mode: 'dev' });
  const claims = { issuer: config.jwt.issuer, audience: config.jwt.audience };
  const mint = secret
    ? (tenantId: string, userId: string) => mintDevToken(secret, tenantId, userId, claims)
    : undefined;
  void sayIfBrokerDown(config).catch((error: unknown) =>
    logger.debug({ err: errorMessage(error) }, 'broker check failed'),
  );
  const resolver = await startResolver(config, { logger });
  const publisher = await WarrenPublisher.connect({
    rabbitmqUrl: config.rabbitmq.url,
    redisUrl: config.redis.url,
    prefix: config.prefix,
    queueType: config.rabbitmq.queueType,
    claimCheckBytes: config.claimCheck.bytes,
    claimCheckTtlSec: config.claimCheck.ttlSec,
    payloadRedisUrl: config.claimCheck.redisUrl,
    logger: logger.child({ component: 'demo-publisher' }),
  });
  // The demo teams need members before anyone publishes to them; adding a member again changes nothing.
  await seedDemoMemberships(publisher);
  const gateway = await startGateway(config, {
    logger,
    routes: demoRoutes({
      ...(mint ? { mintToken: mint } : {}),
      publish: (event) => publisher.publishEvent(event),
      clientBundlePath: join(findPackageRoot(), 'dist', 'client', 'warren-client.js'),
      logger,
    }),
  });

  // After the start-up logs (their warnings among them), not amid them.
  writeAfterLogs(logger, await banner(gateway.port, secret, generated, mint, logger));

  return untilSignal(
    () =>
      runSteps(
        [
          { name: 'gateway', run: () => gateway.close() },
          { name: 'demo publisher', run: () => publisher.close() },
          { name: 'resolver', run: () => resolver.close() },
        ],
        logger,
      ),
    logger,
  );
}
