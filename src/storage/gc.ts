import { IntegrityError, errorMessage } from '../util/errors.ts';
import { decodeManifest } from './manifest.ts';
import type { ChunkLocation, SnapshotStore, VersionRecord } from './store.ts';

/**
 * GC-CR: collects a container's obsolete snapshot versions and the chunks no kept version needs.
 *
 * Races: a container's checkpoints and its GC run on its single owner, one after the other (LXCloud-CR's
 * Algorithm 1: save, then collect), so GC never runs while that owner uploads. As a second guard GC deletes no
 * chunk while any upload of the container younger than `uploadGraceMs` is in flight (it may be about to
 * reference an existing chunk), and never a chunk indexed or written more recently than that. Only versions
 * beyond the newest `keep` committed ones are deleted, manifest first: a restore of a kept version is never affected.
 *
 * Abandoned uploads (their agent crashed or their writes failed; never committed): an upload indexes its chunks
 * only once all are durable, and before writing a chunk into a bucket partition it records that bucket in its
 * version's row (store.reserveBuckets). GC scans the buckets of an uploading version older than `uploadGraceMs`,
 * deletes every chunk there that the index does not list at that bucket, and only then deletes the version's row:
 * while chunk deletion is deferred, the row stays, so its chunks are found on a later run.
 *
 * A restore of an older version holds a lease on it (store.leaseVersion) from before it reads the manifest
 * until it has read every chunk. GC leaves a leased version in place, and re-reads the leases after deleting
 * manifests, before deleting chunks: a restore that still found its manifest wrote its lease before GC deleted
 * that manifest (leases written at ONE and read at ALL, manifests deleted at TWO and read at ONE: each read
 * sees every completed write), so GC sees the lease and keeps the chunks that restore is reading.
 */
export interface GcOptions {
  store: SnapshotStore;
  container: string;
  /** Committed versions kept, newest first. Default 2. */
  keep?: number;
  /**
   * An uncommitted version older than this is an abandoned upload (its agent crashed) and is collected; a
   * younger one may still be running. Default 15 minutes.
   */
  uploadGraceMs?: number;
  now?: Date;
}

export interface GcReport {
  container: string;
  keptVersions: number[];
  /** Versions beyond the newest `keep` left in place because a restore holds a lease on them. */
  leasedVersions: number[];
  deletedVersions: number[];
  /** Chunks deleted: indexed ones no kept version needs, and the unindexed ones abandoned uploads left behind. */
  deletedChunks: number;
  /** Stored bytes of the indexed chunks deleted (an abandoned upload's chunks are not read, so not counted). */
  freedBytes: number;
  /**
   * Chunk deletion was skipped (abandoned uploads were left in place with their chunks): an upload is in flight,
   * or a restore holds a lease on a deleted version.
   */
  chunksDeferred: boolean;
  /** Raw bytes of the kept versions added up: what full copies would take. */
  logicalBytes: number;
  /** Bytes stored for the container's remaining chunks, after deduplication and compression. */
  storedBytes: number;
}

export const DEFAULT_KEEP = 2;
/** Default of GcOptions.uploadGraceMs; uploads refuse to commit past half of it (see UploadOptions.commitDeadlineMs). */
export const DEFAULT_UPLOAD_GRACE_MS = 15 * 60 * 1000;

