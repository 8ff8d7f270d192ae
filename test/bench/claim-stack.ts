import { fork, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import amqp, { type ChannelModel } from 'amqplib';
import { Redis } from 'ioredis';
import { SignJWT } from 'jose';
import { loadConfig } from '../../src/config/load.js';
import { startGateway, type Gateway } from '../../src/gateway/main.js';
import { nodeKey } from '../../src/protocol/ids.js';
import { silentLogger } from '../../src/shared/logger.js';
import { deletePrefixKeys, deleteTopology } from '../support/prefix-cleanup.js';
import { throughLocalPort } from '../support/tcp-proxy.js';
import type { ResolverReport, ResolverRequest } from './claim-resolver.js';
import type { Mode, ServicesReport, ServicesRequest } from './claim-services.js';
import type { TabSpec, TabsReport, TabsRequest } from './claim-tabs.js';
import type { BenchContext } from './lib.js';

export type { Mode };

/**
 * The claim-check bench's installation. In the bench process: two gateways, and a third (the probe node)
 * holding one small-event tab, whose key the spy at the broker binds. In child processes: the resolver;
 * the services (two publishers that differ only in their claim-check threshold, `inline` above any payload of the bench and `claim` below
 * all of them, and a Redis tap in front of each gateway); the tabs of the large events' audience;
 * bystander tabs that get small events only, so they are not slowed by reading other users' megabytes; and
 * the spy queues that time events at the broker.
 * The resolver's own threshold is above any payload: in inline mode every byte of `data` crosses the broker.
 */

const SECRET = 'bench-claim-secret-bench-claim-secret';
export const TENANT = 'acme';
/** Above every payload of the bench: nothing is claim-checked. */
const NEVER = 64 * 1024 * 1024;
/** Below every payload of the bench: everything is. */
const ALWAYS = 512;
/** How long a child may take over one step (start, membership, opening 100 tabs, closing). */
const ASK_TIMEOUT_MS = 60_000;

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

  constructor(private readonly file: string) {
    this.process = fork(fileURLToPath(new URL(file, import.meta.url)), [], {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    this.process.on('message', (report: Report) => {
      for (const listener of this.listeners) listener(report);
    });
  }

  private get name(): string {
    return this.file.replace(/^.*\//, '').replace(/\.ts$/, '');
  }

  onReport(listener: (report: Report) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  send(request: Request): void {
    this.process.send(request as object);
  }

  /**
   * Sends a request and resolves with the first report of kind `until`; rejects, naming the step, if the
   * child reports a problem, exits, or has not answered within `timeoutMs`.
   */
  ask<K extends Report['op']>(
    request: Request,
    until: K,
    timeoutMs = ASK_TIMEOUT_MS,
  ): Promise<Extract<Report, { op: K }>> {
    return new Promise((resolve, reject) => {
      const step = `${this.name}: ${(request as { op?: string }).op ?? '?'} (waiting for ${until})`;
      const settle = (error?: Error, report?: Report): void => {
        stop();
        clearTimeout(timer);
        this.process.off('exit', exited);
        if (error) reject(error);
        else resolve(report as Extract<Report, { op: K }>);
      };
      const exited = (code: number | null, signal: string | null) =>
        settle(new Error(`${step}: child exited (${signal ?? code})`));
      const timer = setTimeout(() => settle(new Error(`${step}: no answer in ${timeoutMs} ms`)), timeoutMs);
      const stop = this.onReport((report) => {
        if (report.op === 'problem')
          settle(new Error(`${step}: ${(report as { message?: string }).message}`));
        else if (report.op === until) settle(undefined, report);
      });
      this.process.once('exit', exited);
      this.send(request);
    });
  }
}

type TabsChild = Child<TabsRequest, TabsReport>;

/** What a start has made so far, for a failed one to undo. */
interface Made {
  children: { process: ChildProcess }[];
  gateways: Gateway[];
  stack?: ClaimStack;
}

/** The installation's queues, exchanges and Redis keys, on connections of their own. */
async function removeLeftovers(ctx: BenchContext, prefix: string, nodes: Gateway[]): Promise<void> {
  const model = await amqp.connect(ctx.rabbitmqUrl);
  const redis = [ctx.redisUrl, ...(ctx.payloadRedisUrl ? [ctx.payloadRedisUrl] : [])].map(
    (url) => new Redis(url),
  );
  try {
    const channel = await model.createChannel();
    await deleteTopology(channel, prefix, { queues: nodes.map((g) => g.queue) });
    for (const client of redis) await deletePrefixKeys(client, prefix);
  } finally {
    await model.close().catch(() => {});
    for (const client of redis) client.disconnect();
  }
}
type ServicesChild = Child<ServicesRequest, ServicesReport>;

export class ClaimStack {
  private constructor(
    readonly prefix: string,
    readonly gateways: Gateway[],
    private readonly probe: Gateway,
    /** Arrivals each small event makes: tabs of team `desk` and spies. */
    readonly smallRecipients: number,
    readonly services: ServicesChild,
    /** The service publishing the small events: not the one serialising megabytes. */
    readonly desk: ServicesChild,
    private readonly resolver: Child<ResolverRequest, ResolverReport>,
    private readonly tabs: TabsChild[],
    readonly broker: ChannelModel,
    private readonly ctx: BenchContext,
  ) {}

  static async start(ctx: BenchContext, options: StackOptions): Promise<ClaimStack> {
    const prefix = `bench-claim-${randomBytes(3).toString('hex')}`;
    const made: Made = { children: [], gateways: [] };
    try {
      return await ClaimStack.build(ctx, options, prefix, made);
    } catch (error) {
      // Nothing of a failed start outlives it: the next benches of the run would share the machine with it.
      if (made.stack) {
        await made.stack.close();
      } else {
        for (const child of made.children) child.process.kill();
        await Promise.allSettled(made.gateways.map((g) => g.close()));
        await removeLeftovers(ctx, prefix, made.gateways);
      }
      throw error;
    }
  }

  private static async build(
    ctx: BenchContext,
    options: StackOptions,
    prefix: string,
    made: Made,
  ): Promise<ClaimStack> {
    // `tap`: a gateway's way to its payloads, counting the reads. Without a payload Redis of their own, the
    // gateway reaches its one Redis through it, as deployed.
    const overrides = (tap?: string) => ({
      prefix,
      log: { level: 'silent' },
      rabbitmq: { url: ctx.rabbitmqUrl },
      redis: { url: ctx.payloadRedisUrl ? ctx.redisUrl : (tap ?? ctx.redisUrl) },
      jwt: { secret: SECRET },
      // A tab may hold a few 1 MiB frames while it reads; the 4 MiB default would close it (4009).
      gateway: { host: '127.0.0.1', port: 0, drainWindowMs: 0, maxBackpressureBytes: 32 * 1024 * 1024 },
      claimCheck: {
        bytes: NEVER,
        ...(ctx.payloadRedisUrl ? { redisUrl: tap ?? ctx.payloadRedisUrl } : {}),
      },
    });
    const child = <C extends { process: ChildProcess }>(c: C): C => (made.children.push(c), c);
    const gateway = (g: Gateway): Gateway => (made.gateways.push(g), g);
    const services: ServicesChild = child(new Child('./claim-services.ts'));
    const start = {
      op: 'start',
      ...ctx,
      prefix,
      tenantId: TENANT,
      thresholds: { inline: NEVER, claim: ALWAYS },
    };
    const { tapPorts } = await services.ask({ ...start, op: 'start', taps: true }, 'started');
    const desk: ServicesChild = child(new Child('./claim-services.ts'));
    await desk.ask({ ...start, op: 'start', taps: false }, 'started');
    const gateways: Gateway[] = [];
    for (const tapPort of tapPorts) {
      const config = loadConfig({
        env: {},
        overrides: overrides(throughLocalPort(ctx.payloadRedisUrl ?? ctx.redisUrl, tapPort)),
      });
      gateways.push(gateway(await startGateway(config, { logger: silentLogger() })));
    }
    // A third node holding one tab of team `desk` and no one else: the deliveries routed to it are small
    // events only, so the spy bound to its key times them without taking the large events' megabytes on
    // the broker tier's CPU.
    const probe = gateway(
      await startGateway(loadConfig({ env: {}, overrides: overrides() }), {
        logger: silentLogger(),
      }),
    );
    const resolver = child(new Child<ResolverRequest, ResolverReport>('./claim-resolver.ts'));
    await resolver.ask({ op: 'start', overrides: overrides() }, 'started');

    const port = (i: number) => (gateways[i % gateways.length] as Gateway).port;
    const teams: { userId: string; teamId: string }[] = [];
    const audience: TabSpec[] = [];
    for (let i = 0; i < options.users; i += 1) {
      const userId = `user-${String(i).padStart(3, '0')}`;
      teams.push({ userId, teamId: 'ward' });
      if (i < options.shared) teams.push({ userId, teamId: 'desk' });
      audience.push({
        port: port(i),
        token: await jwt(userId),
        group: i < options.shared ? 'shared' : 'ward',
      });
    }
    const bystanders: TabSpec[] = [];
    for (let i = 0; i < options.bystanders; i += 1) {
      teams.push({ userId: `visitor-${i}`, teamId: 'desk' });
      bystanders.push({ port: port(i), token: await jwt(`visitor-${i}`), group: 'bystander' });
    }
    teams.push({ userId: 'visitor-probe', teamId: 'desk' });
    bystanders.push({ port: probe.port, token: await jwt('visitor-probe'), group: 'probe' });
    await services.ask({ op: 'members', teams }, 'membersDone');
    // The audience's tabs, the bystanders' tabs, and the spies (a tabs process with no tabs): apart, so that
    // each can be put with its tier (tierProcesses).
    const tabs: TabsChild[] = [0, 1, 2].map(() => child(new Child('./claim-tabs.ts')));
    const stack = new ClaimStack(
      prefix,
      gateways,
      probe,
      // Every small event reaches each desk tab (the probe's too) and the two spies once.
      options.shared + options.bystanders + 1 + 2,
      services,
      desk,
      resolver,
      tabs,
      await amqp.connect(ctx.rabbitmqUrl),
      ctx,
    );
    made.stack = stack;
    await (tabs[0] as TabsChild).ask({ op: 'open', tabs: audience }, 'opened');
    await (tabs[1] as TabsChild).ask({ op: 'open', tabs: bystanders }, 'opened');
    // Small events as the services' publishes reach the broker: the first hop, before any resolver.
    await (tabs[2] as TabsChild).ask(
      {
        op: 'spy',
        rabbitmqUrl: ctx.rabbitmqUrl,
        exchange: `${prefix}.events`,
        // The small events' type only (`<tenant>.<type>`): the large ones never reach this process.
        bindingKey: `${TENANT}.note.created`,
        idPrefix: 'S-',
        group: 'published',
      },
      'spying',
    );
    // Small events as they leave the broker for the gateways: what the gateways' own work cannot delay.
    await (tabs[2] as TabsChild).ask(
      {
        op: 'spy',
        rabbitmqUrl: ctx.rabbitmqUrl,
        exchange: `${prefix}.deliveries`,
        // The probe node's key: deliveries are routed to the nodes holding recipients.
        bindingKey: nodeKey(probe.nodeId),
        idPrefix: 'S-',
        group: 'broker',
      },
      'spying',
    );
    return stack;
  }

  /**
   * The bench's processes by tier (cpu-tiers.ts). Broker tier: the resolver, the small events' publisher
   * and the spies. Edge tier: this process (the gateways), the large events' publisher with the Redis taps,
   * and every tab.
   */
  tierProcesses(): { broker: number[]; edge: number[] } {
    const pid = (child: { process: ChildProcess }) => child.process.pid as number;
    const [audience, bystanders, spies] = this.tabs as [TabsChild, TabsChild, TabsChild];
    return {
      broker: [pid(this.resolver), pid(this.desk), pid(spies)],
      edge: [process.pid, pid(this.services), pid(audience), pid(bystanders)],
    };
  }

  /** From now on the tabs report an event whose id starts with `prefix` once `count` tabs have it. */
  expectWhole(prefix: string, count: number): void {
    (this.tabs[0] as TabsChild).send({ op: 'expect', prefix, tabs: count });
  }

  onTabs(listener: (report: TabsReport) => void): () => void {
    const stops = this.tabs.map((t) => t.onReport(listener));
    return () => stops.forEach((stop) => stop());
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
  async tapReads(): Promise<number> {
    return (await this.services.ask({ op: 'tapReads' }, 'tapReads')).reads;
  }

  /** Closes everything it started, each part whatever became of the others. */
  async close(): Promise<void> {
    for (const tabs of this.tabs) await tabs.ask({ op: 'close' }, 'closed').catch(() => {});
    await this.resolver.ask({ op: 'close' }, 'closed').catch(() => {});
    const nodes = [...this.gateways, this.probe];
    await Promise.allSettled(nodes.map((g) => g.close()));
    await this.services.ask({ op: 'close' }, 'closed').catch(() => {});
    await this.desk.ask({ op: 'close' }, 'closed').catch(() => {});
    await this.broker.close().catch(() => {});
    await removeLeftovers(this.ctx, this.prefix, nodes);
  }
}
