import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import type cassandra from 'cassandra-driver';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ClusterClient } from '../../src/api/cluster-client.ts';
import { channelCredentials } from '../../src/api/tls.ts';
import { ClusterRegistry } from '../../src/cluster/registry.ts';
import { errorMessage } from '../../src/util/errors.ts';
import { makeTestCertificates, type TestCertificates } from '../../testcontainers/certs.ts';
import { startAgent, type TestbedAgent, stopAgents } from '../../testcontainers/agents.ts';
import { runCounterContainer } from '../../testcontainers/lxc.ts';
import { runningCopiesOf } from '../../testcontainers/testbed.ts';
import { until } from '../../testcontainers/until.ts';
import { connectStore, sharedTestbed, removeContainersEverywhere } from '../support/testbed.ts';
import { lxcr } from '../support/cli.ts';

/**
 * Mutual TLS on the real testbed: agents serve and call each other with certificates of one CA, clients must
 * present one too, and plaintext or unauthenticated clients are turned away.
 */

const testbed = sharedTestbed();
const CONTAINER = 'tls-a';
const scratch = mkdtempSync(join(tmpdir(), 'lxcr-tls-'));
let client: cassandra.Client;
let certs: TestCertificates;
const agents: TestbedAgent[] = [];

beforeAll(async () => {
  ({ client } = await connectStore(testbed, 'tls_snap'));
  const registry = new ClusterRegistry({ client, keyspace: 'tls_meta' });
  await registry.ensureSchema();
  await testbed.ring.waitSchemaAgreement();
  certs = await makeTestCertificates(join(scratch, 'certs'), testbed.hosts.map((h) => h.address));
  await runCounterContainer(testbed.host(1), CONTAINER);
  for (let i = 1; i <= testbed.hosts.length; i++) {
    agents.push(await startAgent(testbed, i, { snapshotKeyspace: 'tls_snap', metaKeyspace: 'tls_meta', tls: certs.agent(testbed.host(i).address) }));
  }
  await until(`${CONTAINER} adopted`, async () => ((await registry.ownership(CONTAINER))?.owner === 'host1' || undefined), 60_000, 500);
}, 240_000);

afterAll(async () => {
  await stopAgents(testbed);
  await removeContainersEverywhere(testbed, [CONTAINER]);
  await client?.shutdown();
  rmSync(scratch, { recursive: true, force: true });
}, 120_000);

describe('mutual TLS between agents and with clients', () => {
  it('serves a client with a certificate of the cluster CA, and agents call each other over it (a migration)', async () => {
    const api = new ClusterClient(agents[2]!.grpcEndpoint, channelCredentials({ tls: certs.client }));
    try {
      // '?' until the answering agent's gossip view has its first reading.
      await until('all hosts UN in host3\'s view', async () => ((await api.listHosts()).hosts.every((h) => h.state === 'UN') || undefined), 30_000, 500);
      const moved = await api.migrate(CONTAINER, 'host2'); // Handoff on host1 and Restore on host2, both over mTLS
      expect(moved).toMatchObject({ fromHost: 'host1', toHost: 'host2', epoch: 2 });
      expect(await runningCopiesOf(testbed, CONTAINER)).toEqual([2]);
    } finally {
      api.close();
    }
  });

  it('turns away a client without a certificate, and a plaintext one', async () => {
    const refused = async (credentials: grpc.ChannelCredentials) => {
      const api = new ClusterClient(agents[0]!.grpcEndpoint, credentials, { timeoutMs: 5000 });
      try {
        return await api.listHosts().then(() => 'served', (err: unknown) => errorMessage(err));
      } finally {
        api.close();
      }
    };
    expect(await refused(grpc.credentials.createSsl(readFileSync(certs.ca)))).toMatch(/ListHosts on .*: /);
    expect(await refused(grpc.credentials.createInsecure())).toMatch(/ListHosts on .*: /);
  });

  it('lxcr takes the TLS files, and says what is missing or unusable', () => {
    const endpoint = agents[0]!.grpcEndpoint;
    const tls = ['--tls-ca', certs.ca, '--tls-cert', certs.client.cert, '--tls-key', certs.client.key];
    expect(lxcr('status', '--agent', endpoint, ...tls).status).toBe(0);
    expect(lxcr('status', '--agent', endpoint, '--insecure').status).toBe(6);
    const none = lxcr('status', '--agent', endpoint);
    expect(none.status).toBe(2);
    expect(none.stderr).toMatch(/needs --tls-ca, --tls-cert and --tls-key .* or --insecure/);
    const missing = lxcr('status', '--agent', endpoint, '--tls-ca', join(scratch, 'nope.pem'), '--tls-cert', certs.client.cert, '--tls-key', certs.client.key);
    expect(missing.status).toBe(2);
    expect(missing.stderr).toMatch(/the TLS CA certificate .*nope\.pem cannot be used/);
    expect(lxcr('status', '--agent', endpoint, '--insecure', ...tls).stderr).toMatch(/--insecure and the --tls-\* options contradict each other/);
  });
});
