import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { finished } from 'node:stream/promises';
import { FailedPreconditionError, IntegrityError, InvalidArgumentError, LxcrError, NotFoundError, errorMessage } from '../util/errors.ts';
import { PAGE_ALIGNMENT, hashedChunks, type ByteSource, type HashedChunk } from './chunker.ts';
import { CompressionPolicy, CompressionTally, decodeChunk, encodeWithPolicy, type EncodedChunk } from './codec.ts';
import { indexCodec, openChunk, parseIndexCodec, requireKey, EncryptionKeyError } from './encryption.ts';
import { DEFAULT_UPLOAD_GRACE_MS } from './gc.ts';
import { BusyClock, ChunkArena, mapOrdered, readAhead } from './pipeline.ts';
import { decodeManifest, encodeManifest, snapshotSha256, type ChunkRef, type SnapshotFile, type VersionManifest } from './manifest.ts';
import type { ChunkCacheReader } from './standby-cache.ts';
import type { ChunkLocation, SnapshotStore, VersionReadOptions } from './store.ts';

/**
 * Moving a snapshot between a local directory and the store: LXCloud-CR's "compress, save in a distributed and
 * persistent way" step and its inverse. Uploads stream (memory stays a few chunks per put slot plus a bounded
 * read-ahead, never a whole dump), skip every chunk the container already has, and commit the version only after all its chunks are
 * durable. Downloads verify every chunk's sha256 and fall back to the other replica for a bad copy.
 */

/** One file of a snapshot to upload: a CRIU image, the container's config, its rootfs as a tar stream. */
export interface SnapshotSource {
  /** Path in the snapshot, relative, '/'-separated. */
  path: string;
  mode: number;
  /** Opens the file's bytes; called once. */
  open(): ByteSource;
  /**
   * How the file is cut into chunks: 'bytes' (default) by FastCDC at any byte, 'pages' only at 4 KiB offsets,
   * for a file of memory pages end to end (CRIU's pages-*.img): as content-defined for such a file, at ~1% of the
   * hashing (see ChunkerOptions.alignment).
   */
  chunking?: 'bytes' | 'pages';
}

/**
 * Told how far a transfer is, as it goes (the agent's TransferTracker, for `lxcr`'s progress bars): raw bytes of
 * the snapshot done so far, and of the whole snapshot when known in advance.
 */
export type TransferProgressListener = (progress: { version: number; bytesDone: number; bytesTotal?: number }) => void;

export interface UploadOptions {
  store: SnapshotStore;
  container: string;
  sourceHost: string;
  sources: readonly SnapshotSource[];
  /** Compress-or-not decisions; share one per agent so its estimates carry across checkpoints. */
  policy: CompressionPolicy;
  /** Chunk uploads in flight at once. Default 4. */
  concurrency?: number;
  /** A bucket partition is closed once it holds this many stored bytes. Default 64 MiB. */
  bucketBytes?: number;
  /** Timings of the dump that produced the sources, for the manifest. */
  dumpTimings?: { freezeMs: number; dumpMs: number };
  /**
   * Called once every chunk is durable, right before the version is committed; if it throws, the version stays
   * uncommitted (GC collects it) and the error is the upload's. The agent checks here that its host still owns
   * the container, so a host taken for dead that wakes up mid-upload does not commit a diverged snapshot.
   */
  beforeCommit?: () => Promise<void>;
  /**
   * Aborts the upload (the agent is stopping and its in-flight upload ran past the drain bound): no new chunk
   * write starts, those in flight are waited for, and the version is never committed (GC collects it).
   */
  signal?: AbortSignal;
  /** Told of the raw bytes read and chunked so far, per chunk (the total is unknown: sources are streams). */
  onProgress?: TransferProgressListener;
  /**
   * The upload writes chunks, indexes them and commits only if it began less than this long ago; default half of
   * GC's upload grace. GC takes an uncommitted version older than its grace for abandoned and may delete its chunks,
   * the chunks it was about to reuse and its row, so an upload stalled that long (its host paused or starved) must
   * neither commit nor index them (the version would miss chunks), nor write more (they would be in no row's
   * buckets, found by nothing). The other half leaves the commit time to land first.
   */
  commitDeadlineMs?: number;
}

