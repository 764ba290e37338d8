import type cassandra from 'cassandra-driver';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EventLog } from '../../src/cluster/events.ts';
import { ClusterRegistry } from '../../src/cluster/registry.ts';
import { RegistryOwnershipGuard } from '../../src/failover/fencing.ts';
import type { CassandraSnapshotStore } from '../../src/storage/cassandra-store.ts';
import { CompressionPolicy } from '../../src/storage/codec.ts';
import { uploadSnapshot } from '../../src/storage/snapshots.ts';
import { ConflictError } from '../../src/util/errors.ts';
import { createLogger } from '../../src/util/log.ts';
import { pseudoRandom } from '../support/bytes.ts';
import { connectStore, sharedTestbed } from '../support/testbed.ts';

/**
 * Commit-time fencing on the real registry and store: a host that lost a container to a failover (it was taken
 * for dead, then woke up mid-upload) cannot commit a checkpoint of its diverged copy.
 */

const testbed = sharedTestbed();
let client: cassandra.Client;
let store: CassandraSnapshotStore;
let registry: ClusterRegistry;

beforeAll(async () => {
  ({ client, store } = await connectStore(testbed, 'fencing_test'));
  registry = new ClusterRegistry({ client, keyspace: 'fencing_test_meta' });
  await registry.ensureSchema();
  await testbed.ring.waitSchemaAgreement();
}, 120_000);

afterAll(async () => {
  await client?.shutdown();
});

describe('commit-time fencing', () => {
  it('commits while this host owns the container, and leaves the version uncommitted once another host claimed it', async () => {
    const container = 'fenced-a';
    const events = new EventLog(client, registry.keyspace, createLogger('test', 'error'));
    const guard = new RegistryOwnershipGuard(registry, 'host1', events);
    const upload = (seed: number) =>
      uploadSnapshot({
        store, container, sourceHost: 'host1', policy: new CompressionPolicy(),
        sources: [{ path: 'images/pages-1.img', mode: 0o600, open: () => [pseudoRandom(2 * 1024 * 1024, seed)] }],
        beforeCommit: () => guard.checkStillOwner(container),
      });

    expect(await guard.mayRun(container)).toBe(true);
    const first = await upload(41);
    expect((await store.latestCommitted(container))?.version).toBe(first.version);

    // A failover elsewhere: host2 claims the container at the epoch it saw.
    const owned = (await registry.ownership(container))!;
    expect((await registry.claim(container, 'host2', owned.epoch)).won).toBe(true);

    const refused = await upload(42).catch((err: unknown) => err);
    expect(refused).toBeInstanceOf(ConflictError);
    expect(String(refused)).toMatch(/fenced-a is owned by host2 at epoch 2, not host1: this host's checkpoint of it was not committed/);
    // Its chunks are written but the version is invisible: the last committed one is still the first.
    expect((await store.latestCommitted(container))?.version).toBe(first.version);
    expect((await store.versions(container)).find((v) => v.version > first.version)?.state).toBe('uploading');
  });
});
