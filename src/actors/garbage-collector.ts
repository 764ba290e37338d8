import type { Ref } from 'nact';
import { collectGarbage, type GcReport } from '../storage/gc.ts';
import type { SnapshotStore } from '../storage/store.ts';
import type { Logger } from '../util/log.ts';
import { spawnServiceActor, type Reply } from './system.ts';

/**
 * The host's garbage collector (GC-CR): after each committed checkpoint of a container, deletes its versions
 * beyond the newest K and the chunks no kept version needs. One per host, one container at a time, so GC's
 * deletions never crowd out uploads on the local Cassandra node.
 */

export type GarbageCollectorMessage = { type: 'collect'; container: string; replyTo: Ref<Reply<GcReport>> };

export interface GarbageCollectorDeps {
  store: SnapshotStore;
  /** Committed versions kept per container. */
  keep: number;
  logger: Logger;
}

export function spawnGarbageCollector(parent: Ref<unknown>, deps: GarbageCollectorDeps): Ref<GarbageCollectorMessage> {
  return spawnServiceActor(
    parent,
    'garbage-collector',
    deps.logger.child('gc'),
    (message: GarbageCollectorMessage) => `GC of ${message.container}`,
    (message) => collectGarbage({ store: deps.store, container: message.container, keep: deps.keep }),
  );
}
