import { SpyQueue, type SpiedMessage } from './claim-probes.js';
import type { ClaimStack, Mode } from './claim-stack.js';
import { summarise } from './lib.js';

/**
 * How the claim-check bench loads an installation: large events to team `ward`, closed-loop or paced,
 * while small events go to team `desk` at a steady rate; what the tabs report comes back per event.
 */

export const SMALL_EVERY_MS = 20;
const WIRE_SAMPLES = 3;

const now = (): number => performance.timeOrigin + performance.now();
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

async function waitFor(check: () => boolean, what: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

/** What the services and the tabs report: when each event was published, whole large events, small arrivals. */
class Arrivals {
  readonly sentAt = new Map<string, number>();
  readonly done = new Map<string, number>();
  /** Small-event latencies per tab group; arrivals reported before their publish time wait in `early`. */
  readonly small = new Map<string, number[]>();
  private early: { id: string; at: number; group: string }[] = [];
  smallCount = 0;
  readonly problems: string[] = [];
  onDone = (_id: string): void => {};
  private readonly stops: (() => void)[];

  constructor(stack: ClaimStack) {
    this.stops = [
      ...[stack.services, stack.desk].map((service) =>
        service.onReport((report) => {
          if (report.op === 'sent') {
            report.ids.forEach((id, i) => this.sentAt.set(id, report.at[i] as number));
            const early = this.early;
            this.early = [];
            for (const e of early) this.arrived(e.id, e.at, e.group);
          } else if (report.op === 'problem') {
            this.problems.push(report.message);
          }
        }),
      ),
      stack.onTabs((report) => {
        if (report.op === 'done') {
          this.done.set(report.id, report.at);
          this.onDone(report.id);
        } else if (report.op === 'arrivals') {
          report.ids.forEach((id, i) => this.arrived(id, report.at[i] as number, report.groups[i] as string));
        } else if (report.op === 'problem') {
          this.problems.push(report.message);
        }
      }),
    ];
  }

  private arrived(id: string, at: number, group: string): void {
    const sent = this.sentAt.get(id);
    if (sent === undefined) {
      this.early.push({ id, at, group });
      return;
    }
    const list = this.small.get(group) ?? [];
    list.push(at - sent);
    this.small.set(group, list);
    this.smallCount += 1;
  }

  stop(): void {
    for (const stop of this.stops) stop();
  }

  check(): void {
    if (this.problems.length > 0) throw new Error(this.problems.join('; '));
  }
}

export interface Wire {
  /** Deliveries exchange, per event: the bytes of every message as published. */
  publishedBytes: number;
  /** Deliveries exchange, per event: every message times the gateway queues it reaches (one copy each). */
  brokerBytes: number;
  /** The largest copy: properties, headers (recipients included) and body. */
  perCopy: number;
  /** Copies per event: gateway queues reached, summed over its messages. */
  copies: number;
  /** Events exchange (publisher to resolver), per event. */
  eventBytes: number;
}

/**
 * Gateway queues one delivery message of a large event reaches. Node-routed: its node keys (routing key
 * plus CC). User-routed (not what this bench's resolver publishes): `nodes`, the nodes holding the large
 * events' audience, as every message of the bench has recipients on each of them.
 */
function queuesReached(message: SpiedMessage, nodes: number): number {
  return message.routingKey.startsWith('n.') ? 1 + message.cc : nodes;
}

/** Publishes large events one at a time with spies on both exchanges and measures their wire size. */
export async function wireSize(stack: ClaimStack, mode: Mode, size: number, nodes: number): Promise<Wire> {
  const arrivals = new Arrivals(stack);
  const deliveries = await SpyQueue.open(stack.broker, `${stack.prefix}.deliveries`, false);
  const events = await SpyQueue.open(stack.broker, `${stack.prefix}.events`, false);
  const ids = Array.from({ length: WIRE_SAMPLES }, (_, i) => `L-${mode}-${size}-wire-${i}`);
  try {
    for (const id of ids) {
      stack.services.send({ op: 'publish', mode, id, team: 'ward', size });
      await waitFor(() => arrivals.done.has(id) || arrivals.problems.length > 0, `${id} delivered`, 30_000);
    }
    const spied = () => ids.every((id) => deliveries.of(id).length > 0 && events.of(id).length > 0);
    await waitFor(spied, 'spied copies', 10_000);
    arrivals.check();
  } finally {
    arrivals.stop();
    await deliveries.close();
    await events.close();
  }
  const messages: SpiedMessage[] = ids.flatMap((id) => deliveries.of(id));
  const bytes = (m: SpiedMessage) => m.bodyBytes + m.headerBytes;
  const perEvent = (list: SpiedMessage[], f: (m: SpiedMessage) => number) =>
    list.reduce((s, m) => s + f(m), 0) / ids.length;
  return {
    publishedBytes: perEvent(messages, bytes),
    brokerBytes: perEvent(messages, (m) => bytes(m) * queuesReached(m, nodes)),
    perCopy: Math.max(...messages.map(bytes)),
    copies: perEvent(messages, (m) => queuesReached(m, nodes)),
    eventBytes: perEvent(
      ids.flatMap((id) => events.of(id)),
      (m) => m.bodyBytes + m.headerBytes,
    ),
  };
}

/** Large events closed-loop (`window` in flight), paced (`rate` per second), or none at all (`quiet`). */
export type Plan = { tag: string; durationMs: number } & (
  { window: number } | { rate: number } | { quiet: true }
);

/** Several runs as one: events and small-event samples pooled, rates and reads weighted by events. */
export function pool(runs: readonly Run[]): Run {
  const events = runs.reduce((n, r) => n + r.events, 0);
  const weighted = (f: (r: Run) => number) => runs.reduce((sum, r) => sum + f(r) * r.events, 0) / events;
  const samples: Run['samples'] = {};
  for (const run of runs)
    for (const [group, list] of Object.entries(run.samples)) (samples[group] ??= []).push(...list);
  const small: Run['small'] = {};
  for (const [group, list] of Object.entries(samples)) small[group] = summarise(list);
  return {
    events,
    eventsPerSec: weighted((r) => r.eventsPerSec),
    largeP50: summarise(runs.map((r) => r.largeP50)).p50,
    small,
    samples,
    smallLost: runs.reduce((n, r) => n + r.smallLost, 0),
    readsMetric: weighted((r) => r.readsMetric),
    readsTap: weighted((r) => r.readsTap),
  };
}

export interface Run {
  events: number;
  eventsPerSec: number;
  largeP50: number;
  /** Small-event latency per tab group (`shared`: these tabs get the large events too; `bystander`: not). */
  small: Record<string, ReturnType<typeof summarise>>;
  /** The latencies themselves, per group, so that runs can be pooled. */
  samples: Record<string, number[]>;
  smallLost: number;
  readsMetric: number;
  readsTap: number;
}

function pace(plan: Plan, started: number, publishLarge: () => void, arrivals: Arrivals): Promise<void> {
  if ('quiet' in plan) return sleep(plan.durationMs);
  if ('rate' in plan) {
    return (async () => {
      for (let i = 0; now() - started < plan.durationMs; i += 1) {
        await sleep(Math.max(0, started + (i * 1000) / plan.rate - now()));
        publishLarge();
      }
    })();
  }
  return new Promise<void>((resolve, reject) => {
    let inflight = 0;
    const issue = (): void => {
      if (arrivals.problems.length > 0) return reject(new Error(arrivals.problems.join('; ')));
      while (inflight < plan.window && now() - started < plan.durationMs) {
        inflight += 1;
        publishLarge();
      }
      if (inflight === 0) resolve();
    };
    arrivals.onDone = (id) => {
      if (!id.includes(`-${plan.tag}-`)) return;
      inflight -= 1;
      issue();
    };
    issue();
  });
}

/** Large events to `ward` for `plan.durationMs` while small events go to `desk` every SMALL_EVERY_MS. */
export async function drive(
  stack: ClaimStack,
  mode: Mode,
  size: number,
  plan: Plan,
  smallRecipients: number,
): Promise<Run> {
  const arrivals = new Arrivals(stack);
  const ids: string[] = [];
  const tag = `${mode}-${size}-${plan.tag}`;
  try {
    const fetches0 = await stack.gatewayFetches();
    const tap0 = await stack.tapReads();
    stack.desk.send({ op: 'small', mode, tag, everyMs: SMALL_EVERY_MS });
    const started = now();
    const publishLarge = (): void => {
      const id = `L-${tag}-${ids.length}`;
      ids.push(id);
      stack.services.send({ op: 'publish', mode, id, team: 'ward', size });
    };
    await pace(plan, started, publishLarge, arrivals);
    const allDone = () => ids.every((id) => arrivals.done.has(id)) || arrivals.problems.length > 0;
    await waitFor(allDone, 'large events', 60_000);
    const { count } = await stack.desk.ask({ op: 'stopSmall' }, 'smallStopped');
    const expected = count * smallRecipients;
    await waitFor(() => arrivals.smallCount >= expected, 'small events', 10_000).catch(() => {});
    arrivals.check();
    const fetches = (await stack.gatewayFetches()) - fetches0;
    const reads = (await stack.tapReads()) - tap0;
    const last = ids.length > 0 ? Math.max(...ids.map((id) => arrivals.done.get(id) as number)) : now();
    const latency = ids.map((id) => (arrivals.done.get(id) as number) - (arrivals.sentAt.get(id) ?? NaN));
    const small: Run['small'] = {};
    const samples: Run['samples'] = {};
    for (const [group, list] of arrivals.small) {
      small[group] = summarise(list);
      samples[group] = list;
    }
    return {
      events: ids.length,
      eventsPerSec: ids.length / ((last - started) / 1000),
      largeP50: summarise(latency).p50,
      small,
      samples,
      smallLost: expected - arrivals.smallCount,
      readsMetric: ids.length > 0 ? fetches / ids.length : 0,
      readsTap: ids.length > 0 ? reads / ids.length : 0,
    };
  } finally {
    arrivals.stop();
  }
}
