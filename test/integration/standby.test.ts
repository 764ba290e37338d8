import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type cassandra from 'cassandra-driver';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ClusterRegistry } from '../../src/cluster/registry.ts';
import { StandbyPrefetcher } from '../../src/failover/standby.ts';
import type { CassandraSnapshotStore } from '../../src/storage/cassandra-store.ts';
import { CompressionPolicy } from '../../src/storage/codec.ts';
import { downloadSnapshot, uploadSnapshot, type SnapshotSource } from '../../src/storage/snapshots.ts';
import { StandbyCache } from '../../src/storage/standby-cache.ts';
import { createLogger } from '../../src/util/log.ts';
import { runtimeFor } from '../../testcontainers/lxc.ts';
import { pseudoRandom } from '../support/bytes.ts';
import { connectStore, sharedTestbed } from '../support/testbed.ts';

/**
 * Standby copies on the real testbed: a replica host's prefetcher copies the newest committed snapshot of the
 * containers it would restore, reads only what changed, and a restore reads its verified chunks locally.
 */

const KEYSPACE = 'standby_test';
const META = 'standby_test_meta';
const MiB = 1024 * 1024;
const testbed = sharedTestbed();
let client: cassandra.Client;
let store: CassandraSnapshotStore;
let registry: ClusterRegistry;
const scratch = mkdtempSync(join(tmpdir(), 'lxcr-standby-'));
const sha = (data: Buffer) => createHash('sha256').update(data).digest('hex');

beforeAll(async () => {
  ({ client, store } = await connectStore(testbed, KEYSPACE));
  registry = new ClusterRegistry({ client, keyspace: META });
  await registry.ensureSchema();
  await testbed.ring.waitSchemaAgreement();
}, 120_000);

afterAll(async () => {
  await client?.shutdown();
  rmSync(scratch, { recursive: true, force: true });
});

function source(path: string, data: Buffer): SnapshotSource {
  return { path, mode: 0o600, open: () => Array.from({ length: Math.ceil(data.length / 65536) }, (_, i) => data.subarray(i * 65536, (i + 1) * 65536)) };
}

describe('standby copies of the snapshots a host would restore', () => {
  const container = 'standby-a';
  const pages = pseudoRandom(12 * MiB, 31);
  // The replica host that does not own the container: the one that would restore it.
  const ownerIndex = () => testbed.hosts.findIndex((h) => h.address === store.replicas(container)[0]) + 1;
  const standbyIndex = () => testbed.hosts.findIndex((h) => h.address === store.replicas(container)[1]) + 1;
  const cache = new StandbyCache(join(scratch, 'cache'));
  const prefetcherOf = (index: number) =>
    new StandbyPrefetcher({
      hostId: testbed.host(index).hostId, store, registry, cache, runtime: runtimeFor(testbed.host(index)), cassandraAddress: testbed.host(index).address, logger: createLogger('test', 'error'),
    });

  it('copies the newest committed version on the replica host that does not own it, verified, then only what changed', async () => {
    const owner = testbed.host(ownerIndex()).hostId;
    await registry.adopt(container, owner);
    const policy = new CompressionPolicy();
    const v1 = await uploadSnapshot({ store, container, sourceHost: owner, policy, sources: [source('images/pages-1.img', pages)] });
    const prefetcher = prefetcherOf(standbyIndex());

    const first = await prefetcher.refresh();
    expect(first.failed).toEqual(new Map());
    expect(first.updated.get(container)).toBe(v1.version);
    expect(await cache.readyVersion(container)).toBe(v1.version);
    // Also assembled into the file a restore consumes, byte for byte.
    expect(await cache.assembled.version(container)).toBe(v1.version);
    expect(sha(readFileSync(join(cache.dir, container, 'assembled/images/pages-1.img')))).toBe(sha(pages));
    const v1Chunks = await cache.chunkHashes(container);
    expect(v1Chunks.size).toBe(v1.uploadedChunks + v1.reusedChunks);
    // Nothing new: the next round reads nothing.
    expect((await prefetcher.refresh()).updated.size).toBe(0);

    pseudoRandom(1 * MiB, 32).copy(pages, 5 * MiB);
    const v2 = await uploadSnapshot({ store, container, sourceHost: owner, policy, sources: [source('images/pages-1.img', pages)] });
    const second = await prefetcher.refresh();
    expect(second.updated.get(container)).toBe(v2.version);
    expect(await cache.assembled.version(container)).toBe(v2.version);
    expect(sha(readFileSync(join(cache.dir, container, 'assembled/images/pages-1.img')))).toBe(sha(pages));
    const v2Chunks = await cache.chunkHashes(container);
    // Only the chunks the change touched are new; the ones v2 no longer references are gone.
    const added = [...v2Chunks].filter((h) => !v1Chunks.has(h));
    expect(added.length).toBeGreaterThan(0);
    expect(added.length).toBe(v2.uploadedChunks);
    expect(v2Chunks.size).toBeLessThanOrEqual(v1Chunks.size + added.length);

    // A restore on that host reads every chunk from the copy, and the bytes are the snapshot's.
    const down = await downloadSnapshot({ store, container, targetDir: join(scratch, 'down1'), cache, localReplica: testbed.host(standbyIndex()).address });
    expect(down.fromCache).toBe(v2Chunks.size);
    expect(sha(readFileSync(join(scratch, 'down1/images/pages-1.img')))).toBe(sha(pages));
  });

  it('never uses a damaged copy: the chunk is read from Cassandra instead', async () => {
    const victim = readdirSync(join(cache.dir, container)).find((name) => /^[0-9a-f]{64}$/.test(name))!;
    writeFileSync(join(cache.dir, container, victim), 'not the chunk');
    const total = (await cache.chunkHashes(container)).size;
    const down = await downloadSnapshot({ store, container, targetDir: join(scratch, 'down2'), cache });
    expect(down.fromCache).toBe(total - 1);
    expect(sha(readFileSync(join(scratch, 'down2/images/pages-1.img')))).toBe(sha(pages));
  });

  it('keeps no copy on the owner, keeps it while the copying host restores, and drops it once the container runs there', async () => {
    const ownerCache = new StandbyCache(join(scratch, 'owner-cache'));
    const onOwner = new StandbyPrefetcher({
      hostId: testbed.host(ownerIndex()).hostId, store, registry, cache: ownerCache, runtime: runtimeFor(testbed.host(ownerIndex())), cassandraAddress: testbed.host(ownerIndex()).address, logger: createLogger('test', 'error'),
    });
    expect((await onOwner.refresh()).updated.has(container)).toBe(false);
    expect(await ownerCache.containers()).toEqual([]);

    // The standby host takes the container over (as a failover does): while it restores, its copy is kept (the
    // restore reads it); once the container runs there, the copy has no use any more.
    const standbyHost = testbed.host(standbyIndex()).hostId;
    const current = (await registry.ownership(container))!;
    const claim = await registry.claim(container, standbyHost, current.epoch);
    expect(claim.won).toBe(true);
    expect((await prefetcherOf(standbyIndex()).refresh()).dropped).not.toContain(container);
    expect(await cache.readyVersion(container)).toBeDefined();
    expect(await registry.setState(container, standbyHost, current.epoch + 1, 'running')).toBe(true);
    const round = await prefetcherOf(standbyIndex()).refresh();
    expect(round.dropped).toContain(container);
    expect(await cache.containers()).not.toContain(container);
  });
});
