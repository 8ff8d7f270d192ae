import { z } from 'zod';
import { EVENT_ID_PATTERN, EVENT_TYPE_PATTERN, ID_PATTERN } from './ids.js';

/**
 * Wire schemas for what services send (model events, membership changes) and what tabs send (client
 * frames). Everything that reaches a routing key or a Redis key passes through here first.
 */

export const JOB_ID_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;

/** Audience list limits: a list longer than this is almost certainly a bug in the publisher. */
export const AUDIENCE_LIMITS = { teams: 256, groups: 256, users: 10_000, exceptUsers: 10_000 } as const;

const idMessage = 'must match ^[A-Za-z0-9_-]{1,120}$ (no dots, no wildcards)';
export const idSchema = z.string().regex(ID_PATTERN, idMessage);
const idList = (max: number) => z.array(idSchema).max(max, `at most ${max} entries`);

export const audienceSchema = z
  .strictObject({
    teams: idList(AUDIENCE_LIMITS.teams).optional(),
    groups: idList(AUDIENCE_LIMITS.groups).optional(),
    users: idList(AUDIENCE_LIMITS.users).optional(),
    exceptUsers: idList(AUDIENCE_LIMITS.exceptUsers).optional(),
  })
  .refine((a) => (a.teams?.length ?? 0) + (a.groups?.length ?? 0) + (a.users?.length ?? 0) > 0, {
    message: 'needs at least one of teams, groups or users',
  });

export type Audience = z.infer<typeof audienceSchema>;

/** The longest AMQP short string: routing keys and the `type` property. */
const MAX_ROUTING_KEY = 255;

export const modelEventSchema = z
  .strictObject({
    id: z.string().regex(EVENT_ID_PATTERN, 'must match ^[A-Za-z0-9_.:-]{1,128}$'),
    tenantId: idSchema,
    type: z.string().regex(EVENT_TYPE_PATTERN, 'must be dot-separated words of [A-Za-z0-9_-]'),
    audience: audienceSchema,
    data: z.unknown().optional(),
    /** Set instead of `data` when the payload was put in Redis first (claim check). */
    jobId: z.string().regex(JOB_ID_PATTERN, 'must match ^[A-Za-z0-9_-]{1,64}$').optional(),
  })
  .refine((e) => !(e.jobId !== undefined && e.data !== undefined), {
    message: 'carries either data or jobId, not both',
    path: ['jobId'],
  })
  // `<tenantId>.<type>` is the event's routing key, and `type` an AMQP message property: both are short
  // strings of at most 255 bytes (the pattern alone allows longer types). ASCII ids: bytes = characters.
  .refine((e) => e.tenantId.length + 1 + e.type.length <= MAX_ROUTING_KEY, {
    message: `tenantId and type together must fit in a routing key of ${MAX_ROUTING_KEY} characters`,
    path: ['type'],
  });

export type ModelEvent = z.infer<typeof modelEventSchema>;

const opSchema = z.enum(['add', 'remove']);

/** The ids a membership change names two of. */
export const MEMBERSHIP_ID_FIELDS = ['userId', 'teamId', 'groupId'] as const;

/** The issue of a change that does not name exactly two ids; `params.idsNamed` says how many it names. */
export const EXACTLY_TWO_IDS =
  'must name exactly two of userId, teamId, groupId (user↔team, user↔group or group↔team)';

const membershipShape = z
  .strictObject({
    op: opSchema,
    tenantId: idSchema,
    userId: idSchema.optional(),
    teamId: idSchema.optional(),
    groupId: idSchema.optional(),
  })
  .superRefine(
    (m, ctx) => {
      const idsNamed = MEMBERSHIP_ID_FIELDS.filter((field) => m[field] !== undefined).length;
      if (idsNamed !== 2) ctx.addIssue({ code: 'custom', message: EXACTLY_TWO_IDS, params: { idsNamed } });
    },
    // Also when another field is wrong: every problem of a change is reported at once, not the first kind.
    { when: ({ value }) => typeof value === 'object' && value !== null && !Array.isArray(value) },
  );

export type MembershipOp = z.infer<typeof opSchema>;

/**
 * A membership change as services write it (the JSON of the membership exchange, what the publisher SDK's
 * `applyMembership` takes): exactly two of `userId`, `teamId`, `groupId`, checked when it is parsed.
 */
export type MembershipChangeInput = z.input<typeof membershipShape>;

/** The three relations of the access model (DESIGN.md §4). */
export type MembershipChange =
  | { op: MembershipOp; tenantId: string; kind: 'user-team'; userId: string; teamId: string }
  | { op: MembershipOp; tenantId: string; kind: 'user-group'; userId: string; groupId: string }
  | { op: MembershipOp; tenantId: string; kind: 'group-team'; groupId: string; teamId: string };

export const membershipChangeSchema = membershipShape.transform((m, ctx): MembershipChange => {
  const { op, tenantId, userId, teamId, groupId } = m;
  if (userId !== undefined && teamId !== undefined)
    return { op, tenantId, kind: 'user-team', userId, teamId };
  if (userId !== undefined && groupId !== undefined)
    return { op, tenantId, kind: 'user-group', userId, groupId };
  if (groupId !== undefined && teamId !== undefined)
    return { op, tenantId, kind: 'group-team', groupId, teamId };
  // Not reached: the refinement above let exactly two ids through.
  ctx.addIssue({ code: 'custom', message: EXACTLY_TWO_IDS });
  return z.NEVER;
});

export const clientFrameSchema = z.discriminatedUnion('type', [
  z.strictObject({ type: z.literal('ping') }),
  z.strictObject({
    type: z.literal('resume'),
    epoch: z.string().max(128),
    offset: z.number().int().nonnegative(),
  }),
]);

/** One line per problem, `path: message`, for dead-letter reasons and error frames. */
export function describeIssues(error: z.ZodError): string {
  return error.issues
    .map((issue) => `${issue.path.length > 0 ? issue.path.join('.') : '(root)'}: ${issue.message}`)
    .join('; ');
}
