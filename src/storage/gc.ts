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
  deletedVersions: number[];
  deletedChunks: number;
  freedBytes: number;
  /** Chunk deletion was skipped because an upload is in flight. */
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
  const obsolete = [
    ...committed.slice(keep),
    ...versions.filter((v) => v.state === 'uploading' && !isFresh(v.createdAt)),
  ];
  const uploadInFlight = versions.some((v) => v.state === 'uploading' && isFresh(v.createdAt));

  for (const version of obsolete) await store.deleteVersion(container, version.version);

  const referenced = new Set<string>();
  let logicalBytes = 0;
  for (const version of kept) {
    for (const file of manifestOf(version).files) {
      logicalBytes += file.size;
      for (const chunk of file.chunks) referenced.add(chunk.hash);
    }
  }

  const index = await store.chunkIndex(container);
  let deletedChunks = 0;
  let freedBytes = 0;
  let storedBytes = 0;
  for (const chunk of index.values()) {
    const collectable = !uploadInFlight && !referenced.has(chunk.hash) && !isFresh(chunk.createdAt);
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
    deletedVersions: obsolete.map((v) => v.version).sort((a, b) => a - b),
    deletedChunks,
    freedBytes,
    chunksDeferred: uploadInFlight,
    logicalBytes,
    storedBytes,
  };
}

function manifestOf(version: VersionRecord) {
  try {
    return decodeManifest(version.manifest ?? Buffer.alloc(0));
  } catch (err) {
    // A kept version whose manifest cannot be read must stop GC: deleting "unreferenced" chunks would then
    // delete chunks that version needs.
    throw new IntegrityError(`GC of ${version.container} stopped: manifest of kept version ${version.version} is unreadable: ${errorMessage(err)}`, { cause: err });
  }
}
