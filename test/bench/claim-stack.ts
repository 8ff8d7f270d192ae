import { fork, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import amqp, { type ChannelModel } from 'amqplib';
import { Redis } from 'ioredis';
import { SignJWT } from 'jose';
import { loadConfig } from '../../src/config/load.js';
import { startGateway, type Gateway } from '../../src/gateway/main.js';
import { WarrenPublisher } from '../../src/sdk/publisher/index.js';
import { silentLogger } from '../../src/shared/logger.js';
import { RedisTap } from './claim-probes.js';
import type { BenchContext } from './lib.js';
import type { ResolverReport, ResolverRequest } from './claim-resolver.js';
import type { TabSpec, TabsReport, TabsRequest } from './claim-tabs.js';

/**
 * The claim-check bench's installation: two in-process gateways (each reaching Redis through a RedisTap),
 * one resolver in a child process (as deployed: its work and the gateways' fan-out do not share a thread),
 * and two publishers that differ only in their claim-check threshold: `inline` above any payload of the
 * bench, `claim` below all of them. The resolver's own threshold is above any payload, so in inline mode
 * every byte of `data` crosses the broker. Tabs live in child processes (claim-tabs.ts).
 */

const SECRET = 'bench-claim-secret-bench-claim-secret';
export const TENANT = 'acme';
export type Mode = 'inline' | 'claim';
/** Above every payload of the bench: nothing is claim-checked. */
const NEVER = 64 * 1024 * 1024;
/** Below every payload of the bench: everything is. */
const ALWAYS = 512;

export interface StackOptions {
  /** Users in team `ward`, the large events' audience; alternately on each node. */
  users: number;
  /** The first of them are also in team `desk`, the small events' audience (tab group `shared`). */
  shared: number;
  /** Users in `desk` only, alternately on each node (tab group `bystander`). */
  bystanders: number;
}

async function jwt(sub: string): Promise<string> {
  return new SignJWT({ tid: TENANT })
    .setProtectedHeader({ alg: 'HS256' })
    .setSubject(sub)
    .setExpirationTime(Math.floor(Date.now() / 1000) + 3600)
    .sign(new TextEncoder().encode(SECRET));
}

/** A child process of the bench speaking in request and report messages. */
class Child<Request, Report extends { op: string }> {
  private readonly listeners = new Set<(report: Report) => void>();
  readonly process: ChildProcess;

  constructor(file: string) {
    this.process = fork(fileURLToPath(new URL(file, import.meta.url)), [], {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    this.process.on('message', (report: Report) => {
      for (const listener of this.listeners) listener(report);
    });
  }

  onReport(listener: (report: Report) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Sends a request; resolves at the first report of kind `until` (at once without it). */
  request(request: Request, until?: Report['op']): Promise<void> {
    return new Promise((resolve, reject) => {
      if (!until) {
        this.process.send(request as object);
        resolve();
        return;
      }
      const stop = this.onReport((report) => {
        if (report.op === 'problem') reject(new Error((report as { message?: string }).message));
        else if (report.op !== until) return;
        else resolve();
        stop();
      });
      this.process.send(request as object);
    });
  }
}

type TabsChild = Child<TabsRequest, TabsReport>;

export class ClaimStack {
  private constructor(
    readonly prefix: string,
    readonly gateways: Gateway[],
    readonly taps: RedisTap[],
    private readonly resolver: Child<ResolverRequest, ResolverReport>,
    private readonly publishers: Record<Mode, WarrenPublisher>,
    /** Tabs of the large events' audience; bystanders, who get small events only, in a process of their own. */
    private readonly tabs: TabsChild[],
    readonly broker: ChannelModel,
    private readonly redis: Redis,
  ) {}

  static async start(ctx: BenchContext, options: StackOptions): Promise<ClaimStack> {
    const prefix = `bench-claim-${randomBytes(3).toString('hex')}`;
    const overrides = (redisUrl: string) => ({
      prefix,
      log: { level: 'silent' },
      rabbitmq: { url: ctx.rabbitmqUrl },
      redis: { url: redisUrl },
      jwt: { secret: SECRET },
      // A tab may hold a few 1 MiB frames while it reads; the 4 MiB default would close it (4009).
      gateway: { host: '127.0.0.1', port: 0, drainWindowMs: 0, maxBackpressureBytes: 32 * 1024 * 1024 },
      claimCheck: { bytes: NEVER },
    });
    const logger = silentLogger();
    const taps = [await RedisTap.start(ctx.redisUrl), await RedisTap.start(ctx.redisUrl)];
    const gateways: Gateway[] = [];
    for (const tap of taps) {
      const config = loadConfig({ env: {}, overrides: overrides(tap.url(ctx.redisUrl)) });
      gateways.push(await startGateway(config, { logger }));
    }
    const resolver = new Child<ResolverRequest, ResolverReport>('./claim-resolver.ts');
    await resolver.request({ op: 'start', overrides: overrides(ctx.redisUrl) }, 'started');
    const connect = (claimCheckBytes: number) =>
      WarrenPublisher.connect({
        rabbitmqUrl: ctx.rabbitmqUrl,
        redisUrl: ctx.redisUrl,
        prefix,
        claimCheckBytes,
      });
    const publishers = { inline: await connect(NEVER), claim: await connect(ALWAYS) };
    const port = (i: number) => (gateways[i % gateways.length] as Gateway).port;
    const audience: TabSpec[] = [];
    for (let i = 0; i < options.users; i += 1) {
      const user = `user-${String(i).padStart(3, '0')}`;
      await publishers.inline.addUserToTeam(TENANT, user, 'ward');
      if (i < options.shared) await publishers.inline.addUserToTeam(TENANT, user, 'desk');
      audience.push({ port: port(i), token: await jwt(user), group: i < options.shared ? 'shared' : 'ward' });
    }
    const bystanders: TabSpec[] = [];
    for (let i = 0; i < options.bystanders; i += 1) {
      await publishers.inline.addUserToTeam(TENANT, `visitor-${i}`, 'desk');
      bystanders.push({ port: port(i), token: await jwt(`visitor-${i}`), group: 'bystander' });
    }
    const tabs = [
      new Child<TabsRequest, TabsReport>('./claim-tabs.ts'),
      new Child<TabsRequest, TabsReport>('./claim-tabs.ts'),
    ];
    const stack = new ClaimStack(
      prefix,
      gateways,
      taps,
      resolver,
      publishers,
      tabs,
      await amqp.connect(ctx.rabbitmqUrl),
      new Redis(ctx.redisUrl),
    );
    await (tabs[0] as TabsChild).request({ op: 'open', tabs: audience }, 'opened');
    await (tabs[1] as TabsChild).request({ op: 'open', tabs: bystanders }, 'opened');
    return stack;
  }

  /** From now on the tabs report an event whose id starts with `prefix` once `count` tabs have it. */
  async expectWhole(prefix: string, count: number): Promise<void> {
    await (this.tabs[0] as TabsChild).request({ op: 'expect', prefix, tabs: count });
  }

  onReport(listener: (report: TabsReport) => void): () => void {
    const stops = this.tabs.map((t) => t.onReport(listener));
    return () => stops.forEach((stop) => stop());
  }

  publisher(mode: Mode): WarrenPublisher {
    return this.publishers[mode];
  }

  /** Claim-check payload reads, per the gateways' own metric, summed over nodes. */
  async gatewayFetches(): Promise<number> {
    let total = 0;
    for (const gateway of this.gateways) {
      const metric = await gateway.metrics.getSingleMetric('warren_gateway_payload_fetches_total')?.get();
      total += metric?.values.reduce((sum, v) => sum + v.value, 0) ?? 0;
    }
    return total;
  }

  /** The same reads as seen on the wire by the taps. */
  tapReads(): number {
    return this.taps.reduce((sum, tap) => sum + tap.jobReads(), 0);
  }

  async close(): Promise<void> {
    for (const tabs of this.tabs) await tabs.request({ op: 'close' }, 'closed').catch(() => {});
    for (const publisher of Object.values(this.publishers)) await publisher.close();
    await this.resolver.request({ op: 'close' }, 'closed').catch(() => {});
    await Promise.all(this.gateways.map((g) => g.close()));
    await Promise.all(this.taps.map((t) => t.close()));
    const channel = await this.broker.createChannel();
    channel.on('error', () => {});
    for (const q of [`${this.prefix}.resolver`, `${this.prefix}.dead`, ...this.gateways.map((g) => g.queue)])
      await channel.deleteQueue(q).catch(() => {});
    for (const x of ['events', 'membership', 'deliveries', 'dlx'])
      await channel.deleteExchange(`${this.prefix}.${x}`).catch(() => {});
    await this.broker.close().catch(() => {});
    for (const pattern of [`{${this.prefix}:*`, `${this.prefix}:*`]) {
      let cursor = '0';
      do {
        const [next, keys] = await this.redis.scan(cursor, 'MATCH', pattern, 'COUNT', 1000);
        cursor = next;
        if (keys.length > 0) await this.redis.del(...keys);
      } while (cursor !== '0');
    }
    await this.redis.quit();
  }
}
