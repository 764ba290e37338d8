import { existsSync, mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type cassandra from 'cassandra-driver';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkpointToStore, restoreFromStore } from '../../src/checkpoint/procedures.ts';
import { ClusterRegistry } from '../../src/cluster/registry.ts';
import { StandbyPrefetcher } from '../../src/failover/standby.ts';
import type { CassandraSnapshotStore } from '../../src/storage/cassandra-store.ts';
import { CompressionPolicy } from '../../src/storage/codec.ts';
import { StandbyCache } from '../../src/storage/standby-cache.ts';
import { createLogger } from '../../src/util/log.ts';
import { createCounterContainer, readCounter, runtimeFor, startContainer, waitForCounterAbove, waitRunning } from '../../testcontainers/lxc.ts';
import { connectStore, removeContainer, sharedTestbed } from '../support/testbed.ts';

/**
 * A failover restore from the standby copy assembled ahead of time, on the real testbed (real LXC, CRIU and
 * Cassandra): the copy is moved into place and the container counts on from its snapshot; a copy of another
 * version, or one whose marker or files are damaged, is left alone and the snapshot is read the usual way.
 */

const testbed = sharedTestbed();
const SNAPSHOTS = 'assembled_restore_snap';
const META = 'assembled_restore_meta';
const CONTAINER = 'asm-counter';
const staging = mkdtempSync('/var/tmp/lxcr-staging-');
const standbyRoot = mkdtempSync('/var/tmp/lxcr-standby-');
let client: cassandra.Client;
let store: CassandraSnapshotStore;
let registry: ClusterRegistry;
const policy = new CompressionPolicy();
const cache = new StandbyCache(join(standbyRoot, 'cache'));

// The restoring host is a replica of the container; the container is first checkpointed on another host.
const restoringIndex = () => testbed.hosts.findIndex((h) => h.address === store.replicas(CONTAINER)[0]) + 1;
const sourceIndex = () => (restoringIndex() % testbed.hosts.length) + 1;
const restoring = () => testbed.host(restoringIndex());
const prefetcher = () =>
  new StandbyPrefetcher({
    hostId: restoring().hostId, store, registry, cache, runtime: runtimeFor(restoring()), cassandraAddress: restoring().address, logger: createLogger('test', 'error'),
  });
const restoreHere = () =>
  restoreFromStore({ runtime: runtimeFor(restoring()), store, container: CONTAINER, stagingDir: staging, localReplica: restoring().address, cache, assembled: cache.assembled });

/** Checkpoints the container where it runs, then removes it there (its host "failed"); the counter before the dump. */
async function checkpointAndLose(index: number): Promise<{ version: number; counter: number }> {
  const host = testbed.host(index);
  const counter = await readCounter(host, CONTAINER);
  const { version } = await checkpointToStore({ runtime: runtimeFor(host), store, policy, container: CONTAINER, sourceHost: host.hostId, stagingDir: staging, stop: true });
  await removeContainer(runtimeFor(host), CONTAINER);
  return { version, counter };
}

beforeAll(async () => {
  ({ client, store } = await connectStore(testbed, SNAPSHOTS));
  registry = new ClusterRegistry({ client, keyspace: META });
  await registry.ensureSchema();
  await testbed.ring.waitSchemaAgreement();
  const source = testbed.host(sourceIndex());
  await createCounterContainer(source, CONTAINER);
  await startContainer(source, CONTAINER);
  await waitRunning(source, CONTAINER);
  await waitForCounterAbove(source, CONTAINER, 3);
  await registry.adopt(CONTAINER, source.hostId);
}, 120_000);

afterAll(async () => {
  for (const host of testbed.hosts) await removeContainer(runtimeFor(host), CONTAINER);
  await client?.shutdown();
  rmSync(staging, { recursive: true, force: true });
  rmSync(standbyRoot, { recursive: true, force: true });
}, 120_000);

describe('restore from the assembled standby copy', () => {
  it('moves the copy assembled for the version into place: nothing downloaded, and the container counts on', async () => {
    const { version, counter } = await checkpointAndLose(sourceIndex());
    expect((await prefetcher().refresh()).updated.get(CONTAINER)).toBe(version);
    expect(await cache.assembled.version(CONTAINER)).toBe(version);

    const restored = await restoreHere();
    expect(restored).toMatchObject({ usedAssembledCopy: true, fromCache: 0, repairedFromReplica: 0 });
    expect(restored.manifest.version).toBe(version);
    expect(await runtimeFor(restoring()).state(CONTAINER)).toBe('RUNNING');
    expect(await waitForCounterAbove(restoring(), CONTAINER, counter)).toBeGreaterThan(counter);
    // Taken, not copied: the cache holds no assembled copy any more, and staging is cleaned.
    expect(existsSync(join(cache.dir, CONTAINER, 'assembled'))).toBe(false);
    expect(await cache.assembled.version(CONTAINER)).toBeUndefined();
  });

  it('does not use a copy assembled for an older version: the newer snapshot is restored from the chunks', async () => {
    await prefetcher().refresh(); // assembles the version restored above again (still the newest)
    const stale = await cache.assembled.version(CONTAINER);
    const { version, counter } = await checkpointAndLose(restoringIndex()); // a newer version, not assembled
    expect(version).toBeGreaterThan(stale!);

    const restored = await restoreHere();
    expect(restored.usedAssembledCopy).toBe(false);
    expect(restored.assembledCopyMissed).toBe(`the assembled copy is of version ${stale}, not ${version}`);
    expect(restored.manifest.version).toBe(version);
    expect(await waitForCounterAbove(restoring(), CONTAINER, counter)).toBeGreaterThan(counter);
  });

  it('does not use a copy whose files or marker are damaged', async () => {
    const { version, counter } = await checkpointAndLose(restoringIndex());
    await prefetcher().refresh();
    expect(await cache.assembled.version(CONTAINER)).toBe(version);
    const assembled = join(cache.dir, CONTAINER, 'assembled');
    truncateSync(join(assembled, 'config'), 3);
    let restored = await restoreHere();
    expect(restored.usedAssembledCopy).toBe(false);
    expect(restored.assembledCopyMissed).toBe('the assembled copy lacks config or it has the wrong size');
    expect(await waitForCounterAbove(restoring(), CONTAINER, counter)).toBeGreaterThan(counter);

    const next = await checkpointAndLose(restoringIndex());
    await prefetcher().refresh();
    writeFileSync(join(assembled, 'assembled.json'), JSON.stringify({ container: CONTAINER, version: next.version, snapshotSha256: '0'.repeat(64), files: [] }));
    restored = await restoreHere();
    expect(restored.usedAssembledCopy).toBe(false);
    expect(restored.assembledCopyMissed).toMatch(/snapshot sha256 differs/);
    expect(await waitForCounterAbove(restoring(), CONTAINER, next.counter)).toBeGreaterThan(next.counter);
  });
});
