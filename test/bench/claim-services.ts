// Child process of the claim-check bench (claim-stack.ts): the services around the gateways. Publishers
// serialise and send megabytes, and the Redis taps pipe every payload read; none of that runs inside a
// gateway process when Warren is deployed, so here it does not share the gateways' thread either.
import { randomBytes } from 'node:crypto';
import { WarrenPublisher } from '../../src/sdk/publisher/index.js';
import { silentLogger } from '../../src/shared/logger.js';
import { RedisTap } from './claim-probes.js';

export type Mode = 'inline' | 'claim';

export type ServicesRequest =
  | {
      op: 'start';
      rabbitmqUrl: string;
      redisUrl: string;
      /** Where payloads go, when not `redisUrl` (`claimCheck.redisUrl`). */
      payloadRedisUrl?: string;
      prefix: string;
      tenantId: string;
      thresholds: Record<Mode, number>;
      /** Start the Redis taps the gateways read through (one service of the bench holds them). */
      taps: boolean;
    }
  | { op: 'members'; teams: { userId: string; teamId: string }[] }
  | { op: 'publish'; mode: Mode; id: string; team: string; size: number }
  | { op: 'small'; mode: Mode; tag: string; everyMs: number }
  | { op: 'stopSmall' }
  | { op: 'tapReads' }
  | { op: 'close' };

export type ServicesReport =
  | { op: 'started'; tapPorts: number[] }
  | { op: 'membersDone' }
  /** A publish began at `at` (epoch ms, sub-ms precision); small events are reported in batches. */
  | { op: 'sent'; ids: string[]; at: number[] }
  | { op: 'smallStopped'; count: number }
  | { op: 'tapReads'; reads: number }
  | { op: 'problem'; message: string }
  | { op: 'closed' };

/** A document-like payload (many small records) of about `bytes` serialised bytes. */
export function payload(bytes: number): unknown {
  const pages = Math.max(1, Math.floor((bytes - 40) / 1024));
  const text = Math.max(1, Math.floor((bytes - 40) / pages) - 24);
  return {
    kind: 'scan',
    pages: Array.from({ length: pages }, (_, i) => ({
      page: i,
      text: randomBytes(text).toString('base64').slice(0, text),
    })),
  };
}

const now = (): number => performance.timeOrigin + performance.now();
const send = (report: ServicesReport): void => void (process.connected && process.send?.(report));
// The bench is gone (ended or killed): so are its services and their taps.
process.on('disconnect', () => process.exit(0));
const payloads = new Map<number, unknown>();
let publishers: Record<Mode, WarrenPublisher> | undefined;
let taps: RedisTap[] = [];
let tenantId = '';
let ticker: NodeJS.Timeout | undefined;
let smallCount = 0;
let sentIds: string[] = [];
let sentAt: number[] = [];

function publish(mode: Mode, id: string, team: string, data: unknown): void {
  if (!publishers) throw new Error('not started');
  sentIds.push(id);
  sentAt.push(now());
  const type = team === 'ward' ? 'doc.attached' : 'note.created';
  publishers[mode]
    .publishEvent({ id, tenantId, type, audience: { teams: [team] }, data })
    .catch((error: unknown) => send({ op: 'problem', message: `publish ${id}: ${String(error)}` }));
}

setInterval(() => {
  if (sentIds.length === 0) return;
  send({ op: 'sent', ids: sentIds, at: sentAt });
  sentIds = [];
  sentAt = [];
}, 25).unref();

async function handle(request: ServicesRequest): Promise<void> {
  switch (request.op) {
    case 'start': {
      tenantId = request.tenantId;
      if (request.taps)
        taps = await Promise.all(
          [0, 1].map(() => RedisTap.start(request.payloadRedisUrl ?? request.redisUrl)),
        );
      // Payloads live a minute, not the default hour: delivered within seconds here, and hundreds of
      // megabytes of them would otherwise pile up in Redis over the run, under the claim check only.
      const connect = (claimCheckBytes: number) =>
        // A silent logger: the resolver starts after these publishers, which is not worth a warning.
        WarrenPublisher.connect({
          ...request,
          claimCheckBytes,
          claimCheckTtlSec: 60,
          logger: silentLogger(),
        });
      publishers = {
        inline: await connect(request.thresholds.inline),
        claim: await connect(request.thresholds.claim),
      };
      send({ op: 'started', tapPorts: taps.map((t) => t.port) });
      return;
    }
    case 'members':
      for (const { userId, teamId } of request.teams)
        await publishers?.inline.addUserToTeam(tenantId, userId, teamId);
      send({ op: 'membersDone' });
      return;
    case 'publish': {
      let data = payloads.get(request.size);
      if (data === undefined) payloads.set(request.size, (data = payload(request.size)));
      publish(request.mode, request.id, request.team, data);
      return;
    }
    case 'small':
      smallCount = 0;
      ticker = setInterval(() => {
        const n = smallCount++;
        publish(request.mode, `S-${request.tag}-${n}`, 'desk', { n, text: 'vitals updated' });
      }, request.everyMs);
      return;
    case 'stopSmall':
      clearInterval(ticker);
      send({ op: 'smallStopped', count: smallCount });
      return;
    case 'tapReads':
      send({ op: 'tapReads', reads: taps.reduce((sum, tap) => sum + tap.jobReads(), 0) });
      return;
    case 'close':
      for (const publisher of Object.values(publishers ?? {})) await publisher.close();
      await Promise.all(taps.map((t) => t.close()));
      send({ op: 'closed' });
      setTimeout(() => process.exit(0), 50);
  }
}

process.on('message', (request: ServicesRequest) => {
  handle(request).catch((error: unknown) => send({ op: 'problem', message: String(error) }));
});
