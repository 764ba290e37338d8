// The upload pipeline's guarantees, against an in-memory store that records the order of what it was asked
// (the real store is exercised by the integration tests and the benchmark).
import { createCipheriv } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { CompressionPolicy } from '../../src/storage/codec.ts';
import { decodeManifest } from '../../src/storage/manifest.ts';
import { UploadFailedError, uploadSnapshot, type SnapshotSource } from '../../src/storage/snapshots.ts';
import type { ChunkLocation, SnapshotStore } from '../../src/storage/store.ts';

const KiB = 1024;
const MiB = 1024 * KiB;

function pseudoRandom(bytes: number, seed = 1): Buffer {
  return createCipheriv('aes-128-ctr', Buffer.alloc(16, seed), Buffer.alloc(16)).update(Buffer.alloc(bytes));
}

type Event =
  | { op: 'reserve'; buckets: number[] }
  | { op: 'index'; hashes: string[] }
  | { op: 'put-start' | 'put-end'; hash: string }
  | { op: 'commit' };

class MemoryStore {
  readonly events: Event[] = [];
  readonly index = new Map<string, ChunkLocation>();
  readonly data = new Map<string, Buffer>();
  running = 0;
  maxRunning = 0;
  committed: Buffer | undefined;
  putDelayMs = 2;
  /** Called at each put's start; throw to fail it. */
  onPut: (location: ChunkLocation, count: number) => void = () => undefined;
  private puts = 0;

  asStore(): SnapshotStore {
    return this as unknown as SnapshotStore;
  }

  beginVersion(): Promise<number> {
    return Promise.resolve(1);
  }

  chunkIndex(): Promise<Map<string, ChunkLocation>> {
    return Promise.resolve(new Map(this.index));
  }

  buckets(_container: string, count: number, after = -1): number[] {
    return Array.from({ length: count }, (_, i) => after + 1 + i);
  }

  async reserveBuckets(_container: string, _version: number, buckets: readonly number[]): Promise<void> {
    await sleep(1);
    this.events.push({ op: 'reserve', buckets: [...buckets] });
  }

  async indexChunks(_container: string, locations: readonly ChunkLocation[]): Promise<void> {
    await sleep(1);
    this.events.push({ op: 'index', hashes: locations.map((l) => l.hash) });
    for (const location of locations) this.index.set(location.hash, { ...location, state: 'stored' });
  }

  async putChunk(_container: string, location: ChunkLocation, bytes: Buffer): Promise<void> {
    this.running++;
    this.maxRunning = Math.max(this.maxRunning, this.running);
    this.events.push({ op: 'put-start', hash: location.hash });
    try {
      this.onPut(location, ++this.puts);
      await sleep(this.putDelayMs);
      this.data.set(location.hash, Buffer.from(bytes));
      this.events.push({ op: 'put-end', hash: location.hash });
    } finally {
      this.running--;
    }
  }

  commitVersion(_container: string, _version: number, manifest: Buffer): Promise<void> {
    this.events.push({ op: 'commit' });
    this.committed = manifest;
    return Promise.resolve();
  }
}

const source = (path: string, ...pieces: Buffer[]): SnapshotSource => ({ path, mode: 0o600, open: () => pieces });

