import { spawn, stop, type ActorContext, type ActorSystemRef, type Ref } from 'nact';
import type { EventLog } from '../cluster/events.ts';
import type { ContainerRuntime, ContainerState } from '../runtime/runtime.ts';
import { CompressionPolicy } from '../storage/codec.ts';
import { DEFAULT_KEEP } from '../storage/gc.ts';
import type { SnapshotStore } from '../storage/store.ts';
import { NotFoundError, UnavailableError, errorMessage } from '../util/errors.ts';
import type { Logger } from '../util/log.ts';
import { spawnContainerActor, validateSchedule, type CheckpointOutcome, type ContainerActor, type ContainerActorDeps, type ContainerMessage, type ContainerSchedule } from './container-actor.ts';
import { spawnGarbageCollector } from './garbage-collector.ts';
import { spawnReplicator, type ReplicatorDeps } from './replicator.ts';
import { ask, resumeAfterCrash, startActorSystem, tell } from './system.ts';

/**
 * The agent's host supervisor: it watches this host's containers, gives each running one a container actor
 * (its dumper, on the configured schedule), and sends a container that stopped without being asked to (a
 * crash) to be restored from its newest committed snapshot.
 */

export interface HostSupervisorOptions {
  hostId: string;
  runtime: ContainerRuntime;
  store: SnapshotStore;
  stagingDir: string;
  logger: Logger;
  /** How often the containers' states are read. Default 2 s. */
  pollMs?: number;
  /** Checkpoint schedule of every container. Default: on demand only. */
  schedule?: ContainerSchedule;
  /** Committed versions GC keeps per container. Default 2. */
  keep?: number;
  /** How long a checkpoint request may wait for its answer. Default 10 min. */
  checkpointTimeoutMs?: number;
  /**
   * Who may run which container, in a cluster (see src/failover/fencing.ts). Without it every container on
   * this host is this host's.
   */
  ownership?: OwnershipGuard;
  /** How often ownership of the supervised containers is re-checked. Default 5 s. */
  fenceMs?: number;
  /** How long a handed-off container may stay unclaimed before this host takes it back. Default 30 s. */
  handoffTimeoutMs?: number;
  /** The audit trail for checkpoints and GC. */
  events?: Pick<EventLog, 'record'>;
  /** Where uploads report their progress (see replicator.ts). */
  transfers?: ReplicatorDeps['transfers'];
}

/** The registry's say on whether this host may run a container. */
export interface OwnershipGuard {
  /** True if this host owns the container, adopting it first if nobody does. */
  mayRun(container: string): Promise<boolean>;
  /** Of the given containers, those another host owns now (one registry read for all). */
  ownedElsewhere(containers: readonly string[]): Promise<Set<string>>;
  /** Of the given containers, those the registry says run on this host. */
  runningHere(containers: readonly string[]): Promise<Set<string>>;
  /** Records that a stale copy was destroyed here. */
  destroyedStale(container: string): Promise<void>;
  /**
   * Throws ConflictError if another host owns the container now: checked right before a checkpoint of it is
   * committed, so a host taken for dead never commits a snapshot of its diverged copy.
   */
  checkStillOwner(container: string): Promise<void>;
  /**
   * A container this host released (handed off) that nobody claimed: makes it running here again at the same
   * epoch. False when another host claimed it meanwhile (or it is not released by this host).
   */
  reclaimReleased(container: string): Promise<boolean>;
}

/** A container as the supervisor last saw it; 'CRASHED' marks a stop nobody asked for. */
export type SupervisedState = ContainerState | 'CRASHED';

type SupervisorMessage = { type: 'poll' };

const DEFAULT_CHECKPOINT_TIMEOUT_MS = 10 * 60 * 1000;
const DEFAULT_HANDOFF_TIMEOUT_MS = 30_000;

