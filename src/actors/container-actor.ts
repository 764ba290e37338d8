import { spawn, type Ref } from 'nact';
import cron, { type ScheduledTask } from 'node-cron';
import { describeRestore, discardStaged, dumpToStaging, restartFromStaged, restoreFromStore, type CheckpointToStoreResult } from '../checkpoint/procedures.ts';
import type { EventLog } from '../cluster/events.ts';
import type { ContainerRuntime } from '../runtime/runtime.ts';
import type { GcReport } from '../storage/gc.ts';
import type { SnapshotStore } from '../storage/store.ts';
import { InvalidArgumentError, UnavailableError, errorMessage } from '../util/errors.ts';
import type { Logger } from '../util/log.ts';
import type { GarbageCollectorMessage } from './garbage-collector.ts';
import type { ReplicatorMessage } from './replicator.ts';
import { ask, respond, resumeAfterCrash, tell, type Reply } from './system.ts';

/**
 * One actor per supervised container: its dumper. It freezes the container only for the dump into local
 * staging, hands the staged dump to the host's replicator, then asks the host's garbage collector to collect
 * the container's obsolete versions. Checkpoints (scheduled or asked for) and recovery after a crash all go
 * through its mailbox and each waits for its replication and GC: a second checkpoint of a container never runs
 * alongside the first, and GC never alongside an upload of the same container.
 */

export interface CheckpointOutcome {
  version: number;
  uploadedBytes: number;
  logicalBytes: number;
  dumpMs: number;
  uploadMs: number;
  gc: GcReport;
}

export interface RecoverOutcome {
  version: number;
  restoreMs: number;
}

export type ContainerMessage =
  /** `stop`: the container stops once dumped (a hand-off to another host); it runs on here if the upload fails. */
  | { type: 'checkpoint'; scheduled?: boolean; stop?: boolean; replyTo?: Ref<Reply<CheckpointOutcome>> }
  | { type: 'recover'; replyTo?: Ref<Reply<RecoverOutcome>> }
  /** Answered once everything queued before it is done: how a shutdown waits for in-flight work. */
  | { type: 'drain'; replyTo: Ref<Reply<null>> };

export interface ContainerActorDeps {
  runtime: ContainerRuntime;
  store: SnapshotStore;
  replicator: Ref<ReplicatorMessage>;
  garbageCollector: Ref<GarbageCollectorMessage>;
  hostId: string;
  stagingDir: string;
  /**
   * How long a checkpoint may wait for the replicator (queued behind other containers' uploads) and for GC.
   * Beyond it the checkpoint fails and its staging is removed; its upload, if it started, does not commit.
   */
  replicationTimeoutMs: number;
  logger: Logger;
  /** The audit trail: each checkpoint committed or failed, and what GC collected. */
  events?: Pick<EventLog, 'record'>;
  /** Aborted when the agent stops and gives up waiting for the uploads in flight. */
  stopping?: AbortSignal;
  /** Replications asked of the replicator and not answered yet, counted across the host's containers. */
  replicationQueue: { depth: number };
}

export interface ContainerSchedule {
  /** A node-cron expression (6 fields with seconds allowed), e.g. every 5 minutes: "0 *\/5 * * * *". */
  cron?: string;
  /** Or a fixed period in ms. */
  everyMs?: number;
}

/** Throws InvalidArgumentError naming `owner` and what is wrong with its schedule. */
export function validateSchedule(owner: string, schedule: ContainerSchedule): void {
  if (schedule.cron !== undefined && schedule.everyMs !== undefined) {
    throw new InvalidArgumentError(`checkpoint schedule of ${owner}: give either a cron expression or a period, not both`);
  }
  const cronProblem = schedule.cron === undefined ? undefined : cronExpressionProblem(schedule.cron);
  if (cronProblem !== undefined) throw new InvalidArgumentError(`checkpoint schedule of ${owner}: ${cronProblem}`);
  if (schedule.everyMs !== undefined && (!Number.isInteger(schedule.everyMs) || schedule.everyMs < MIN_PERIOD_MS)) {
    throw new InvalidArgumentError(`checkpoint period of ${owner} must be an integer of at least ${MIN_PERIOD_MS} ms, got ${schedule.everyMs}`);
  }
}

