import { IntegrityError, errorMessage } from '../util/errors.ts';
import { decodeManifest } from './manifest.ts';
import type { SnapshotStore, VersionRecord } from './store.ts';

/**
 * GC-CR: collects a container's obsolete snapshot versions and the chunks no kept version needs.
 *
 * Races: a container's checkpoints and its GC run on its single owner, one after the other (LXCloud-CR's
 * Algorithm 1: save, then collect), so GC never runs while that owner uploads. As a second guard GC deletes no
 * chunk while any upload of the container younger than `uploadGraceMs` is in flight (it may be about to
 * reference an existing chunk), and never a chunk younger than that. Only versions beyond the newest `keep`
 * committed ones are deleted, manifest first: a restore of a kept version is never affected.
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
  deletedChunks: number;
  freedBytes: number;
  /** Chunk deletion was skipped: an upload is in flight, or a restore holds a lease on a deleted version. */
  chunksDeferred: boolean;
  /** Raw bytes of the kept versions added up: what full copies would take. */
  logicalBytes: number;
  /** Bytes stored for the container's remaining chunks, after deduplication and compression. */
  storedBytes: number;
}

export const DEFAULT_KEEP = 2;
const DEFAULT_UPLOAD_GRACE_MS = 15 * 60 * 1000;

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
  const obsolete = [
    ...committed.slice(keep).filter((v) => !leasedBefore.has(v.version)),
    ...versions.filter((v) => v.state === 'uploading' && !isFresh(v.createdAt)),
  ];
  const uploadInFlight = versions.some((v) => v.state === 'uploading' && isFresh(v.createdAt));

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
    deletedVersions: obsolete.map((v) => v.version).sort((a, b) => a - b),
    deletedChunks,
    freedBytes,
    chunksDeferred,
    logicalBytes,
    storedBytes,
  };
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
