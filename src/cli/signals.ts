import { constants } from 'node:os';
import type { Logger } from '../shared/logger.js';

const STOP_SIGNALS = ['SIGTERM', 'SIGINT'] as const;

/**
 * Ends the process as the signal would have without a handler, with its shell exit code (143, 130), once
 * the signal's other handlers have run: a progress bar gives the terminal its cursor back.
 */
function exitOnSignal(signal: NodeJS.Signals): void {
  setImmediate(() => process.exit(128 + constants.signals[signal]));
}

/**
 * Until a command takes SIGTERM and SIGINT over (`untilSignal`), they end the process at once, as they do
 * by default. Not by default where the process is PID 1 (a container without an init): there a signal
 * nothing handles is dropped, and a gateway still waiting for RabbitMQ at start-up, or an import, would
 * run on through `docker stop` until killed, and through Ctrl-C for good.
 */
export function exitOnStopSignals(): void {
  for (const signal of STOP_SIGNALS) process.on(signal, exitOnSignal);
}

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
        exitOnSignal(signal);
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
    for (const signal of STOP_SIGNALS) {
      process.off(signal, exitOnSignal);
      process.on(signal, onSignal);
    }
  });
}
