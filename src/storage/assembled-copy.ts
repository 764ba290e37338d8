import { createHash, randomUUID } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, open, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { finished } from 'node:stream/promises';
import { errorMessage } from '../util/errors.ts';
import type { ChunkRef, SnapshotFile, VersionManifest } from './manifest.ts';

/**
 * A standby copy assembled ahead of time into the files a restore consumes: the CRIU images, the config, and the
 * rootfs already unpacked from its tar. A failover restore that finds the copy assembled for the version it
 * restores renames the directory into its staging and the rootfs into the container's directory, instead of
 * reading, verifying and writing every byte of the snapshot and unpacking the tar while the cluster waits (for
 * 20 containers of 64 MiB restored on 2 cores, >1.3 GB of work on the critical path).
 *
 * Layout: `<container dir>/assembled/` holds the files under their snapshot paths (rootfs.tar as the directory
 * `rootfs/`) and `assembled.json`, the marker: container, version, the snapshot's sha256 and each file's size and
 * chunk-list digest. The marker is written last, after every chunk was verified against the manifest, and is
 * removed before anything in the directory changes, so a marker always speaks for the files beside it. A restore
 * takes the copy only when the marker names the version and whole-snapshot sha256 of the manifest it restores and
 * every file is there with its size; otherwise it reads the snapshot the usual way.
 *
 * A new version is assembled incrementally: files whose chunk list did not change (the config, usually the rootfs
 * and the small images) are moved over from the previous copy; a changed image is moved over too and patched in
 * place, only its chunks that differ at their offset written (a 64 MiB memory image whose counter page changed
 * costs one chunk, not 64 MiB copied and hashed on every checkpoint); the rest is written from verified chunks.
 */

export const ASSEMBLED_DIR = 'assembled';
const MARKER = 'assembled.json';
/** The rootfs travels as a tar; the assembled copy holds it unpacked, under this name. */
export const ROOTFS_TAR = 'rootfs.tar';
export const ROOTFS_DIR = 'rootfs';

interface MarkerFile {
  path: string;
  size: number;
  /** sha256 over the file's chunk list: equal digests mean equal bytes. */
  chunks: string;
  /** The chunk list itself, `hash:size` in file order: where each chunk is, for patching the file in place. */
  layout: string[];
}

interface Marker {
  container: string;
  version: number;
  snapshotSha256: string;
  files: MarkerFile[];
}

export interface AssembleDeps {
  /** A chunk's raw bytes, verified against `ref` (size and sha256) by the caller. */
  chunk(file: SnapshotFile, ref: ChunkRef): Promise<Buffer>;
  /** Unpacks a rootfs tar into an existing empty directory, owners and modes kept (the runtime does it). */
  unpackRootfs(tarPath: string, targetDir: string): Promise<void>;
}

export interface AssembleResult {
  /** Files moved over unchanged from the previous copy. */
  reusedFiles: number;
  /** Bytes written from chunks. */
  writtenBytes: number;
}

/** `waitedMs`: how long the take waited for an assembly of the same container in progress. */
export type TakeResult = { taken: true; bytes: number; waitedMs: number } | { taken: false; reason: string };

/** Where a file of the snapshot lives in an assembled copy. */
function entryOf(path: string): string {
  return path === ROOTFS_TAR ? ROOTFS_DIR : path;
}

function chunksDigest(file: SnapshotFile): string {
  const digest = createHash('sha256');
  for (const chunk of file.chunks) digest.update(`${chunk.hash} ${chunk.size}\n`);
  return digest.digest('hex');
}

function markerFor(manifest: VersionManifest): Marker {
  return {
    container: manifest.container,
    version: manifest.version,
    snapshotSha256: manifest.snapshotSha256,
    files: manifest.files.map((f) => ({ path: f.path, size: f.size, chunks: chunksDigest(f), layout: f.chunks.map((c) => `${c.hash}:${c.size}`) })),
  };
}

