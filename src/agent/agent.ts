import { mkdir } from 'node:fs/promises';
import cassandra from 'cassandra-driver';
import { HostSupervisor } from '../actors/host-supervisor.ts';
import type { ContainerSchedule } from '../actors/container-actor.ts';
import { AgentClient } from '../api/agent-client.ts';
import { ClientPool } from '../api/client-pool.ts';
import { readTokenFile } from '../api/auth.ts';
import { readChunkKeyFile } from '../storage/encryption.ts';
import { ClusterClient } from '../api/cluster-client.ts';
import { channelCredentials, serverCredentials, type TransportSecurity } from '../api/tls.ts';
import { startAgentServer, type AgentServer } from '../api/agent-server.ts';
import { AGENT_SERVICE_NAME } from '../api/proto.ts';
import { DEFAULT_AUDIT_TTL_DAYS, EventLog, retentionSeconds } from '../cluster/events.ts';
import { RefusedRequestAudit } from '../cluster/refused-requests.ts';
import { GossipAwarePolicy } from '../cluster/gossip-aware-policy.ts';
import { startGossipView, type GossipViewKind } from '../cluster/gossip-factory.ts';
import { refreshOnHostDown, type GossipView } from '../cluster/gossip.ts';
import { sweepStaleStaging } from '../checkpoint/procedures.ts';
import { AgentClusterOperations } from './cluster-operations.ts';
import { TransferTracker } from '../checkpoint/transfers.ts';
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
import { AgentMetrics } from '../metrics/agent-metrics.ts';
import { startMetricsServer, type MetricsServer } from '../metrics/http.ts';
import { withTimeout } from '../util/concurrency.ts';
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
    /** Where the local node's JMX listens (Cassandra 4.1+ keeps it on loopback by default). Default: `address`. */
    jmxAddress?: string;
    /** How long a request may wait for a node before the driver tries another. Default 8 s. */
    readTimeoutMs?: number;
  };
  grpc: {
    /** host:port to listen on (port 0: any free port). */
    listen: string;
    /** Mutual TLS with the cluster CA, or plaintext when asked for explicitly (a local testbed). */
    security: TransportSecurity;
    /**
     * A file holding the cluster's bearer token: every public API (ClusterService) call must then carry
     * `authorization: Bearer <token>`, and this agent sends it when it forwards one. Absent: the transport's
     * authentication alone.
     */
    tokenFile?: string;
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
  /**
   * The audit trail's retention: its rows expire after this many days (TTL); 0 keeps them forever. Default 90.
   * And how many refused API requests a minute it records one by one (default 60; see RefusedRequestAudit).
   */
  audit?: { ttlDays: number; refusalsPerMinute?: number };
  /** Encryption at rest of chunk contents: the key file is read at start; the snapshot store applies it (encryption.ts). */
  encryption?: { keyFile: string };
  /**
   * A graceful stop: how long the steps in flight (a checkpoint's upload, a recovery) may take to finish (default
   * 60 s), then how long aborted uploads get to end (default 15 s). Within systemd's default 90 s stop timeout.
   */
  shutdown?: { drainMs?: number; abortGraceMs?: number };
  /** Failover: restores requested at once (default 32); how long followers wait for the leader (default 2 s). */
  failover?: { concurrency?: number; followerDelayMs?: number; reconcileMs?: number };
  /**
   * The Prometheus metrics endpoint (see src/metrics/): `GET http://LISTEN/metrics`; host:port, port 0 for any free
   * port. Absent: no endpoint.
   */
  metrics?: { listen: string };
}

/** How long a stop waits for the registry (deregistration, the last audit events) when it has no quorum. */
const DEREGISTER_TIMEOUT_MS = 10_000;

export class Agent {
  private constructor(
    readonly config: AgentConfig,
    private readonly log: Logger,
    private readonly client: cassandra.Client,
    readonly gossip: GossipView,
    readonly supervisor: HostSupervisor,
    readonly server: AgentServer,
    /** The metrics endpoint, when one was asked for. */
    readonly metricsServer: MetricsServer | undefined,
    private readonly coordinator: FailoverCoordinator,
    private readonly standby: StandbyPrefetcher | undefined,
    /** Clients of other agents, closed at stop (the maps fill as peers are called). */
    private readonly peers: ReadonlyArray<ClientPool<{ close(): void }>>,
    private readonly registry: ClusterRegistry,
    private readonly events: EventLog,
    /** When this run registered: its deregistration is conditional on it. */
    private readonly startedAt: Date,
    private readonly refusals: RefusedRequestAudit,
  ) {}

