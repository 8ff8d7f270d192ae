// Child process of the claim-check bench (claim-stack.ts): holds its tabs, so reading 100 copies of a
// megabyte is not billed to the gateways' event loop, and reads them as lightly as it can (raw-tab.ts).
// Reports, per event, when every expected tab had it.
// It can also hold a spy queue on the deliveries exchange, to time events as they leave the broker.
import amqp from 'amqplib';
import { RawTab } from './raw-tab.js';

export interface TabSpec {
  port: number;
  token: string;
  /** Reported with each arrival of an event that is not counted whole. */
  group: string;
}

export type TabsRequest =
  | { op: 'open'; tabs: TabSpec[] }
  /** From now on, report an event once this many tabs got it (per event id prefix). */
  | { op: 'expect'; prefix: string; tabs: number }
  /** Report each message routed with `bindingKey` whose id starts with `idPrefix` as an arrival of `group`. */
  | { op: 'spy'; rabbitmqUrl: string; exchange: string; bindingKey: string; idPrefix: string; group: string }
  | { op: 'close' };

export type TabsReport =
  | { op: 'opened'; tabs: number }
  | { op: 'spying' }
  /** A whole event: the last of its expected tabs got it at `at` (epoch ms, sub-ms precision). */
  | { op: 'done'; id: string; at: number; bytes: number }
  /** Arrivals of events reported per tab (small events), batched. */
  | { op: 'arrivals'; ids: string[]; at: number[]; groups: string[] }
  | { op: 'problem'; message: string }
  | { op: 'closed' };

const now = (): number => performance.timeOrigin + performance.now();
const EVENT_HEAD = Buffer.from('{"type":"event","id":"');
const sockets: RawTab[] = [];
const counts = new Map<string, { tabs: number; bytes: number }>();
let expectations: { prefix: string; tabs: number }[] = [];
let closing = false;
let pendingIds: string[] = [];
let pendingAt: number[] = [];
let pendingGroups: string[] = [];

function send(report: TabsReport): void {
  if (process.connected) process.send?.(report);
}

// The bench is gone (ended or killed): so are its tabs.
process.on('disconnect', () => process.exit(0));

// Event ids are short ASCII; only the head of a frame is decoded, never the payload.
function eventId(frame: Buffer): string | undefined {
  const at = EVENT_HEAD.length;
  if (frame.length < at || frame.compare(EVENT_HEAD, 0, at, 0, at) !== 0) return undefined;
  const end = frame.indexOf(0x22, at);
  return end < 0 ? undefined : frame.toString('latin1', at, end);
}

function arrived(id: string, at: number, group: string): void {
  pendingIds.push(id);
  pendingAt.push(at);
  pendingGroups.push(group);
}

async function spy(request: Extract<TabsRequest, { op: 'spy' }>): Promise<void> {
  const { rabbitmqUrl, exchange, bindingKey, idPrefix, group } = request;
  const model = await amqp.connect(rabbitmqUrl);
  const channel = await model.createChannel();
  const { queue } = await channel.assertQueue('', { exclusive: true, autoDelete: true });
  await channel.bindQueue(queue, exchange, bindingKey);
  await channel.consume(
    queue,
    (m) => {
      const id: unknown = m?.properties.messageId;
      if (typeof id === 'string' && id.startsWith(idPrefix)) arrived(id, now(), group);
    },
    { noAck: true },
  );
  process.once('disconnect', () => void model.close().catch(() => {}));
}

/** A message: its first bytes (`head`) and its length. */
function onFrame(head: Buffer, length: number, group: string): void {
  const at = now();
  const id = eventId(head);
  if (id === undefined) {
    const text = head.toString('utf8');
    if (text.includes('"type":"error"')) send({ op: 'problem', message: `error frame: ${text}` });
    return;
  }
  const rule = expectations.find((e) => id.startsWith(e.prefix));
  if (!rule) return arrived(id, at, group);
  const count = counts.get(id) ?? { tabs: 0, bytes: 0 };
  count.tabs += 1;
  count.bytes += length;
  if (count.tabs < rule.tabs) {
    counts.set(id, count);
    return;
  }
  counts.delete(id);
  send({ op: 'done', id, at, bytes: count.bytes });
}

function open(spec: TabSpec): Promise<void> {
  return new Promise((resolve, reject) => {
    let welcomed = false;
    RawTab.open(spec.port, `/ws?token=${spec.token}`, {
      message: (head, length) => {
        if (welcomed) return onFrame(head, length, spec.group);
        if (head.includes('"type":"welcome"')) {
          welcomed = true;
          resolve();
        }
      },
      close: (code) => {
        if (!welcomed) reject(new Error(`closed with ${code} before welcome`));
        else if (!closing) send({ op: 'problem', message: `tab closed by the gateway with ${code}` });
      },
    }).then((tab) => sockets.push(tab), reject);
  });
}

setInterval(() => {
  if (pendingIds.length === 0) return;
  send({ op: 'arrivals', ids: pendingIds, at: pendingAt, groups: pendingGroups });
  pendingIds = [];
  pendingAt = [];
  pendingGroups = [];
}, 50).unref();

process.on('message', (request: TabsRequest) => {
  if (request.op === 'open') {
    // A few at a time: the gateways bind each user on first connect.
    void (async () => {
      for (let i = 0; i < request.tabs.length; i += 10) {
        await Promise.all(request.tabs.slice(i, i + 10).map(open));
      }
      send({ op: 'opened', tabs: sockets.length });
    })().catch((error: unknown) => send({ op: 'problem', message: String(error) }));
  } else if (request.op === 'spy') {
    spy(request).then(
      () => send({ op: 'spying' }),
      (error: unknown) => send({ op: 'problem', message: String(error) }),
    );
  } else if (request.op === 'expect') {
    expectations = [...expectations.filter((e) => e.prefix !== request.prefix), request];
  } else {
    closing = true;
    for (const tab of sockets) tab.terminate();
    send({ op: 'closed' });
    setTimeout(() => process.exit(0), 50);
  }
});
