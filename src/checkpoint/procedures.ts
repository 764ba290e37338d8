import { createReadStream } from 'node:fs';
import { mkdir, readdir, readFile, rm, stat } from 'node:fs/promises';
import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import { join } from 'node:path';
import type { ContainerRuntime } from '../runtime/runtime.ts';
import type { CompressionPolicy } from '../storage/codec.ts';
import type { ByteSource } from '../storage/chunker.ts';
import type { ChunkCacheReader } from '../storage/standby-cache.ts';
import { ROOTFS_DIR, ROOTFS_TAR, type AssembledCopies } from '../storage/assembled-copy.ts';
import { RESTORE_READ, committedManifest, downloadSnapshot, uploadSnapshot, type DownloadResult, type SnapshotSource, type TransferProgressListener, type UploadResult } from '../storage/snapshots.ts';
import type { VersionManifest } from '../storage/manifest.ts';
import type { SnapshotStore } from '../storage/store.ts';
import { CheckpointError, NotFoundError, RestoreError } from '../util/errors.ts';

/**
 * The two procedures the agent runs on a container, built from a runtime and a snapshot store:
 * checkpoint into the store (one round of LXCloud-CR's Algorithm 1: dump, then save in the DHT) and restore
 * from the store onto this host. A snapshot holds everything another host needs: the CRIU images under
 * images/, the container's config and its rootfs as rootfs.tar.
 *
 * Local staging is removed whether the procedure succeeds or fails; what is already committed in the store
 * is never touched.
 */

const IMAGES = 'images';
const CONFIG = 'config';
/**
 * A CRIU image's bytes. A large one (memory pages) is read 1 MiB at a time: with a ReadStream's default 64 KiB,
 * reading took ~2x the CPU per GiB (0.6-0.9 s vs 0.3 s, measured). The many small ones (a dump has ~50 of a few KiB)
 * are read whole in one buffer of their size: a ReadStream allocates a buffer of its read size for every read, the
 * last one finding the end included, which for 1 MiB reads was ~110 MiB of garbage per dump for a few hundred KiB
 * of data.
 */
function readImage(path: string, size: number): ByteSource {
  if (size > IMAGE_READ_BYTES) return createReadStream(path, { highWaterMark: IMAGE_READ_BYTES });
  return (async function* () {
    yield await readFile(path);
  })();
}

/** CRIU names the images of process memory pages-<id>.img. */
const CRIU_PAGES_IMAGE = /^pages-\d+\.img$/;
const IMAGE_READ_BYTES = 1024 * 1024;

/** A dump waiting in local staging to be replicated: the container already runs again (or is stopped). */
export interface StagedSnapshot {
  container: string;
  /** The staging directory holding the CRIU images; removed by {@link discardStaged}. */
  dir: string;
  dumpMs: number;
  /** The snapshot's files: the images from staging, the config and the rootfs streamed from the container. */
  sources: SnapshotSource[];
}

export interface DumpOptions {
  runtime: ContainerRuntime;
  container: string;
  /** A local directory for the dump; the container's files go in a fresh directory under it. */
  stagingDir: string;
  /** Stop the container after the dump (migration); default false: it runs on after a short freeze. */
  stop?: boolean;
}

/**
 * The dumper's step: freezes the container only for the CRIU dump into local staging. The caller must
 * {@link discardStaged} the result whether or not it is replicated; a failed dump leaves no staging behind.
 */
