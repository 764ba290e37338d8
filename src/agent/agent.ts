import { mkdir } from 'node:fs/promises';
import cassandra from 'cassandra-driver';
import { HostSupervisor } from '../actors/host-supervisor.ts';
import type { ContainerSchedule } from '../actors/container-actor.ts';
import { AgentClient } from '../api/agent-client.ts';
import { ClientPool } from '../api/client-pool.ts';
import { ClusterClient } from '../api/cluster-client.ts';
import { channelCredentials, serverCredentials, type TransportSecurity } from '../api/tls.ts';
import { startAgentServer, type AgentServer } from '../api/agent-server.ts';
import { AGENT_SERVICE_NAME } from '../api/proto.ts';
import { EventLog } from '../cluster/events.ts';
import { GossipAwarePolicy } from '../cluster/gossip-aware-policy.ts';
import { startGossipView, type GossipViewKind } from '../cluster/gossip-factory.ts';
import { refreshOnHostDown, type GossipView } from '../cluster/gossip.ts';
import { AgentClusterOperations } from './cluster-operations.ts';
import { ClusterRegistry, DEFAULT_META_KEYSPACE, DEFAULT_META_REPLICATION, validateHostId } from '../cluster/registry.ts';
import { FailoverCoordinator } from '../failover/coordinator.ts';
import { RegistryOwnershipGuard } from '../failover/fencing.ts';
import { HandoffService } from '../failover/handoff-service.ts';
import { RestoreService } from '../failover/restore-service.ts';
import { StandbyPrefetcher } from '../failover/standby.ts';
import { LxcRuntime } from '../runtime/lxc.ts';
import { CassandraSnapshotStore } from '../storage/cassandra-store.ts';
import { StandbyCache } from '../storage/standby-cache.ts';
import { DEFAULT_KEYSPACE, DEFAULT_REPLICATION, type Replication } from '../storage/schema.ts';
import { LxcrError, errorMessage, isRefusal } from '../util/errors.ts';
import type { Logger } from '../util/log.ts';

/**
 * One host's agent, assembled: the Cassandra session (snapshot store and cluster registry), the gossip view of
 * the local node, the host supervisor with its actors, the gRPC server other agents call, and the failover
 * coordinator. `start` brings them up in dependency order; `stop` takes them down in reverse.
 */

export interface AgentConfig {
  hostId: string;
  /** The host's LXC container directory. */
  lxcpath: string;
  /** Local staging for dumps and restores. */
  stagingDir: string;
  cassandra: {
    /** The local node's address (its listen/rpc address): the first contact point and the gossip source. */
    address: string;
    /** More contact points, for when the local node is not up yet. */
    contactPoints?: string[];
    port?: number;
    localDataCenter?: string;
    /** The local node's JMX port, for the gossip view. */
    jmxPort: number;
    /** How long a request may wait for a node before the driver tries another. Default 8 s. */
    readTimeoutMs?: number;
  };
  grpc: {
    /** host:port to listen on (port 0: any free port). */
    listen: string;
    /** Mutual TLS with the cluster CA, or plaintext when asked for explicitly (a local testbed). */
    security: TransportSecurity;
  };
  schedule?: ContainerSchedule;
  keep?: number;
  gossip?: { kind?: GossipViewKind; intervalMs?: number };
  snapshotKeyspace?: string;
  snapshotReplication?: Replication;
  metaKeyspace?: string;
  metaReplication?: Replication;
  /** Supervisor poll period. Default 2 s. */
  pollMs?: number;
  /**
   * Standby copies of the snapshots this host would restore if their owner failed (see failover/standby.ts):
   * where they are kept and how often they are refreshed (default 5 s); `false` turns them off (a failover
   * restore then reads the whole snapshot from Cassandra).
   */
  standby?: { dir: string; intervalMs?: number } | false;
  /** Failover: restores requested at once (default 8); how long followers wait for the leader (default 2 s). */
  failover?: { concurrency?: number; followerDelayMs?: number; reconcileMs?: number };
}

export class Agent {
  private constructor(
    readonly config: AgentConfig,
    private readonly log: Logger,
    private readonly client: cassandra.Client,
    readonly gossip: GossipView,
    readonly supervisor: HostSupervisor,
    readonly server: AgentServer,
    private readonly coordinator: FailoverCoordinator,
    private readonly standby: StandbyPrefetcher | undefined,
    /** Clients of other agents, closed at stop (the maps fill as peers are called). */
    private readonly peers: ReadonlyArray<ClientPool<{ close(): void }>>,
  ) {}