/** What is wrong with a node-cron expression, if anything. */
export function cronExpressionProblem(expression: string): string | undefined {
  return cron.validate(expression) ? undefined : `"${expression}" is not a valid cron expression (5 fields, or 6 with seconds first)`;
}

/** Below a second, the dump's freeze would dominate the container's run time. */
const MIN_PERIOD_MS = 1000;

export interface ContainerActor {
  ref: Ref<ContainerMessage>;
  /** Asks for a checkpoint (see the 'checkpoint' message), counted in {@link pendingCheckpoints} until it ends. */
  checkpoint(options: { stop?: boolean; timeoutMs: number; what: string }): Promise<CheckpointOutcome>;
  /** Checkpoints asked for (scheduled or not) that have not finished: queued or running. */
  pendingCheckpoints(): number;
  /** Stops the schedule; the actor itself stops with its parent. */
  stopSchedule(): void;
}

export function spawnContainerActor(parent: Ref<unknown>, container: string, deps: ContainerActorDeps, schedule: ContainerSchedule = {}): ContainerActor {
  const log = deps.logger.child(container);

  const checkpoint = async (stop = false): Promise<CheckpointOutcome> => {
    const started = performance.now();
    try {
      const outcome = await dumpAndReplicate(stop);
      await deps.events?.record({
        kind: 'checkpoint-committed', host: deps.hostId, container, version: outcome.version, bytes: outcome.uploadedBytes, durationMs: performance.now() - started,
        outcome: 'ok', detail: `snapshot ${outcome.logicalBytes} bytes, frozen ${Math.round(outcome.dumpMs)} ms${stop ? ', then stopped for a hand-off' : ''}`,
        checkpoint: { freezeMs: outcome.dumpMs, logicalBytes: outcome.logicalBytes, uploadMs: outcome.uploadMs },
      });
      if (outcome.gc.deletedVersions.length > 0 || outcome.gc.deletedChunks > 0) {
        await deps.events?.record({
          kind: 'gc-collected', host: deps.hostId, container, bytes: outcome.gc.freedBytes, outcome: 'ok',
          detail: `versions ${outcome.gc.deletedVersions.join(', ') || 'none'} and ${outcome.gc.deletedChunks} chunks deleted; ${outcome.gc.storedBytes} bytes stored remain`,
        });
      }
      return outcome;
    } catch (err) {
      await deps.events?.record({ kind: 'checkpoint-failed', host: deps.hostId, container, durationMs: performance.now() - started, outcome: 'failed', detail: errorMessage(err) });
      throw err;
    }
  };

  const dumpAndReplicate = async (stop: boolean): Promise<CheckpointOutcome> => {
    // The agent is stopping and gave up waiting: a checkpoint still queued would freeze the container for nothing.
    if (deps.stopping?.aborted) throw new UnavailableError(`checkpoint of ${container} not started: ${errorMessage(deps.stopping.reason)}`);
    const staged = await dumpToStaging({ runtime: deps.runtime, container, stagingDir: deps.stagingDir, stop });
    try {
      deps.replicationQueue.depth++;
      const result = await ask<ReplicatorMessage, CheckpointToStoreResult>(deps.replicator, (replyTo) => ({ type: 'replicate' as const, staged, replyTo }), deps.replicationTimeoutMs, `replication of ${container}`)
        .finally(() => deps.replicationQueue.depth--)
        .catch(
        async (err: unknown) => {
          // A stopping dump that was not committed: the container comes back here from the images just taken,
          // so a failed hand-off leaves it running where it was, as it was.
          if (stop) {
            await restartFromStaged(deps.runtime, staged).catch((restartErr: unknown) =>
              log.error('could not restart the container from its own dump after a failed hand-off checkpoint', { error: errorMessage(restartErr) }),
            );
          }
          throw err;
        },
      );
      const gc = await ask<GarbageCollectorMessage, GcReport>(deps.garbageCollector, (replyTo) => ({ type: 'collect' as const, container, replyTo }), deps.replicationTimeoutMs, `GC of ${container}`);
      log.info('checkpoint committed', {
        version: result.version, dumpMs: Math.round(result.dumpMs), uploadedBytes: result.uploadedBytes,
        logicalBytes: result.logicalBytes, gcDeletedVersions: gc.deletedVersions, gcFreedBytes: gc.freedBytes,
      });
      return { version: result.version, uploadedBytes: result.uploadedBytes, logicalBytes: result.logicalBytes, dumpMs: result.dumpMs, uploadMs: result.uploadMs, gc };
    } finally {
      await discardStaged(staged);
    }
  };

  const recover = async (): Promise<RecoverOutcome> => {
    const started = performance.now();
    try {
      // The stopped local copy is stale: the committed snapshot in the store is what comes back.
      if (await deps.runtime.exists(container)) {
        await deps.runtime.stop(container, { kill: true });
        await deps.runtime.destroy(container);
      }
      const restored = await restoreFromStore({ runtime: deps.runtime, store: deps.store, container, stagingDir: deps.stagingDir });
      log.warn('restored after a crash', { version: restored.manifest.version, restoreMs: Math.round(restored.restoreMs) });
      await deps.events?.record({
        kind: 'crash-recovered', host: deps.hostId, container, version: restored.manifest.version, durationMs: performance.now() - started, bytes: restored.bytes, outcome: 'ok',
        detail: `stopped without being asked to; restored on this host: ${describeRestore(restored)}`,
      });
      return { version: restored.manifest.version, restoreMs: restored.restoreMs };
    } catch (err) {
      await deps.events?.record({ kind: 'crash-recovery-failed', host: deps.hostId, container, durationMs: performance.now() - started, outcome: 'failed', detail: errorMessage(err) });
      throw err;
    }
  };

  // A scheduled tick while one is already waiting is dropped: slow uploads never pile up checkpoints.
  let scheduledWaiting = false;
  /** Checkpoint messages sent and not handled yet (counted when sent, so queued ones count too). */
  let pending = 0;

  const ref = spawn(
    parent,
    async (_state: undefined, message: ContainerMessage) => {
      if (message.type === 'checkpoint') {
        if (message.scheduled) scheduledWaiting = false;
        try {
          await respond(log, 'checkpoint', () => checkpoint(message.stop), message.replyTo);
        } finally {
          pending--;
        }
      } else if (message.type === 'recover') {
        await respond(log, 'recovery', recover, message.replyTo);
      } else {
        await respond(log, 'drain', () => Promise.resolve(null), message.replyTo);
      }
      return undefined;
    },
    `container-${container}`,
    {
      // Handlers answer errors instead of throwing; anything that still escapes is logged and the actor goes
      // on with its next message, so one container's failure never stops another's checkpoints.
      onCrash: resumeAfterCrash(log, 'container actor'),
    },
  );

  const tick = () => {
    if (scheduledWaiting) return;
    scheduledWaiting = true;
    pending++;
    tell(ref, { type: 'checkpoint', scheduled: true });
  };
  validateSchedule(container, schedule);
  let task: ScheduledTask | undefined;
  let timer: NodeJS.Timeout | undefined;
  if (schedule.cron !== undefined) task = cron.schedule(schedule.cron, tick);
  else if (schedule.everyMs !== undefined) timer = setInterval(tick, schedule.everyMs);
  return {
    ref,
    checkpoint: ({ stop, timeoutMs, what }) => {
      pending++;
      return ask<ContainerMessage, CheckpointOutcome>(ref, (replyTo) => ({ type: 'checkpoint' as const, stop, replyTo }), timeoutMs, what);
    },
    pendingCheckpoints: () => pending,
    stopSchedule: () => {
      void task?.stop();
      if (timer) clearInterval(timer);
    },
  };
}