export interface UploadResult {
  version: number;
  manifest: VersionManifest;
  /** Raw bytes of the snapshot (what a full copy would be). */
  logicalBytes: number;
  /** Bytes actually sent to the store: chunks it did not have yet, as stored. */
  uploadedBytes: number;
  uploadedChunks: number;
  reusedChunks: number;
}

const DEFAULT_CONCURRENCY = 4;
/** Reads are cheaper for Cassandra than writes, and a restore is waited for: more of them in flight. */
const DEFAULT_DOWNLOAD_CONCURRENCY = 8;
const DEFAULT_BUCKET_BYTES = 64 * 1024 * 1024;

/**
 * Buckets recorded in the uploading version's row per request (store.reserveBuckets): with 64 MiB buckets, one
 * small write to the home partition per 256 MiB uploaded. It replaced a 'pending' index row per chunk (written in
 * groups of 12, ~110 requests per GiB), which cost the three JVMs ~4 CPU-s per GiB more than the bare driver loop.
 */
const BUCKETS_PER_RESERVATION = 4;

/**
 * Chooses the bucket for each new chunk: the newest bucket until it is full, then the next co-located one. Every
 * bucket is reserved in the uploading version (store.reserveBuckets) before a chunk is written to it, so GC can
 * find the chunks of an upload that crashes; the next reservation is made in the background once the upload moves
 * into the last reserved bucket, so the puts never wait for one after the first.
 */
class BucketFiller {
  private readonly fill = new Map<number, number>();
  private current: number;
  /** Each reserved (or being reserved) bucket, with the reservation that covers it. */
  private readonly reservations = new Map<number, Promise<void>>();
  private lastReserved = -1;

  constructor(
    private readonly store: SnapshotStore,
    private readonly container: string,
    private readonly version: number,
    private readonly limit: number,
    existing: Iterable<ChunkLocation>,
  ) {
    for (const chunk of existing) this.fill.set(chunk.bucket, (this.fill.get(chunk.bucket) ?? 0) + chunk.storedSize);
    const newest = Math.max(-1, ...this.fill.keys());
    this.current = newest >= 0 && this.stillColocated(newest) ? newest : this.next(newest);
  }

  /** Whether the ring still places `bucket` with the home partition (the first co-located bucket after bucket - 1). */
  private stillColocated(bucket: number): boolean {
    return this.next(bucket - 1) === bucket;
  }

  /** A bucket that was co-located when chosen; a ring change since then moves new chunks to a fresh one. */
  private next(after: number): number {
    return this.store.buckets(this.container, 1, after)[0]!;
  }

  place(storedSize: number): number {
    if ((this.fill.get(this.current) ?? 0) + storedSize > this.limit && (this.fill.get(this.current) ?? 0) > 0) {
      this.current = this.next(this.current);
    }
    this.fill.set(this.current, (this.fill.get(this.current) ?? 0) + storedSize);
    // The current bucket is reserved (a ring change may have moved it off the reserved ones), and so are the next
    // ones once the upload reaches the last reserved bucket.
    if (!this.reservations.has(this.current)) this.reserveFrom(this.current);
    if (this.current === this.lastReserved) this.reserveFrom(this.next(this.current));
    return this.current;
  }

  /** Settles once `bucket` (a bucket `place` returned) is recorded in the uploading version; rejects if that failed. */
  reserved(bucket: number): Promise<void> {
    return this.reservations.get(bucket)!;
  }

  private reserveFrom(first: number): void {
    const buckets = [first, ...this.store.buckets(this.container, BUCKETS_PER_RESERVATION - 1, first)];
    const reservation = this.store.reserveBuckets(this.container, this.version, buckets);
    // Observed here: a failed reservation fails the puts that wait for it, and none may be waiting yet.
    reservation.catch(() => undefined);
    for (const bucket of buckets) this.reservations.set(bucket, reservation);
    this.lastReserved = buckets.at(-1)!;
  }
}

