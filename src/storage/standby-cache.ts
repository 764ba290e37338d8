import { randomUUID } from 'node:crypto';
import { mkdir, readFile, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { InvalidArgumentError, errorMessage } from '../util/errors.ts';
import { ASSEMBLED_DIR, AssembledCopies } from './assembled-copy.ts';

/**
 * A replica host's local copy of the newest committed snapshot of each container it is a replica of, kept up
 * to date in the background (see failover/standby.ts). A failover restore then reads the snapshot from local
 * files instead of pulling every byte through Cassandra at the moment it is needed: on the 2-core testbed the
 * download of a 70 MB snapshot was 0.9 s of a 1.2 s restore alone and 3-4 s when several restores shared a host.
 *
 * Layout: `<dir>/<container>/<sha256>` holds a chunk's raw bytes; `<dir>/<container>/ready` names the version
 * whose chunks are all present. Every chunk is verified against its manifest's sha256 when it is read back, so a
 * damaged or stale file only costs a read from Cassandra, never a wrong restore. The cache holds no state the
 * cluster needs: deleting it loses nothing.
 *
 * Beside the chunks, `<dir>/<container>/assembled/` holds the same version assembled into the files a restore
 * consumes (see assembled-copy.ts), so a failover restore moves it into place instead of copying. A container's
 * copy is thus at most its snapshot twice over (chunks and assembled files) while a new version is assembled.
 */

const SHA256_HEX = /^[0-9a-f]{64}$/;
const READY = 'ready';

export interface ChunkCacheReader {
  /** The chunk's raw bytes as cached, unverified; undefined when not cached or unreadable. */
  get(container: string, hash: string): Promise<Buffer | undefined>;
}

export class StandbyCache implements ChunkCacheReader {
  /** Each container's copy assembled for restore, beside its chunks. */
  readonly assembled: AssembledCopies;

  constructor(readonly dir: string) {
    this.assembled = new AssembledCopies((container) => this.containerDir(container));
  }

  async get(container: string, hash: string): Promise<Buffer | undefined> {
    try {
      return await readFile(this.chunkPath(container, hash));
    } catch {
      return undefined;
    }
  }

  /** Stores a chunk's raw bytes, atomically: a reader sees the whole file or none. */
  async put(container: string, hash: string, raw: Buffer): Promise<void> {
    const path = this.chunkPath(container, hash);
    await mkdir(this.containerDir(container), { recursive: true });
    const partial = `${path}.${randomUUID()}.partial`;
    try {
      await writeFile(partial, raw, { mode: 0o600 });
      await rename(partial, path);
    } catch (err) {
      await rm(partial, { force: true });
      throw err;
    }
  }

  /** The chunks cached for a container. */
  async chunkHashes(container: string): Promise<Set<string>> {
    return new Set((await this.entries(container)).filter((name) => SHA256_HEX.test(name)));
  }

  /**
   * Records that every chunk of `version` is cached, and deletes the cached chunks it does not reference (and
   * leftovers of interrupted writes, assembled copies' included): the cache keeps one version per container.
   */
  async markReady(container: string, version: number, hashes: ReadonlySet<string>): Promise<void> {
    const dir = this.containerDir(container);
    for (const name of await this.entries(container)) {
      if (name !== READY && name !== ASSEMBLED_DIR && !hashes.has(name)) await rm(join(dir, name), { recursive: true, force: true });
    }
    const partial = join(dir, `${READY}.${randomUUID()}.partial`);
    await writeFile(partial, String(version));
    await rename(partial, join(dir, READY));
  }

  /** The version whose chunks are all cached, if any. */
  async readyVersion(container: string): Promise<number | undefined> {
    try {
      const version = Number((await readFile(join(this.containerDir(container), READY), 'utf8')).trim());
      return Number.isSafeInteger(version) && version > 0 ? version : undefined;
    } catch {
      return undefined;
    }
  }

  /** Containers with anything cached. */
  async containers(): Promise<string[]> {
    try {
      return (await readdir(this.dir, { withFileTypes: true })).filter((e) => e.isDirectory()).map((e) => e.name);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw new Error(`cannot list the standby cache ${this.dir}: ${errorMessage(err)}`);
    }
  }

  async drop(container: string): Promise<void> {
    await rm(this.containerDir(container), { recursive: true, force: true });
  }

  private async entries(container: string): Promise<string[]> {
    try {
      return await readdir(this.containerDir(container));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
  }

  /** The container's directory in the cache; throws InvalidArgumentError for a name that cannot be one. */
  containerDir(container: string): string {
    // Container names come from the registry and the store: never let one name a path outside the cache.
    if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/.test(container)) {
      throw new InvalidArgumentError(`container name ${JSON.stringify(container)} cannot name a standby cache directory`);
    }
    return join(this.dir, container);
  }

  private chunkPath(container: string, hash: string): string {
    if (!SHA256_HEX.test(hash)) throw new InvalidArgumentError(`chunk hash ${JSON.stringify(hash)} is not a hex sha256`);
    return join(this.containerDir(container), hash);
  }
}
