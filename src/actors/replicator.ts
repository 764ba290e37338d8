import type { Ref } from 'nact';
import { replicateStaged, type CheckpointToStoreResult, type ReplicateOptions, type StagedSnapshot } from '../checkpoint/procedures.ts';
import type { TransferTracker } from '../checkpoint/transfers.ts';
import type { CompressionPolicy } from '../storage/codec.ts';
import type { SnapshotStore } from '../storage/store.ts';
import type { Logger } from '../util/log.ts';
import { spawnServiceActor, type Reply } from './system.ts';

/**
 * The host's replicator: chunks, compresses where that pays, uploads and commits the dumps its containers'
 * dumpers staged (LXCloud-CR's "compress, save in a distributed and persistent way"). One per host, one upload
 * at a time: the uplink and the local Cassandra node are shared by every container, so uploads queue here
 * instead of competing, and each upload keeps a few chunk writes in flight. It shares the host's compression
 * estimates across containers.
 */

export type ReplicatorMessage = { type: 'replicate'; staged: StagedSnapshot; replyTo: Ref<Reply<CheckpointToStoreResult>> };

export interface ReplicatorDeps {
  store: SnapshotStore;
  policy: CompressionPolicy;
  hostId: string;
  logger: Logger;
  /** Throws if this host may no longer commit a snapshot of the container (another host owns it now). */
  fence?: (container: string) => Promise<void>;
  /** Aborts the upload in progress, and any queued after it (the agent is stopping). */
  signal?: AbortSignal;
  /** Where each upload's progress is reported (the public API's WatchTransfer). */
  transfers?: Pick<TransferTracker, 'track'>;
}

export function spawnReplicator(parent: Ref<unknown>, deps: ReplicatorDeps): Ref<ReplicatorMessage> {
  return spawnServiceActor(
    parent,
    'replicator',
    deps.logger.child('replicator'),
    (message: ReplicatorMessage) => `replication of ${message.staged.container}`,
    (message) => {
      const { fence } = deps;
      const { container } = message.staged;
      const replicate = (onProgress?: ReplicateOptions['onProgress']) =>
        replicateStaged(message.staged, {
          store: deps.store, policy: deps.policy, sourceHost: deps.hostId, beforeCommit: fence && (() => fence(container)), signal: deps.signal, onProgress,
        });
      return deps.transfers ? deps.transfers.track(container, 'upload', undefined, replicate) : replicate();
    },
  );
}