/** Chunks compressed at once, on libuv's thread pool: one per core of the 2-core machines this targets. */
const ENCODE_PARALLELISM = 2;
/** Prepared chunks held ready ahead of the writes, at most (and at most 4 per put slot). */
const READ_AHEAD_BYTES = 8 * 1024 * 1024;
/**
 * The ring new chunks' bytes are copied into (see ChunkArena): the read-ahead, the chunks being hashed and
 * compressed, those waiting for a put slot and the puts in flight, with room to spare. A chunk that finds no room
 * gets a buffer of its own.
 */
const ARENA_BYTES = 48 * 1024 * 1024;

/** A chunk of a source, hashed, checked against the index and, when new, encoded: what the writer takes. */
type PreparedChunk =
  | { kind: 'known'; hash: string; size: number; location: ChunkLocation }
  | { kind: 'repeat'; hash: string; size: number }
  | { kind: 'new'; hash: string; size: number; encoded: EncodedChunk };

/**
 * Uploads a snapshot as a pipeline of three overlapping stages, each bounded so memory stays a few chunks:
 * 1. reading, chunking (~1 GB/s; chunk bytes copied into a reused ring, see ChunkArena) and hashing (sha256,
 *    ~1.1 GB/s), on the event loop: on 2 cores shared with Cassandra, CPU time is what limits the upload, and
 *    moving the hashing to the thread pool cost more of it (see HashingOptions),
 * 2. compressing new chunks where the policy says it pays, ENCODE_PARALLELISM at once on libuv's thread pool,
 *    run ahead of the writes by up to READ_AHEAD_BYTES of prepared chunks,
 * 3. writing new chunks with `concurrency` puts in flight, each into a bucket reserved beforehand in the uploading
 *    version (see BucketFiller); up to `concurrency` more chunks wait for a slot.
 * Measured before this (1 chunk read, hashed, compressed, then written, in turn): 1.6 puts in flight on average
 * out of 4 and ~0.5x the throughput of a bare driver loop.
 */
