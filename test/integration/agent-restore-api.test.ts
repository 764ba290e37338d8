import { mkdtempSync, rmSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import type cassandra from 'cassandra-driver';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentClient } from '../../src/api/agent-client.ts';
import { checkpointToStore } from '../../src/checkpoint/procedures.ts';
import { ClusterRegistry } from '../../src/cluster/registry.ts';
import type { CassandraSnapshotStore } from '../../src/storage/cassandra-store.ts';
import { CompressionPolicy } from '../../src/storage/codec.ts';
import { decodeManifest } from '../../src/storage/manifest.ts';
import { CodedError } from '../../src/util/errors.ts';
import { startAgent, stopAgent, type TestbedAgent } from '../../testcontainers/agents.ts';
import { createCounterContainer, runtimeFor, startContainer, waitRunning } from '../../testcontainers/lxc.ts';
import { pseudoRandom } from '../support/bytes.ts';
import { connectStore, removeContainer, sharedTestbed } from '../support/testbed.ts';

/**
 * The Restore call of a real agent (host 2) against real snapshots: every refusal has its status code and a
 * message that says why, no refusal moves the container, and a restore that fails half-way leaves nothing
 * running and the committed snapshot untouched.
 */

const testbed = sharedTestbed();
const SNAPSHOTS = 'restore_api_snap';
const META = 'restore_api_meta';
const source = testbed.host(1);
const target = testbed.host(2);
const staging = mkdtempSync('/var/tmp/lxcr-staging-');
let client: cassandra.Client;
let store: CassandraSnapshotStore;
let registry: ClusterRegistry;
let agent: TestbedAgent;
let peer: AgentClient;

async function checkpointOnHost1(name: string): Promise<number> {
  await createCounterContainer(source, name);
  await startContainer(source, name);
  await waitRunning(source, name);
  const { version } = await checkpointToStore({ runtime: runtimeFor(source), store, policy: new CompressionPolicy(), container: name, sourceHost: source.hostId, stagingDir: staging });
  await removeContainer(runtimeFor(source), name); // host 1 "failed": its copy is gone
  await registry.adopt(name, source.hostId);
  return version;
}

const failure = (promise: Promise<unknown>) => promise.then(() => undefined, (e: unknown) => e as CodedError);

beforeAll(async () => {
  ({ client, store } = await connectStore(testbed, SNAPSHOTS));
  registry = new ClusterRegistry({ client, keyspace: META });
  await registry.ensureSchema();
  await testbed.ring.waitSchemaAgreement();
  agent = await startAgent(testbed, 2, { snapshotKeyspace: SNAPSHOTS, metaKeyspace: META });
  peer = new AgentClient(agent.grpcEndpoint, grpc.credentials.createInsecure());
}, 120_000);

afterAll(async () => {
  peer?.close();
  await stopAgent(testbed, 2);
  for (const name of ['api-ok', 'api-rotten']) for (const host of [source, target]) await removeContainer(runtimeFor(host), name);
  await client?.shutdown();
  rmSync(staging, { recursive: true, force: true });
}, 120_000);

describe("a real agent's Restore", () => {
  it('restores a failed host\'s container once, and answers a repeat without doing it twice', async () => {
    const version = await checkpointOnHost1('api-ok');
    const response = await peer.restore({ container: 'api-ok', expectedEpoch: 1, fromHost: source.hostId, requestedBy: 'test' }, 120_000);
    expect(response).toMatchObject({ container: 'api-ok', host: target.hostId, epoch: 2, version, alreadyRestored: false });
    expect(await runtimeFor(target).state('api-ok')).toBe('RUNNING');
    const repeat = await peer.restore({ container: 'api-ok', expectedEpoch: 1, fromHost: source.hostId, requestedBy: 'test' }, 120_000);
    expect(repeat).toMatchObject({ host: target.hostId, epoch: 2, alreadyRestored: true });
    expect(await registry.ownership('api-ok')).toMatchObject({ owner: target.hostId, epoch: 2, state: 'running' });
  });

  it('refuses, with the right code and without claiming anything, an unknown container, a missing or uncommitted version and a stale epoch', async () => {
    const unknown = await failure(peer.restore({ container: 'no-such-container', expectedEpoch: 1 }, 30_000));
    expect(unknown?.code).toBe('NOT_FOUND');
    expect(String(unknown)).toMatch(/no-such-container is not in the cluster registry/);

    const missing = await failure(peer.restore({ container: 'api-ok', version: 999, expectedEpoch: 2 }, 30_000));
    expect(missing?.code).toBe('NOT_FOUND');
    expect(String(missing)).toMatch(/api-ok has no version 999/);

    const uncommitted = await store.beginVersion('api-ok', 'host1');
    const notCommitted = await failure(peer.restore({ container: 'api-ok', version: uncommitted, expectedEpoch: 2 }, 30_000));
    expect(notCommitted?.code).toBe('FAILED_PRECONDITION');
    expect(String(notCommitted)).toMatch(/never committed/);

    const stale = await failure(peer.restore({ container: 'api-ok', expectedEpoch: 5 }, 30_000));
    expect(stale?.code).toBe('ABORTED');
    expect(String(stale)).toMatch(/owned by host2 at epoch 2/);

    expect(await registry.ownership('api-ok')).toMatchObject({ owner: target.hostId, epoch: 2, state: 'running' });
    expect(await registry.ownership('no-such-container')).toBeUndefined();
  });

  it('fails a restore from a snapshot corrupted on both replicas with DATA_LOSS, leaving nothing running and the snapshot as it was', async () => {
    const version = await checkpointOnHost1('api-rotten');
    const manifest = decodeManifest((await store.latestCommitted('api-rotten'))!.manifest!);
    const victim = manifest.files.find((f) => f.path === 'rootfs.tar')!.chunks[0]!;
    await client.execute(`UPDATE ${SNAPSHOTS}.chunks SET data = ? WHERE container = ? AND bucket = ? AND hash = ?`,
      [pseudoRandom(victim.storedSize, 77), 'api-rotten', victim.bucket, Buffer.from(victim.hash, 'hex')], { prepare: true, consistency: 2 });

    const error = await failure(peer.restore({ container: 'api-rotten', expectedEpoch: 1 }, 120_000));
    expect(error?.code).toBe('INTEGRITY'); // DATA_LOSS on the wire
    expect(String(error)).toContain(`no good copy of chunk ${victim.hash}`);
    expect(await runtimeFor(target).exists('api-rotten')).toBe(false);
    expect((await store.latestCommitted('api-rotten'))?.version).toBe(version);
    // Claimed by host 2 and failed there: coordinators see restore-failed and try the next candidate.
    expect(await registry.ownership('api-rotten')).toMatchObject({ owner: target.hostId, epoch: 2, state: 'restore-failed' });
  });

  it('refuses a malformed request with INVALID_ARGUMENT', async () => {
    expect((await failure(peer.restore({ container: 'a/b' }, 10_000)))?.code).toBe('INVALID_ARGUMENT');
  });
});
