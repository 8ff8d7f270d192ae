import type { ChannelModel } from 'amqplib';
import type { QueueType } from '../config/schema.js';
import { ErrorCode, WarrenError } from '../shared/errors.js';

/** Where an operator sets the type of the shared queues, named in every mismatch message. */
const SETTING = 'rabbitmq.queueType (WARREN_RABBITMQ_QUEUE_TYPE; the publisher SDK’s queueType option)';

// RabbitMQ 3.10's words for a declaration that differs from the queue there. A value side is "the value
// 'quorum' of type 'longstr'", "'quorum'" (x-queue-type) or "none".
const INEQUIVALENT =
  /inequivalent arg '([^']+)' for queue '([^']+)' in vhost '[^']*': received (.+) but current is (.+?)"?$/;

/**
 * The shared queues: those the resolvers empty (`<prefix>.resolver`, `.resolver.membership`, `.resolver.retry`)
 * and the dead-letter queue, which no process reads. A type is set for all four at once.
 */
export interface SharedQueues {
  consumed: readonly string[];
  dead: string;
}

interface ArgDifference {
  arg: string;
  /** The queue's value, as the broker wrote it; undefined: not set. */
  current: string | undefined;
  /** Its AMQP type, where the broker named one. */
  currentType: string | undefined;
  ours: string | undefined;
}

function valueOf(text: string): { value: string | undefined; type: string | undefined } {
  const quoted = /^(?:the value )?'([^']*)'(?: of type '([^']*)')?/.exec(text.trim());
  return { value: quoted?.[1], type: quoted?.[2] };
}

/** What a broker's 406 says differs, or undefined for any other error. */
function difference(error: unknown): (ArgDifference & { queue: string }) | undefined {
  const { code, message } = (error ?? {}) as { code?: unknown; message?: unknown };
  if (code !== 406 || typeof message !== 'string') return undefined;
  const match = INEQUIVALENT.exec(message);
  if (!match) return undefined;
  const [, arg = '', queue = '', received = '', current = ''] = match;
  const theirs = valueOf(current);
  return { queue, arg, current: theirs.value, currentType: theirs.type, ours: valueOf(received).value };
}

/**
 * A shared queue that exists otherwise than Warren declares it. `existingType` is known once `explain` has
 * asked the broker: the broker names only the first argument that differs, and checks x-queue-type after
 * the dead-letter ones (a queue declared quorum by hand, without them, is reported as lacking them).
 */
export class QueueMismatchError extends WarrenError {
  constructor(
    readonly queue: string,
    readonly configured: QueueType,
    readonly differences: readonly ArgDifference[],
    readonly existingType: string | undefined,
    /** The arguments Warren declared the queue with. */
    readonly declared: Readonly<Record<string, unknown>>,
    readonly shared: SharedQueues,
    cause: unknown,
  ) {
    super(ErrorCode.TopologyMismatch, mismatchMessage(queue, configured, differences, existingType, shared), {
      cause,
      retryable: false,
    });
    this.name = 'QueueMismatchError';
  }

  /** The same mismatch, told with every difference found and the queue's type once asked of the broker. */
  withFindings(differences: readonly ArgDifference[], existingType: string): QueueMismatchError {
    return new QueueMismatchError(
      this.queue,
      this.configured,
      differences,
      existingType,
      this.declared,
      this.shared,
      this.cause,
    );
  }
}

