import type { ValidRestoreRequest } from '../api/agent-server.ts';
import type { RestoreResponse } from '../api/generated/lxcr/v1/RestoreResponse.ts';
import { describeRestore, restoreFromStore, type RestoreFromStoreOptions } from '../checkpoint/procedures.ts';
import type { TransferTracker } from '../checkpoint/transfers.ts';
import { committedManifest } from '../storage/snapshots.ts';
import type { EventLog } from '../cluster/events.ts';
import type { ClusterRegistry } from '../cluster/registry.ts';
import type { ContainerRuntime } from '../runtime/runtime.ts';
import type { StandbyCache } from '../storage/standby-cache.ts';
import type { SnapshotStore } from '../storage/store.ts';
import { AlreadyExistsError, ConflictError, NotFoundError, errorMessage } from '../util/errors.ts';
import type { Logger } from '../util/log.ts';

/**
 * The target side of a failover (LXCloud-CR's Algorithm 3, on the chosen host): claim the container with a
 * lightweight transaction on its ownership epoch, restore it from its snapshot (from this host's own replica
 * when it is one), mark it running. A repeated request for a restore already done here is answered as such; a
 * request whose epoch is no longer current is refused with ABORTED, so two coordinators never cause two copies.
 */

export interface RestoreServiceDeps {
  hostId: string;
  runtime: ContainerRuntime;
  store: SnapshotStore;
  registry: ClusterRegistry;
  events: EventLog;
  stagingDir: string;
  /** This host's Cassandra node address: the restore reads its local replica first. */
  cassandraAddress: string;
  /** This host's standby copies (see standby.ts): read before Cassandra; a container's copy is dropped once it runs here. */
  standby?: StandbyCache;
  logger: Logger;
  /** Called once a restored container runs here, so the host supervisor adopts it at once. */
  onRestored?: (container: string) => void;
  /** Where downloads report their progress (the public API's WatchTransfer). */
  transfers?: Pick<TransferTracker, 'track'>;
}

export class RestoreService {
  /** Restores in progress on this host, by container: a second request for the same one waits for the first. */
  private readonly inProgress = new Map<string, Promise<RestoreResponse>>();

  constructor(private readonly deps: RestoreServiceDeps) {}

  /** Containers with a restore running or queued on this host. */
  get inFlight(): number {
    return this.inProgress.size;
  }

  restore(request: ValidRestoreRequest): Promise<RestoreResponse> {
    const running = this.inProgress.get(request.container);
    const next = (running ?? Promise.resolve(undefined)).catch(() => undefined).then(() => this.claimAndRestore(request));
    this.inProgress.set(request.container, next);
    void next.finally(() => {
      if (this.inProgress.get(request.container) === next) this.inProgress.delete(request.container);
    }).catch(() => undefined);
    return next;
  }

  private async claimAndRestore(request: ValidRestoreRequest): Promise<RestoreResponse> {
    const { hostId, registry, runtime, events } = this.deps;
    const { container } = request;
    const log = this.deps.logger.child(container);
    const current = await registry.ownership(container);
    if (current === undefined && request.expectedEpoch !== 0) {
      throw new NotFoundError(`${container} is not in the cluster registry: no host owns it, so there is nothing to fail over`);
    }
    if (current && current.owner === hostId && current.epoch === request.expectedEpoch + 1 && current.state === 'running' && (await this.runsHere(container))) {
      return { container, host: hostId, epoch: current.epoch, version: 0, restoreMs: 0, alreadyRestored: true };
    }
    // Before any claim: a request for a snapshot that cannot be restored must not move the container anywhere.
    const manifest = await committedManifest(this.deps.store, container, request.version);
    if (current && current.epoch !== request.expectedEpoch) {
      throw new ConflictError(
        `${container} is owned by ${current.owner} at epoch ${current.epoch} (${current.state}), not at epoch ${request.expectedEpoch} as the caller saw: another claim won`,
      );
    }
    const claim = current ? await registry.claim(container, hostId, request.expectedEpoch) : await registry.adopt(container, hostId);
    if (!claim.won) {
      const owner = claim.current ? `${claim.current.owner} at epoch ${claim.current.epoch}` : 'nobody';
      throw new ConflictError(`${container}: another agent's claim won (now owned by ${owner})`);
    }
    const epoch = claim.ownership.epoch;
    await events.record({ kind: 'restore-claimed', host: hostId, container, epoch, detail: `from ${request.fromHost || 'nobody'}, asked by ${request.requestedBy || 'unknown'}` });

    const started = performance.now();
    try {
      await this.clearStaleCopy(container);
      const restore = (onProgress?: RestoreFromStoreOptions['onProgress']) =>
        restoreFromStore({
          runtime, store: this.deps.store, container, version: request.version, stagingDir: this.deps.stagingDir, holder: hostId,
          localReplica: this.deps.cassandraAddress, cache: this.deps.standby, assembled: this.deps.standby?.assembled, manifest, onProgress,
        });
      const restored = await (this.deps.transfers ? this.deps.transfers.track(container, 'restore', request.version || undefined, restore) : restore());
      const restoreMs = performance.now() - started;
      if (!(await registry.setState(container, hostId, epoch, 'running'))) {
        // Claimed away from us while restoring: the new owner's copy is the one; ours must not run.
        await runtime.stop(container, { kill: true }).catch(() => undefined);
        await runtime.destroy(container).catch(() => undefined);
        throw new ConflictError(`${container} was claimed by another agent while it was being restored here; this copy was destroyed`);
      }
      await events.record({
        kind: 'restore-done', host: hostId, container, epoch, version: restored.manifest.version, durationMs: restoreMs, bytes: restored.bytes, outcome: 'ok',
        detail: describeRestore(restored),
      });
      log.info('restored after a failover', {
        epoch, version: restored.manifest.version, totalMs: Math.round(restoreMs), downloadMs: Math.round(restored.downloadMs),
        importMs: Math.round(restored.importMs), criuRestoreMs: Math.round(restored.restoreMs), bytes: restored.bytes,
        usedAssembledCopy: restored.usedAssembledCopy, assembledCopyMissed: restored.assembledCopyMissed, chunksFromStandby: restored.fromCache, fromHost: request.fromHost,
      });
      await this.deps.standby?.drop(container).catch(() => undefined); // it runs here now: no copy needed
      this.deps.onRestored?.(container);
      return { container, host: hostId, epoch, version: restored.manifest.version, restoreMs, alreadyRestored: false };
    } catch (err) {
      // Said in the registry at once, so coordinators move on to the next candidate instead of waiting.
      await registry.setState(container, hostId, epoch, 'restore-failed').catch(() => undefined);
      await events.record({ kind: 'restore-failed', host: hostId, container, epoch, durationMs: performance.now() - started, outcome: 'failed', detail: errorMessage(err) });
      throw err;
    }
  }

  private async runsHere(container: string): Promise<boolean> {
    return (await this.deps.runtime.exists(container)) && (await this.deps.runtime.state(container)) === 'RUNNING';
  }

  /**
   * A stopped copy left on this host (an earlier life of the container here) is stale now that the snapshot is
   * restored; a running one means something is badly wrong, and nothing is touched.
   */
  private async clearStaleCopy(container: string): Promise<void> {
    const { runtime } = this.deps;
    if (!(await runtime.exists(container))) return;
    if ((await runtime.state(container)) === 'RUNNING') {
      throw new AlreadyExistsError(`${container} already runs on ${this.deps.hostId} without being owned here; refusing to restore a second copy`);
    }
    await runtime.destroy(container);
  }
}
