import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/unit/**/*.test.ts', 'test/integration/**/*.test.ts', 'test/e2e/**/*.test.ts'],
    globalSetup: ['test/support/global-setup.ts'],
    // uWebSockets.js and the broker clients are happiest in plain child processes.
    pool: 'forks',
    // Two files at a time, also on two cores (the default there is one): most of a test's time is spent
    // waiting on the broker, Redis, timers and sockets, and each file has a prefix of its own. 5.5 min
    // instead of 9 on the CI machine.
    maxWorkers: 2,
    testTimeout: 30_000,
    hookTimeout: 30_000,
    teardownTimeout: 30_000,
  },
});
