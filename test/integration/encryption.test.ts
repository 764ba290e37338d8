import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type cassandra from 'cassandra-driver';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkpointToStore, restoreFromStore } from '../../src/checkpoint/procedures.ts';
import { CassandraSnapshotStore } from '../../src/storage/cassandra-store.ts';
import { CompressionPolicy, decodeChunk } from '../../src/storage/codec.ts';
import { ChunkCipher, EncryptionKeyError, SEAL_OVERHEAD } from '../../src/storage/encryption.ts';
import { downloadSnapshot, uploadSnapshot, type SnapshotSource } from '../../src/storage/snapshots.ts';
import type { SnapshotStore } from '../../src/storage/store.ts';
import { IntegrityError } from '../../src/util/errors.ts';
import { createCounterContainer, readCounter, runtimeFor, startContainer, waitForCounterAbove, waitRunning } from '../../testcontainers/lxc.ts';
import { connectStore, removeContainer, sharedTestbed } from '../support/testbed.ts';

const KEYSPACE = 'encryption_test';
const testbed = sharedTestbed();
const host = testbed.host(1);
const runtime = runtimeFor(host);
const CONTAINER = 'enc-counter';
const staging = mkdtempSync('/var/tmp/lxcr-staging-');
const scratch = mkdtempSync(join(tmpdir(), 'lxcr-enc-'));
/** Written into the container's rootfs: it is in the snapshot's rootfs.tar, so in clear it would be in a chunk. */
const MARKER = `lxcr-secret-marker-${randomBytes(8).toString('hex')}`;
const MiB = 1024 * 1024;

let client: cassandra.Client;
/** Without a key. */
let plain: CassandraSnapshotStore;
let keyed: CassandraSnapshotStore;
let otherKey: CassandraSnapshotStore;
const cipher = new ChunkCipher(randomBytes(32));

beforeAll(async () => {
  ({ client, store: plain } = await connectStore(testbed, KEYSPACE));
  keyed = new CassandraSnapshotStore({ client, keyspace: KEYSPACE, cipher });
  otherKey = new CassandraSnapshotStore({ client, keyspace: KEYSPACE, cipher: new ChunkCipher(randomBytes(32)) });
});

afterAll(async () => {
  await removeContainer(runtime, CONTAINER);
  await client?.shutdown();
  rmSync(staging, { recursive: true, force: true });
  rmSync(scratch, { recursive: true, force: true });
});

const sha = (data: Buffer) => createHash('sha256').update(data).digest('hex');

function source(path: string, data: Buffer): SnapshotSource {
  return { path, mode: 0o600, open: () => [data] };
}

/** Never compresses (every chunk compresses worse than this): stored bytes are the raw bytes, or their encryption. */
const neverCompress = () => new CompressionPolicy({ maxRatio: 1e-6 });