export async function uploadSnapshot(options: UploadOptions): Promise<UploadResult> {
  const { store, container, policy } = options;
  const concurrency = options.concurrency ?? DEFAULT_CONCURRENCY;
  if (!Number.isInteger(concurrency) || concurrency < 1) throw new InvalidArgumentError(`concurrency must be a positive integer, got ${concurrency}`);
  const commitDeadlineMs = options.commitDeadlineMs ?? DEFAULT_UPLOAD_GRACE_MS / 2;
  if (!(commitDeadlineMs > 0)) throw new InvalidArgumentError(`commitDeadlineMs must be positive, got ${commitDeadlineMs}`);
  if (options.signal?.aborted) throw new UploadFailedError(`checkpoint of ${container} was not started: ${errorMessage(options.signal.reason)}`);
  const started = Date.now();
  const version = await store.beginVersion(container, options.sourceHost);
  const notCommitted = (reason: string, cause?: unknown) =>
    new UploadFailedError(`checkpoint of ${container} version ${version} was not committed: ${reason}`, cause === undefined ? undefined : { cause });
  /**
   * The error of an upload past its commit deadline, or undefined. Checked before each chunk write too: a late upload
   * can never commit, and GC may already have deleted its version row, so a chunk it wrote now would be found by nothing.
   */
  const pastDeadline = (): UploadFailedError | undefined => {
    const elapsedMs = Date.now() - started;
    if (elapsedMs <= commitDeadlineMs) return undefined;
    return notCommitted(
      `the upload took ${(elapsedMs / 1000).toFixed(1)} s, past the ${(commitDeadlineMs / 1000).toFixed(1)} s within which an ` +
        `upload may commit (GC takes an uncommitted version older than ${DEFAULT_UPLOAD_GRACE_MS / 60_000} min for abandoned and may ` +
        `have collected its chunks). Earlier versions are untouched and GC collects this one; if uploads of this container ` +
        `are this slow when nothing stalls, the store or network is too slow for its size`,
    );
  };
  options.onProgress?.({ version, bytesDone: 0 });
  const stored = new Map([...(await store.chunkIndex(container))].filter(([, chunk]) => chunk.state === 'stored'));
  requireReusableChunks(container, version, stored.values(), store.cipher?.keyId);
  const buckets = new BucketFiller(store, container, version, options.bucketBytes ?? DEFAULT_BUCKET_BYTES, stored.values());
  const tally = new CompressionTally();
  /** Hashes new in this snapshot, seen by the preparing stage: a repeat is not encoded or sent twice. */
  const fresh = new Set<string>();
  /** Where each new chunk of this snapshot goes, set by the writing stage in order, before any repeat reaches it. */
  const placed = new Map<string, ChunkLocation>();
  const putClock = new BusyClock();
  const encodeClock = new BusyClock();
  const inFlight = new Set<Promise<void>>();
  let failure: { error: unknown } | undefined;
  let uploadedBytes = 0;
  let reusedChunks = 0;
  const uploaded: ChunkLocation[] = [];
  /** New chunks waiting for a put slot. */
  const ready: Array<{ location: ChunkLocation; bytes: Buffer }> = [];

  const arena = new ChunkArena(ARENA_BYTES);
  const prepare = async ({ data, hash }: HashedChunk): Promise<PreparedChunk> => {
    const known = stored.get(hash);
    if (known || fresh.has(hash)) {
      arena.release(data); // hashed, and not sent: its bytes are not needed any more
      return known ? { kind: 'known', hash, size: data.length, location: known } : { kind: 'repeat', hash, size: data.length };
    }
    fresh.add(hash);
    const compressed = await encodeWithPolicy(data, policy, encodeClock);
    const encoded = store.cipher ? { ...compressed, stored: store.cipher.seal(container, hash, compressed.stored) } : compressed;
    if (encoded.stored !== data) arena.release(data); // compressed or encrypted: that copy is what is sent
    return { kind: 'new', hash, size: data.length, encoded };
  };

  /** Set once a put was not started because the upload is past its commit deadline. */
  let lateFailure: UploadFailedError | undefined;
  /** Starts puts from `ready` while slots are free; each finished put starts the next. */
  const launch = () => {
    while (!failure && inFlight.size < concurrency && ready.length > 0) {
      const late = pastDeadline();
      if (late) {
        lateFailure = late;
        failure = { error: late };
        return;
      }
      const { location, bytes } = ready.shift()!;
      putClock.begin();
      // The bucket's reservation has normally returned long before (see BucketFiller).
      const put: Promise<void> = buckets.reserved(location.bucket).then(() => store.putChunk(container, location, bytes)).then(
        () => {
          // The aggregate rate of the writes (concurrency at once), comparable with the encoder's aggregate rate.
          policy.observeUpload(bytes.length, putClock.end());
          uploadedBytes += bytes.length;
          uploaded.push(location);
        },
        (error: unknown) => {
          putClock.end();
          failure ??= { error };
        },
      ).finally(() => {
        arena.release(bytes); // written (or failed): the driver is done with it
        inFlight.delete(put);
        launch();
      });
      inFlight.add(put);
    }
  };

  const files: SnapshotFile[] = [];
  let bytesDone = 0;
  try {
    for (const source of options.sources) {
      const chunks: ChunkRef[] = [];
      let size = 0;
      // Opened only once every chunk of the previous sources has been taken. Reading this source overlaps the
      // writes of the previous one's chunks.
      const hashed = hashedChunks(source.open(), source.chunking === 'pages' ? { alignment: PAGE_ALIGNMENT } : undefined, {
        allocate: (size) => arena.allocate(size),
      });
      const prepared = readAhead(mapOrdered(hashed, ENCODE_PARALLELISM, prepare), {
        maxItems: 4 * concurrency,
        maxBytes: READ_AHEAD_BYTES,
        sizeOf: (p) => (p.kind === 'new' ? p.encoded.stored.length : 0),
      });
      for await (const chunk of prepared) {
        if (options.signal?.aborted) failure ??= { error: options.signal.reason };
        if (failure) break;
        size += chunk.size;
        bytesDone += chunk.size;
        options.onProgress?.({ version, bytesDone });
        let location: ChunkLocation;
        if (chunk.kind === 'known') {
          reusedChunks++;
          location = chunk.location;
        } else if (chunk.kind === 'repeat') {
          reusedChunks++;
          location = placed.get(chunk.hash)!;
        } else {
          const { encoded } = chunk;
          tally.add(encoded);
          location = { hash: chunk.hash, bucket: buckets.place(encoded.stored.length), rawSize: chunk.size, storedSize: encoded.stored.length, codec: indexCodec(encoded.codec, store.cipher?.keyId) };
          // If any upload fails the version is never committed, so nothing ever references a chunk that did not arrive.
          placed.set(chunk.hash, location);
          ready.push({ location, bytes: encoded.stored });
          launch();
          // Memory stays bounded: at most `concurrency` chunks wait for a slot besides the puts in flight.
          while (!failure && ready.length >= concurrency && inFlight.size > 0) await Promise.race(inFlight);
        }
        const { codec, keyId } = parseIndexCodec(location.codec);
        chunks.push({ hash: chunk.hash, size: chunk.size, storedSize: location.storedSize, codec: codec as ChunkRef['codec'], bucket: location.bucket, ...(keyId === undefined ? {} : { keyId }) });
      }
      files.push({ path: source.path, mode: source.mode, size, chunks });
      if (failure) break;
    }
  } finally {
    // Whatever happened (a source that fails to read included), no put is left running once this returns or throws.
    while (inFlight.size > 0) await Promise.race(inFlight);
  }
  if (failure) {
    const cause = failure.error;
    throw cause === lateFailure ? cause : notCommitted(errorMessage(cause), cause);
  }

  const requireBeforeDeadline = () => {
    const late = pastDeadline();
    if (late) throw late;
  };
  requireBeforeDeadline();
  // Every chunk's data is durable now: only then may later uploads reuse them.
  await store.indexChunks(container, uploaded);
  const committedAt = Date.now();
  const manifest: VersionManifest = {
    container,
    version,
    sourceHost: options.sourceHost,
    createdAt: started,
    committedAt,
    files,
    snapshotSha256: snapshotSha256(files),
    compression: tally.summary(),
    timings: {
      freezeMs: options.dumpTimings?.freezeMs ?? 0,
      dumpMs: options.dumpTimings?.dumpMs ?? 0,
      uploadMs: committedAt - started,
      totalMs: committedAt - started + (options.dumpTimings?.dumpMs ?? 0),
    },
  };
  await options.beforeCommit?.();
  if (options.signal?.aborted) throw notCommitted(errorMessage(options.signal.reason));
  requireBeforeDeadline();
  await store.commitVersion(container, version, encodeManifest(manifest));
  const logicalBytes = files.reduce((sum, f) => sum + f.size, 0);
  return { version, manifest, logicalBytes, uploadedBytes, uploadedChunks: uploaded.length, reusedChunks };
}

