import { pino, type Logger, type LevelWithSilent } from 'pino';

export type { Logger };

/**
 * The one root logger of a process; components take `logger.child({ component })`. `sync` writes each line
 * before the call returns, in order with the process's own console output (pino writes asynchronously
 * otherwise, so a line logged before a `console.log` may come out after it).
 */
export function createLogger(
  level: LevelWithSilent,
  bindings: Record<string, unknown> = {},
  options: { sync?: boolean } = {},
): Logger {
  const base = { level, base: { pid: process.pid, ...bindings } };
  return options.sync ? pino(base, pino.destination({ dest: 1, sync: true })) : pino(base);
}

/** A logger that drops everything, for library users who pass none. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
