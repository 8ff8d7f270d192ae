import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export { Counter, Gauge, Histogram, Registry };

/** A registry per process (not prom-client's global one), so tests can run several nodes side by side. */
export function createRegistry(labels: Record<string, string>, defaults = true): Registry {
  const registry = new Registry();
  registry.setDefaultLabels(labels);
  if (defaults) collectDefaultMetrics({ register: registry });
  return registry;
}
