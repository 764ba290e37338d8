import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { TestbedError, ToolMissingError } from '../../src/util/errors.ts';
import { checkDockerEngine } from '../../testcontainers/cassandra-docker.ts';
import { evenTokens } from '../../testcontainers/cassandra.ts';
import { Testbed, backendFromEnv } from '../../testcontainers/testbed.ts';

const engineAnswers = await checkDockerEngine(1000).then(
  () => true,
  () => false,
);
const root = mkdtempSync(join(tmpdir(), 'lxcr-backend-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe('choosing what runs the Cassandra nodes', () => {
  it('defaults to local JVMs and accepts only local or docker', () => {
    expect(backendFromEnv(undefined)).toBe('local');
    expect(backendFromEnv('local')).toBe('local');
    expect(backendFromEnv('docker')).toBe('docker');
    expect(() => backendFromEnv('podman')).toThrow(TestbedError);
    expect(() => backendFromEnv('podman')).toThrow(/must be "local" \(the default\) or "docker", not "podman"/);
  });

  it.skipIf(engineAnswers)('without a Docker engine, LXCR_CASSANDRA=docker fails at once saying so, leaving nothing behind', async () => {
    const saved = process.env.LXCR_CASSANDRA;
    process.env.LXCR_CASSANDRA = 'docker';
    try {
      const error = await Testbed.start({ name: 'nodocker', subnet: 15, hosts: 1, rootDir: root }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(ToolMissingError);
      expect((error as Error).message).toMatch(/needs a Docker engine, and none answers on \S+docker.sock/);
      expect(existsSync(join(root, 'nodocker'))).toBe(false);
    } finally {
      if (saved === undefined) delete process.env.LXCR_CASSANDRA;
      else process.env.LXCR_CASSANDRA = saved;
    }
  });
});

describe('evenTokens', () => {
  it('spaces one token per node evenly over the Murmur3 range', () => {
    expect(evenTokens(3)).toEqual(['-9223372036854775808', '-3074457345618258603', '3074457345618258602']);
    expect(evenTokens(1)).toEqual(['-9223372036854775808']);
  });
});