export async function dumpToStaging(options: DumpOptions): Promise<StagedSnapshot> {
  const { runtime, container } = options;
  const dir = join(options.stagingDir, `${container}.checkpoint-${process.pid}-${Date.now()}`);
  try {
    const dump = await runtime.checkpoint(container, join(dir, IMAGES), { stop: options.stop ?? false });
    const exported = await runtime.exportFiles(container);
    const images = (await readdir(dump.imagesDir, { withFileTypes: true })).filter((e) => e.isFile()).map((e) => e.name).sort();
    const sizes = await Promise.all(images.map(async (name) => (await stat(join(dump.imagesDir, name))).size));
    const sources: SnapshotSource[] = [
      ...images.map((name, i) => ({
        path: `${IMAGES}/${name}`,
        mode: 0o600,
        open: () => readImage(join(dump.imagesDir, name), sizes[i]!),
        // CRIU's pages images hold memory pages end to end (their layout is in the pagemap images).
        chunking: CRIU_PAGES_IMAGE.test(name) ? ('pages' as const) : ('bytes' as const),
      })),
      { path: CONFIG, mode: 0o640, open: () => [exported.config] },
      { path: ROOTFS_TAR, mode: 0o600, open: () => exported.openRootfsTar() },
    ];
    return { container, dir, dumpMs: dump.dumpMs, sources };
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    if (err instanceof CheckpointError && /no space left on device/i.test(err.message)) {
      throw new CheckpointError(
        `${err.message}\nThe staging directory ${options.stagingDir} ran out of space (the container runs on, nothing stored was touched): ` +
          "free space there, or point the agent's staging directory at a disk with room for the container's memory",
        { cause: err },
      );
    }
    throw err;
  }
}

export async function discardStaged(staged: StagedSnapshot): Promise<void> {
  await rm(staged.dir, { recursive: true, force: true });
}

/** A staging entry's name: `<container>.checkpoint-<pid>-<ms>` or `.restore-`; the pid is the agent's. */
const STAGING_ENTRY = /\.(checkpoint|restore)-(\d+)-\d+$/;

/**
 * Removes the staging entries of other processes: one agent uses a staging directory, so at its start they
 * are what a killed run left (a dump, a download). Returns their names.
 */
export async function sweepStaleStaging(stagingDir: string): Promise<string[]> {
  const stale = (await readdir(stagingDir)).filter((name) => {
    const match = STAGING_ENTRY.exec(name);
    return match !== null && Number(match[2]) !== process.pid;
  });
  for (const name of stale) await rm(join(stagingDir, name), { recursive: true, force: true });
  return stale;
}

/** Starts the container again on this host from a staged dump's images (a stopping dump that was not committed). */
export async function restartFromStaged(runtime: ContainerRuntime, staged: StagedSnapshot): Promise<void> {
  await runtime.restore(staged.container, join(staged.dir, IMAGES));
}

export interface ReplicateOptions {
  store: SnapshotStore;
  policy: CompressionPolicy;
  /** This host's id, recorded in the manifest. */
  sourceHost: string;
  /** Last check before the version is committed (see UploadOptions.beforeCommit). */
  beforeCommit?: () => Promise<void>;
  /** Aborts the upload before it commits (see UploadOptions.signal). */
  signal?: AbortSignal;
  /** Told of the upload's progress (see UploadOptions.onProgress). */
  onProgress?: TransferProgressListener;
}

export interface CheckpointToStoreResult extends UploadResult {
  dumpMs: number;
  /** Chunking, compressing, writing and committing the staged dump. */
  uploadMs: number;
}

/**
 * The replicator's step: chunks, compresses where that pays, uploads and commits a staged dump. It runs while
 * the container runs again: the container was frozen for the dump only.
 */
export async function replicateStaged(staged: StagedSnapshot, options: ReplicateOptions): Promise<CheckpointToStoreResult> {
  const started = performance.now();
  const uploaded = await uploadSnapshot({
    store: options.store,
    container: staged.container,
    sourceHost: options.sourceHost,
    sources: staged.sources,
    policy: options.policy,
    dumpTimings: { freezeMs: staged.dumpMs, dumpMs: staged.dumpMs },
    beforeCommit: options.beforeCommit,
    signal: options.signal,
    onProgress: options.onProgress,
  });
  return { ...uploaded, dumpMs: staged.dumpMs, uploadMs: performance.now() - started };
}

export type CheckpointToStoreOptions = DumpOptions & ReplicateOptions;

/** One round of Algorithm 1 in one call: dump, replicate, and clean staging whatever happens. */
export async function checkpointToStore(options: CheckpointToStoreOptions): Promise<CheckpointToStoreResult> {
  const staged = await dumpToStaging(options);
  try {
    return await replicateStaged(staged, options);
  } finally {
    await discardStaged(staged);
  }
}

