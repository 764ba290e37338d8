import type { HostSupervisor } from '../actors/host-supervisor.ts';
import type { ClusterOperations } from '../api/cluster-server.ts';
import type { CheckpointResponse } from '../api/generated/lxcr/v1/CheckpointResponse.ts';
import type { Container } from '../api/generated/lxcr/v1/Container.ts';
import type { ListContainersResponse } from '../api/generated/lxcr/v1/ListContainersResponse.ts';
import type { ListHostsResponse } from '../api/generated/lxcr/v1/ListHostsResponse.ts';
import type { ListSnapshotsResponse } from '../api/generated/lxcr/v1/ListSnapshotsResponse.ts';
import type { Snapshot } from '../api/generated/lxcr/v1/Snapshot.ts';
import type { GossipView } from '../cluster/gossip.ts';
import type { ClusterRegistry, HostRecord } from '../cluster/registry.ts';
import { decodeManifest, manifestSizes } from '../storage/manifest.ts';
import type { SnapshotStore, VersionRecord } from '../storage/store.ts';
import { mapBounded } from '../util/concurrency.ts';
import { FailedPreconditionError, NotFoundError } from '../util/errors.ts';

/**
 * The public API's answers, from any agent for the whole cluster: hosts and ownership from the registry (read
 * degraded, so a cluster short of a quorum can still be inspected), host states from this agent's gossip view,
 * snapshots from the snapshot keyspace. A checkpoint runs on the container's owner: forwarded there once.
 */

export interface ClusterOperationsDeps {
  hostId: string;
  registry: Pick<ClusterRegistry, 'hosts' | 'allOwnership' | 'ownership'>;
  store: Pick<SnapshotStore, 'versions' | 'latestCommitted'>;
  gossip: Pick<GossipView, 'current'>;
  supervisor: Pick<HostSupervisor, 'checkpoint'>;
  /** The public API of another agent, for forwarding. */
  peer: (endpoint: string) => { checkpoint(container: string, forwardedBy: string): Promise<CheckpointResponse> };
}

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
          containers: load.get(h.hostId) ?? 0, startedAtMs: h.startedAt.getTime(),
        })),
    };
  }

  async listContainers(): Promise<ListContainersResponse> {
    const owners = (await this.deps.registry.allOwnership({ degraded: true })).sort((a, b) => a.container.localeCompare(b.container));
    const containers = await mapBounded(owners, 8, async (o): Promise<Container> => {
      const last = await this.deps.store.latestCommitted(o.container);
      const sizes = last?.manifest ? manifestSizes(decodeManifest(last.manifest)) : undefined;
      return {
        name: o.container, host: o.owner, state: o.state, epoch: o.epoch, lastVersion: last?.version ?? 0,
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