export class HostSupervisor {
  private readonly system: ActorSystemRef;
  private readonly actor: Ref<SupervisorMessage>;
  private readonly containers = new Map<string, ContainerActor>();
  /** Containers handed off to another host and stopped here, with when: not recovered, not adopted. */
  private readonly handedOff = new Map<string, number>();
  private spawnFor: ((name: string) => ContainerActor) | undefined;
  private readonly lastStates = new Map<string, SupervisedState>();
  private readonly poller: NodeJS.Timeout;
  private readonly log: Logger;
  /** Aborted when a stop gives up waiting for the uploads in flight: they then end without committing. */
  private readonly shutdown = new AbortController();
  private readonly replicationQueue = { depth: 0 };

  constructor(private readonly options: HostSupervisorOptions) {
    this.log = options.logger.child(options.hostId);
    // Checked before anything starts: a bad schedule is a configuration error, not a failure of every poll.
    validateSchedule(`host ${options.hostId}`, options.schedule ?? {});
    this.system = startActorSystem(`lxcr-${options.hostId}`);
    const guard = options.ownership;
    const replicator = spawnReplicator(this.system, {
      store: options.store, policy: new CompressionPolicy(), hostId: options.hostId, logger: this.log, fence: guard && ((container) => guard.checkStillOwner(container)),
      signal: this.shutdown.signal, transfers: options.transfers,
    });
    const garbageCollector = spawnGarbageCollector(this.system, { store: options.store, keep: options.keep ?? DEFAULT_KEEP, logger: this.log });
    const deps: ContainerActorDeps = {
      runtime: options.runtime, store: options.store, replicator, garbageCollector, hostId: options.hostId,
      stagingDir: options.stagingDir, replicationTimeoutMs: options.checkpointTimeoutMs ?? DEFAULT_CHECKPOINT_TIMEOUT_MS, logger: this.log, events: options.events,
      stopping: this.shutdown.signal,
      replicationQueue: this.replicationQueue,
    };
    this.actor = spawn<ActorSystemRef, (state: undefined, message: SupervisorMessage, ctx: ActorContext<SupervisorMessage, ActorSystemRef>) => Promise<undefined>>(
      this.system,
      async (_state: undefined, _message: SupervisorMessage, ctx) => {
        this.spawnFor ??= (name) => spawnContainerActor(ctx.self, name, deps, options.schedule ?? {});
        this.pollQueued = false; // a request from now on needs a poll that reads the states after it
        await this.poll(this.spawnFor);
        return undefined;
      },
      'supervisor',
      { onCrash: resumeAfterCrash(this.log, 'supervisor poll') },
    );
    this.poller = setInterval(() => tell(this.actor, { type: 'poll' }), options.pollMs ?? 2000);
    tell(this.actor, { type: 'poll' });
  }

  /**
   * Reads every container's state and reacts: adopt the running ones this host may run, destroy the ones another
   * host owns now (stale copies: this host was taken for dead and its containers restored elsewhere), recover
   * the crashed ones.
   */
  private async poll(spawnFor: (name: string) => ContainerActor): Promise<void> {
    await this.fence();
    const states = await this.options.runtime.states();
    if (!this.startupSwept) {
      this.startupSwept = true;
      await this.sweepStoppedCopies(states, spawnFor);
    }
    for (const [name, state] of states) {
      if (this.handedOff.has(name)) {
        if (state !== 'RUNNING') continue; // stopped for its next owner: neither crashed nor ours to restart
        this.handedOff.delete(name); // restored here (a restore asked for this host): supervised again below
      }
      const previous = this.lastStates.get(name);
      if (state === 'RUNNING' && !this.containers.has(name)) {
        if (!(await this.mayRunOrDestroy(name))) continue;
        this.containers.set(name, spawnFor(name));
        this.log.info('supervising container', { container: name });
      }
      const actor = this.containers.get(name);
      if (actor && state === 'STOPPED' && (previous === 'RUNNING' || previous === 'FROZEN')) {
        if (!(await this.mayRunOrDestroy(name))) continue;
        this.lastStates.set(name, 'CRASHED');
        this.log.warn('container stopped without being asked to: restoring it from its last committed snapshot', { container: name });
        tell(actor.ref, { type: 'recover' } satisfies ContainerMessage);
        continue;
      }
      if (previous !== 'CRASHED' || state === 'RUNNING') this.lastStates.set(name, state);
    }
  }