export interface RestoreFromStoreOptions {
  runtime: ContainerRuntime;
  store: SnapshotStore;
  container: string;
  /** A committed version; default the newest. */
  version?: number;
  stagingDir: string;
  /** Who reads the version, recorded in its lease. Default: this process on this host. */
  holder?: string;
  /** The longest a restore may hold its lease on the version: GC keeps it meanwhile. Default 1 hour. */
  leaseTtlMs?: number;
  /** This host's Cassandra address: chunks are read from it first when it holds a replica. */
  localReplica?: string;
  /** Chunks already on this host (its standby copy), read before Cassandra is asked. */
  cache?: ChunkCacheReader;
  /**
   * This host's standby copies assembled for restore: the version's copy is moved into staging instead of
   * downloaded when its marker names exactly the manifest restored (see assembled-copy.ts).
   */
  assembled?: Pick<AssembledCopies, 'take'>;
  /** The committed manifest of `version` (of the newest when none), if the caller read it already: one read less. */
  manifest?: VersionManifest;
  /** Told of the download's progress (see DownloadOptions.onProgress). */
  onProgress?: TransferProgressListener;
}

const DEFAULT_LEASE_TTL_MS = 60 * 60 * 1000;

export interface FetchResult extends DownloadResult {
  /** The assembled standby copy was moved into staging: nothing was downloaded, verified or unpacked. */
  usedAssembledCopy: boolean;
  /** Why an offered assembled copy was not used. */
  assembledCopyMissed?: string;
  /** How long taking the assembled copy waited for its assembly in progress (the prefetcher's). */
  assembledCopyWaitedMs?: number;
}

export interface RestoreFromStoreResult extends FetchResult {
  /** Fetching and verifying the snapshot into staging (or moving its assembled copy there). */
  downloadMs: number;
  /** Laying out the container's config and rootfs under the lxcpath. */
  importMs: number;
  /** lxc-checkpoint -r. */
  restoreMs: number;
  /** Newer committed versions tried first whose verified images CRIU would not restore, newest first. */
  fellBackFrom: UnrestorableVersion[];
}

export interface UnrestorableVersion {
  version: number;
  error: string;
}

/** Where a restore's time went and how it got its snapshot, for its audit event. */
export function describeRestore(restored: RestoreFromStoreResult): string {
  const fallback = restored.fellBackFrom.map((failed) => `; version ${failed.version} did not restore, so ${restored.manifest.version} was (${failed.error})`).join('');
  return `${fetchedHow(restored)} ${Math.round(restored.downloadMs)} ms, import ${Math.round(restored.importMs)} ms, lxc-checkpoint -r ${Math.round(restored.restoreMs)} ms${fallback}`;
}

/** How a restore got its snapshot into staging. */
function fetchedHow(fetched: FetchResult): string {
  if (fetched.usedAssembledCopy) {
    return `assembled standby copy moved into place (${fetched.bytes} bytes, nothing downloaded, ${Math.round(fetched.assembledCopyWaitedMs ?? 0)} ms waiting for its assembly)`;
  }
  const missed = fetched.assembledCopyMissed === undefined ? '' : `; assembled copy not used: ${fetched.assembledCopyMissed}`;
  return `download (${fetched.bytes} bytes, ${fetched.fromCache} chunks from the standby copy${missed})`;
}

/**
 * Restores a container that is not defined on this host (it crashed and was destroyed, or it lived on a host
 * that failed) from its committed snapshot. Every chunk is verified before anything is started: as it is
 * downloaded, or as it was written into the assembled standby copy taken instead.
 *
 * With no version asked for, a newest version whose verified images CRIU refuses (RestoreError) gives way to the
 * next older committed one: the container comes back in an older state rather than not at all, and the result
 * says which versions failed and why (callers put it in the audit trail). An integrity or store error is no
 * reason to go back, and a version asked for is the only one tried.
 */
