import { createReadStream } from 'node:fs';
import { mkdir, readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { ContainerRuntime } from '../runtime/runtime.ts';
import type { CompressionPolicy } from '../storage/codec.ts';
import { downloadSnapshot, uploadSnapshot, type DownloadResult, type SnapshotSource, type UploadResult } from '../storage/snapshots.ts';
import type { SnapshotStore } from '../storage/store.ts';

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
const ROOTFS_TAR = 'rootfs.tar';

export interface CheckpointToStoreOptions {
  runtime: ContainerRuntime;
  store: SnapshotStore;
  policy: CompressionPolicy;
  container: string;
  /** This host's id, recorded in the manifest. */
  sourceHost: string;
  /** A local directory for the dump; the container's files go under it and are removed afterwards. */
  stagingDir: string;
  /** Stop the container after the dump (migration); default false: it runs on after a short freeze. */
  stop?: boolean;
}

export interface CheckpointToStoreResult extends UploadResult {
  dumpMs: number;
}

export async function checkpointToStore(options: CheckpointToStoreOptions): Promise<CheckpointToStoreResult> {
  const { runtime, container } = options;
  const staging = join(options.stagingDir, `${container}.checkpoint-${process.pid}-${Date.now()}`);
  try {
    const dump = await runtime.checkpoint(container, join(staging, IMAGES), { stop: options.stop ?? false });
    // The upload runs while the container runs again: it was frozen for the dump only.
    const exported = await runtime.exportFiles(container);
    const images = (await readdir(dump.imagesDir, { withFileTypes: true })).filter((e) => e.isFile()).map((e) => e.name).sort();
    const sources: SnapshotSource[] = [
      ...images.map((name) => ({ path: `${IMAGES}/${name}`, mode: 0o600, open: () => createReadStream(join(dump.imagesDir, name)) })),
      { path: CONFIG, mode: 0o640, open: () => [exported.config] },
      { path: ROOTFS_TAR, mode: 0o600, open: () => exported.openRootfsTar() },
    ];
    const uploaded = await uploadSnapshot({
      store: options.store,
      container,
      sourceHost: options.sourceHost,
      sources,
      policy: options.policy,
      dumpTimings: { freezeMs: dump.dumpMs, dumpMs: dump.dumpMs },
    });
    return { ...uploaded, dumpMs: dump.dumpMs };
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
}

export interface RestoreFromStoreOptions {
  runtime: ContainerRuntime;
  store: SnapshotStore;
  container: string;
  /** A committed version; default the newest. */
  version?: number;
  stagingDir: string;
}

export interface RestoreFromStoreResult extends DownloadResult {
  restoreMs: number;
}

/**
 * Restores a container that is not defined on this host (it crashed and was destroyed, or it lived on a host
 * that failed) from its committed snapshot. Every chunk is verified before anything is started.
 */
export async function restoreFromStore(options: RestoreFromStoreOptions): Promise<RestoreFromStoreResult> {
  const { runtime, container } = options;
  const staging = join(options.stagingDir, `${container}.restore-${process.pid}-${Date.now()}`);
  await mkdir(staging, { recursive: true });
  let imported = false;
  try {
    const downloaded = await downloadSnapshot({ store: options.store, container, version: options.version, targetDir: staging });
    await runtime.importFiles(container, { config: await readFile(join(staging, CONFIG)), rootfsTarPath: join(staging, ROOTFS_TAR) });
    imported = true;
    const restored = await runtime.restore(container, join(staging, IMAGES));
    return { ...downloaded, restoreMs: restored.restoreMs };
  } catch (err) {
    // Undo the import: a container defined here but not running would look like a stopped copy of it.
    if (imported) await runtime.destroy(container).catch(() => undefined);
    throw err;
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
}
