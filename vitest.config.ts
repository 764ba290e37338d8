import { defineConfig } from 'vitest/config';

// Unit tests need nothing running. Integration tests share one real testbed (3 Cassandra nodes + 3 lxcpaths)
// started once by the global setup; their files run one at a time because tests kill, freeze and restart hosts.
export default defineConfig({
  test: {
    pool: 'forks',
    fileParallelism: false,
    testTimeout: 180_000,
    hookTimeout: 240_000,
    teardownTimeout: 120_000,
    projects: [
      { extends: true, test: { name: 'unit', include: ['test/unit/**/*.test.ts'] } },
      {
        extends: true,
        test: { name: 'integration', include: ['test/integration/**/*.test.ts'], globalSetup: ['test/support/global-setup.ts'] },
      },
    ],
  },
});