/**
 * A version references only chunks the uploading agent can restore. Chunks stored in clear are reused by an agent
 * with a key (turning encryption on encrypts new chunks; see the README). Chunks encrypted with another key, or
 * any encrypted chunk for an agent without a key, cannot be reused, nor stored again beside them (the index holds
 * one location per hash): the checkpoint is refused, naming the key needed.
 */
function requireReusableChunks(container: string, version: number, chunks: Iterable<ChunkLocation>, keyId: string | undefined): void {
  for (const chunk of chunks) {
    const stored = parseIndexCodec(chunk.codec).keyId;
    if (stored === undefined || stored === keyId) continue;
    const have = keyId === undefined ? 'this agent has no encryption.keyFile' : `this agent's key is ${keyId}`;
    throw new EncryptionKeyError(
      `checkpoint of ${container} version ${version} refused: its stored chunks are encrypted with key ${stored} and ${have}; ` +
        'configure that key, or delete the container\'s snapshots to start over with this one',
    );
  }
}

/** An upload stopped before commit; the version stays uncommitted (invisible) until GC collects it. */
export class UploadFailedError extends LxcrError {
  readonly code = 'UNAVAILABLE';
}

export interface DownloadOptions {
  store: SnapshotStore;
  container: string;
  /** A committed version; default the newest committed one. */
  version?: number;
  /**
   * Directory the snapshot's files are written under (created if missing): a staging directory, since a
   * failed download leaves partial files there.
   */
  targetDir: string;
  /** Chunk reads in flight at once. Default 8. */
  concurrency?: number;
  /**
   * The Cassandra address of this host's own node: when it is one of the container's replicas, chunks are read
   * from it first, so the first live replica host restores from its local data (LXCloud-CR's Algorithm 3).
   */
  localReplica?: string;
  /** Chunks already on this host (a standby copy): read and verified before Cassandra is asked. */
  cache?: ChunkCacheReader;
  /** Told of the raw bytes verified and written so far, per chunk, out of the snapshot's. */
  onProgress?: TransferProgressListener;
}

