import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type cassandra from 'cassandra-driver';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CassandraSnapshotStore } from '../../src/storage/cassandra-store.ts';
import { chunkStream } from '../../src/storage/chunker.ts';
import { CompressionPolicy } from '../../src/storage/codec.ts';
import { collectGarbage } from '../../src/storage/gc.ts';
import { downloadSnapshot, uploadSnapshot } from '../../src/storage/snapshots.ts';
import { pseudoRandom } from '../support/bytes.ts';
import { connectStore, sharedTestbed } from '../support/testbed.ts';

const KEYSPACE = 'gc_test';
const MiB = 1024 * 1024;
const testbed = sharedTestbed();
let client: cassandra.Client;
let store: CassandraSnapshotStore;
const scratch = mkdtempSync(join(tmpdir(), 'lxcr-gc-'));
const sha = (data: Buffer) => createHash('sha256').update(data).digest('hex');

beforeAll(async () => {
  ({ client, store } = await connectStore(testbed, KEYSPACE));
});

afterAll(async () => {
  await client?.shutdown();
  rmSync(scratch, { recursive: true, force: true });
});

describe('GC-CR', () => {
  it('keeps exactly the newest K committed versions and every chunk they need', async () => {
    // Four versions over blocks A..E: v1 = A B, v2 = B C, v3 = C D, v4 = D E.
    // Blocks larger than the biggest chunk (4 MiB), so whole chunks fall inside each block and are shared.
    const blocks = Array.from({ length: 5 }, (_, i) => pseudoRandom(6 * MiB, 10 + i));
    const contents = [0, 1, 2, 3].map((i) => Buffer.concat([blocks[i]!, blocks[i + 1]!]));
    const policy = new CompressionPolicy();
    for (const content of contents) {
      await uploadSnapshot({ store, container: 'gc-a', sourceHost: 'host1', policy, sources: [{ path: 'm.img', mode: 0o600, open: () => [content] }] });
    }
    const report = await collectGarbage({ store, container: 'gc-a', keep: 2, uploadGraceMs: 0 });
    expect(report.keptVersions).toEqual([4, 3]);
    expect(report.deletedVersions).toEqual([1, 2]);
    expect(report.deletedChunks).toBeGreaterThan(0);
    expect(report.freedBytes).toBeGreaterThanOrEqual(8 * MiB); // block A and most of B are gone
    expect(report.logicalBytes).toBe(24 * MiB);
    expect(report.storedBytes).toBeLessThan(report.logicalBytes - 2 * MiB); // v3 and v4 share block D

    expect((await store.versions('gc-a')).map((v) => v.version)).toEqual([4, 3]);
    for (const [version, content] of [[3, contents[2]!], [4, contents[3]!]] as const) {
      await downloadSnapshot({ store, container: 'gc-a', version, targetDir: join(scratch, `v${version}`) });
      expect(sha(readFileSync(join(scratch, `v${version}`, 'm.img')))).toBe(sha(content));
    }
    const again = await collectGarbage({ store, container: 'gc-a', keep: 2, uploadGraceMs: 0 });
    expect(again.deletedVersions).toEqual([]);
    expect(again.deletedChunks).toBe(0);
  });

  it('an agent killed mid-upload leaves no visible version, and GC later removes its orphans', async () => {
    const container = 'gc-crash';
    const agent = spawn(process.execPath, ['--import', 'tsx', join(import.meta.dirname, '../support/upload-then-hang.ts'), KEYSPACE, container], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    await new Promise<void>((resolve, reject) => {
      agent.stdout.on('data', (d: Buffer) => d.toString().includes('UPLOADING') && resolve());
      agent.once('exit', (code) => reject(new Error(`the uploading agent exited with ${code} early`)));
    });
    agent.kill('SIGKILL');
    await new Promise((r) => agent.once('exit', r));

    expect(await store.latestCommitted(container)).toBeUndefined();
    const [orphan] = await store.versions(container);
    expect(orphan?.state).toBe('uploading');
    // Nothing is indexed (that happens once every chunk is durable); the chunks sit in the reserved buckets.
    expect((await store.chunkIndex(container)).size).toBe(0);
    expect(orphan!.uploadBuckets.length).toBeGreaterThan(0);
    const orphanChunks = async () => (await Promise.all(orphan!.uploadBuckets.map((b) => store.bucketChunks(container, b)))).flat().length;
    const written = await orphanChunks();
    expect(written).toBeGreaterThanOrEqual(4);

    // Right after the crash the upload might still be running elsewhere: nothing is deleted.
    const early = await collectGarbage({ store, container });
    expect(early.deletedVersions).toEqual([]);
    expect(early.chunksDeferred).toBe(true);
    expect(await orphanChunks()).toBe(written);

    // Past the grace period it is an abandoned upload: its chunks go, then its version row.
    const later = await collectGarbage({ store, container, now: new Date(Date.now() + 16 * 60 * 1000) });
    expect(later.deletedVersions).toEqual([orphan!.version]);
    expect(later.deletedChunks).toBe(written);
    expect(await store.versions(container)).toEqual([]);
    expect(await orphanChunks()).toBe(0);
  });

  it('an upload stalled past its commit deadline writes no more chunks, neither indexes nor commits, and GC collects it; the committed version stays', async () => {
    const container = 'gc-stalled';
    const policy = new CompressionPolicy();
    const kept = pseudoRandom(3 * MiB, 60);
    const first = await uploadSnapshot({ store, container, sourceHost: 'host1', policy, sources: [{ path: 'm.img', mode: 0o600, open: () => [kept] }] });
    const indexBefore = [...(await store.chunkIndex(container)).keys()].sort();
    // A host paused mid-upload: the chunks completed before the pause are written; after it, past the deadline,
    // none is (GC may have deleted the version's row by then, and a chunk written now would be found by nothing).
    const beforePause = pseudoRandom(3 * MiB, 61);
    const afterPause = pseudoRandom(3 * MiB, 62);
    async function* stalling() {
      yield beforePause;
      await sleep(2500);
      yield afterPause;
    }
    await expect(
      uploadSnapshot({ store, container, sourceHost: 'host1', policy, commitDeadlineMs: 1500, sources: [{ path: 'm.img', mode: 0o600, open: stalling }] }),
    ).rejects.toThrow(new RegExp(`${container} version ${first.version + 1} was not committed: the upload took [\\d.]+ s, past the 1\\.5 s`));
    let end = 0;
    const chunkEnds: number[] = [];
    for await (const chunk of chunkStream([beforePause, afterPause])) chunkEnds.push((end += chunk.length));
    const completedBeforePause = chunkEnds.filter((at) => at <= beforePause.length).length;
    expect(completedBeforePause).toBeLessThan(chunkEnds.length);

    expect((await store.latestCommitted(container))?.version).toBe(first.version);
    // Nothing of it was indexed: no later upload can reuse a chunk GC may already have collected.
    expect([...(await store.chunkIndex(container)).keys()].sort()).toEqual(indexBefore);
    const [stalled] = await store.versions(container);
    expect(stalled).toMatchObject({ version: first.version + 1, state: 'uploading' });
    const inItsBuckets = async () =>
      (await Promise.all(stalled!.uploadBuckets.map((bucket) => store.bucketChunks(container, bucket)))).flat().filter((c) => !indexBefore.includes(c.hash)).length;
    const written = await inItsBuckets();
    // Only chunks completed before the pause (the pipeline may still have held the last of them when it began).
    expect(written).toBeGreaterThan(0);
    expect(written).toBeLessThanOrEqual(completedBeforePause);

    const report = await collectGarbage({ store, container, now: new Date(Date.now() + 16 * 60 * 1000) });
    expect(report.deletedVersions).toEqual([first.version + 1]);
    expect(report.deletedChunks).toBe(written);
    expect(await inItsBuckets()).toBe(0);
    expect((await store.versions(container)).map((v) => v.version)).toEqual([first.version]);
    await downloadSnapshot({ store, container, version: first.version, targetDir: join(scratch, 'stalled-kept') });
    expect(sha(readFileSync(join(scratch, 'stalled-kept', 'm.img')))).toBe(sha(kept));
  });

  it("keeps an abandoned upload's row while chunk deletion is deferred, and never touches chunks a later version stored", async () => {
    const container = 'gc-abandoned';
    const policy = new CompressionPolicy();
    const block = pseudoRandom(3 * MiB, 50);
    // An upload that wrote its chunks and died before indexing them (its puts fail from the fifth on; nothing commits).
    let puts = 0;
    const dying = Object.assign(Object.create(store) as CassandraSnapshotStore, {
      putChunk: async (...args: Parameters<CassandraSnapshotStore['putChunk']>) => {
        if (++puts > 4) throw new Error('agent died');
        return store.putChunk(...args);
      },
    });
    // One bucket per chunk (bucketBytes 1), so the later upload below stores some of the same chunks in other buckets.
    const failed = await uploadSnapshot({ store: dying, container, sourceHost: 'host1', policy, concurrency: 1, bucketBytes: 1, sources: [{ path: 'm.img', mode: 0o600, open: () => [block, pseudoRandom(8 * MiB, 51)] }] }).catch((e: unknown) => e);
    expect(String(failed)).toMatch(/agent died/);
    const [abandoned] = await store.versions(container);
    expect(abandoned!.uploadBuckets.length).toBeGreaterThanOrEqual(4);
    // A later upload of the same first bytes stores those chunks again (all in one bucket), and commits.
    const committed = await uploadSnapshot({ store, container, sourceHost: 'host1', policy, sources: [{ path: 'm.img', mode: 0o600, open: () => [block] }] });
    const indexedBefore = await store.chunkIndex(container);
    const leftBehind = (await Promise.all(abandoned!.uploadBuckets.map(async (bucket) => (await store.bucketChunks(container, bucket)).map((c) => ({ ...c, bucket })))))
      .flat()
      .filter((c) => indexedBefore.get(c.hash)?.bucket !== c.bucket);
    expect(leftBehind.length).toBeGreaterThan(0);
    // Among them a copy of a chunk the committed version has in another bucket: its index entry must survive.
    expect(leftBehind.some((c) => indexedBefore.has(c.hash))).toBe(true);
    const inFlight = await store.beginVersion(container, 'host1');
    const later = new Date(Date.now() + 16 * 60 * 1000);

    // An upload in flight (recent, by the fake clock too): chunk deletion waits, and the abandoned row stays with it.
    const deferred = await collectGarbage({ store, container, now: new Date() });
    expect(deferred.chunksDeferred).toBe(true);
    expect(deferred.deletedVersions).toEqual([]);
    expect((await store.versions(container)).map((v) => v.version)).toContain(abandoned!.version);
    await store.deleteVersion(container, inFlight);

    const collected = await collectGarbage({ store, container, now: later });
    expect(collected.deletedVersions).toEqual([abandoned!.version]);
    expect(collected.deletedChunks).toBe(leftBehind.length);
    // The committed version reads back whole: every chunk it needs kept its bytes and its index entry.
    await downloadSnapshot({ store, container, version: committed.version, targetDir: join(scratch, 'abandoned') });
    expect(sha(readFileSync(join(scratch, 'abandoned', 'm.img')))).toBe(sha(block));
    const index = await store.chunkIndex(container);
    for (const chunk of committed.manifest.files[0]!.chunks) expect(index.get(chunk.hash)?.bucket).toBe(chunk.bucket);
    // Whatever is left in the abandoned upload's buckets is indexed there.
    for (const bucket of abandoned!.uploadBuckets) {
      for (const chunk of await store.bucketChunks(container, bucket)) expect(index.get(chunk.hash)?.bucket).toBe(bucket);
    }
  });

  it("never collects a version a restore holds a lease on, nor its chunks, and collects it once the lease ends", async () => {
    const container = 'gc-lease';
    const contents = [1, 2, 3].map((i) => pseudoRandom(3 * MiB, 30 + i));
    const policy = new CompressionPolicy();
    for (const content of contents) {
      await uploadSnapshot({ store, container, sourceHost: 'host1', policy, sources: [{ path: 'm.img', mode: 0o600, open: () => [content] }] });
    }
    await store.leaseVersion(container, 1, 'restore-on-host2', 60_000);
    expect(await store.leasedVersions(container)).toEqual(new Set([1]));

    const leased = await collectGarbage({ store, container, keep: 1, uploadGraceMs: 0 });
    expect(leased.keptVersions).toEqual([3]);
    expect(leased.leasedVersions).toEqual([1]);
    expect(leased.deletedVersions).toEqual([2]);
    await downloadSnapshot({ store, container, version: 1, targetDir: join(scratch, 'leased') });
    expect(sha(readFileSync(join(scratch, 'leased', 'm.img')))).toBe(sha(contents[0]!));

    await store.releaseLease(container, 1, 'restore-on-host2');
    const released = await collectGarbage({ store, container, keep: 1, uploadGraceMs: 0 });
    expect(released.deletedVersions).toEqual([1]);
    expect(released.freedBytes).toBeGreaterThanOrEqual(3 * MiB);
    expect((await store.versions(container)).map((v) => v.version)).toEqual([3]);
  });

  it('deletes no chunk while a lease names a version whose manifest is already gone', async () => {
    const container = 'gc-lease-late';
    const policy = new CompressionPolicy();
    for (const seed of [40, 41]) {
      await uploadSnapshot({ store, container, sourceHost: 'host1', policy, sources: [{ path: 'm.img', mode: 0o600, open: () => [pseudoRandom(2 * MiB, seed)] }] });
    }
    // A restore leased version 1 and read its manifest just before a GC run deleted that manifest; the restore
    // is still reading version 1's chunks when the next GC run comes.
    await store.deleteVersion(container, 1);
    await store.leaseVersion(container, 1, 'slow-restore', 60_000);
    const deferred = await collectGarbage({ store, container, keep: 1, uploadGraceMs: 0 });
    expect(deferred.chunksDeferred).toBe(true);
    expect(deferred.deletedChunks).toBe(0);

    await store.releaseLease(container, 1, 'slow-restore');
    const after = await collectGarbage({ store, container, keep: 1, uploadGraceMs: 0 });
    expect(after.chunksDeferred).toBe(false);
    expect(after.deletedChunks).toBeGreaterThan(0);
  });

  it('lets a lease end by itself (TTL) when its restore dies', async () => {
    await store.leaseVersion('gc-lease-ttl', 7, 'dead-restore', 1000);
    expect(await store.leasedVersions('gc-lease-ttl')).toEqual(new Set([7]));
    await new Promise((r) => setTimeout(r, 2500));
    expect(await store.leasedVersions('gc-lease-ttl')).toEqual(new Set());
  });
});