  /** Whether this host may run the container; if another host owns it, this copy is destroyed first. */
  private async mayRunOrDestroy(name: string): Promise<boolean> {
    if (!this.options.ownership || (await this.options.ownership.mayRun(name))) return true;
    await this.destroyStale(name);
    return false;
  }

  private lastFence = 0;
  private startupSwept = false;

  /**
   * At start, the stopped containers are what a crash of this host left. One another host owns now was
   * restored there: this copy is destroyed, so it can never be started here. One still registered as running
   * here died with the host and was never failed over (the host came back first): it is restored here from its
   * last committed snapshot, as after any crash. Stopped containers the registry does not know are left alone.
   */
  private async sweepStoppedCopies(states: ReadonlyMap<string, ContainerState>, spawnFor: (name: string) => ContainerActor): Promise<void> {
    const guard = this.options.ownership;
    const stopped = [...states].filter(([, state]) => state === 'STOPPED').map(([name]) => name);
    if (!guard || stopped.length === 0) return;
    for (const name of await guard.ownedElsewhere(stopped)) await this.destroyStale(name);
    for (const name of await guard.runningHere(stopped)) {
      const actor = spawnFor(name);
      this.containers.set(name, actor);
      this.lastStates.set(name, 'CRASHED');
      this.log.warn('container died with this host and is still ours: restoring it from its last committed snapshot', { container: name });
      tell(actor.ref, { type: 'recover' } satisfies ContainerMessage);
    }
  }

  /**
   * Every `fenceMs`, destroys the supervised and handed-off containers that another host owns now, and takes
   * back a handed-off one nobody claimed in time (its migration's target failed before claiming it).
   */
  private async fence(): Promise<void> {
    const guard = this.options.ownership;
    if (!guard || this.containers.size + this.handedOff.size === 0 || Date.now() - this.lastFence < (this.options.fenceMs ?? 5000)) return;
    this.lastFence = Date.now();
    for (const name of await guard.ownedElsewhere([...this.containers.keys(), ...this.handedOff.keys()])) await this.destroyStale(name);
    for (const [name, since] of this.handedOff) {
      if (Date.now() - since < (this.options.handoffTimeoutMs ?? DEFAULT_HANDOFF_TIMEOUT_MS) || !this.spawnFor) continue;
      if (!(await guard.reclaimReleased(name))) continue; // claimed meanwhile: the next fence destroys this copy
      this.handedOff.delete(name);
      const actor = this.spawnFor(name);
      this.containers.set(name, actor);
      this.lastStates.set(name, 'CRASHED');
      this.log.warn('handed-off container was not claimed in time: restoring it here from its last committed snapshot', { container: name });
      tell(actor.ref, { type: 'recover' } satisfies ContainerMessage);
    }
  }

  /** Stops supervising a container another host owns and destroys this host's copy of it. */
  private async destroyStale(name: string): Promise<void> {
    const actor = this.containers.get(name);
    if (actor) {
      actor.stopSchedule();
      stop(actor.ref);
      this.containers.delete(name);
    }
    this.lastStates.delete(name);
    this.handedOff.delete(name);
    this.log.warn('another host owns this container now: destroying the stale copy here', { container: name });
    await this.options.runtime.stop(name, { kill: true }).catch(() => undefined);
    await this.options.runtime.destroy(name);
    await this.options.ownership?.destroyedStale(name);
  }

  /**
   * Polls soon, e.g. right after a container was restored here. Requests that arrive before the poll they
   * queued has started share it: twenty restores finishing together cost one or two polls, not twenty.
   */
  pollNow(): void {
    if (this.pollQueued) return;
    this.pollQueued = true;
    tell(this.actor, { type: 'poll' });
  }

  private pollQueued = false;

  /** What the supervisor last saw of each container. */
  states(): ReadonlyMap<string, SupervisedState> {
    return new Map(this.lastStates);
  }