export interface DownloadResult {
  manifest: VersionManifest;
  bytes: number;
  /** Chunks whose first copy failed verification and were read from the other replica. */
  repairedFromReplica: number;
  /** Chunks read from the local cache (verified); the others came from Cassandra. */
  fromCache: number;
}

/** The committed manifest of a version (default: the newest), or a NotFound / FailedPrecondition error saying why not.
 * For restores: read from one replica (a committed version is on both; see VersionReadOptions).
 */
export const RESTORE_READ: VersionReadOptions = { oneReplica: true };

export async function committedManifest(store: Pick<SnapshotStore, 'latestCommitted' | 'versions'>, container: string, version?: number): Promise<VersionManifest> {
  const record =
    version === undefined
      ? await store.latestCommitted(container, RESTORE_READ)
      : (await store.versions(container, RESTORE_READ)).find((v) => v.version === version);
  if (!record) {
    throw new NotFoundError(version === undefined ? `${container} has no committed snapshot` : `${container} has no version ${version}`);
  }
  if (record.state !== 'committed' || !record.manifest) {
    throw new FailedPreconditionError(`${container} version ${record.version} never committed (its upload did not finish): it cannot be restored`);
  }
  return decodeManifest(record.manifest);
}

/** Whether raw chunk bytes are the chunk the manifest names (size and sha256). */
export function verifiesChunk(raw: Buffer, ref: ChunkRef): boolean {
  return raw.length === ref.size && createHash('sha256').update(raw).digest('hex') === ref.hash;
}

/**
 * Reads one chunk from the store and verifies it: from this host's own replica first when it is one (else any
 * replica, the driver picks), then from each replica in turn for a copy that verifies. `repaired` says the first
 * copy was bad or missing. With no good copy anywhere: an IntegrityError naming the chunk, prefixed by `context`.
 */