export async function restoreFromStore(options: RestoreFromStoreOptions): Promise<RestoreFromStoreResult> {
  const fellBackFrom: UnrestorableVersion[] = [];
  let attempt = options;
  for (;;) {
    const tried: { version?: number } = {};
    try {
      return { ...(await restoreVersion(attempt, tried)), fellBackFrom };
    } catch (err) {
      if (options.version !== undefined || !(err instanceof RestoreError) || tried.version === undefined) throw err;
      fellBackFrom.push({ version: tried.version, error: err.summary });
      const older = (await options.store.versions(options.container, RESTORE_READ))
        .filter((v) => v.state === 'committed' && v.version < tried.version!)
        .map((v) => v.version)
        .sort((a, b) => b - a)[0];
      if (older === undefined) {
        const tries = fellBackFrom.map((failed) => `version ${failed.version}: ${failed.error}`).join('; ');
        throw new RestoreError(`no committed version of ${options.container} restores (${tries})\n${err.message}`, { cause: err });
      }
      // The manifest read and the assembled copy offered were the newest version's.
      attempt = { ...options, version: older, manifest: undefined, assembled: undefined };
    }
  }
}

/** One version's restore; `tried.version` says which once its manifest is known. */
async function restoreVersion(options: RestoreFromStoreOptions, tried: { version?: number }): Promise<Omit<RestoreFromStoreResult, 'fellBackFrom'>> {
  const { runtime, container } = options;
  const staging = join(options.stagingDir, `${container}.restore-${process.pid}-${Date.now()}`);
  await mkdir(staging, { recursive: true });
  let imported = false;
  try {
    const started = performance.now();
    const downloaded = await fetchSnapshot(options, staging);
    tried.version = downloaded.manifest.version;
    const downloadMs = performance.now() - started;
    const config = await readFile(join(staging, CONFIG));
    await runtime.importFiles(container, downloaded.usedAssembledCopy ? { config, rootfsDir: join(staging, ROOTFS_DIR) } : { config, rootfsTarPath: join(staging, ROOTFS_TAR) });
    imported = true;
    const importMs = performance.now() - started - downloadMs;
    const restored = await runtime.restore(container, join(staging, IMAGES));
    return { ...downloaded, downloadMs, importMs, restoreMs: restored.restoreMs };
  } catch (err) {
    // Undo the import: a container defined here but not running would look like a stopped copy of it.
    if (imported) await runtime.destroy(container).catch(() => undefined);
    throw err;
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
}

/**
 * Fetches a version into staging: its assembled standby copy when that is exactly the version, else a download.
 * Taking the assembled copy reads nothing from the store, so it needs no lease.
 */
async function fetchSnapshot(options: RestoreFromStoreOptions, targetDir: string): Promise<FetchResult> {
  const { store, container } = options;
  let assembledCopyMissed: string | undefined;
  if (options.assembled) {
    const manifest = options.manifest ?? (await committedManifest(store, container, options.version));
    const taken = await options.assembled.take(container, manifest, targetDir);
    if (taken.taken) return { manifest, bytes: taken.bytes, repairedFromReplica: 0, fromCache: 0, usedAssembledCopy: true, assembledCopyWaitedMs: taken.waitedMs };
    assembledCopyMissed = taken.reason;
  }
  return { ...(await downloadLeased(options, targetDir)), usedAssembledCopy: false, assembledCopyMissed };
}

/**
 * Downloads a version under a lease, so GC cannot delete it or its chunks while they are read (see gc.ts).
 * The newest version is resolved first and leased by number; if GC removed it in between, the next newest is
 * tried.
 */
async function downloadLeased(options: RestoreFromStoreOptions, targetDir: string): Promise<DownloadResult> {
  const { store, container } = options;
  const holder = options.holder ?? `${hostname()}-${process.pid}-${randomUUID()}`;
  for (let attempt = 0; ; attempt++) {
    const version = options.version ?? (await store.latestCommitted(container, RESTORE_READ))?.version;
    // No committed version: the download reports NotFound with the container's name.
    if (version === undefined) return downloadSnapshot({ store, container, targetDir });
    await store.leaseVersion(container, version, holder, options.leaseTtlMs ?? DEFAULT_LEASE_TTL_MS);
    try {
      return await downloadSnapshot({ store, container, version, targetDir, localReplica: options.localReplica, cache: options.cache, onProgress: options.onProgress });
    } catch (err) {
      if (!(options.version === undefined && err instanceof NotFoundError && attempt < 2)) throw err;
    } finally {
      await store.releaseLease(container, version, holder).catch(() => undefined); // the TTL ends it otherwise
    }
  }
}