describe('encryption at rest of a real container checkpointed into Cassandra', () => {
  it('stores no chunk in clear, and every chunk opens with the key to the bytes the manifest names', async () => {
    await createCounterContainer(host, CONTAINER);
    writeFileSync(join(await runtime.rootfsPath(CONTAINER), 'root/marker.txt'), `${MARKER}\n`.repeat(200));
    await startContainer(host, CONTAINER);
    await waitRunning(host, CONTAINER);
    await waitForCounterAbove(host, CONTAINER, 3);

    const first = await checkpointToStore({ runtime, store: keyed, policy: neverCompress(), container: CONTAINER, sourceHost: host.hostId, stagingDir: staging });
    const refs = first.manifest.files.flatMap((f) => f.chunks);
    expect(refs.length).toBeGreaterThan(0);
    let markerChunks = 0;
    for (const ref of refs) {
      expect(ref.keyId).toBe(cipher.keyId);
      const stored = (await keyed.getChunk(CONTAINER, ref))!;
      expect(stored.length).toBe(ref.storedSize);
      expect(stored.includes(MARKER)).toBe(false);
      const raw = await decodeChunk(ref.codec, cipher.open(CONTAINER, ref.hash, stored), ref.size);
      expect(sha(raw)).toBe(ref.hash);
      if (raw.includes(MARKER)) markerChunks++;
    }
    // The marker is in the snapshot: the test above would see it if a chunk were stored in clear.
    expect(markerChunks).toBeGreaterThan(0);
    // The index records the key id beside the codec: later checkpoints know what they may reuse.
    const index = await keyed.chunkIndex(CONTAINER);
    expect([...index.values()].every((chunk) => chunk.codec.endsWith(`+aes256gcm:${cipher.keyId}`))).toBe(true);
  });

  let atDump = 0;
  it('deduplicates the second checkpoint as without encryption', async () => {
    const second = await checkpointToStore({ runtime, store: keyed, policy: new CompressionPolicy(), container: CONTAINER, sourceHost: host.hostId, stagingDir: staging, stop: true });
    const perFile = second.manifest.files.map((f) => `${f.path}: ${f.chunks.length} chunks, ${f.size} bytes`).join('; ');
    console.log(`second checkpoint: ${second.uploadedBytes} of ${second.logicalBytes} bytes uploaded, ${second.uploadedChunks} new chunks, ${second.reusedChunks} reused (${perFile})`);
    // Measured 70-285 KB of 2.4 MB: the pages the counter touched and the rootfs chunk holding its report file.
    expect(second.reusedChunks).toBeGreaterThan(second.uploadedChunks);
    expect(second.uploadedBytes).toBeLessThan(0.25 * second.logicalBytes);
    atDump = await readCounter(host, CONTAINER);
  });

  it('refuses a restore without the key or with another one, naming container, version and key, and starts nothing', async () => {
    await runtime.destroy(CONTAINER);
    for (const [store, have] of [[plain, 'this agent has no encryption.keyFile'], [otherKey, `this agent's key is ${otherKey.cipher!.keyId}`]] as const) {
      const error = await restoreFromStore({ runtime, store, container: CONTAINER, stagingDir: staging }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(EncryptionKeyError);
      expect((error as Error).message).toBe(`${CONTAINER} version 2 is encrypted with key ${cipher.keyId}, but ${have}: configure that key to restore it`);
      expect(await runtime.exists(CONTAINER)).toBe(false);
    }
  });

  it('refuses a checkpoint that would mix keys', async () => {
    const error = await uploadSnapshot({ store: otherKey, container: CONTAINER, sourceHost: 'h', policy: new CompressionPolicy(), sources: [source('x', randomBytes(1000))] }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(EncryptionKeyError);
    expect((error as Error).message).toMatch(new RegExp(`checkpoint of ${CONTAINER} version \\d+ refused: its stored chunks are encrypted with key ${cipher.keyId} and this agent's key is`));
    const withoutKey = await uploadSnapshot({ store: plain, container: CONTAINER, sourceHost: 'h', policy: new CompressionPolicy(), sources: [source('x', randomBytes(1000))] }).catch((e: unknown) => e);
    expect((withoutKey as Error).message).toMatch(/this agent has no encryption.keyFile/);
  });

  it('restores with the key (real lxc-checkpoint -r), memory intact', async () => {
    const restored = await restoreFromStore({ runtime, store: keyed, container: CONTAINER, stagingDir: staging });
    expect(restored.manifest.version).toBe(2);
    expect(await runtime.state(CONTAINER)).toBe('RUNNING');
    expect(await waitForCounterAbove(host, CONTAINER, atDump + 2)).toBeGreaterThan(atDump);
  });
});

describe('encrypted chunks that are tampered with, and turning encryption on', () => {
  it('detects a tampered chunk (both replicas) as an integrity error and writes nothing from it', async () => {
    const up = await uploadSnapshot({ store: keyed, container: 'enc-bad', sourceHost: 'h', policy: neverCompress(), sources: [source('p.img', randomBytes(3 * MiB))] });
    const victim = up.manifest.files[0]!.chunks[0]!;
    const stored = (await keyed.getChunk('enc-bad', victim))!;
    stored[stored.length >> 1]! ^= 1;
    await client.execute(`UPDATE ${KEYSPACE}.chunks SET data = ? WHERE container = ? AND bucket = ? AND hash = ?`,
      [stored, 'enc-bad', victim.bucket, Buffer.from(victim.hash, 'hex')], { prepare: true, consistency: 2 });
    const error = await downloadSnapshot({ store: keyed, container: 'enc-bad', targetDir: join(scratch, 'bad') }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(IntegrityError);
    expect((error as Error).message).toMatch(new RegExp(`enc-bad version ${up.version}: no good copy of chunk ${victim.hash} of p.img .*does not authenticate with key ${cipher.keyId}`));
  });

  it('re-reads a chunk whose ciphertext fails authentication from the other replica', async () => {
    const data = randomBytes(3 * MiB);
    const up = await uploadSnapshot({ store: keyed, container: 'enc-one-bad', sourceHost: 'h', policy: new CompressionPolicy(), sources: [source('p.img', data)] });
    const victim = up.manifest.files[0]!.chunks[0]!;
    let served = false;
    // One bad copy can only be injected (Cassandra writes both): the first read of the victim returns a flipped bit.
    const faulty: SnapshotStore = Object.create(keyed) as SnapshotStore;
    faulty.getChunk = async (container, location, fromHost) => {
      const real = await keyed.getChunk(container, location, fromHost);
      if (location.hash !== victim.hash || served || !real) return real;
      served = true;
      const bad = Buffer.from(real);
      bad[40]! ^= 1;
      return bad;
    };
    const down = await downloadSnapshot({ store: faulty, container: 'enc-one-bad', targetDir: join(scratch, 'one') });
    expect(down.repairedFromReplica).toBe(1);
    expect(sha(readFileSync(join(scratch, 'one/p.img')))).toBe(sha(data));
  });

  it('reuses chunks stored in clear before the key was configured, and encrypts the new ones', async () => {
    const old = randomBytes(2 * MiB);
    const v1 = await uploadSnapshot({ store: plain, container: 'enc-later', sourceHost: 'h', policy: neverCompress(), sources: [source('old', old)] });
    expect(v1.manifest.files[0]!.chunks.every((c) => c.keyId === undefined && c.storedSize === c.size)).toBe(true);
    const fresh = randomBytes(MiB);
    const v2 = await uploadSnapshot({ store: keyed, container: 'enc-later', sourceHost: 'h', policy: neverCompress(), sources: [source('old', old), source('new', fresh)] });
    const [oldFile, newFile] = v2.manifest.files;
    expect(oldFile!.chunks.every((c) => c.keyId === undefined)).toBe(true);
    expect(newFile!.chunks.every((c) => c.keyId === cipher.keyId && c.storedSize === c.size + SEAL_OVERHEAD)).toBe(true);
    expect(v2.uploadedBytes).toBe(newFile!.chunks.reduce((sum, c) => sum + c.storedSize, 0));
    await downloadSnapshot({ store: keyed, container: 'enc-later', targetDir: join(scratch, 'later') });
    expect(sha(readFileSync(join(scratch, 'later/old')))).toBe(sha(old));
    expect(sha(readFileSync(join(scratch, 'later/new')))).toBe(sha(fresh));
    // The version written before the key still restores without one; the one written with it does not.
    await downloadSnapshot({ store: plain, container: 'enc-later', version: v1.version, targetDir: join(scratch, 'later-v1') });
    await expect(downloadSnapshot({ store: plain, container: 'enc-later', targetDir: join(scratch, 'later-v2') })).rejects.toThrow(EncryptionKeyError);
  });
});
