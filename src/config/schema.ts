import { z } from 'zod';

/**
 * The one configuration schema (DESIGN.md §7). Every key has a default or is optional; a key's description
 * is its documentation: `config/default.yaml` and the README table are generated from it
 * (`npm run config:docs`), and a unit test fails when they drift.
 */

export const DEFAULTS = {
  prefix: 'warren',
  rabbitmqUrl: 'amqp://guest:guest@127.0.0.1:5672',
  // RabbitMQ's own default and maximum useful frame: long CC lists must fit one header frame.
  frameMax: 131_072,
  heartbeatSec: 10,
  reconnectBaseMs: 100,
  reconnectCapMs: 10_000,
  // One attempt (TCP and AMQP handshake): a host that drops packets would otherwise hold it for minutes.
  connectTimeoutMs: 10_000,
  queueType: 'classic',
  redisUrl: 'redis://127.0.0.1:6379',
  redisSocketTimeoutMs: 30_000,
  gatewayHost: '0.0.0.0',
  gatewayPort: 8080,
  // DESIGN.md §6: 1,700 binds/s one by one, about 5,000/s over 8 channels.
  bindChannels: 8,
  unbindGraceMs: 30_000,
  maxLifetimeMs: 600_000,
  lifetimeJitter: 0.2,
  idleTimeoutSec: 60,
  maxFrameBytes: 4096,
  maxBackpressureBytes: 4 * 1024 * 1024,
  badFrameLimit: 10,
  gatewayPrefetch: 512,
  gatewayQueueMaxLength: 100_000,
  drainWindowMs: 5000,
  handoffMs: 5000,
  drainTimeoutMs: 30_000,
  payloadCacheBytes: 64 * 1024 * 1024,
  payloadFetchTimeoutMs: 10_000,
  dedupKeys: 200_000,
  lineLimit: 100_000,
  historyEvents: 2000,
  historyBytes: 16 * 1024 * 1024,
  resumeWindowMs: 60_000,
  resolverPrefetch: 256,
  // RabbitMQ 4's own default `max_message_size`; parsing one costs the resolver about half a second.
  resolverMaxMessageBytes: 16 * 1024 * 1024,
  maxTenantViews: 10_000,
  // DESIGN.md §6: chunk long recipient key lists at about 1,000 keys (user routing).
  maxRecipientsPerMessage: 1000,
  presenceHeartbeatMs: 5000,
  presenceExpiryMs: 15_000,
  claimCheckBytes: 16_384,
  claimCheckTtlSec: 3600,
  jwtClockToleranceSec: 5,
  devPort: 8080,
} as const;

/** Types the shared durable queues may be declared as (`rabbitmq.queueType`). */
export const QUEUE_TYPES = ['classic', 'quorum'] as const;
export type QueueType = (typeof QUEUE_TYPES)[number];

/** A prefix or node id: part of exchange, queue and Redis key names (no `.`, `:` or braces). */
export const NAME_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;
const id = z.string().regex(NAME_PATTERN, 'must match ^[A-Za-z0-9_-]{1,64}$');
const port = z.number().int().min(0).max(65_535);
const positiveInt = z.number().int().positive();
/** setTimeout fires almost at once for delays above 2^31-1 ms. */
const MAX_TIMER_MS = 2_147_483_647;
/** AMQP's prefetch count is 16 bits: a larger one fails channel set-up on every connect. */
const MAX_PREFETCH = 65_535;
/** A URL the clients will parse: checked here, so a typo is a config error naming its key, not a crash. */
const parses = [
  (value: string) => URL.canParse(value),
  'is not a valid URL (percent-encode @, /, : and spaces in the user name and password)',
] as const;
/** A broker URL as the publisher SDK takes it (its messages carry small headers: any frame size). */
export const amqpUrl = z
  .string()
  // A wrong scheme is the one problem told: the parse that follows would fail too, on the same value.
  .regex(/^amqps?:\/\//, { message: 'must be an amqp:// or amqps:// URL', abort: true })
  .refine(...parses);
/**
 * A broker URL as the servers take it. A frame size in the URL stands in for rabbitmq.frameMax, so it is
 * held to the same minimum: under it, even the headers Warren adds to a dead letter or a recipient chunk
 * may not fit a frame.
 */
const serverAmqpUrl = amqpUrl.refine((value) => {
  if (!URL.canParse(value)) return true;
  const frameMax = new URL(value).searchParams.get('frameMax');
  return (
    frameMax === null || (/^\d+$/.test(frameMax) && (Number(frameMax) === 0 || Number(frameMax) >= 8192))
  );
}, 'names a frameMax under 8192 (the least rabbitmq.frameMax takes; 0 lets the broker choose)');
/** A Redis URL as the servers and the publisher SDK take it. */
export const redisUrl = z
  .string()
  .regex(/^(redis|rediss|unix):\/\//, {
    message: 'must be a redis://, rediss:// or unix:// URL',
    abort: true,
  })
  .refine(...parses)
  // The path names the database: a number, or nothing (0). ioredis would take anything else as 0.
  .refine((value) => {
    if (!/^rediss?:/.test(value) || !URL.canParse(value)) return true;
    const url = new URL(value);
    const db = url.searchParams.get('db');
    return /^\/?\d*$/.test(url.pathname) && (db === null || /^\d+$/.test(db));
  }, 'names a database that is not a number (redis://host:6379/2 is database 2)');

