import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import cassandra from 'cassandra-driver';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkpointToStore } from '../../src/checkpoint/procedures.ts';
import { CassandraSnapshotStore } from '../../src/storage/cassandra-store.ts';
import { CompressionPolicy } from '../../src/storage/codec.ts';
import { collectGarbage } from '../../src/storage/gc.ts';
import { UploadFailedError, downloadSnapshot } from '../../src/storage/snapshots.ts';
import type { ChunkLocation, SnapshotStore } from '../../src/storage/store.ts';
import { CheckpointError, FailedPreconditionError, NotFoundError, UnavailableError } from '../../src/util/errors.ts';
import { run } from '../../src/util/exec.ts';
import { CQL_PORT, LOCAL_DATACENTER } from '../../testcontainers/cassandra.ts';
import { createCounterContainer, runtimeFor, startContainer, waitRunning } from '../../testcontainers/lxc.ts';
import { connectStore, localRing, removeContainer, sharedTestbed } from '../support/testbed.ts';

/**
 * The faults a checkpoint meets in production, each produced for real: a container that does not exist or is
 * not running, a full staging disk (a tiny tmpfs), a replica host that hangs mid-upload (SIGSTOP of its
 * Cassandra node), an unreachable cluster. Each gives a clear error, leaves the container running, leaves the
 * earlier committed version intact, and leaves no staging behind.
 */

const testbed = sharedTestbed();
const host = testbed.host(3);
const runtime = runtimeFor(host);
const CONTAINER = 'fault-counter';
const staging = mkdtempSync('/var/tmp/lxcr-staging-');
const policy = new CompressionPolicy();
let client: cassandra.Client;
let store: CassandraSnapshotStore;
let firstVersion: number;

const checkpoint = (overrides: { store?: SnapshotStore; stagingDir?: string; container?: string } = {}) =>
  checkpointToStore({ runtime, store, policy, container: CONTAINER, sourceHost: host.hostId, stagingDir: staging, ...overrides });

async function expectUntouched(): Promise<void> {
  expect(await runtime.state(CONTAINER)).toBe('RUNNING');
  expect((await store.latestCommitted(CONTAINER))?.version).toBe(firstVersion);
  expect(readdirSync(staging)).toEqual([]);
}

beforeAll(async () => {
  ({ client, store } = await connectStore(testbed, 'fault_test'));
  await createCounterContainer(host, CONTAINER);
  await startContainer(host, CONTAINER);
  await waitRunning(host, CONTAINER);
  firstVersion = (await checkpoint()).version;
});

afterAll(async () => {
  await removeContainer(runtime, CONTAINER);
  await client?.shutdown();
  rmSync(staging, { recursive: true, force: true });
});

describe('checkpoint faults', () => {
  it('names an unknown container, and refuses one that is not running without freezing anything', async () => {
    await expect(checkpoint({ container: 'no-such-container' })).rejects.toThrow(NotFoundError);
    await run('lxc-freeze', ['-P', host.lxcpath, '-n', CONTAINER]);
    try {
      const error = await checkpoint().catch((e: unknown) => e);
      expect(error).toBeInstanceOf(FailedPreconditionError);
      expect(String(error)).toMatch(/FROZEN/);
    } finally {
      await run('lxc-unfreeze', ['-P', host.lxcpath, '-n', CONTAINER]);
    }
    await expectUntouched();
  });

  it('fails cleanly when the staging disk is full: CRIU says so, the container runs on', async () => {
    const full = mkdtempSync('/var/tmp/lxcr-full-staging-');
    await run('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', full]);
    try {
      const error = await checkpoint({ stagingDir: full }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(CheckpointError);
      expect(String(error)).toMatch(/no space left on device/i);
      expect(String(error)).toContain(`staging directory ${full} ran out of space`);
      expect(readdirSync(full)).toEqual([]);
    } finally {
      await run('umount', [full]);
      rmSync(full, { recursive: true, force: true });
    }
    await expectUntouched();
  });

  it('fails an upload whose replica host hangs mid-way without committing; the next checkpoint works and GC removes the orphans', async () => {
    const ring = localRing(testbed);
    const replica = ring.nodes.find((n) => n.address === store.replicas(CONTAINER)[0])!;
    let frozen = false;
    // The fault is real (the node's JVM is stopped); the hook only picks the moment: after the upload began.
    const hangsMidUpload: SnapshotStore = Object.assign(Object.create(store) as CassandraSnapshotStore, {
      putChunk: async (container: string, location: ChunkLocation, data: Buffer) => {
        if (!frozen) {
          frozen = true;
          await ring.freeze(replica.index);
        }
        return store.putChunk(container, location, data);
      },
    });
    let error: unknown;
    try {
      error = await checkpoint({ store: hangsMidUpload }).catch((e: unknown) => e);
    } finally {
      await ring.thaw(replica.index);
    }
    expect(frozen).toBe(true);
    expect(error).toBeInstanceOf(UploadFailedError);
    expect(String(error)).toMatch(new RegExp(`checkpoint of ${CONTAINER} version \\d+ was not committed`));
    await expectUntouched();
    const failed = (await store.versions(CONTAINER)).find((v) => v.state === 'uploading')!;
    const failedVersion = failed.version;

    // The earlier version reads back whole, and once the node serves again checkpoints commit again.
    await ring.waitStatus(replica.index, 'U', 60_000);
    const earlier = await downloadSnapshot({ store, container: CONTAINER, version: firstVersion, targetDir: join(staging, 'check') });
    expect(earlier.manifest.version).toBe(firstVersion);
    rmSync(join(staging, 'check'), { recursive: true, force: true });
    const next = await checkpoint();
    expect(next.version).toBeGreaterThan(failedVersion);

    // Past the upload grace period the failed attempt is an orphan: GC removes its version and the chunks it wrote
    // (in the buckets it reserved) that no committed version stored there.
    expect(failed.uploadBuckets.length).toBeGreaterThan(0);
    const gc = await collectGarbage({ store, container: CONTAINER, now: new Date(Date.now() + 16 * 60 * 1000) });
    expect(gc.deletedVersions).toContain(failedVersion);
    const index = await store.chunkIndex(CONTAINER);
    for (const bucket of failed.uploadBuckets) {
      for (const chunk of await store.bucketChunks(CONTAINER, bucket)) expect(index.get(chunk.hash)?.bucket).toBe(bucket);
    }
    firstVersion = next.version;
  });

  it('says Cassandra is unreachable, naming the address tried, when no node answers', async () => {
    const nowhere = new cassandra.Client({
      contactPoints: ['127.0.10.250'], // on the testbed's subnet, where no node listens
      localDataCenter: LOCAL_DATACENTER,
      protocolOptions: { port: CQL_PORT },
      socketOptions: { connectTimeout: 2000 },
    });
    try {
      const error = await checkpoint({ store: new CassandraSnapshotStore({ client: nowhere, keyspace: 'fault_test' }) }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(UnavailableError);
      expect(String(error)).toMatch(/Cassandra is unreachable.*127\.0\.10\.250/);
    } finally {
      await nowhere.shutdown();
    }
    await expectUntouched();
  });
});