/** Whether a marker says its copy is exactly this manifest's snapshot: what is missing if not. */
function mismatch(marker: Marker | undefined, manifest: VersionManifest): string | undefined {
  if (!marker) return 'no assembled copy (or its marker is missing or unreadable)';
  if (marker.container !== manifest.container) return `the assembled copy is of ${marker.container}`;
  if (marker.version !== manifest.version) return `the assembled copy is of version ${marker.version}, not ${manifest.version}`;
  if (marker.snapshotSha256 !== manifest.snapshotSha256) return `the assembled copy of version ${marker.version} has another content (snapshot sha256 differs)`;
  const wanted = markerFor(manifest).files;
  const same = wanted.length === marker.files.length && wanted.every((f, i) => f.path === marker.files[i]?.path && f.size === marker.files[i]?.size && f.chunks === marker.files[i]?.chunks);
  return same ? undefined : "the assembled copy's file list differs from the manifest's";
}

/** Whether a file of the snapshot is in the assembled copy `dir` (a file of its size; the rootfs a directory). */
async function present(dir: string, file: SnapshotFile): Promise<boolean> {
  const info = await stat(join(dir, entryOf(file.path))).catch(() => undefined);
  return (file.path === ROOTFS_TAR ? info?.isDirectory() : info?.isFile() && info.size === file.size) ?? false;
}

async function everyPresent(dir: string, files: readonly SnapshotFile[]): Promise<boolean> {
  for (const file of files) if (!(await present(dir, file))) return false;
  return true;
}

/**
 * The assembled copies under a standby cache's container directories. Assembling and taking one container's copy
 * never overlap in this process (the prefetcher and a restore share one instance).
 */
export class AssembledCopies {
  private readonly locks = new Map<string, Promise<unknown>>();

  /** `containerDir` maps a container to its standby directory (validating the name). */
  constructor(private readonly containerDir: (container: string) => string) {}

  /** The version the container's assembled copy holds, if its marker is readable. */
  async version(container: string): Promise<number | undefined> {
    return (await this.readMarker(container))?.version;
  }

  /** Brings the container's assembled copy to `manifest`'s version; nothing is done when it holds it already. */
  assemble(container: string, manifest: VersionManifest, deps: AssembleDeps): Promise<AssembleResult> {
    return this.exclusive(container, () => this.assembleLocked(container, manifest, deps));
  }

  /**
   * Moves the assembled copy to `targetDir` (which must not exist; same filesystem) if it is exactly `manifest`'s
   * snapshot and complete; otherwise leaves it and says why not.
   */
  take(container: string, manifest: VersionManifest, targetDir: string): Promise<TakeResult> {
    const asked = performance.now();
    return this.exclusive(container, async (): Promise<TakeResult> => {
      const waitedMs = performance.now() - asked;
      const current = this.currentDir(container);
      const wrong = mismatch(await this.readMarker(container), manifest);
      if (wrong) return { taken: false, reason: wrong };
      for (const file of manifest.files) {
        if (!(await present(current, file))) return { taken: false, reason: `the assembled copy lacks ${entryOf(file.path)} or it has the wrong size` };
      }
      const bytes = manifest.files.reduce((sum, file) => sum + file.size, 0);
      try {
        await mkdir(dirname(targetDir), { recursive: true });
        await rename(current, targetDir);
      } catch (err) {
        const hint = (err as NodeJS.ErrnoException).code === 'EXDEV' ? ' (put the standby directory on the staging directory\'s filesystem)' : '';
        return { taken: false, reason: `cannot move the assembled copy to ${targetDir}: ${errorMessage(err)}${hint}` };
      }
      return { taken: true, bytes, waitedMs };
    });
  }