describe('uploadSnapshot', () => {
  it('reserves each bucket before writing a chunk to it, a few buckets per request, indexes all chunks after, commits last', async () => {
    const store = new MemoryStore();
    const data = pseudoRandom(24 * MiB, 1);
    // 2 MiB buckets: a dozen of them, so reservations are made ahead as the upload moves on.
    const result = await uploadSnapshot({ store: store.asStore(), container: 'c', sourceHost: 'h', policy: new CompressionPolicy(), bucketBytes: 2 * MiB, sources: [source('a', data)] });

    const reservedAt = new Map<number, number>();
    store.events.forEach((event, at) => {
      if (event.op === 'reserve') for (const bucket of event.buckets) reservedAt.set(bucket, at);
    });
    const indexAt = store.events.findIndex((e) => e.op === 'index');
    const commitAt = store.events.findIndex((e) => e.op === 'commit');
    const bucketOf = new Map(decodeManifest(store.committed!).files[0]!.chunks.map((c) => [c.hash, c.bucket]));
    store.events.forEach((event, at) => {
      if (event.op === 'put-start') expect(reservedAt.get(bucketOf.get(event.hash)!)).toBeLessThan(at);
      if (event.op === 'put-end') expect(at).toBeLessThan(indexAt);
    });
    expect(indexAt).toBeLessThan(commitAt);
    expect(commitAt).toBe(store.events.length - 1);
    const usedBuckets = new Set(bucketOf.values()).size;
    expect(usedBuckets).toBeGreaterThan(8);
    // Four buckets per reservation: a handful of requests, not one per chunk or per bucket.
    const reservations = store.events.filter((e) => e.op === 'reserve');
    expect(reservations.length).toBeLessThanOrEqual(Math.ceil(usedBuckets / 4) + 1);
    expect(reservations.every((e) => e.op === 'reserve' && e.buckets.length === 4)).toBe(true);
    expect(result.uploadedChunks).toBe(store.data.size);
    expect(result.logicalBytes).toBe(data.length);
    const manifest = decodeManifest(store.committed!);
    // The manifest's chunks, in order, are exactly what was written, and they concatenate to the input.
    expect(Buffer.concat(manifest.files[0]!.chunks.map((c) => store.data.get(c.hash)!)).equals(data)).toBe(true);
    expect(manifest.files[0]!.size).toBe(data.length);
    expect(Object.values(manifest.compression.reasons).reduce((a, b) => a + b, 0)).toBe(result.uploadedChunks);
  });

  it("cuts a 'pages' source only at 4 KiB offsets, and a 'bytes' source anywhere", async () => {
    const data = pseudoRandom(16 * MiB, 6);
    const store = new MemoryStore();
    await uploadSnapshot({
      store: store.asStore(),
      container: 'c',
      sourceHost: 'h',
      policy: new CompressionPolicy(),
      sources: [{ ...source('images/pages-1.img', data), chunking: 'pages' }, source('rootfs.tar', data.subarray(1))],
    });
    const [pages, bytes] = decodeManifest(store.committed!).files;
    expect(pages!.chunks.length).toBeGreaterThan(4);
    expect(pages!.chunks.slice(0, -1).every((c) => c.size % (4 * KiB) === 0)).toBe(true);
    expect(bytes!.chunks.slice(0, -1).some((c) => c.size % (4 * KiB) !== 0)).toBe(true);
    expect(Buffer.concat(pages!.chunks.map((c) => store.data.get(c.hash)!)).equals(data)).toBe(true);
  });

  it('never has more than `concurrency` puts in flight, and keeps them busy', async () => {
    for (const concurrency of [1, 3]) {
      const store = new MemoryStore();
      await uploadSnapshot({ store: store.asStore(), container: 'c', sourceHost: 'h', policy: new CompressionPolicy(), concurrency, sources: [source('a', pseudoRandom(16 * MiB, 2))] });
      expect(store.maxRunning).toBe(concurrency);
    }
  });

  it('sends a chunk repeated within the snapshot once, and none the container already has', async () => {
    const store = new MemoryStore();
    const block = pseudoRandom(3 * MiB, 3);
    const first = await uploadSnapshot({ store: store.asStore(), container: 'c', sourceHost: 'h', policy: new CompressionPolicy(), sources: [source('a', block), source('b', block)] });
    expect(first.reusedChunks).toBeGreaterThan(0);
    expect(first.uploadedChunks + first.reusedChunks).toBe(decodeManifest(store.committed!).files.flatMap((f) => f.chunks).length);
    const puts = store.events.filter((e) => e.op === 'put-start').map((e) => (e as { hash: string }).hash);
    expect(new Set(puts).size).toBe(puts.length);
    const manifest = decodeManifest(store.committed!);
    expect(manifest.files[1]!.chunks).toEqual(manifest.files[0]!.chunks);

    const again = await uploadSnapshot({ store: store.asStore(), container: 'c', sourceHost: 'h', policy: new CompressionPolicy(), sources: [source('a', block)] });
    expect(again.uploadedChunks).toBe(0);
    expect(again.uploadedBytes).toBe(0);
  });

  it('records compression decisions and stores compressible chunks compressed', async () => {
    const store = new MemoryStore();
    const text = Buffer.from(pseudoRandom(3 * MiB, 4).toString('hex'));
    const result = await uploadSnapshot({ store: store.asStore(), container: 'c', sourceHost: 'h', policy: new CompressionPolicy(), sources: [source('a', text)] });
    const manifest = decodeManifest(store.committed!);
    expect(manifest.compression.rawBytes).toBe(text.length);
    expect(manifest.compression.storedBytes).toBe(result.uploadedBytes);
    expect(manifest.files[0]!.chunks.some((c) => c.codec === 'brotli')).toBe(true);
    expect(result.uploadedBytes).toBeLessThan(text.length);
  });

  it('fails with UploadFailedError, commits nothing and leaves no put running when a put fails', async () => {
    const store = new MemoryStore();
    store.putDelayMs = 5;
    store.onPut = (_location, count) => {
      if (count === 6) throw new Error('replica down');
    };
    const error = await uploadSnapshot({ store: store.asStore(), container: 'c', sourceHost: 'h', policy: new CompressionPolicy(), sources: [source('a', pseudoRandom(32 * MiB, 5))] }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(UploadFailedError);
    expect((error as Error).message).toMatch(/not committed: replica down/);
    expect(store.running).toBe(0);
    expect(store.committed).toBeUndefined();
    expect(store.events.some((e) => e.op === 'index')).toBe(false);
    // It stopped soon after the failure rather than reading and sending the rest.
    expect(store.events.filter((e) => e.op === 'put-start').length).toBeLessThan(16);
  });

  it('refuses a commit deadline that is not positive, before anything is written', async () => {
    const store = new MemoryStore();
    for (const commitDeadlineMs of [0, -1, Number.NaN]) {
      await expect(
        uploadSnapshot({ store: store.asStore(), container: 'c', sourceHost: 'h', policy: new CompressionPolicy(), commitDeadlineMs, sources: [source('a', pseudoRandom(KiB))] }),
      ).rejects.toThrow(/commitDeadlineMs must be positive/);
    }
    expect(store.events).toEqual([]);
  });

  it('writes no chunk once past its commit deadline: its version row may be gone, and the chunk would be found by nothing', async () => {
    const store = new MemoryStore();
    const first = pseudoRandom(100 * KiB, 1);
    // The second file is read after a stall longer than the deadline (the host paused mid-upload).
    const late: SnapshotSource = {
      path: 'late',
      mode: 0o600,
      open: () => (async function* () {
        await sleep(300);
        yield pseudoRandom(100 * KiB, 2);
      })(),
    };
    await expect(
      uploadSnapshot({ store: store.asStore(), container: 'c', sourceHost: 'h', policy: new CompressionPolicy(), commitDeadlineMs: 100, sources: [source('first', first), late] }),
    ).rejects.toThrow(/^checkpoint of c version 1 was not committed: the upload took [\d.]+ s, past the 0\.1 s within which/);
    // The chunk read in time was written; the one after the stall was not, and nothing was indexed or committed.
    expect(store.events.filter((e) => e.op === 'put-start')).toHaveLength(1);
    expect(store.events.some((e) => e.op === 'index' || e.op === 'commit')).toBe(false);
    expect(store.running).toBe(0);
  });

  it('passes a source error on, with no put left running and nothing committed', async () => {
    const store = new MemoryStore();
    store.putDelayMs = 10;
    function* failingSource(): Generator<Buffer> {
      for (let i = 0; i < 8; i++) yield pseudoRandom(MiB, 10 + i);
      throw new Error('read error on pages.img');
    }
    const error = await uploadSnapshot({ store: store.asStore(), container: 'c', sourceHost: 'h', policy: new CompressionPolicy(), sources: [{ path: 'p', mode: 0o600, open: failingSource }] }).catch((e: unknown) => e);
    expect((error as Error).message).toBe('read error on pages.img');
    expect(store.running).toBe(0);
    expect(store.committed).toBeUndefined();
  });

  it('streams: bytes read but not yet written stay bounded, far below the size of the dump', async () => {
    const store = new MemoryStore();
    store.putDelayMs = 8; // writes slower than reading: the read-ahead fills up and must hold back
    let read = 0;
    let maxHeld = 0;
    let written = 0;
    store.onPut = (location) => {
      written += location.rawSize;
    };
    function* big(): Generator<Buffer> {
      for (let i = 0; i < 128 * 16; i++) {
        // 128 MiB in 64 KiB pieces, as a file stream gives them.
        const key = Buffer.alloc(16);
        key.writeUInt32LE(i + 1);
        const piece = createCipheriv('aes-128-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(64 * KiB));
        read += piece.length;
        maxHeld = Math.max(maxHeld, read - written);
        yield piece;
      }
    }
    const result = await uploadSnapshot({ store: store.asStore(), container: 'c', sourceHost: 'h', policy: new CompressionPolicy(), sources: [{ path: 'p', mode: 0o600, open: big }] });
    expect(result.logicalBytes).toBe(128 * MiB);
    // Read-ahead (8 MiB, up to 16 chunks), up to 4 chunks waiting for a slot, the puts in flight (4) + the chunk
    // being cut and those being hashed and compressed.
    expect(maxHeld).toBeLessThan(40 * MiB);
  });
});
