import type { HostSupervisor } from '../actors/host-supervisor.ts';
import type { ClusterOperations } from '../api/cluster-server.ts';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ClusterClient } from '../api/cluster-client.ts';
import type { CheckpointResponse } from '../api/generated/lxcr/v1/CheckpointResponse.ts';
import type { TransferProgress } from '../api/generated/lxcr/v1/TransferProgress.ts';
import type { TransferTracker } from '../checkpoint/transfers.ts';
import type { Container } from '../api/generated/lxcr/v1/Container.ts';
import type { ListContainersResponse } from '../api/generated/lxcr/v1/ListContainersResponse.ts';
import type { ListHostsResponse } from '../api/generated/lxcr/v1/ListHostsResponse.ts';
import type { ListSnapshotsResponse } from '../api/generated/lxcr/v1/ListSnapshotsResponse.ts';
import type { MoveResponse__Output } from '../api/generated/lxcr/v1/MoveResponse.ts';
import type { Snapshot } from '../api/generated/lxcr/v1/Snapshot.ts';
import type { AgentClient } from '../api/agent-client.ts';
import type { GossipView } from '../cluster/gossip.ts';
import type { EventLog, RecordedEvent } from '../cluster/events.ts';
import type { ClusterRegistry, HostRecord, Ownership } from '../cluster/registry.ts';
import { committedManifest } from '../storage/snapshots.ts';
import { decodeManifest, manifestSizes } from '../storage/manifest.ts';
import type { SnapshotStore, VersionRecord } from '../storage/store.ts';
import { mapBounded } from '../util/concurrency.ts';
import { CodedError, FailedPreconditionError, InvalidArgumentError, LxcrError, NotFoundError, errorMessage } from '../util/errors.ts';

/**
 * The public API's answers, from any agent for the whole cluster: hosts and ownership from the registry (read
 * degraded, so a cluster short of a quorum can still be inspected), host states from this agent's gossip view,
 * snapshots from the snapshot keyspace. A checkpoint runs on the container's owner: forwarded there once.
 */

export interface ClusterOperationsDeps {
  hostId: string;
  registry: Pick<ClusterRegistry, 'hosts' | 'allOwnership' | 'ownership'>;
  store: Pick<SnapshotStore, 'versions' | 'latestCommitted' | 'replicas'>;
  gossip: Pick<GossipView, 'current'>;
  supervisor: Pick<HostSupervisor, 'checkpoint'>;
  events: Pick<EventLog, 'record' | 'between' | 'ofContainer'>;
  /** The public API of another agent, for forwarding. */
  peer: (endpoint: string) => Pick<ClusterClient, 'checkpoint' | 'watchTransfer'>;
  /** This host's uploads and downloads in progress (WatchTransfer); without it, none is reported from here. */
  transfers?: Pick<TransferTracker, 'current'>;
  /** The agents' own API of another agent (this one's included): hand-offs and restores. */
  agent: (endpoint: string) => Pick<AgentClient, 'handOff' | 'restore'>;
  /**
   * Containers this agent's failover coordinator found with their owner and both replica hosts down. With 2 of 3
   * hosts down the registry has no quorum to record that; ListContainers shows it from here meanwhile.
   */
  replicasNotFound?: ReadonlySet<string>;
}

/** A last checkpoint of a large container may take minutes; so may its restore. */
const HANDOFF_TIMEOUT_MS = 10 * 60_000;
const RESTORE_TIMEOUT_MS = 10 * 60_000;
/** How often a watched transfer's progress is sent. */
const TRANSFER_PROGRESS_MS = 250;

export class AgentClusterOperations implements ClusterOperations {
  constructor(private readonly deps: ClusterOperationsDeps) {}

  async listHosts(): Promise<ListHostsResponse> {
    const [hosts, owners] = await Promise.all([this.deps.registry.hosts({ degraded: true }), this.deps.registry.allOwnership({ degraded: true })]);
    const load = new Map<string, number>();
    for (const o of owners) load.set(o.owner, (load.get(o.owner) ?? 0) + 1);
    return {
      answeredBy: this.deps.hostId,
      hosts: hosts
        .sort((a, b) => a.hostId.localeCompare(b.hostId))
        .map((h) => ({
          hostId: h.hostId, cassandraAddress: h.cassandraAddress, grpcEndpoint: h.grpcEndpoint, state: this.stateOf(h),
          containers: load.get(h.hostId) ?? 0, startedAtMs: h.startedAt.getTime(), agentState: h.agentState, stoppedAtMs: h.stoppedAt?.getTime() ?? 0,
        })),
    };
  }

