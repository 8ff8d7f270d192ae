import type { WarrenConfig } from '../config/schema.js';
import { startResolver } from '../resolver/main.js';
import { createLogger } from '../shared/logger.js';
import { untilSignal } from './signals.js';

export async function runResolver(config: Readonly<WarrenConfig>): Promise<number> {
  const logger = createLogger(config.log.level);
  const resolver = await startResolver(config, { logger });
  return untilSignal(() => resolver.close(), logger);
}