  static async start(config: AgentConfig, logger: Logger): Promise<Agent> {
    validateHostId(config.hostId);
    const log = logger.child(config.hostId);
    if ('insecure' in config.grpc.security) log.warn('gRPC runs without TLS (--insecure): anyone who reaches its port can use it; use this on a local testbed only');
    // Read first: a bad certificate file stops the agent before it starts anything.
    const credentials = { server: serverCredentials(config.grpc.security), peers: channelCredentials(config.grpc.security) };
    await mkdir(config.stagingDir, { recursive: true });
    const gossip = await startGossipView({
      kind: config.gossip?.kind ?? 'jmx', host: config.cassandra.address, port: config.cassandra.jmxPort, intervalMs: config.gossip?.intervalMs, logger: log.child('gossip'),
    });
    const localDataCenter = config.cassandra.localDataCenter ?? 'datacenter1';
    const client = new cassandra.Client({
      contactPoints: [config.cassandra.address, ...(config.cassandra.contactPoints ?? [])],
      localDataCenter,
      protocolOptions: { port: config.cassandra.port ?? 9042, maxVersion: 3 },
      socketOptions: { connectTimeout: 5000, readTimeout: config.cassandra.readTimeoutMs ?? 8000 },
      policies: {
        loadBalancing: new GossipAwarePolicy(cassandra.policies.defaultLoadBalancingPolicy(localDataCenter), (address) => {
          const member = gossip.current()?.get(address);
          return member === undefined ? undefined : member.status === 'D';
        }),
      },
    });
    const cleanups: Array<() => Promise<unknown>> = [() => gossip.close(), () => client.shutdown()];
    const undo = async () => {
      for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
    };
    try {
      await client.connect();
      const store = new CassandraSnapshotStore({ client, keyspace: config.snapshotKeyspace ?? DEFAULT_KEYSPACE, replication: config.snapshotReplication ?? DEFAULT_REPLICATION });
      await store.ensureSchema();
      const registry = new ClusterRegistry({ client, keyspace: config.metaKeyspace ?? DEFAULT_META_KEYSPACE, replication: config.metaReplication ?? DEFAULT_META_REPLICATION });
      await registry.ensureSchema();
      const events = new EventLog(client, registry.keyspace, log.child('events'));

      // The driver's host-down event is an early hint: re-read gossip now rather than at the next poll.
      refreshOnHostDown(client, gossip, log);

      const runtime = new LxcRuntime({ lxcpath: config.lxcpath, logger: log.child('lxc') });
      const supervisor = new HostSupervisor({
        hostId: config.hostId, runtime, store, stagingDir: config.stagingDir, logger, pollMs: config.pollMs,
        schedule: config.schedule, keep: config.keep, ownership: new RegistryOwnershipGuard(registry, config.hostId, events), events,
      });
      cleanups.push(() => supervisor.stop());

      const standbyCache = config.standby ? new StandbyCache(config.standby.dir) : undefined;
      const restoreService = new RestoreService({
        hostId: config.hostId, runtime, store, registry, events, stagingDir: config.stagingDir, cassandraAddress: config.cassandra.address, logger: log.child('restore'),
        standby: standbyCache, onRestored: () => supervisor.pollNow(),
      });
      const handoffService = new HandoffService({ hostId: config.hostId, registry, events, supervisor, logger: log.child('handoff') });
      const agentPeers = new ClientPool((endpoint) => new AgentClient(endpoint, credentials.peers));
      const clusterPeers = new ClientPool((endpoint) => new ClusterClient(endpoint, credentials.peers));
      // What the coordinator finds lost while the registry has no quorum to record it, shown by ListContainers.
      const replicasNotFound = new Set<string>();
      const cluster = new AgentClusterOperations({
        hostId: config.hostId, registry, store, gossip, supervisor, events, peer: (endpoint) => clusterPeers.get(endpoint), agent: (endpoint) => agentPeers.get(endpoint),
        replicasNotFound,
      });
      const server = await startAgentServer({
        address: config.grpc.listen, credentials: credentials.server, cluster, logger: log,
        onRefused: (method, asked, err) =>
          void events.record({
            kind: 'request-refused', host: config.hostId, container: typeof asked['container'] === 'string' ? asked['container'] : undefined,
            outcome: isRefusal(err) || (err instanceof LxcrError && err.code === 'INVALID_ARGUMENT') ? 'refused' : 'failed', detail: `${method}: ${errorMessage(err)}`,
          }),
        operations: { restore: (request) => restoreService.restore(request), handOff: (request) => handoffService.handOff(request) },
      });
      cleanups.push(() => server.stop());
      await registry.registerHost({ hostId: config.hostId, cassandraAddress: config.cassandra.address, grpcEndpoint: server.endpoint, startedAt: new Date() });

      const coordinator = new FailoverCoordinator({
        hostId: config.hostId, gossip, registry, store, events, logger: log, replicasNotFound,
        clientFor: (endpoint) => agentPeers.get(endpoint),
        concurrency: config.failover?.concurrency, followerDelayMs: config.failover?.followerDelayMs, reconcileMs: config.failover?.reconcileMs,
      });
      coordinator.start();
      const standby = config.standby && standbyCache
        ? new StandbyPrefetcher({ hostId: config.hostId, store, registry, cache: standbyCache, runtime, cassandraAddress: config.cassandra.address, logger: log.child('standby'), intervalMs: config.standby.intervalMs })
        : undefined;
      standby?.start();
      log.info('agent started', { grpc: server.endpoint, cassandra: config.cassandra.address, lxcpath: config.lxcpath });
      return new Agent(config, log, client, gossip, supervisor, server, coordinator, standby, [agentPeers, clusterPeers]);
    } catch (err) {
      log.error('agent failed to start', { error: errorMessage(err) });
      await undo();
      throw err;
    }
  }

  /** Stops taking requests, lets in-flight steps finish (bounded), then closes everything. */
  async stop(): Promise<void> {
    this.server.health.setStatus(AGENT_SERVICE_NAME, 'NOT_SERVING');
    await this.coordinator.stop();
    await this.standby?.stop();
    await this.supervisor.stop();
    await this.server.stop();
    for (const pool of this.peers) pool.closeAll();
    await this.gossip.close();
    await this.client.shutdown();
    this.log.info('agent stopped');
  }
}
