import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import type { Registry } from '../../src/shared/metrics.js';
import { eventually, openTab, startTestStack, testConfig, testPrefix, token } from '../support/harness.js';

// What operators scrape must be what the README's metrics table tells them: every metric listed there
// exists with its type and labels, and none exists that it does not list.

interface Documented {
  type: string;
  labels: string[];
}

function readmeMetrics(): Map<string, Documented> {
  const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
  const rows = new Map<string, Documented>();
  for (const line of readme.split('\n')) {
    const cells = line.split('|').map((c) => c.trim());
    const name = /^`(warren_[a-z_]+)`$/.exec(cells[1] ?? '')?.[1];
    if (name === undefined) continue;
    const labels = [...(cells[3] ?? '').matchAll(/`([a-z_]+)`:?/g)]
      .filter((m) => m[0].endsWith(':') || cells[3] === `\`${m[1]}\``)
      .map((m) => m[1] as string);
    rows.set(name, { type: cells[2] ?? '', labels });
  }
  return rows;
}

/** `# TYPE` lines of a scrape: what a Prometheus server sees. */
function scraped(text: string): Map<string, string> {
  const types = new Map<string, string>();
  for (const m of text.matchAll(/^# TYPE (warren_\S+) (\S+)$/gm)) types.set(m[1] as string, m[2] as string);
  return types;
}

function labelNames(registry: Registry, name: string): string[] {
  const metric = registry.getSingleMetric(name) as unknown as { labelNames?: string[] } | undefined;
  return [...(metric?.labelNames ?? [])].sort();
}

describe('the metrics of gateway and resolver against the README', () => {
  it('lists every metric served at /metrics with its type and labels, and no tenant or user in a label', async () => {
    const prefix = testPrefix('metrics-docs');
    const config = testConfig(prefix, { gateway: { metricsPort: 0 }, resolver: { metricsPort: 0 } });
    const stack = await startTestStack(config);
    try {
      const tenantId = `tenant-${prefix.replace(/[^A-Za-z0-9]/g, '')}`;
      const userId = 'metrics-user-42';
      const tab = await openTab(stack.gateway.port, await token({ sub: userId, tid: tenantId }));
      await stack.warren.publishEvent({
        id: 'evt-metrics-docs',
        tenantId,
        type: 'note.created',
        audience: { users: [userId] },
        data: { ok: true },
      });
      await eventually(() => tab.eventIds().includes('evt-metrics-docs'), 'the event at the tab');
      tab.send('not json');
      await tab.close();

      const documented = readmeMetrics();
      const served = new Map<string, { type: string; labels: string[] }>();
      for (const [part, port, registry] of [
        ['gateway', stack.gateway.metricsPort, stack.gateway.metrics],
        ['resolver', stack.resolver.metricsPort, stack.resolver.metrics],
      ] as const) {
        const res = await fetch(`http://127.0.0.1:${port}/metrics`);
        expect(res.status, part).toBe(200);
        const text = await res.text();
        // Labels carry no tenant, user or event id: series must not grow with them.
        for (const id of [tenantId, userId, 'evt-metrics-docs'])
          expect(text, `${part}: ${id}`).not.toContain(id);
        for (const [name, type] of scraped(text))
          served.set(name, { type, labels: labelNames(registry, name) });
      }
      expect([...served.keys()].sort()).toEqual([...documented.keys()].sort());
      for (const [name, { type, labels }] of served) {
        expect(documented.get(name), name).toEqual({ type, labels });
        if (type === 'counter') expect(name, 'a counter ends in _total').toMatch(/_total$/);
      }
    } finally {
      await stack.close();
    }
  });
});
