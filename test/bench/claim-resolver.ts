// Child process of the claim-check bench (claim-stack.ts): the resolver, in a process of its own as it is
// deployed, so the gateways' fan-out in the bench process does not stall resolving and the other way round.
import { loadConfig } from '../../src/config/load.js';
import { startResolver, type Resolver } from '../../src/resolver/main.js';
import { silentLogger } from '../../src/shared/logger.js';

export type ResolverRequest = { op: 'start'; overrides: Record<string, unknown> } | { op: 'close' };
export type ResolverReport = { op: 'started' } | { op: 'closed' } | { op: 'problem'; message: string };

let resolver: Resolver | undefined;
const send = (report: ResolverReport): void => void (process.connected && process.send?.(report));
// The bench is gone (ended or killed): so is its resolver.
process.on('disconnect', () => process.exit(0));

process.on('message', (request: ResolverRequest) => {
  void (async () => {
    if (request.op === 'start') {
      resolver = await startResolver(loadConfig({ env: {}, overrides: request.overrides }), {
        logger: silentLogger(),
      });
      send({ op: 'started' });
    } else {
      await resolver?.close();
      send({ op: 'closed' });
      setTimeout(() => process.exit(0), 50);
    }
  })().catch((error: unknown) => send({ op: 'problem', message: String(error) }));
});