  async listContainers(): Promise<ListContainersResponse> {
    const [all, hosts] = await Promise.all([this.deps.registry.allOwnership({ degraded: true }), this.deps.registry.hosts({ degraded: true })]);
    const owners = all.sort((a, b) => a.container.localeCompare(b.container));
    const containers = await mapBounded(owners, 8, async (o): Promise<Container> => {
      // A container whose replica hosts are both down has no readable snapshot: it is listed all the same (its
      // state says why), with no last snapshot, rather than failing the whole answer.
      const last = await this.deps.store.latestCommitted(o.container).catch(() => undefined);
      const sizes = last?.manifest ? manifestSizes(decodeManifest(last.manifest)) : undefined;
      return {
        name: o.container, host: o.owner, state: this.stateOfContainer(o, hosts), epoch: o.epoch, lastVersion: last?.version ?? 0,
        lastCommittedAtMs: last?.committedAt?.getTime() ?? 0, lastLogicalBytes: sizes?.logicalBytes ?? 0, lastStoredBytes: sizes?.storedBytes ?? 0,
      };
    });
    return { containers, answeredBy: this.deps.hostId };
  }

  async listSnapshots(container: string): Promise<ListSnapshotsResponse> {
    const [owner, versions] = await Promise.all([this.deps.registry.ownership(container), this.deps.store.versions(container)]);
    if (!owner && versions.length === 0) throw new NotFoundError(`${container} is not in the cluster: no host owns it and it has no snapshots`);
    return { container, snapshots: versions.map(toSnapshot) };
  }

  async checkpoint(container: string, forwardedBy: string): Promise<CheckpointResponse> {
    const { hostId, registry } = this.deps;
    const owner = await registry.ownership(container);
    if (!owner) throw new NotFoundError(`${container} is not in the cluster registry: no host owns it, so no host checkpoints it`);
    if (owner.state !== 'running') {
      throw new FailedPreconditionError(`${container} is ${owner.state} on ${owner.owner}: it can be checkpointed once it runs again`);
    }
    if (owner.owner === hostId) {
      const started = performance.now();
      const outcome = await this.deps.supervisor.checkpoint(container);
      return {
        container, version: outcome.version, host: hostId, freezeMs: outcome.dumpMs, totalMs: performance.now() - started,
        logicalBytes: outcome.logicalBytes, uploadedBytes: outcome.uploadedBytes,
      };
    }
    if (forwardedBy) {
      throw new FailedPreconditionError(`${container} is owned by ${owner.owner}, not by ${hostId} to which ${forwardedBy} forwarded the request: ownership moved meanwhile; ask again`);
    }
    const host = (await registry.hosts({ degraded: true })).find((h) => h.hostId === owner.owner);
    if (!host) throw new FailedPreconditionError(`${container}'s owner ${owner.owner} is not a registered host`);
    if (this.stateOf(host) !== 'UN') throw new FailedPreconditionError(`${container}'s owner ${owner.owner} is down (${this.stateOf(host)}): its restore elsewhere comes first`);
    return this.deps.peer(host.grpcEndpoint).checkpoint(container, hostId);
  }

