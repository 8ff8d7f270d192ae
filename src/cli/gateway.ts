import type { WarrenConfig } from '../config/schema.js';
import { startGateway } from '../gateway/main.js';
import { createLogger } from '../shared/logger.js';
import { untilSignal } from './signals.js';

export async function runGateway(config: Readonly<WarrenConfig>): Promise<number> {
  const logger = createLogger(config.log.level);
  let stoppedOnItsOwn: () => void = () => {};
  const fatal = new Promise<void>((resolve) => (stoppedOnItsOwn = resolve));
  const gateway = await startGateway(config, { logger, onFatal: () => stoppedOnItsOwn() });
  // Another process took its gateway.id (it has closed its tabs): exit, so that the orchestrator sees it.
  const onItsOwn = fatal.then(async () => {
    await gateway.close().catch(() => {});
    return 1;
  });
  return Promise.race([untilSignal(() => gateway.close(), logger), onItsOwn]);
}
