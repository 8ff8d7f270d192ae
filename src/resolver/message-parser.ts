import type { ConsumeMessage } from 'amqplib';
import type { TopologyNames } from '../broker/topology.js';
import { DeadLetterHeader } from '../protocol/delivery.js';
import {
  describeIssues,
  membershipChangeSchema,
  modelEventSchema,
  type MembershipChange,
  type ModelEvent,
} from '../protocol/schemas.js';

/** Why a message was dead-lettered (the `x-warren-code` header). */
export type RejectCode =
  | 'not_json'
  | 'too_large'
  | 'invalid_event'
  | 'invalid_membership'
  | 'routing_mismatch'
  | 'job_not_found'
  | 'resolve_failed'
  | 'apply_failed';

export type Parsed =
  | { kind: 'event'; event: ModelEvent }
  | { kind: 'membership'; change: MembershipChange }
  | { kind: 'invalid'; code: RejectCode; reason: string };

const decoder = new TextDecoder('utf-8', { fatal: true });

function json(message: ConsumeMessage): { ok: true; value: unknown } | { ok: false; reason: string } {
  const type = message.properties.contentType as string | undefined;
  if (type !== undefined && !/^application\/json\b/i.test(type)) {
    return { ok: false, reason: `content-type ${type}: expected application/json` };
  }
  let text: string;
  try {
    text = decoder.decode(message.content);
  } catch {
    return { ok: false, reason: 'body is not UTF-8 text' };
  }
  try {
    return { ok: true, value: JSON.parse(text) };
  } catch (error) {
    return { ok: false, reason: notJson(error) };
  }
}

/**
 * Where the body stops being JSON, without V8's own message: that quotes the text around the error, and
 * this reason goes to logs and a dead-letter header while bodies are health data.
 */
function notJson(error: unknown): string {
  const message = error instanceof Error ? error.message : '';
  const at = /at position (\d+)/.exec(message)?.[1];
  // V8 gives the offending character's index: that many characters before it are fine.
  if (at !== undefined) return `body is not JSON: syntax error after the first ${at} characters`;
  if (/end of JSON input/.test(message)) return 'body is not JSON: it ends too early';
  return 'body is not JSON';
}

/**
 * Where a message was first published. An event the resolver put aside comes back from the retry queue by
 * the default exchange, addressed to the resolver queue, and its copy names where it came from; any other
 * message is where it says.
 */
export function originOf(
  message: ConsumeMessage,
  names: TopologyNames,
): { exchange: string; routingKey: string } {
  const { exchange, routingKey } = message.fields;
  const headers = message.properties.headers ?? {};
  const first = headers[DeadLetterHeader.Exchange];
  const firstKey = headers[DeadLetterHeader.RoutingKey];
  if (
    exchange === '' &&
    routingKey === names.resolver &&
    typeof first === 'string' &&
    typeof firstKey === 'string'
  )
    return { exchange: first, routingKey: firstKey };
  return { exchange, routingKey };
}

/**
 * Validates what arrives on the resolver queue: model events from `<prefix>.events`, membership changes
 * from `<prefix>.membership`. Anything else is invalid, with a reason a person can act on.
 */
export function parseMessage(message: ConsumeMessage, names: TopologyNames, maxBytes: number): Parsed {
  // Before reading it: parsing tens of megabytes holds the resolver (every tenant's events) for seconds.
  if (message.content.length > maxBytes)
    return {
      kind: 'invalid',
      code: 'too_large',
      reason: `body of ${message.content.length} bytes is over resolver.maxMessageBytes (${maxBytes}); publish large data through the claim check`,
    };
  const body = json(message);
  if (!body.ok) return { kind: 'invalid', code: 'not_json', reason: body.reason };
  // Only what arrives from the membership exchange itself is a membership change: a header cannot make one.
  if (message.fields.exchange === names.membership) {
    const result = membershipChangeSchema.safeParse(body.value);
    if (!result.success) {
      return { kind: 'invalid', code: 'invalid_membership', reason: describeIssues(result.error) };
    }
    // As for events: the routing key names the tenant, so that a broker account's topic permission can
    // confine a service to its own tenant's memberships.
    if (message.fields.routingKey !== result.data.tenantId) {
      return {
        kind: 'invalid',
        code: 'routing_mismatch',
        reason: `membership changes are published with the tenant id as routing key: ${message.fields.routingKey.slice(0, 255)} is not ${result.data.tenantId}`,
      };
    }
    return { kind: 'membership', change: result.data };
  }
  const result = modelEventSchema.safeParse(body.value);
  if (!result.success)
    return { kind: 'invalid', code: 'invalid_event', reason: describeIssues(result.error) };
  const event = result.data;
  // The routing key names the tenant too; if the two disagree, one of them is a bug, and guessing which
  // could send health data to the wrong tenant. Checked again when an event comes back from the retry queue.
  const { exchange, routingKey } = originOf(message, names);
  // The resolver queue is bound to the events exchange only: anything else was sent to the queue by name,
  // past that check.
  if (exchange !== names.events) {
    return {
      kind: 'invalid',
      code: 'routing_mismatch',
      reason: `events are published to ${names.events}; this one came by exchange "${exchange.slice(0, 255)}"`,
    };
  }
  if (routingKey !== `${event.tenantId}.${event.type}`) {
    return {
      kind: 'invalid',
      code: 'routing_mismatch',
      reason: `routing key ${routingKey} does not match ${event.tenantId}.${event.type}`,
    };
  }
  return { kind: 'event', event };
}