  static async start(config: AgentConfig, logger: Logger): Promise<Agent> {
    validateHostId(config.hostId);
    const log = logger.child(config.hostId);
    if ('insecure' in config.grpc.security) {
      log.warn(
        config.grpc.tokenFile === undefined
          ? 'gRPC runs without TLS (--insecure): anyone who reaches its port can use it; use this on a local testbed only'
          : 'gRPC runs without TLS (--insecure): the bearer token crosses the network in clear, so anyone who can see the traffic can use it; use this on a local testbed only',
      );
    }
    // Read first: a bad certificate file stops the agent before it starts anything.
    const credentials = { server: serverCredentials(config.grpc.security), peers: channelCredentials(config.grpc.security) };
    const token = config.grpc.tokenFile === undefined ? undefined : readTokenFile(config.grpc.tokenFile, 'the token file');
    const cipher = config.encryption === undefined ? undefined : readChunkKeyFile(config.encryption.keyFile);
    if (cipher) log.info('chunk contents are encrypted at rest', { keyId: cipher.keyId });
    await mkdir(config.stagingDir, { recursive: true });
    // What a previous run of this agent left when it was killed (a stop removes its own).
    const swept = await sweepStaleStaging(config.stagingDir);
    if (swept.length > 0) log.warn('removed staging left by a previous run', { entries: swept });
    const gossip = await startGossipView({
      kind: config.gossip?.kind ?? 'jmx', host: config.cassandra.jmxAddress ?? config.cassandra.address, port: config.cassandra.jmxPort, intervalMs: config.gossip?.intervalMs, logger: log.child('gossip'),
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
      const store = new CassandraSnapshotStore({ client, keyspace: config.snapshotKeyspace ?? DEFAULT_KEYSPACE, replication: config.snapshotReplication ?? DEFAULT_REPLICATION, cipher });
      await store.ensureSchema();
      const registry = new ClusterRegistry({ client, keyspace: config.metaKeyspace ?? DEFAULT_META_KEYSPACE, replication: config.metaReplication ?? DEFAULT_META_REPLICATION });
      await registry.ensureSchema();
      const events = new EventLog(client, registry.keyspace, log.child('events'), retentionSeconds(config.audit?.ttlDays ?? DEFAULT_AUDIT_TTL_DAYS));

      // The driver's host-down event is an early hint: re-read gossip now rather than at the next poll.
      refreshOnHostDown(client, gossip, log);

      const runtime = new LxcRuntime({ lxcpath: config.lxcpath, logger: log.child('lxc') });
      const transfers = new TransferTracker();
      const supervisor = new HostSupervisor({
        hostId: config.hostId, runtime, store, stagingDir: config.stagingDir, logger, pollMs: config.pollMs,
        schedule: config.schedule, keep: config.keep, ownership: new RegistryOwnershipGuard(registry, config.hostId, events), events,
        transfers,
      });
      cleanups.push(() => supervisor.stop());

      const standbyCache = config.standby ? new StandbyCache(config.standby.dir) : undefined;
      const restoreService = new RestoreService({
        hostId: config.hostId, runtime, store, registry, events, stagingDir: config.stagingDir, cassandraAddress: config.cassandra.address, logger: log.child('restore'),
        standby: standbyCache, onRestored: () => supervisor.pollNow(), transfers,
      });
      const metrics = new AgentMetrics({
        gossip: () => gossip.current(),
        replicationQueue: () => supervisor.queueDepths().replicationQueue,
        pendingCheckpoints: () => supervisor.queueDepths().pendingCheckpoints,
        restoresInFlight: () => restoreService.inFlight,
        auditBacklog: () => events.backlog,
      });
      events.onRecord(metrics.observe);
      const metricsServer = config.metrics ? await startMetricsServer(config.metrics.listen, metrics.registry, log.child('metrics')) : undefined;
      if (metricsServer) cleanups.push(() => metricsServer.stop());
      const handoffService = new HandoffService({ hostId: config.hostId, registry, events, supervisor, logger: log.child('handoff') });
      const agentPeers = new ClientPool((endpoint) => new AgentClient(endpoint, credentials.peers));
      const clusterPeers = new ClientPool((endpoint) => new ClusterClient(endpoint, credentials.peers, { token }));
      // What the coordinator finds lost while the registry has no quorum to record it, shown by ListContainers.
      const replicasNotFound = new Set<string>();
      const cluster = new AgentClusterOperations({
        hostId: config.hostId, registry, store, gossip, supervisor, events, peer: (endpoint) => clusterPeers.get(endpoint), agent: (endpoint) => agentPeers.get(endpoint),
        replicasNotFound,
        transfers,
      });
      const refusals = new RefusedRequestAudit({ events, hostId: config.hostId, observe: metrics.observe, perMinute: config.audit?.refusalsPerMinute });
      cleanups.push(() => Promise.resolve(refusals.stop()));
      const server = await startAgentServer({
        address: config.grpc.listen, credentials: credentials.server, cluster, logger: log, clusterToken: token,
        onRefused: (method, asked, err) =>
          refusals.refused(method, {
            kind: 'request-refused', host: config.hostId, container: typeof asked['container'] === 'string' ? asked['container'] : undefined,
            outcome: isRefusal(err) || (err instanceof LxcrError && (err.code === 'INVALID_ARGUMENT' || err.code === 'UNAUTHENTICATED')) ? 'refused' : 'failed',
            detail: `${method}: ${errorMessage(err)}`,
          }),
        operations: { restore: (request) => restoreService.restore(request), handOff: (request) => handoffService.handOff(request) },
      });
      cleanups.push(() => server.stop());
      const startedAt = new Date();
      await registry.registerHost({ hostId: config.hostId, cassandraAddress: config.cassandra.address, grpcEndpoint: server.endpoint, startedAt });

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
      log.info('agent started', { grpc: server.endpoint, metrics: metricsServer?.endpoint, cassandra: config.cassandra.address, lxcpath: config.lxcpath });
      return new Agent(config, log, client, gossip, supervisor, server, metricsServer, coordinator, standby, [agentPeers, clusterPeers], registry, events, startedAt, refusals);
    } catch (err) {
      log.error('agent failed to start', { error: errorMessage(err) });
      await undo();
      throw err;
    }
  }

  /**
   * A graceful stop (SIGTERM): records in the registry that this agent is leaving, so no peer picks it as a
   * restore target and status shows it stopped; stops taking requests; lets the steps in flight finish within
   * `shutdown.drainMs`, then aborts the uploads still running (never committed, staging removed); then closes
   * everything. The containers keep running: the agent supervises them, it is not their parent, and with the
   * host's Cassandra node still UN nothing restores them elsewhere. A later start takes them up again.
   */
  async stop(): Promise<void> {
    this.server.health.setStatus(AGENT_SERVICE_NAME, 'NOT_SERVING');
    await this.deregister();
    await this.coordinator.stop();
    await this.standby?.stop();
    await this.supervisor.stop(this.config.shutdown?.drainMs, this.config.shutdown?.abortGraceMs);
    await this.server.stop();
    this.refusals.stop(); // no request comes any more: what was only counted is summed up in the trail
    // The last events (a checkpoint committed or aborted while draining) go out before the session closes.
    await withTimeout(this.events.flush(), DEREGISTER_TIMEOUT_MS, 'writing the last audit events').catch(() => undefined);
    if (this.events.backlog > 0) this.log.warn('audit events not written before the stop are lost', { events: this.events.backlog });
    await this.metricsServer?.stop();
    for (const pool of this.peers) pool.closeAll();
    await this.gossip.close();
    await this.client.shutdown();
    this.log.info('agent stopped');
  }

  /** Marks this run stopped in the registry; a registry without quorum does not keep the agent from stopping. */
  private async deregister(): Promise<void> {
    try {
      // Bounded: without a registry quorum (most hosts down) the stop must not wait on Paxos retries.
      const applied = await withTimeout(this.registry.deregisterHost(this.config.hostId, this.startedAt), DEREGISTER_TIMEOUT_MS, 'deregistering');
      if (!applied) this.log.warn('not deregistered: a newer run of this host registered meanwhile');
      await this.events.record({ kind: 'agent-stopped', host: this.config.hostId, outcome: 'ok', detail: `graceful stop; running since ${this.startedAt.toISOString()}` });
    } catch (err) {
      this.log.warn('could not record the stop in the registry; peers see this agent as serving until it starts again', { error: errorMessage(err) });
    }
  }
}
