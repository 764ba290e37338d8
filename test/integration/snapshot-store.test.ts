import { createHash } from 'node:crypto';
import type cassandra from 'cassandra-driver';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CassandraSnapshotStore } from '../../src/storage/cassandra-store.ts';
import { InvalidArgumentError, NotFoundError } from '../../src/util/errors.ts';
import { connectStore, sharedTestbed } from '../support/testbed.ts';

const testbed = sharedTestbed();
let client: cassandra.Client;
let store: CassandraSnapshotStore;

beforeAll(async () => {
  ({ client, store } = await connectStore(testbed, 'store_test'));
});

afterAll(async () => {
  await client?.shutdown();
});

function chunk(text: string) {
  const data = Buffer.from(text.repeat(1000));
  return { data, hash: createHash('sha256').update(data).digest('hex') };
}

describe('the Cassandra snapshot store', () => {
  it('numbers versions per container from 1, never twice, even when hosts race', async () => {
    expect(await store.beginVersion('alloc-a', 'host1')).toBe(1);
    expect(await store.beginVersion('alloc-a', 'host2')).toBe(2);
    expect(await store.beginVersion('alloc-b', 'host1')).toBe(1);
    const raced = await Promise.all(Array.from({ length: 8 }, (_, i) => store.beginVersion('alloc-a', `host${i}`)));
    // Distinct and after 2; a claim whose Paxos round timed out but applied leaves a gap, never a duplicate.
    expect(new Set(raced).size).toBe(raced.length);
    expect(Math.min(...raced)).toBeGreaterThanOrEqual(3);
    expect(await store.beginVersion('alloc-a', 'host1')).toBeGreaterThan(Math.max(...raced));
  });

  it('does not reuse the number of a deleted version', async () => {
    const first = await store.beginVersion('reuse', 'host1');
    const second = await store.beginVersion('reuse', 'host1');
    await store.deleteVersion('reuse', second);
    await store.deleteVersion('reuse', first);
    expect(await store.versions('reuse')).toEqual([]);
    expect(await store.beginVersion('reuse', 'host1')).toBe(second + 1);
  });

  it('shows a version as restorable only once committed, newest first', async () => {
    const v1 = await store.beginVersion('commit', 'host1');
    await store.commitVersion('commit', v1, Buffer.from('manifest-1'));
    const v2 = await store.beginVersion('commit', 'host1');
    const versions = await store.versions('commit');
    expect(versions.map((v) => [v.version, v.state])).toEqual([[v2, 'uploading'], [v1, 'committed']]);
    const latest = await store.latestCommitted('commit');
    expect(latest?.version).toBe(v1);
    expect(latest?.manifest).toEqual(Buffer.from('manifest-1'));
    expect(latest?.sourceHost).toBe('host1');
    expect(latest?.committedAt).toBeInstanceOf(Date);

    await expect(store.commitVersion('commit', v1, Buffer.from('again'))).rejects.toThrow(InvalidArgumentError);
    await expect(store.commitVersion('commit', 99, Buffer.from('x'))).rejects.toThrow(NotFoundError);
  });

  it('stores chunks in reserved co-located buckets, lists and indexes them, and serves them from each replica', async () => {
    const container = 'chunks-a';
    const version = await store.beginVersion(container, 'host1');
    const [bucket, second] = store.buckets(container, 2);
    await store.reserveBuckets(container, version, [second!]);
    await store.reserveBuckets(container, version, [bucket!, second!]);
    expect((await store.versions(container))[0]).toMatchObject({ version, state: 'uploading', uploadBuckets: [bucket, second] });
    const a = chunk('alpha');
    const b = chunk('beta');
    const locations = [a, b].map((c) => ({ hash: c.hash, bucket: bucket!, rawSize: c.data.length, storedSize: c.data.length, codec: 'none' }));
    const beforePuts = Date.now();
    for (const [i, c] of [a, b].entries()) await store.putChunk(container, locations[i]!, c.data);
    // Written but not indexed yet (what a crashed upload leaves): only a scan of the bucket finds them.
    expect((await store.chunkIndex(container)).size).toBe(0);
    const listed = await store.bucketChunks(container, bucket!);
    expect(listed.map((c) => c.hash).sort()).toEqual([a.hash, b.hash].sort());
    for (const c of listed) expect(Math.abs(c.writtenAt.getTime() - beforePuts)).toBeLessThan(60_000);
    expect(await store.bucketChunks(container, second!)).toEqual([]);
    await store.indexChunks(container, locations);
    const index = await store.chunkIndex(container);
    expect([...index.keys()].sort()).toEqual([a.hash, b.hash].sort());
    expect(index.get(a.hash)).toMatchObject({ hash: a.hash, bucket, rawSize: a.data.length, storedSize: a.data.length, codec: 'none', state: 'stored' });
    expect(index.get(a.hash)?.createdAt).toBeInstanceOf(Date);

    const replicas = store.replicas(container);
    expect(replicas).toHaveLength(2);
    for (const host of replicas) expect(await store.getChunk(container, { hash: a.hash, bucket: bucket! }, host)).toEqual(a.data);

    await store.deleteChunk(container, { hash: a.hash, bucket: bucket! });
    expect([...(await store.chunkIndex(container)).keys()]).toEqual([b.hash]);
    expect(await store.getChunk(container, { hash: a.hash, bucket: bucket! })).toBeUndefined();
  });

  it('adds the upload_buckets column to a keyspace created before it, and the schema stays idempotent', async () => {
    const keyspace = 'store_before_buckets';
    await client.execute(`CREATE KEYSPACE IF NOT EXISTS ${keyspace} WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 2}`);
    await client.execute(`DROP TABLE IF EXISTS ${keyspace}.manifests`);
    await client.execute(
      `CREATE TABLE ${keyspace}.manifests (container text, version bigint, next_version bigint static, state text, manifest blob, source_host text, created_at timestamp, committed_at timestamp, PRIMARY KEY (container, version)) WITH CLUSTERING ORDER BY (version DESC)`,
    );
    await testbed.ring.waitSchemaAgreement();
    const old = new CassandraSnapshotStore({ client, keyspace });
    await old.ensureSchema();
    await old.ensureSchema();
    await testbed.ring.waitSchemaAgreement();
    const version = await old.beginVersion('upgraded', 'host1');
    await old.reserveBuckets('upgraded', version, old.buckets('upgraded', 1));
    expect((await old.versions('upgraded'))[0]?.uploadBuckets).toHaveLength(1);
  });

  it('rejects a chunk whose size or hash is malformed, storing nothing', async () => {
    const c = chunk('gamma');
    const [bucket] = store.buckets('bad', 1);
    await expect(store.putChunk('bad', { hash: c.hash, bucket: bucket!, rawSize: 1, storedSize: 5, codec: 'none' }, c.data)).rejects.toThrow(/bytes given, 5 declared/);
    await expect(store.putChunk('bad', { hash: 'XYZ', bucket: bucket!, rawSize: 3, storedSize: 3, codec: 'none' }, Buffer.from('abc'))).rejects.toThrow(/64 lowercase hex/);
    expect((await store.chunkIndex('bad')).size).toBe(0);
  });
});
