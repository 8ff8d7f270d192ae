import { pino, type Logger, type LevelWithSilent } from 'pino';

export type { Logger };

/** The one root logger of a process; components take `logger.child({ component })`. */
export function createLogger(level: LevelWithSilent, bindings: Record<string, unknown> = {}): Logger {
  return pino({ level, base: { pid: process.pid, ...bindings } });
}

/** A logger that drops everything, for library users who pass none. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
