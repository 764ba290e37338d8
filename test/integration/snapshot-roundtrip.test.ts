import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type cassandra from 'cassandra-driver';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CassandraSnapshotStore } from '../../src/storage/cassandra-store.ts';
import { CompressionPolicy } from '../../src/storage/codec.ts';
import { downloadSnapshot, uploadSnapshot, type SnapshotSource } from '../../src/storage/snapshots.ts';
import type { SnapshotStore } from '../../src/storage/store.ts';
import { FailedPreconditionError, IntegrityError, NotFoundError } from '../../src/util/errors.ts';
import { pseudoRandom } from '../support/bytes.ts';
import { connectStore, sharedTestbed } from '../support/testbed.ts';

const KEYSPACE = 'roundtrip_test';
const testbed = sharedTestbed();
let client: cassandra.Client;
let store: CassandraSnapshotStore;
const scratch = mkdtempSync(join(tmpdir(), 'lxcr-roundtrip-'));

beforeAll(async () => {
  ({ client, store } = await connectStore(testbed, KEYSPACE));
});

afterAll(async () => {
  await client?.shutdown();
  rmSync(scratch, { recursive: true, force: true });
});

function source(path: string, data: Buffer, mode = 0o600): SnapshotSource {
  // Handed over in 64 KiB pieces, as a file stream would.
  return { path, mode, open: () => Array.from({ length: Math.ceil(data.length / 65536) }, (_, i) => data.subarray(i * 65536, (i + 1) * 65536)) };
}

const sha = (data: Buffer) => createHash('sha256').update(data).digest('hex');
const MiB = 1024 * 1024;

describe('uploading and downloading snapshots', () => {
  const pages = pseudoRandom(24 * MiB, 20);
  const config = Buffer.from('lxc.uts.name = demo\n'.repeat(50));
  const zeros = Buffer.alloc(8 * MiB);

  it('round-trips every byte, deduplicating repeated content within the snapshot', async () => {
    const up = await uploadSnapshot({
      store, container: 'rt-a', sourceHost: 'host1', policy: new CompressionPolicy(),
      sources: [source('images/pages-1.img', pages), source('config', config, 0o644), source('images/zeros.img', zeros)],
    });
    expect(up.version).toBe(1);
    expect(up.logicalBytes).toBe(pages.length + config.length + zeros.length);
    // 8 MiB of zeros is two identical 4 MiB chunks: the second is never sent.
    expect(up.reusedChunks).toBe(1);
    expect(up.uploadedBytes).toBeLessThanOrEqual(up.logicalBytes - 4 * MiB);

    const target = join(scratch, 'a');
    const down = await downloadSnapshot({ store, container: 'rt-a', targetDir: target });
    expect(down.manifest.version).toBe(1);
    expect(down.repairedFromReplica).toBe(0);
    expect(sha(readFileSync(join(target, 'images/pages-1.img')))).toBe(sha(pages));
    expect(readFileSync(join(target, 'config'))).toEqual(config);
    // Buffer.equals: vitest's toEqual walks an 8 MiB buffer element by element (~150 s on a loaded 2-core machine).
    expect(readFileSync(join(target, 'images/zeros.img')).equals(zeros)).toBe(true);
    expect(statSync(join(target, 'config')).mode & 0o777).toBe(0o644);
  });

  it('uploads almost nothing for an unchanged snapshot, and little after a contiguous change', async () => {
    const policy = new CompressionPolicy();
    const sources = () => [source('images/pages-1.img', pages), source('config', config, 0o644)];
    const again = await uploadSnapshot({ store, container: 'rt-a', sourceHost: 'host1', policy, sources: sources() });
    expect(again.version).toBe(2);
    expect(again.uploadedChunks).toBe(0);

    pseudoRandom(2 * MiB, 21).copy(pages, 10 * MiB); // ~8% of the memory image changes
    const changed = await uploadSnapshot({ store, container: 'rt-a', sourceHost: 'host1', policy, sources: sources() });
    // Content-defined chunks: only the chunks overlapping the change are new, at most one 4 MiB chunk each side.
    expect(changed.uploadedBytes).toBeLessThanOrEqual(2 * MiB + 2 * 4 * MiB);
    expect(changed.uploadedBytes).toBeGreaterThanOrEqual(2 * MiB);
    await downloadSnapshot({ store, container: 'rt-a', version: changed.version, targetDir: join(scratch, 'a3') });
    expect(sha(readFileSync(join(scratch, 'a3/images/pages-1.img')))).toBe(sha(pages));
  });

  it('refuses versions that do not exist or never committed', async () => {
    await expect(downloadSnapshot({ store, container: 'rt-none', targetDir: join(scratch, 'x') })).rejects.toThrow(NotFoundError);
    await expect(downloadSnapshot({ store, container: 'rt-a', version: 99, targetDir: join(scratch, 'x') })).rejects.toThrow(/has no version 99/);
    const uncommitted = await store.beginVersion('rt-a', 'host1');
    const error = await downloadSnapshot({ store, container: 'rt-a', version: uncommitted, targetDir: join(scratch, 'x') }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(FailedPreconditionError);
    expect((error as Error).message).toMatch(new RegExp(`version ${uncommitted} never committed`));
  });

  it('never restores from a chunk corrupted on both replicas, naming container, version and chunk', async () => {
    const data = randomBytes(3 * MiB);
    const up = await uploadSnapshot({ store, container: 'rt-bad', sourceHost: 'host1', policy: new CompressionPolicy(), sources: [source('images/p.img', data)] });
    const victim = up.manifest.files[0]!.chunks[1]!;
    // Real corruption, written through Cassandra to both replicas.
    await client.execute(`UPDATE ${KEYSPACE}.chunks SET data = ? WHERE container = ? AND bucket = ? AND hash = ?`,
      [randomBytes(victim.storedSize), 'rt-bad', victim.bucket, Buffer.from(victim.hash, 'hex')], { prepare: true, consistency: 2 });
    const error = await downloadSnapshot({ store, container: 'rt-bad', targetDir: join(scratch, 'bad') }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(IntegrityError);
    expect((error as Error).message).toMatch(new RegExp(`rt-bad version ${up.version}: no good copy of chunk ${victim.hash} of images/p.img`));
  });

  it('re-reads a chunk that fails verification from the other replica', async () => {
    const data = randomBytes(3 * MiB);
    const up = await uploadSnapshot({ store, container: 'rt-one-bad', sourceHost: 'host1', policy: new CompressionPolicy(), sources: [source('p.img', data)] });
    const victim = up.manifest.files[0]!.chunks[0]!;
    // Cassandra replicates every write to both replicas, so one bad copy can only be injected: the first read
    // of the victim chunk (from whichever replica) returns flipped bytes.
    let served = false;
    const faulty: SnapshotStore = Object.create(store) as SnapshotStore;
    faulty.getChunk = async (container, location, fromHost) => {
      const real = await store.getChunk(container, location, fromHost);
      if (location.hash !== victim.hash || served || !real) return real;
      served = true;
      const bad = Buffer.from(real);
      bad[100] = bad[100]! ^ 0xff;
      return bad;
    };
    const down = await downloadSnapshot({ store: faulty, container: 'rt-one-bad', targetDir: join(scratch, 'one') });
    expect(down.repairedFromReplica).toBe(1);
    expect(sha(readFileSync(join(scratch, 'one/p.img')))).toBe(sha(data));
  });
});