  private async assembleLocked(container: string, manifest: VersionManifest, deps: AssembleDeps): Promise<AssembleResult> {
    const current = this.currentDir(container);
    const previous = await this.readMarker(container);
    if (!mismatch(previous, manifest) && (await everyPresent(current, manifest.files))) return { reusedFiles: 0, writtenBytes: 0 };
    const next = join(this.containerDir(container), `${ASSEMBLED_DIR}.${randomUUID()}.partial`);
    await mkdir(next, { recursive: true });
    // Files are about to move out of the current copy: its marker must not vouch for it any more.
    await rm(join(current, MARKER), { force: true });
    const marker = markerFor(manifest);
    const unchanged = new Set(
      (previous?.files ?? []).filter((p) => marker.files.some((f) => f.path === p.path && f.chunks === p.chunks)).map((p) => p.path),
    );
    const result: AssembleResult = { reusedFiles: 0, writtenBytes: 0 };
    try {
      for (const file of manifest.files) {
        const entry = entryOf(file.path);
        await mkdir(dirname(join(next, entry)), { recursive: true });
        if (unchanged.has(file.path) && (await present(current, file)) && (await this.moved(join(current, entry), join(next, entry)))) {
          result.reusedFiles++;
          continue;
        }
        const before = previous?.files.find((p) => p.path === file.path && file.path !== ROOTFS_TAR);
        if (before && (await present(current, { ...file, size: before.size })) && (await this.moved(join(current, entry), join(next, entry)))) {
          result.writtenBytes += await this.patch(join(next, entry), before, file, deps);
          continue;
        }
        if (file.path === ROOTFS_TAR) {
          const tar = join(next, `${ROOTFS_TAR}.partial`);
          await this.writeFile(tar, file, deps);
          await mkdir(join(next, ROOTFS_DIR));
          await deps.unpackRootfs(tar, join(next, ROOTFS_DIR));
          await rm(tar);
        } else {
          await this.writeFile(join(next, entry), file, deps);
        }
        result.writtenBytes += file.size;
      }
      await writeFile(join(next, MARKER), JSON.stringify(marker));
      await rm(current, { recursive: true, force: true });
      await rename(next, current);
      return result;
    } catch (err) {
      await rm(next, { recursive: true, force: true });
      throw err;
    }
  }

  private async writeFile(path: string, file: SnapshotFile, deps: AssembleDeps): Promise<void> {
    const out = createWriteStream(path, { mode: file.mode });
    try {
      for (const ref of file.chunks) {
        const raw = await deps.chunk(file, ref);
        if (!out.write(raw)) await new Promise<void>((resolve) => out.once('drain', () => resolve()));
      }
    } finally {
      out.end();
      await finished(out);
    }
  }

  /**
   * Rewrites, in a file holding `before`'s chunks, the chunks of `file` that are not already at their offset, and
   * cuts it to `file`'s size; the bytes written.
   */
  private async patch(path: string, before: MarkerFile, file: SnapshotFile, deps: AssembleDeps): Promise<number> {
    const old = new Map<number, string>();
    let at = 0;
    for (const chunk of before.layout) {
      old.set(at, chunk);
      at += Number(chunk.slice(chunk.indexOf(':') + 1));
    }
    const handle = await open(path, 'r+');
    let written = 0;
    try {
      let offset = 0;
      for (const ref of file.chunks) {
        if (old.get(offset) !== `${ref.hash}:${ref.size}`) {
          const raw = await deps.chunk(file, ref);
          await handle.write(raw, 0, raw.length, offset);
          written += raw.length;
        }
        offset += ref.size;
      }
      await handle.truncate(file.size);
    } finally {
      await handle.close();
    }
    return written;
  }

  private async moved(from: string, to: string): Promise<boolean> {
    try {
      await rename(from, to);
      return true;
    } catch {
      return false; // gone or unreadable: written from chunks instead
    }
  }

  private async readMarker(container: string): Promise<Marker | undefined> {
    try {
      const marker = JSON.parse(await readFile(join(this.currentDir(container), MARKER), 'utf8')) as Marker;
      const valid = typeof marker.container === 'string' && Number.isSafeInteger(marker.version) && typeof marker.snapshotSha256 === 'string' &&
        Array.isArray(marker.files) && marker.files.every((f) => Array.isArray(f.layout) && f.layout.every((c) => typeof c === 'string'));
      return valid ? marker : undefined;
    } catch {
      return undefined;
    }
  }

  private currentDir(container: string): string {
    return join(this.containerDir(container), ASSEMBLED_DIR);
  }

  private async exclusive<T>(container: string, task: () => Promise<T>): Promise<T> {
    const before = this.locks.get(container) ?? Promise.resolve();
    const run = before.catch(() => undefined).then(task);
    this.locks.set(container, run);
    try {
      return await run;
    } finally {
      if (this.locks.get(container) === run) this.locks.delete(container);
    }
  }
}
