import type { Logger } from '../shared/logger.js';

/**
 * Resolves with the exit code once `stop` has run after SIGTERM/SIGINT. A second signal while stopping
 * exits at once: the operator asked twice.
 */
export function untilSignal(stop: () => Promise<void>, logger: Logger): Promise<number> {
  return new Promise((resolve) => {
    let stopping = false;
    const onSignal = (signal: NodeJS.Signals): void => {
      if (stopping) {
        logger.warn({ signal }, 'second signal, exiting now');
        process.exit(130);
      }
      stopping = true;
      logger.info({ signal }, 'stopping');
      stop().then(
        () => resolve(0),
        (error: unknown) => {
          logger.error({ err: String(error) }, 'stopped with an error');
          resolve(1);
        },
      );
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
  });
}