  /**
   * Hands a supervised container off to its next owner: with `checkpoint`, a last checkpoint that stops it once
   * dumped (if that fails, it runs on here as before and the error is thrown); without, it is stopped. From then
   * on it is neither checkpointed nor recovered here; the fence destroys it once another host owns it, or takes it
   * back after `handoffTimeoutMs` if nobody claimed it.
   */
  async handOff(container: string, options: { checkpoint: boolean }): Promise<{ version?: number; freezeMs?: number }> {
    const actor = this.containers.get(container);
    if (!actor) throw new NotFoundError(`container ${container} is not supervised on ${this.options.hostId}`);
    // Marked first: a poll must not take the stop for a crash.
    this.handedOff.set(container, Date.now());
    try {
      let outcome: CheckpointOutcome | undefined;
      if (options.checkpoint) {
        outcome = await actor.checkpoint({ stop: true, timeoutMs: this.options.checkpointTimeoutMs ?? DEFAULT_CHECKPOINT_TIMEOUT_MS, what: `hand-off checkpoint of ${container}` });
      } else {
        // After the checkpoint in progress, if any: the container is not killed in the middle of a dump.
        await ask<ContainerMessage, null>(actor.ref, (replyTo) => ({ type: 'drain' as const, replyTo }), this.options.checkpointTimeoutMs ?? DEFAULT_CHECKPOINT_TIMEOUT_MS, `hand-off of ${container}`);
        await this.options.runtime.stop(container, { kill: true });
      }
      actor.stopSchedule();
      stop(actor.ref);
      this.containers.delete(container);
      this.lastStates.delete(container);
      this.handedOff.set(container, Date.now());
      this.log.info('container handed off', { container, version: outcome?.version });
      return { version: outcome?.version, freezeMs: outcome?.dumpMs };
    } catch (err) {
      this.handedOff.delete(container);
      throw err;
    }
  }

  /** Checkpoints a supervised container now (queued behind one already running) and collects its garbage. */
  checkpoint(container: string): Promise<CheckpointOutcome> {
    const actor = this.containers.get(container);
    if (!actor) return Promise.reject(new NotFoundError(`container ${container} is not supervised on ${this.options.hostId}`));
    return actor.checkpoint({ timeoutMs: this.options.checkpointTimeoutMs ?? DEFAULT_CHECKPOINT_TIMEOUT_MS, what: `checkpoint of ${container}` });
  }

  /** Work waiting on this host, for the metrics: replications asked and not answered, checkpoints not finished. */
  queueDepths(): { replicationQueue: number; pendingCheckpoints: number } {
    let pendingCheckpoints = 0;
    for (const actor of this.containers.values()) pendingCheckpoints += actor.pendingCheckpoints();
    return { replicationQueue: this.replicationQueue.depth, pendingCheckpoints };
  }

  /**
   * Stops supervising: no new checkpoint is scheduled, and the steps already queued (a checkpoint's upload, a
   * recovery) are waited for up to `drainTimeoutMs`. Uploads still running then are aborted: they end without
   * committing (their version stays invisible until GC collects it) and their staged dumps are removed, which
   * is waited for up to `abortGraceMs` more; a checkpoint not yet dumped is not started. Then the actors stop.
   */
  async stop(drainTimeoutMs = 60_000, abortGraceMs = 15_000): Promise<void> {
    clearInterval(this.poller);
    for (const actor of this.containers.values()) actor.stopSchedule();
    const drain = (actors: ReadonlyArray<[string, ContainerActor]>, timeoutMs: number) =>
      Promise.all(
        actors.map(([name, actor]) =>
          ask(actor.ref, (replyTo) => ({ type: 'drain' as const, replyTo }), timeoutMs, `shutdown of ${name}'s actor`).then(
            () => undefined,
            (err: unknown) => ({ name, actor, error: errorMessage(err) }),
          ),
        ),
      ).then((results) => results.filter((r) => r !== undefined));
    let busy = await drain([...this.containers], drainTimeoutMs);
    if (busy.length > 0) {
      this.log.warn('aborting the uploads still running after the drain bound', { containers: busy.map((b) => b.name), drainTimeoutMs });
      this.shutdown.abort(new UnavailableError('the agent is stopping'));
      busy = await drain(busy.map((b) => [b.name, b.actor]), abortGraceMs);
      for (const { name, error } of busy) this.log.warn('stopping with a step still running', { container: name, error });
    }
    stop(this.system);
  }
}