export async function readVerifiedChunk(
  store: Pick<SnapshotStore, 'replicas' | 'getChunk' | 'cipher'>,
  container: string,
  ref: ChunkRef,
  options: { localReplica?: string; context: string; file?: string },
): Promise<{ raw: Buffer; repaired: boolean }> {
  const replicas = store.replicas(container);
  const firstSource = options.localReplica !== undefined && replicas.includes(options.localReplica) ? options.localReplica : undefined;
  // A key this agent lacks is no reason to try the other replica: it is said as such, not as a corruption.
  if (ref.keyId !== undefined) requireKey(store.cipher, options.context, ref.keyId);
  const problems: string[] = [];
  for (const [attempt, host] of [firstSource, ...replicas].entries()) {
    try {
      const stored = await store.getChunk(container, ref, host);
      if (!stored) {
        problems.push(`${host ?? 'any replica'}: missing`);
        continue;
      }
      const raw = await decodeChunk(ref.codec, openChunk(store.cipher, options.context, container, ref, stored), ref.size);
      if (verifiesChunk(raw, ref)) return { raw, repaired: attempt > 0 };
      problems.push(`${host ?? 'any replica'}: sha256 mismatch`);
    } catch (err) {
      problems.push(`${host ?? 'any replica'}: ${errorMessage(err)}`);
    }
  }
  const of = options.file === undefined ? '' : ` of ${options.file}`;
  throw new IntegrityError(`${options.context}: no good copy of chunk ${ref.hash}${of} (${problems.join('; ')}); nothing was started from it`);
}

export async function downloadSnapshot(options: DownloadOptions): Promise<DownloadResult> {
  const { store, container, targetDir } = options;
  const manifest = await committedManifest(store, container, options.version);
  // Every key the version needs is checked before a byte is written, so a restore without it fails at once.
  for (const keyId of new Set(manifest.files.flatMap((file) => file.chunks.flatMap((chunk) => chunk.keyId ?? [])))) {
    requireKey(store.cipher, `${container} version ${manifest.version}`, keyId);
  }
  const concurrency = options.concurrency ?? DEFAULT_DOWNLOAD_CONCURRENCY;
  if (!Number.isInteger(concurrency) || concurrency < 1) throw new InvalidArgumentError(`concurrency must be a positive integer, got ${concurrency}`);
  let bytes = 0;
  const bytesTotal = manifest.files.reduce((sum, f) => sum + f.size, 0);
  options.onProgress?.({ version: manifest.version, bytesDone: 0, bytesTotal });
  let repairedFromReplica = 0;
  let fromCache = 0;
  const { cache } = options;
  const fetchVerified = async (file: SnapshotFile, ref: ChunkRef): Promise<Buffer> => {
    const cached = await cache?.get(container, ref.hash);
    if (cached && verifiesChunk(cached, ref)) {
      fromCache++;
      return cached;
    }
    // A cached copy that does not verify is just not used: the store's copies decide.
    const { raw, repaired } = await readVerifiedChunk(store, container, ref, {
      localReplica: options.localReplica,
      context: `${container} version ${manifest.version}`,
      file: file.path,
    });
    if (repaired) repairedFromReplica++;
    return raw;
  };

  // A sliding window of chunk reads across all files, written in order: reads run ahead (also into the next
  // file) while earlier chunks are written, and memory stays at `concurrency` chunks.
  const all = manifest.files.flatMap((file) => file.chunks.map((ref) => ({ file, ref })));
  const window: Array<Promise<Buffer>> = [];
  let issued = 0;
  const refill = () => {
    while (window.length < concurrency && issued < all.length) {
      const { file, ref } = all[issued++]!;
      const read = fetchVerified(file, ref);
      read.catch(() => undefined); // awaited in order below; a failure must not go unhandled meanwhile
      window.push(read);
    }
  };
  try {
    for (const file of manifest.files) {
      const path = join(targetDir, file.path);
      await mkdir(dirname(path), { recursive: true });
      const out = createWriteStream(path, { mode: file.mode });
      try {
        for (let i = 0; i < file.chunks.length; i++) {
          refill();
          const raw = await window.shift()!;
          bytes += raw.length;
          options.onProgress?.({ version: manifest.version, bytesDone: bytes, bytesTotal });
          if (!out.write(raw)) await new Promise<void>((resolve) => out.once('drain', () => resolve()));
        }
      } finally {
        out.end();
        await finished(out);
      }
    }
  } catch (err) {
    await Promise.allSettled(window); // no read left running after a failure
    throw err;
  }
  return { manifest, bytes, repairedFromReplica, fromCache };
}
