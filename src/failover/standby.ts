import type { ClusterRegistry } from '../cluster/registry.ts';
import type { ContainerRuntime } from '../runtime/runtime.ts';
import { decodeManifest, type ChunkRef } from '../storage/manifest.ts';
import { RESTORE_READ, readVerifiedChunk, verifiesChunk } from '../storage/snapshots.ts';
import type { StandbyCache } from '../storage/standby-cache.ts';
import type { SnapshotStore } from '../storage/store.ts';
import { mapBounded } from '../util/concurrency.ts';
import { errorMessage } from '../util/errors.ts';
import type { Logger } from '../util/log.ts';

/**
 * Standby copies: each agent keeps, on local disk, the newest committed snapshot of every container owned by
 * another host for which this host is a replica — exactly the containers it will be asked to restore if their
 * owner fails (the first live replica restores). A failover restore then reads local files instead of pulling the
 * whole snapshot through Cassandra while the cluster is already short of a host; only chunks that changed since
 * the last round are read, from this host's own replica. Each copy is also kept assembled into the files a restore
 * consumes (CRIU images, config, unpacked rootfs: see storage/assembled-copy.ts), written from verified chunks, so
 * a failover restore of that version moves it into place instead of copying and unpacking it. Nothing depends on
 * the copy being current: a restore takes the assembled copy only when it is exactly the version restored, and
 * otherwise verifies every cached chunk against the committed manifest and reads what is missing or stale from
 * Cassandra.
 *
 * Reads take no GC lease: if GC removes the version being copied, the round gives up on that container and the
 * next round copies the newer version.
 */

export interface StandbyDeps {
  hostId: string;
  store: Pick<SnapshotStore, 'replicas' | 'latestCommitted' | 'getChunk'>;
  registry: Pick<ClusterRegistry, 'allOwnership'>;
  cache: StandbyCache;
  /** Unpacks a rootfs tar for the assembled copy. */
  runtime: Pick<ContainerRuntime, 'unpackRootfs'>;
  /** This host's Cassandra address: which containers it is a replica of, and where chunks are read first. */
  cassandraAddress: string;
  logger: Logger;
  /** Time between rounds. Default 5 s. */
  intervalMs?: number;
  /** Chunk reads in flight at once. Default 4. */
  concurrency?: number;
}

export interface StandbyRound {
  /** Containers whose copy moved to a newer version: container → version. */
  updated: Map<string, number>;
  /** Containers whose copy was deleted (running here now, no longer a replica here, or gone from the registry). */
  dropped: string[];
  /** Containers whose copy could not be brought up to date this round, with why. */
  failed: Map<string, string>;
}

const DEFAULT_INTERVAL_MS = 5000;
const DEFAULT_CONCURRENCY = 4;

export class StandbyPrefetcher {
  private timer: NodeJS.Timeout | undefined;
  private round: Promise<unknown> = Promise.resolve();
  private stopped = false;

  constructor(private readonly deps: StandbyDeps) {}

  start(): void {
    this.stopped = false;
    const next = () => {
      if (this.stopped) return;
      this.round = this.refresh()
        .catch((err: unknown) => this.deps.logger.warn('standby round failed', { error: errorMessage(err) }))
        .finally(() => {
          if (!this.stopped) this.timer = setTimeout(next, this.deps.intervalMs ?? DEFAULT_INTERVAL_MS);
        });
    };
    next();
  }

  /** Stops the rounds; waits for the one in progress. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.round;
  }

  /** One round: which containers this host should hold a copy of, and each copy brought to their newest version. */
  async refresh(): Promise<StandbyRound> {
    const { hostId, store, registry, cache, cassandraAddress } = this.deps;
    const result: StandbyRound = { updated: new Map(), dropped: [], failed: new Map() };
    // A copy is wanted until the container runs here: while this host is still restoring it (claimed, so owned
    // here already), the restore may be reading the copy, and the copy is left as it is (an assembled copy the
    // restore took is not assembled again meanwhile, on the CPU the restores need).
    const ownership = (await registry.allOwnership()).filter((o) => !(o.owner === hostId && o.state === 'running') && store.replicas(o.container).includes(cassandraAddress));
    const wanted = new Set(ownership.map((o) => o.container));
    const beingRestoredHere = new Set(ownership.filter((o) => o.owner === hostId).map((o) => o.container));
    for (const container of await cache.containers()) {
      if (!wanted.has(container)) {
        await cache.drop(container);
        result.dropped.push(container);
      }
    }
    for (const container of wanted) {
      if (beingRestoredHere.has(container)) continue;
      try {
        const version = await this.bringUpToDate(container);
        if (version !== undefined) result.updated.set(container, version);
      } catch (err) {
        result.failed.set(container, errorMessage(err));
        this.deps.logger.warn('standby copy not updated; a restore would read from Cassandra', { container, error: errorMessage(err) });
      }
    }
    return result;
  }

  /**
   * Copies the chunks of the newest committed version that are not here yet and assembles it for restore; the
   * version, or undefined if both were up to date.
   */
  private async bringUpToDate(container: string): Promise<number | undefined> {
    const { store, cache, cassandraAddress, runtime } = this.deps;
    const record = await store.latestCommitted(container, RESTORE_READ);
    if (!record?.manifest) return undefined;
    const { version } = record;
    if ((await cache.readyVersion(container)) === version && (await cache.assembled.version(container)) === version) return undefined;
    const manifest = decodeManifest(record.manifest);
    const context = `standby copy of ${container} version ${version}`;
    const have = await cache.chunkHashes(container);
    const refs = new Map(manifest.files.flatMap((file) => file.chunks).map((ref) => [ref.hash, ref]));
    const missing = [...refs.values()].filter((ref) => !have.has(ref.hash));
    await mapBounded(missing, this.deps.concurrency ?? DEFAULT_CONCURRENCY, async (ref) => {
      const { raw } = await readVerifiedChunk(store, container, ref, { localReplica: cassandraAddress, context });
      await cache.put(container, ref.hash, raw);
    });
    // Every chunk is verified again as it is assembled: a cached file damaged since it was written is read anew.
    const chunk = async (ref: ChunkRef): Promise<Buffer> => {
      const cached = await cache.get(container, ref.hash);
      if (cached && verifiesChunk(cached, ref)) return cached;
      const { raw } = await readVerifiedChunk(store, container, ref, { localReplica: cassandraAddress, context });
      await cache.put(container, ref.hash, raw);
      return raw;
    };
    const assembled = await cache.assembled.assemble(container, manifest, {
      chunk: (_file, ref) => chunk(ref),
      unpackRootfs: (tarPath, dir) => runtime.unpackRootfs(tarPath, dir),
    });
    await cache.markReady(container, version, new Set(refs.keys()));
    this.deps.logger.debug('standby copy up to date', {
      container, version, chunksRead: missing.length, chunks: refs.size, assembledBytesWritten: assembled.writtenBytes, assembledFilesReused: assembled.reusedFiles,
    });
    return version;
  }
}