export async function collectGarbage(options: GcOptions): Promise<GcReport> {
  const { store, container } = options;
  const keep = options.keep ?? DEFAULT_KEEP;
  if (!Number.isInteger(keep) || keep < 1) throw new RangeError(`keep must be a positive integer, got ${keep}`);
  const grace = options.uploadGraceMs ?? DEFAULT_UPLOAD_GRACE_MS;
  const now = (options.now ?? new Date()).getTime();
  const isFresh = (date: Date | undefined) => date !== undefined && now - date.getTime() < grace;

  const versions = await store.versions(container); // newest first
  const committed = versions.filter((v) => v.state === 'committed');
  const kept = committed.slice(0, keep);
  const leasedBefore = await store.leasedVersions(container);
  const obsolete = committed.slice(keep).filter((v) => !leasedBefore.has(v.version));
  // Not committed and not recent: an upload that will never commit. (A row without a state is one an upload
  // taken for dead re-created by reserving a bucket after GC had deleted its version: abandoned as well.)
  const abandoned = versions.filter((v) => v.state !== 'committed' && !isFresh(v.createdAt));
  const uploadInFlight = versions.some((v) => v.state !== 'committed' && isFresh(v.createdAt));

  for (const version of obsolete) await store.deleteVersion(container, version.version);

  // Leases taken while the manifests were being deleted count too (see the race note above).
  const leased = new Set([...leasedBefore, ...(await store.leasedVersions(container))]);
  const referenced = new Set<string>();
  let logicalBytes = 0;
  for (const version of kept) {
    for (const file of manifestOf(version).files) {
      logicalBytes += file.size;
      for (const chunk of file.chunks) referenced.add(chunk.hash);
    }
  }
  for (const version of committed.slice(keep).filter((v) => leased.has(v.version))) {
    for (const file of manifestOf(version).files) for (const chunk of file.chunks) referenced.add(chunk.hash);
  }
  // A lease on a version whose manifest an earlier GC run already deleted: that restore read the manifest
  // just before, and its chunks are unknown here, so no chunk is deleted until the lease ends.
  const leaseOnUnknownVersion = [...leased].some((v) => !committed.some((c) => c.version === v));
  const chunksDeferred = uploadInFlight || leaseOnUnknownVersion;

  const index = await store.chunkIndex(container);
  let deletedChunks = 0;
  let freedBytes = 0;
  let storedBytes = 0;
  const deletedAbandoned: VersionRecord[] = [];
  if (!chunksDeferred) {
    for (const version of abandoned) {
      const { deleted, recent } = await collectAbandonedChunks(store, container, version, index, isFresh);
      deletedChunks += deleted;
      // A chunk written recently in its buckets: its upload (taken for dead) may still be writing. The row stays,
      // so what it writes is found on a later run.
      if (recent > 0) continue;
      await store.deleteVersion(container, version.version);
      deletedAbandoned.push(version);
    }
  }
  for (const chunk of index.values()) {
    const collectable = !chunksDeferred && !referenced.has(chunk.hash) && !isFresh(chunk.createdAt);
    if (collectable) {
      await store.deleteChunk(container, chunk);
      deletedChunks++;
      freedBytes += chunk.storedSize;
    } else {
      storedBytes += chunk.storedSize;
    }
  }
  return {
    container,
    keptVersions: kept.map((v) => v.version),
    leasedVersions: committed.slice(keep).filter((v) => leased.has(v.version)).map((v) => v.version),
    deletedVersions: [...obsolete, ...deletedAbandoned].map((v) => v.version).sort((a, b) => a - b),
    deletedChunks,
    freedBytes,
    chunksDeferred,
    logicalBytes,
    storedBytes,
  };
}

/**
 * Deletes the chunks an abandoned upload wrote into its reserved buckets and never indexed. A chunk the index lists
 * at the same bucket is left to the index pass (a later upload stored the same bytes there), and so is one written
 * within the grace period (counted as `recent`: an upload is writing there).
 */
async function collectAbandonedChunks(
  store: SnapshotStore,
  container: string,
  version: VersionRecord,
  index: ReadonlyMap<string, ChunkLocation>,
  isFresh: (date: Date) => boolean,
): Promise<{ deleted: number; recent: number }> {
  let deleted = 0;
  let recent = 0;
  for (const bucket of version.uploadBuckets) {
    for (const chunk of await store.bucketChunks(container, bucket)) {
      if (index.get(chunk.hash)?.bucket === bucket) continue;
      if (isFresh(chunk.writtenAt)) {
        recent++;
        continue;
      }
      await store.deleteChunkData(container, { hash: chunk.hash, bucket });
      deleted++;
    }
  }
  return { deleted, recent };
}

function manifestOf(version: VersionRecord) {
  try {
    return decodeManifest(version.manifest ?? Buffer.alloc(0));
  } catch (err) {
    // A kept (or leased) version whose manifest cannot be read must stop GC: deleting "unreferenced" chunks would then
    // delete chunks that version needs.
    throw new IntegrityError(`GC of ${version.container} stopped: manifest of kept version ${version.version} is unreadable: ${errorMessage(err)}`, { cause: err });
  }
}
