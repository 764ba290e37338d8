import type { AgentConfig } from '../agent/agent.ts';
import type { GossipViewKind } from '../cluster/gossip-factory.ts';
import type { AgentFileConfig } from './schema.ts';

/** What a valid config file means to the agent: the AgentConfig it starts with. */
export function toAgentConfig(file: AgentFileConfig, gossipKind: GossipViewKind): AgentConfig {
  const { schedule, keyspaces } = file;
  return {
    hostId: file.hostId,
    lxcpath: file.lxcpath,
    stagingDir: file.stagingDir,
    standby: file.standby.enabled ? { dir: file.standby.dir } : false,
    cassandra: {
      address: file.cassandra.address,
      contactPoints: file.cassandra.contactPoints,
      port: file.cassandra.port,
      jmxAddress: file.cassandra.jmxAddress,
      jmxPort: file.cassandra.jmxPort,
      localDataCenter: file.cassandra.localDataCenter,
    },
    grpc: {
      listen: file.grpc.listen,
      security: file.grpc.tls ? { tls: file.grpc.tls } : { insecure: true },
      tokenFile: file.grpc.tokenFile,
    },
    schedule: schedule.cron !== undefined ? { cron: schedule.cron } : schedule.everySeconds !== undefined ? { everyMs: schedule.everySeconds * 1000 } : {},
    keep: file.keep,
    gossip: { kind: gossipKind },
    snapshotKeyspace: keyspaces.snapshots,
    snapshotReplication: keyspaces.snapshotDataCenters
      ? { class: 'NetworkTopologyStrategy', dataCenters: keyspaces.snapshotDataCenters }
      // The schema's default fills the factor in whenever no data centers were chosen instead.
      : { class: 'SimpleStrategy', replicationFactor: keyspaces.snapshotReplicationFactor! },
    metaKeyspace: keyspaces.meta,
    metaReplication: { class: 'SimpleStrategy', replicationFactor: keyspaces.metaReplicationFactor },
    audit: { ttlDays: file.audit.ttlDays, refusalsPerMinute: file.audit.refusalsPerMinute },
    metrics: file.metrics,
    encryption: file.encryption,
  };
}