export const configSchema = z.strictObject({
  prefix: id
    .default(DEFAULTS.prefix)
    .describe('Prefix of every exchange, queue and Redis key; several installations can share a broker.'),
  log: z
    .strictObject({
      level: z
        .enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'])
        .default('info')
        .describe('pino log level.'),
    })
    .prefault({}),
  rabbitmq: z
    .strictObject({
      url: serverAmqpUrl.default(DEFAULTS.rabbitmqUrl).describe('Broker URL.'),
      frameMax: z
        .number()
        .int()
        .min(8192)
        .default(DEFAULTS.frameMax)
        .describe('Requested AMQP frame size; long recipient lists are chunked to fit the negotiated one.'),
      heartbeatSec: z
        .number()
        .int()
        .min(0)
        .default(DEFAULTS.heartbeatSec)
        .describe('AMQP heartbeat (0 = off).'),
      reconnectBaseMs: positiveInt
        .default(DEFAULTS.reconnectBaseMs)
        .describe('First reconnect delay bound (full-jitter backoff).'),
      reconnectCapMs: positiveInt
        .max(MAX_TIMER_MS)
        .default(DEFAULTS.reconnectCapMs)
        .describe('Largest reconnect delay.'),
      connectTimeoutMs: positiveInt
        .max(MAX_TIMER_MS)
        .default(DEFAULTS.connectTimeoutMs)
        .describe(
          'How long one connection attempt (TCP connect and AMQP handshake) may take before it is dropped and retried.',
        ),
      queueType: z
        .enum(QUEUE_TYPES)
        .default(DEFAULTS.queueType)
        .describe(
          'Type of the shared durable queues (`<prefix>.resolver`, `.resolver.membership`, `.resolver.retry`, `.dead`): `quorum` on a clustered RabbitMQ (replicated), `classic` on a single node. Every process declaring them (gateways, resolvers, dev, the publisher SDK’s `queueType`) must say the same; a queue that exists as the other type stops start-up (see Quorum queues under Operations in the README). Node queues stay classic.',
        ),
    })
    .prefault({}),
  redis: z
    .strictObject({
      url: redisUrl.default(DEFAULTS.redisUrl).describe('Redis URL.'),
      socketTimeoutMs: z
        .number()
        .int()
        .min(0)
        .max(MAX_TIMER_MS)
        // Under a second, a healthy connection waiting on an ordinary command would be dropped again and again.
        .refine((ms) => ms === 0 || ms >= 1000, 'must be 0 (off) or at least 1000')
        .default(DEFAULTS.redisSocketTimeoutMs)
        .describe(
          'A Redis connection that sends nothing back for this long while commands wait on it (a peer or a NAT entry gone without closing it) is dropped and made again, its commands sent again; 0 = wait for the system to give it up (minutes). Above the longest script Warren runs (about 2 s per million users of a tenant whose id counter was lost).',
        ),
    })
    .prefault({}),
  gateway: z
    .strictObject({
      host: z.string().min(1).default(DEFAULTS.gatewayHost).describe('Listen address.'),
      port: port.default(DEFAULTS.gatewayPort).describe('Listen port (0 picks a free one).'),
      reusePort: z
        .boolean()
        .default(false)
        .describe(
          'Let several gateway processes on one host share `gateway.port` (SO_REUSEPORT: the kernel spreads new connections over them). Off: a port another process holds stops start-up.',
        ),
      metricsPort: port
        .optional()
        .describe(
          'Serve `/metrics` on this port of its own instead of the tabs’ port (0 picks a free one; not `gateway.port` on the same address), with `/healthz` and `/readyz`, which stay on the tabs’ port too. Unset: `/metrics` is on the tabs’ port.',
        ),
      metricsHost: z
        .string()
        .min(1)
        .default(DEFAULTS.gatewayHost)
        .describe('Listen address of `gateway.metricsPort`.'),
      id: id
        .optional()
        .describe(
          'Node id; queue `<prefix>.gw.<id>`. Random per start when unset; a fixed id takes over what an earlier process left (queue, bindings, presence), not a running one’s queue; a process coming back after another took its id stops (`warren gateway` exits 1).',
        ),
      bindChannels: positiveInt
        .max(64)
        .default(DEFAULTS.bindChannels)
        .describe('Channels used for queue bind/unbind.'),
      unbindGraceMs: z
        .number()
        .int()
        .min(0)
        .max(MAX_TIMER_MS)
        .default(DEFAULTS.unbindGraceMs)
        .describe(
          "Delay before a user's key is unbound after their last tab closes (a reload costs no bind). An unbind that fails is tried again once the broker is back, and after every such delay.",
        ),
      maxLifetimeMs: z
        .number()
        .int()
        .min(0)
        .default(DEFAULTS.maxLifetimeMs)
        .describe(
          'Connection lifetime, spreading load over replicas: then the tab is told `handoff` and closed with 4101 `gateway.handoffMs` later (0 = unlimited).',
        ),
      lifetimeJitter: z
        .number()
        .min(0)
        // Up to 1 a tab could be closed with 4101 right after its welcome.
        .max(0.5)
        .default(DEFAULTS.lifetimeJitter)
        .describe('Fraction of the lifetime spread at random either way (at most 0.5).'),
      idleTimeoutSec: z
        .number()
        .int()
        .min(8)
        .max(960)
        .default(DEFAULTS.idleTimeoutSec)
        .describe('Close a socket silent this long; the server pings automatically before.'),
      maxFrameBytes: positiveInt
        .max(1024 * 1024)
        .default(DEFAULTS.maxFrameBytes)
        .describe(
          'Largest client frame; larger ones get an error frame, ones over 4 times this (at least 64 KiB) close the socket with 1009, and ones 4 times larger again drop it.',
        ),
      maxBackpressureBytes: positiveInt
        .default(DEFAULTS.maxBackpressureBytes)
        .describe(
          'Unsent bytes a tab may accumulate before it is closed with 4009; one larger frame still reaches a tab with nothing else unsent.',
        ),
      badFrameLimit: positiveInt
        .default(DEFAULTS.badFrameLimit)
        .describe('Bad frames a connection may send before it is closed with 4008.'),
      prefetch: positiveInt
        .max(MAX_PREFETCH)
        .default(DEFAULTS.gatewayPrefetch)
        .describe('Unacked deliveries per node.'),
      queueMaxLength: positiveInt
        .default(DEFAULTS.gatewayQueueMaxLength)
        .describe(
          "Deliveries a node's queue holds waiting for the node; past it the broker drops the oldest and the node tells the tabs of the users they were for `events_missed`.",
        ),
      drainWindowMs: z
        .number()
        .int()
        .min(0)
        .max(MAX_TIMER_MS)
        .default(DEFAULTS.drainWindowMs)
        .describe(
          'On SIGTERM or SIGINT, tabs are told `handoff` at moments spread over this window, each closed with 4100 `gateway.handoffMs` later; with `gateway.handoffMs` and 1 s for the check at each tab’s close (none with no handoff), it must fit under `gateway.drainTimeoutMs`.',
        ),
      handoffMs: z
        .number()
        .int()
        .min(0)
        .max(60_000)
        .default(DEFAULTS.handoffMs)
        .describe(
          'Before closing a tab with 4100 (drain) or 4101 (lifetime), the node sends it a `handoff` frame and keeps it open this long, so that the client connects elsewhere first and misses nothing (0 = close at once).',
        ),
      drainTimeoutMs: positiveInt
        // The close waits 5 s past it, and that too must fit a timer.
        .max(MAX_TIMER_MS - 5000)
        .default(DEFAULTS.drainTimeoutMs)
        .describe('Upper bound of the whole drain-and-close.'),
      payloadCacheBytes: z
        .number()
        .int()
        .min(0)
        .default(DEFAULTS.payloadCacheBytes)
        .describe('Claim-check payload cache per node.'),
      payloadFetchTimeoutMs: positiveInt
        .max(MAX_TIMER_MS)
        .default(DEFAULTS.payloadFetchTimeoutMs)
        .describe(
          "A claim-check payload read slower than this fails: its tabs get `payload_unavailable` and the user's later events go on.",
        ),
      lineLimit: positiveInt
        .default(DEFAULTS.lineLimit)
        .describe(
          'Deliveries (one per local recipient) a node queues behind claim-check payloads being read before it holds their acks, so that the prefetch window stops the broker instead of memory growing.',
        ),
      dedupKeys: positiveInt
        .default(DEFAULTS.dedupKeys)
        .describe(
          'Bound of the memory of recent (event, user) pairs that drops redelivered events: a pair counts one, or 1/32 for the recipients of an event written to 256 or more users here.',
        ),
      historyEvents: z
        .number()
        .int()
        .min(0)
        .default(DEFAULTS.historyEvents)
        .describe('Recent deliveries kept per node for `resume` (0 = no resume).'),
      historyBytes: z
        .number()
        .int()
        .min(0)
        .default(DEFAULTS.historyBytes)
        .describe(
          'Byte bound of that history: its frames, and each recipient’s key (its length and 34 bytes).',
        ),
      resumeWindowMs: positiveInt
        .max(MAX_TIMER_MS)
        .default(DEFAULTS.resumeWindowMs)
        .describe(
          'A `resume` replays deliveries at most this old; from a cursor further back it is answered `resume_unavailable` (the client resynchronises). Bounds what a user who has since lost access can pull again into a new connection; the node lets go of frames older than this (health data it could no longer replay).',
        ),
    })
    .prefault({}),
  jwt: z
    .strictObject({
      secret: z
        .string()
        // HS256 wants a key as long as its hash (RFC 7518 §3.2); a short one falls to offline guessing
        // from any token a browser holds.
        .min(32, 'must be at least 32 characters (e.g. openssl rand -base64 32)')
        .optional()
        .describe('HS256 secret, at least 32 characters.'),
      publicKey: z.string().optional().describe('RS256/ES256 public key, PEM text or a path to a PEM file.'),
      jwksFile: z.string().optional().describe('RS256/ES256 keys as a JWKS file.'),
      issuer: z.string().optional().describe('Required `iss` claim, when set.'),
      audience: z.string().optional().describe('Required `aud` claim, when set.'),
      clockToleranceSec: z
        .number()
        .int()
        .min(0)
        .default(DEFAULTS.jwtClockToleranceSec)
        .describe(
          'Clock skew allowed on `nbf`/`iat` (and on `iat` against a revocation: a token issued up to this long after it is refused too). Not on `exp`: a socket closes (4001) when its token expires, and an expired token is refused.',
        ),
    })
    .prefault({}),
  resolver: z
    .strictObject({
      prefetch: positiveInt
        .max(MAX_PREFETCH)
        .default(DEFAULTS.resolverPrefetch)
        .describe('Unacked events per resolver.'),
      maxMessageBytes: positiveInt
        .default(DEFAULTS.resolverMaxMessageBytes)
        .describe(
          "Largest event or membership message a resolver parses; a larger one is dead-lettered as `too_large` unread (parsing a large body holds up every tenant's events on that resolver). Publish large `data` through the claim check instead (the publisher SDK claim-checks data that would make an event larger than 16 MiB, this default, whatever its `claimCheckBytes`; with a lower limit here, set its `claimCheckBytes` under it).",
        ),
      maxTenantViews: positiveInt
        .default(DEFAULTS.maxTenantViews)
        .describe(
          'Tenants whose view (online users, cached team and group bitmaps) a resolver keeps; past it the least recently used is forgotten and rebuilt from Redis at its next event.',
        ),
      routing: z
        .enum(['nodes', 'users'])
        .default('nodes')
        .describe(
          'How deliveries are routed: `nodes`, one message to the gateway nodes holding recipients, recipients as a bitmap; `users`, their keys as routing key + CC.',
        ),
      metricsPort: port
        .optional()
        .describe(
          'Serve `/metrics`, `/healthz` and `/readyz` on this port (0 picks a free one); unset: no listener.',
        ),
      metricsHost: z
        .string()
        .min(1)
        .default(DEFAULTS.gatewayHost)
        .describe('Listen address of `resolver.metricsPort`.'),
      maxRecipientsPerMessage: positiveInt
        .optional()
        .describe(
          `Recipients per delivery message; longer lists are split, and always to fit a frame. 1 = one message per recipient. Unset: no limit with \`nodes\`, ${DEFAULTS.maxRecipientsPerMessage} with \`users\`.`,
        ),
    })
    .prefault({}),
  presence: z
    .strictObject({
      heartbeatMs: positiveInt
        .max(MAX_TIMER_MS)
        .default(DEFAULTS.presenceHeartbeatMs)
        .describe('Gateway liveness heartbeat.'),
      expiryMs: positiveInt
        .default(DEFAULTS.presenceExpiryMs)
        .describe('A node silent this long no longer counts its users online.'),
    })
    .prefault({}),
  claimCheck: z
    .strictObject({
      bytes: z
        .number()
        .int()
        .min(0)
        .default(DEFAULTS.claimCheckBytes)
        .describe('Payloads (`data`, serialised) larger than this travel through Redis.'),
      ttlSec: positiveInt.default(DEFAULTS.claimCheckTtlSec).describe('How long a stored payload lives.'),
      redisUrl: redisUrl
        .optional()
        .describe(
          'Redis for the payloads only, apart from memberships and presence; any eviction policy. Unset: `redis.url`. Gateways, resolvers and the publisher SDK must name the same one; payloads in flight when it changes are lost (`payload_unavailable`).',
        ),
    })
    .prefault({}),
});

export type WarrenConfig = z.infer<typeof configSchema>;
export type ConfigInput = z.input<typeof configSchema>;
