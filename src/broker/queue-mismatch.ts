import type { QueueType } from '../config/schema.js';
import { ErrorCode, WarrenError } from '../shared/errors.js';

/** Where an operator sets the type of the shared queues, named in every mismatch message. */
const SETTING = 'rabbitmq.queueType (WARREN_RABBITMQ_QUEUE_TYPE; the publisher SDK’s queueType option)';

// RabbitMQ 3.10's words for a declaration that differs from the queue there (the value side is
// "the value 'quorum' of type 'longstr'", "'quorum'" or "none").
const INEQUIVALENT =
  /inequivalent arg '([^']+)' for queue '([^']+)' in vhost '[^']*': received (.+) but current is (.+?)"?$/;

/** A value as the broker's 406 text gives it: the value itself, or undefined for "none". */
function argValue(text: string): string | undefined {
  const quoted = /'([^']*)'/.exec(text);
  return text.trim() === 'none' || !quoted ? undefined : quoted[1];
}

/**
 * The broker's 406 to a queue declaration that differs from the queue already there, in words an operator
 * can act on: which queue, which argument, what it is and what Warren declares, and how to get out (the
 * README's "Quorum queues"). Anything else comes back undefined (passed on as it was).
 */
export function queueMismatch(error: unknown, configured: QueueType): WarrenError | undefined {
  const { code, message } = (error ?? {}) as { code?: unknown; message?: unknown };
  if (code !== 406 || typeof message !== 'string') return undefined;
  const match = INEQUIVALENT.exec(message);
  if (!match) return undefined;
  const [, arg = '', queue = '', received = '', current = ''] = match;
  const ours = argValue(received);
  const theirs = argValue(current);
  if (arg === 'x-queue-type') {
    // A queue declared without the argument is classic (Warren declared them so before this setting).
    const existing = theirs ?? 'classic';
    return new WarrenError(
      ErrorCode.TopologyMismatch,
      `queue ${queue} exists as a ${existing} queue, but ${SETTING} is ${configured}: a queue's type cannot ` +
        `change in place. Set it back to ${existing}, or migrate: stop the publishing services, let the ` +
        `resolvers empty it (warren status shows its depth), stop every Warren process, delete it ` +
        `(rabbitmqctl delete_queue ${queue}) and start again with ${configured} (README: Quorum queues)`,
      { cause: error, retryable: false },
    );
  }
  return new WarrenError(
    ErrorCode.TopologyMismatch,
    `queue ${queue} exists with ${arg} ${theirs === undefined ? 'unset' : `= ${theirs}`}, but Warren ` +
      `declares it with ${ours === undefined ? `no ${arg}` : `${arg} = ${ours}`} (${SETTING} is ` +
      `${configured}): declare it as Warren does, or let the resolvers empty it, delete it ` +
      `(rabbitmqctl delete_queue ${queue}) and let Warren declare it (README: Quorum queues)`,
    { cause: error, retryable: false },
  );
}
