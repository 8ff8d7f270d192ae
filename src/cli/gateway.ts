import type { WarrenConfig } from '../config/schema.js';
import { startGateway } from '../gateway/main.js';
import { createLogger } from '../shared/logger.js';
import { untilSignal } from './signals.js';

export async function runGateway(config: Readonly<WarrenConfig>): Promise<number> {
  const logger = createLogger(config.log.level);
  const gateway = await startGateway(config, { logger });
  return untilSignal(() => gateway.close(), logger);
}
