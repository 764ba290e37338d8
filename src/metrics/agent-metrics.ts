import type { ClusterEvent } from '../cluster/events.ts';
import type { RingView } from '../cluster/ring.ts';
import { MetricsRegistry } from './registry.ts';

/**
 * The agent's metrics. Counters and histograms are fed by the audit events as they are recorded (the event log
 * is where every checkpoint, GC, restore and refusal is already reported, with its bytes and durations), so no
 * procedure carries metrics code of its own; gauges are read at scrape time from the agent's own state.
 */

/** What the gauges read at scrape time. */
export interface AgentMetricSources {
  /** The local node's gossip view; undefined while it cannot be read. */
  gossip(): RingView | undefined;
  /** Replications asked of the replicator and not answered yet (queued or running). */
  replicationQueue(): number;
  /** Checkpoints requested of this host's containers and not finished yet (queued or running). */
  pendingCheckpoints(): number;
  /** Restores running on this host (failover, migration, API). */
  restoresInFlight(): number;
  /** Audit events waiting to be written (the registry's quorum was unreachable). */
  auditBacklog(): number;
}

/** Seconds, from a 10 ms freeze to a 5 min upload. */
const SECONDS_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];

export class AgentMetrics {
  readonly registry = new MetricsRegistry();
  private readonly events = this.registry.counter('lxcr_audit_events_total', 'Audit events recorded by this agent, by kind (see the README\'s audit trail).');
  private readonly checkpoints = this.registry.counter('lxcr_checkpoints_total', 'Checkpoints of this host\'s containers, by outcome (ok, failed).');
  private readonly checkpointSeconds = this.registry.histogram(
    'lxcr_checkpoint_duration_seconds', 'Whole checkpoint: dump, upload and commit, and GC of the container.', SECONDS_BUCKETS,
  );
  private readonly freezeSeconds = this.registry.histogram('lxcr_checkpoint_freeze_seconds', 'How long each checkpoint kept its container frozen (the CRIU dump).', SECONDS_BUCKETS);
  private readonly dumpBytes = this.registry.counter('lxcr_checkpoint_dump_bytes_total', 'Raw bytes of the committed snapshots (CRIU images, config, rootfs tar): what full copies would take.');
  private readonly uploadBytes = this.registry.counter('lxcr_checkpoint_upload_bytes_total', 'Bytes sent to Cassandra by committed checkpoints: new chunks only, as stored (compressed).');
  private readonly uploadSeconds = this.registry.histogram('lxcr_checkpoint_upload_duration_seconds', 'Chunking, compressing, writing and committing a staged dump.', SECONDS_BUCKETS);
  private readonly uploadThroughput = this.registry.gauge(
    'lxcr_checkpoint_upload_throughput_bytes_per_second', 'Snapshot bytes processed per second by the last committed checkpoint\'s upload.',
  );
  private readonly dedupRatio = this.registry.gauge(
    'lxcr_checkpoint_dedup_ratio',
    'Raw snapshot bytes over bytes uploaded, of the last checkpoint that uploaded anything (deduplication and compression together); the cumulative ratio is rate(lxcr_checkpoint_dump_bytes_total) / rate(lxcr_checkpoint_upload_bytes_total).',
  );
  private readonly gcFreed = this.registry.counter('lxcr_gc_freed_bytes_total', 'Stored bytes freed by garbage collection of obsolete versions and chunks.');
  private readonly restores = this.registry.counter('lxcr_restores_total', 'Restores onto this host (failover, migration, API, and of its own crashed containers), by outcome (ok, failed).');
  private readonly restoreSeconds = this.registry.histogram('lxcr_restore_duration_seconds', 'Restore onto this host (any of the above): download, import and CRIU restore.', SECONDS_BUCKETS);
  private readonly restoreBytes = this.registry.counter('lxcr_restore_bytes_total', 'Snapshot bytes written by restores onto this host.');
  private readonly refused = this.registry.counter('lxcr_requests_refused_total', 'gRPC calls refused or failed, by outcome (refused: as asked; failed: could not be done).');

  constructor(sources: AgentMetricSources) {
    this.registry.gauge('lxcr_gossip_view_available', '1 while the local Cassandra node\'s gossip view can be read, else 0.', () => [{ value: sources.gossip() ? 1 : 0 }]);
    this.registry.gauge('lxcr_gossip_node_up', 'Each Cassandra node as the local node\'s gossip sees it: 1 up (UN), 0 down (DN).', () =>
      [...(sources.gossip()?.values() ?? [])].map((member) => ({ labels: { node: member.address }, value: member.status === 'U' ? 1 : 0 })),
    );
    this.registry.gauge('lxcr_replication_queue_depth', 'Staged dumps waiting for or in the host\'s replicator.', () => [{ value: sources.replicationQueue() }]);
    this.registry.gauge('lxcr_pending_checkpoints', 'Checkpoints requested of this host\'s containers and not finished.', () => [{ value: sources.pendingCheckpoints() }]);
    this.registry.gauge('lxcr_restores_in_flight', 'Restores running on this host.', () => [{ value: sources.restoresInFlight() }]);
    this.registry.gauge('lxcr_audit_backlog_events', 'Audit events kept in memory until the registry keyspace can be written.', () => [{ value: sources.auditBacklog() }]);
  }

  /** Takes in one audit event as it is recorded. */
  readonly observe = (event: ClusterEvent): void => {
    this.events.inc(1, { kind: event.kind });
    const seconds = event.durationMs === undefined ? undefined : event.durationMs / 1000;
    switch (event.kind) {
      case 'checkpoint-committed': {
        this.checkpoints.inc(1, { outcome: 'ok' });
        if (seconds !== undefined) this.checkpointSeconds.observe(seconds);
        this.uploadBytes.inc(event.bytes ?? 0);
        const figures = event.checkpoint;
        if (!figures) break;
        this.freezeSeconds.observe(figures.freezeMs / 1000);
        this.dumpBytes.inc(figures.logicalBytes);
        this.uploadSeconds.observe(figures.uploadMs / 1000);
        if (figures.uploadMs > 0) this.uploadThroughput.set(figures.logicalBytes / (figures.uploadMs / 1000));
        if ((event.bytes ?? 0) > 0) this.dedupRatio.set(figures.logicalBytes / event.bytes!);
        break;
      }
      case 'checkpoint-failed':
        this.checkpoints.inc(1, { outcome: 'failed' });
        break;
      case 'gc-collected':
        this.gcFreed.inc(event.bytes ?? 0);
        break;
      case 'restore-done':
      case 'crash-recovered':
        this.restores.inc(1, { outcome: 'ok' });
        if (seconds !== undefined) this.restoreSeconds.observe(seconds);
        this.restoreBytes.inc(event.bytes ?? 0);
        break;
      case 'restore-failed':
      case 'crash-recovery-failed':
        this.restores.inc(1, { outcome: 'failed' });
        break;
      case 'request-refused':
        this.refused.inc(1, { outcome: event.outcome ?? 'refused' });
        break;
      default:
        break;
    }
  };
}
