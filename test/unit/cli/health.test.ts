import { describe, expect, it } from 'vitest';
import { healthUrl } from '../../../src/cli/health.js';
import { loadConfig } from '../../../src/config/load.js';

describe('warren health: where it asks', () => {
  it('asks a wildcard listener through IPv4 loopback, which a dual-stack `::` listener answers too', () => {
    for (const host of ['0.0.0.0', '::']) {
      const config = loadConfig({ env: { WARREN_GATEWAY_HOST: host, WARREN_GATEWAY_PORT: '9100' } });
      expect(healthUrl(config, 'gateway')).toBe('http://127.0.0.1:9100/healthz');
    }
  });

  it('asks a named address as it is, IPv6 in brackets', () => {
    const v6 = loadConfig({ env: { WARREN_GATEWAY_HOST: '::1', WARREN_GATEWAY_PORT: '9100' } });
    expect(healthUrl(v6, 'gateway')).toBe('http://[::1]:9100/healthz');
    const v4 = loadConfig({ env: { WARREN_GATEWAY_HOST: '10.0.0.7', WARREN_GATEWAY_PORT: '9100' } });
    expect(healthUrl(v4, 'gateway')).toBe('http://10.0.0.7:9100/healthz');
  });

  it('says why when a resolver serves no /healthz', () => {
    const config = loadConfig({ env: {} });
    expect(healthUrl(config, 'resolver')).toMatchObject({ problem: expect.stringContaining('metricsPort') });
  });
});