function mismatchMessage(
  queue: string,
  configured: QueueType,
  differences: readonly ArgDifference[],
  existingType: string | undefined,
  shared: SharedQueues,
): string {
  // Nobody reads the dead-letter queue: waiting for it to empty would wait for ever.
  const remove =
    queue === shared.dead
      ? `stop every Warren process, save what ${queue} holds if you need it, delete it ` +
        `(rabbitmqctl delete_queue ${queue}) and start again`
      : `let the resolvers empty it (warren status shows its depth), stop every Warren process, delete it ` +
        `(rabbitmqctl delete_queue ${queue}) and start again`;
  if (existingType !== undefined && existingType !== configured) {
    // The type is every shared queue's: deleting only the one named would stop the next start on the next.
    const all = [...shared.consumed, shared.dead];
    const consumed = `${shared.consumed.slice(0, -1).join(', ')} and ${shared.consumed.at(-1) ?? ''}`;
    return (
      `queue ${queue} exists as a ${existingType} queue, but ${SETTING} is ${configured}: a queue's type ` +
      `cannot change in place. Set it back to ${existingType}, or migrate: stop the publishing services, ` +
      `let the resolvers empty ${consumed} (warren status shows their depths), stop every Warren process, ` +
      `save what ${shared.dead} holds if you need it, delete the ${all.length} queues ` +
      `(${all.map((q) => `rabbitmqctl delete_queue ${q}`).join('; ')}) and start again with ${configured} ` +
      `(README: Quorum queues)`
    );
  }
  const args = differences
    .filter((d) => d.arg !== 'x-queue-type')
    .map(
      (d) =>
        `${d.arg} ${d.current === undefined ? 'unset' : `= ${d.current}`} where Warren declares ` +
        (d.ours === undefined ? 'none' : d.ours),
    );
  return (
    `queue ${queue} exists with ${args.join(', ')} (${SETTING} is ${configured}): declare it as Warren ` +
    `does, or ${remove} and let Warren declare it (README: Quorum queues)`
  );
}

/** The broker's 406 to declaring a shared queue, as a QueueMismatchError; undefined for any other error. */
export function queueMismatch(
  error: unknown,
  configured: QueueType,
  declared: Readonly<Record<string, unknown>>,
  shared: SharedQueues,
): QueueMismatchError | undefined {
  const found = difference(error);
  if (!found) return undefined;
  // The type is the one difference the broker names: what the queue is, it says (none: classic).
  const existingType = found.arg === 'x-queue-type' ? (found.current ?? 'classic') : undefined;
  return new QueueMismatchError(found.queue, configured, [found], existingType, declared, shared, error);
}

const NUMERIC = /^(byte|short|signedint|long|unsignedbyte|unsignedshort|unsignedint|double|float)$/;

/** A value the broker wrote back, as amqplib should send it to be taken as equal. */
function asSent(value: string, type: string | undefined): unknown {
  if (type !== undefined && NUMERIC.test(type)) return Number(value);
  if (type === 'bool') return value === 'true';
  return value;
}

// Warren sets at most five arguments on a queue: past that many rounds something else is going on.
const MAX_PROBES = 8;

/**
 * Every argument that differs, and the queue's type, asked of the broker: a declaration made equal to the
 * queue one difference at a time (each on a channel of its own, as a 406 closes it) until the broker takes
 * it or names x-queue-type. Only a queue that exists is declared (checked first), and only with what it
 * has. The mismatch as it was when the broker cannot say more.
 */
export async function explainMismatch(
  model: ChannelModel,
  mismatch: QueueMismatchError,
): Promise<QueueMismatchError> {
  if (mismatch.existingType !== undefined) return mismatch;
  const args: Record<string, unknown> = { ...mismatch.declared };
  const differences: ArgDifference[] = [];
  let next: ArgDifference | undefined = mismatch.differences[0];
  for (let round = 0; next && round < MAX_PROBES; round += 1) {
    if (next.arg === 'x-queue-type') return mismatch.withFindings(differences, next.current ?? 'classic');
    differences.push(next);
    if (next.current === undefined) delete args[next.arg];
    else args[next.arg] = asSent(next.current, next.currentType);
    const channel = await model.createChannel();
    channel.on('error', () => {});
    try {
      await channel.checkQueue(mismatch.queue);
      await channel.assertQueue(mismatch.queue, { durable: true, arguments: args });
      await channel.close().catch(() => {});
      const sentType = args['x-queue-type'];
      return mismatch.withFindings(differences, typeof sentType === 'string' ? sentType : 'classic');
    } catch (error) {
      next = difference(error);
    }
  }
  return mismatch;
}