  async migrate(container: string, targetHost: string): Promise<MoveResponse__Output> {
    const started = performance.now();
    const owner = await this.ownershipOf(container);
    if (owner.state !== 'running') throw new FailedPreconditionError(`${container} is ${owner.state} on ${owner.owner}: only a running container can be migrated`);
    if (owner.owner === targetHost) throw new InvalidArgumentError(`${container} already runs on ${targetHost}`);
    const hosts = await this.deps.registry.hosts({ degraded: true });
    const source = this.liveHost(hosts, owner.owner, `${container}'s owner`);
    const target = this.liveHost(hosts, targetHost, 'the target host');
    const handoff = await this.deps.agent(source.grpcEndpoint).handOff({ container, expectedEpoch: owner.epoch, checkpoint: true, requestedBy: this.deps.hostId }, HANDOFF_TIMEOUT_MS);
    const moved = await this.restoreOn(target, container, handoff.version, owner.epoch, owner.owner, started, () =>
      `${container} was checkpointed (version ${handoff.version}) and stopped on ${owner.owner}, but its restore on ${targetHost} failed`,
    );
    await this.deps.events.record({
      kind: 'migration-done', host: this.deps.hostId, container, epoch: moved.epoch, version: moved.version, durationMs: moved.totalMs, outcome: 'ok',
      detail: `${owner.owner} -> ${targetHost}, frozen ${Math.round(handoff.freezeMs)} ms`,
    });
    return { ...moved, freezeMs: handoff.freezeMs };
  }

  async restore(container: string, version: number | undefined, targetHost: string | undefined): Promise<MoveResponse__Output> {
    const started = performance.now();
    const owner = await this.ownershipOf(container);
    if (owner.state === 'restoring') throw new FailedPreconditionError(`${container} is being restored on ${owner.owner} right now; ask again once it runs`);
    // Checked before anything is stopped: a version that cannot be restored must not take the container down.
    const manifest = await committedManifest(this.deps.store, container, version);
    const hosts = await this.deps.registry.hosts({ degraded: true });
    const ownerHost = hosts.find((h) => h.hostId === owner.owner);
    const ownerUp = ownerHost !== undefined && this.stateOf(ownerHost) === 'UN';
    const target = targetHost
      ? this.liveHost(hosts, targetHost, 'the target host')
      : ownerUp
        ? ownerHost
        : this.firstLiveReplica(hosts, container);
    if (ownerUp && owner.state === 'running') {
      await this.deps.agent(ownerHost.grpcEndpoint).handOff({ container, expectedEpoch: owner.epoch, checkpoint: false, requestedBy: this.deps.hostId }, HANDOFF_TIMEOUT_MS);
    }
    return this.restoreOn(target, container, manifest.version, owner.epoch, owner.owner, started, () =>
      `${container} was stopped on ${owner.owner} for its restore from version ${manifest.version}, but that restore on ${target.hostId} failed`,
    );
  }

  /**
   * The target claims the container from `epoch` and restores `version`. A failure is reported with what became
   * of the container: the coordinator restores a failed restore on the first live replica host, and a released
   * container nobody claimed goes back to its owner.
   */
  private async restoreOn(target: HostRecord, container: string, version: number, epoch: number, fromHost: string, started: number, what: () => string): Promise<MoveResponse__Output> {
    try {
      const restored = await this.deps.agent(target.grpcEndpoint).restore({ container, version, expectedEpoch: epoch, fromHost, requestedBy: this.deps.hostId }, RESTORE_TIMEOUT_MS);
      return { container, fromHost, toHost: restored.host, version: restored.version, epoch: restored.epoch, freezeMs: 0, totalMs: performance.now() - started };
    } catch (err) {
      const message = `${what()}: ${errorMessage(err)}. It is restored on its first live replica host by failover (or, if ${target.hostId} never claimed it, taken back by ${fromHost} within a minute)`;
      await this.deps.events.record({ kind: 'migration-failed', host: this.deps.hostId, container, epoch, version, durationMs: performance.now() - started, outcome: 'failed', detail: message });
      throw new CodedError(err instanceof LxcrError ? err.code : 'INTERNAL', message, { cause: err });
    }
  }

  async eventsSince(from: Date, container: string | undefined): Promise<RecordedEvent[]> {
    const to = new Date();
    const events = container === undefined ? await this.deps.events.between(from, to) : await this.deps.events.ofContainer(container, from, to);
    return events.reverse();
  }

  /**
   * This agent's own transfer of the container, and (unless relayed here) those of every other live agent,
   * relayed: asking them all is simpler than knowing where a transfer runs (the owner uploads, a restore's target
   * downloads, and a migration does one then the other), and an agent without one answers at once.
   */
  async watchTransfer(container: string, forwardedBy: string, write: (progress: TransferProgress) => void, signal: AbortSignal): Promise<void> {
    const local = this.watchLocalTransfer(container, write, signal);
    if (forwardedBy) return local;
    const peers = (await this.deps.registry.hosts({ degraded: true })).filter((h) => h.hostId !== this.deps.hostId && h.agentState === 'serving' && this.stateOf(h) === 'UN');
    const relays = peers.map(async (host) => {
      const stream = this.deps.peer(host.grpcEndpoint).watchTransfer(container, write, this.deps.hostId);
      const cancel = () => stream.cancel();
      signal.addEventListener('abort', cancel, { once: true });
      // A progress view: an agent that cannot answer (stopping, unreachable) leaves out only its own transfers.
      await stream.done.catch(() => undefined).finally(() => signal.removeEventListener('abort', cancel));
    });
    await Promise.all([local, ...relays]);
  }

  private async watchLocalTransfer(container: string, write: (progress: TransferProgress) => void, signal: AbortSignal): Promise<void> {
    const transfer = this.deps.transfers?.current(container);
    if (!transfer) return;
    for (;;) {
      const { state } = transfer;
      const done = state.endedAt !== undefined;
      write({
        container, host: this.deps.hostId, kind: state.kind, version: state.version ?? 0, bytesDone: state.bytesDone, bytesTotal: state.bytesTotal ?? 0,
        elapsedMs: (state.completedAt ?? state.endedAt ?? performance.now()) - state.startedAt, done,
      });
      if (done || signal.aborted) return;
      await Promise.race([transfer.ended, sleep(TRANSFER_PROGRESS_MS, undefined, { signal }).catch(() => undefined)]);
    }
  }

  private async ownershipOf(container: string): Promise<Ownership> {
    const owner = await this.deps.registry.ownership(container);
    if (!owner) throw new NotFoundError(`${container} is not in the cluster registry: no host owns it`);
    return owner;
  }

  private liveHost(hosts: readonly HostRecord[], hostId: string, role: string): HostRecord {
    const host = hosts.find((h) => h.hostId === hostId);
    if (!host) throw new NotFoundError(`${role} ${hostId} is not a host of this cluster (known: ${hosts.map((h) => h.hostId).join(', ')})`);
    const state = this.stateOf(host);
    if (state !== 'UN') throw new FailedPreconditionError(`${role} ${hostId} is down (${state} in ${this.deps.hostId}'s gossip view)`);
    return host;
  }

  private firstLiveReplica(hosts: readonly HostRecord[], container: string): HostRecord {
    for (const address of this.deps.store.replicas(container)) {
      const host = hosts.find((h) => h.cassandraAddress === address);
      if (host && this.stateOf(host) === 'UN') return host;
    }
    throw new FailedPreconditionError(`both replica hosts of ${container} are down: name a target host to restore it from a remote replica`);
  }

  /**
   * The registry's state, unless this agent's coordinator found the container's replica hosts down while its owner
   * is still DN here: then "replicas-not-found", which the registry may have had no quorum to record.
   */
  private stateOfContainer(o: Ownership, hosts: readonly HostRecord[]): string {
    if (o.state === 'replicas-not-found' || !this.deps.replicasNotFound?.has(o.container)) return o.state;
    const owner = hosts.find((h) => h.hostId === o.owner);
    return owner && this.stateOf(owner) === 'DN' ? 'replicas-not-found' : o.state;
  }

  private stateOf(host: HostRecord): string {
    const status = this.deps.gossip.current()?.get(host.cassandraAddress)?.status;
    return status === 'U' ? 'UN' : status === 'D' ? 'DN' : '?';
  }
}

function toSnapshot(v: VersionRecord): Snapshot {
  const sizes = v.manifest ? manifestSizes(decodeManifest(v.manifest)) : undefined;
  return {
    version: v.version, state: v.state, sourceHost: v.sourceHost, createdAtMs: v.createdAt.getTime(), committedAtMs: v.committedAt?.getTime() ?? 0,
    logicalBytes: sizes?.logicalBytes ?? 0, storedBytes: sizes?.storedBytes ?? 0, chunks: sizes?.chunks ?? 0,
  };
}
