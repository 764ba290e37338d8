import cassandra from 'cassandra-driver';
import { errorMessage } from '../util/errors.ts';
import type { Logger } from '../util/log.ts';

const { consistencies, TimeUuid } = cassandra.types;

/**
 * The cluster's event log, the raw material of the audit trail: every failure detected, restore claimed,
 * restore done or failed, stale copy destroyed, and so on, with time, host, container, epoch and details.
 * Rows live in the registry keyspace (RF 3), partitioned by UTC hour so no partition grows without bound, and
 * expire after a retention period (TTL). Writing an event never fails the operation it records: an event that
 * cannot be written now (the registry's quorum is down, as when most hosts failed) is kept in memory, with its
 * own time, and written with the next one that can be; beyond `MAX_PENDING` the oldest is dropped and logged.
 */

export type EventKind =
  | 'checkpoint-committed'
  | 'checkpoint-failed'
  | 'gc-collected'
  | 'request-refused'
  | 'host-down'
  | 'host-up'
  | 'restore-requested'
  | 'restore-claimed'
  | 'restore-done'
  | 'restore-failed'
  | 'crash-recovered'
  | 'crash-recovery-failed'
  | 'replicas-not-found'
  | 'container-adopted'
  | 'stale-copy-destroyed'
  | 'handed-off'
  | 'migration-done'
  | 'migration-failed'
  | 'agent-stopped'
  | 'requests-unrecorded';

export interface ClusterEvent {
  kind: EventKind;
  /** The host the event happened on (the agent that records it). */
  host: string;
  container?: string;
  epoch?: number;
  version?: number;
  durationMs?: number;
  /** Bytes moved or freed: uploaded by a checkpoint, written by a restore, freed by GC. */
  bytes?: number;
  outcome?: 'ok' | 'failed' | 'refused';
  /** Free-form details: the error message, the source host, the candidates tried. */
  detail?: string;
  /**
   * A committed checkpoint's figures, for listeners such as the metrics (not columns of the audit row: its detail
   * text tells them).
   */
  checkpoint?: CheckpointFigures;
}

export interface CheckpointFigures {
  /** How long the container was frozen (the CRIU dump). */
  freezeMs: number;
  /** Raw bytes of the snapshot: what a full copy would take. */
  logicalBytes: number;
  /** Chunking, compressing, writing and committing the staged dump. */
  uploadMs: number;
}

/** Told of each event as it is recorded, before it is written. */
export type EventListener = (event: ClusterEvent) => void;

export interface RecordedEvent extends ClusterEvent {
  at: Date;
}

/** How long the audit trail keeps a row by default (the config's audit.ttlDays). */
export const DEFAULT_AUDIT_TTL_DAYS = 90;

/** A retention in days as the rows' TTL in seconds; 0 days is Cassandra's TTL 0: no expiry. */
export function retentionSeconds(ttlDays: number): number {
  return ttlDays * 24 * 3600;
}

const EVENT_COLUMNS = 'kind text, host text, epoch bigint, version bigint, duration_ms double, bytes bigint, outcome text, detail text';

export function eventsSchema(keyspace: string): string[] {
  return [
    // Everything that happened in the cluster, by UTC hour: "what happened between 14:00 and 15:00".
    `CREATE TABLE IF NOT EXISTS ${keyspace}.events (
      bucket text, at timeuuid, container text, ${EVENT_COLUMNS},
      PRIMARY KEY (bucket, at)
    ) WITH CLUSTERING ORDER BY (at DESC)`,
    // The same rows by container and UTC day: "the history of web-1" without scanning other containers (Cassandra
    // 2.1 cannot filter on a regular column). A day of a container checkpointed every 10 s is ~9000 rows.
    `CREATE TABLE IF NOT EXISTS ${keyspace}.events_by_container (
      container text, day text, at timeuuid, ${EVENT_COLUMNS},
      PRIMARY KEY ((container, day), at)
    ) WITH CLUSTERING ORDER BY (at DESC)`,
  ];
}

/** The day partition of events_by_container an instant falls in, e.g. 2026-11-22. */
export function eventDay(at: Date): string {
  return at.toISOString().slice(0, 10);
}

/** The hour partition an instant falls in, e.g. 2026-11-22T05. */
export function eventBucket(at: Date): string {
  return at.toISOString().slice(0, 13);
}

const MAX_PENDING = 1000;

type PendingEvent = RecordedEvent & { id: cassandra.types.TimeUuid };

export class EventLog {
  private readonly pending: PendingEvent[] = [];
  private readonly listeners: EventListener[] = [];
  /** The flush in progress: flushes never overlap, or two of them would write the same event twice. */
  private flushing: Promise<void> | undefined;

  constructor(
    private readonly client: cassandra.Client,
    private readonly keyspace: string,
    private readonly logger: Logger,
    /** The rows' TTL in seconds; 0: kept forever. */
    private readonly ttlSeconds = retentionSeconds(DEFAULT_AUDIT_TTL_DAYS),
  ) {}

  /** Tells `listener` of every event recorded from now on. */
  onRecord(listener: EventListener): void {
    this.listeners.push(listener);
  }

  /** Records an event; resolves when it is written or kept for later, never rejects. */
  async record(event: ClusterEvent): Promise<void> {
    for (const listener of this.listeners) {
      try {
        listener(event);
      } catch (err) {
        this.logger.error('an audit event listener failed', { kind: event.kind, error: errorMessage(err) });
      }
    }
    const at = new Date();
    // The row key is fixed now, so writing the event again after an unknown outcome overwrites, never duplicates.
    this.pending.push({ ...event, at, id: TimeUuid.fromDate(at) });
    if (this.pending.length > MAX_PENDING) {
      this.logger.error('audit trail backlog full: an event was dropped', { ...this.pending.shift() });
    }
    await this.flush();
  }

  /** Events waiting to be written. */
  get backlog(): number {
    return this.pending.length;
  }

  /** Writes the waiting events in order; stops at the first failure (kept for the next try). */
  async flush(): Promise<void> {
    while (this.flushing) await this.flushing;
    if (this.pending.length === 0) return;
    this.flushing = this.writePending().finally(() => {
      this.flushing = undefined;
    });
    await this.flushing;
  }

  private async writePending(): Promise<void> {
    while (this.pending.length > 0) {
      const event = this.pending[0]!;
      try {
        await this.write(event);
        this.pending.shift();
      } catch (err) {
        this.logger.warn('audit trail not writable now; events kept in memory', { waiting: this.pending.length, error: errorMessage(err) });
        return;
      }
    }
  }

  private async write(event: PendingEvent): Promise<void> {
    const columns = 'kind, host, epoch, version, duration_ms, bytes, outcome, detail';
    const values = [
      event.kind, event.host, event.epoch ?? null, event.version ?? null, event.durationMs ?? null, event.bytes ?? null,
      event.outcome ?? null, event.detail ?? null, this.ttlSeconds,
    ];
    const options = { prepare: true, consistency: consistencies.quorum };
    await this.client.execute(
      `INSERT INTO ${this.keyspace}.events (bucket, at, container, ${columns}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?`,
      [eventBucket(event.at), event.id, event.container ?? null, ...values],
      options,
    );
    // Both rows have the event's fixed key: a retry after a partial failure rewrites, never duplicates.
    if (event.container !== undefined) {
      await this.client.execute(
        `INSERT INTO ${this.keyspace}.events_by_container (container, day, at, ${columns}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?`,
        [event.container, eventDay(event.at), event.id, ...values],
        options,
      );
    }
  }

  /** A container's events in [from, to], newest first (its day partitions). */
  async ofContainer(container: string, from: Date, to: Date): Promise<RecordedEvent[]> {
    const partitions: unknown[][] = [];
    for (let day = new Date(to); eventDay(day) >= eventDay(from); day = new Date(day.getTime() - 86_400_000)) partitions.push([container, eventDay(day)]);
    return this.read('events_by_container', 'container = ? AND day = ?', partitions, from, to);
  }

  /** Events of the hour buckets covering [from, to], newest first. */
  async between(from: Date, to: Date): Promise<RecordedEvent[]> {
    const partitions: unknown[][] = [];
    for (let hour = new Date(to); hour.getTime() >= from.getTime() - 3600_000; hour = new Date(hour.getTime() - 3600_000)) partitions.push([eventBucket(hour)]);
    return this.read('events', 'bucket = ?', partitions, from, to);
  }

  /** The events in [from, to] of each partition (given by its key values, in `keyWhere`'s order), in that order. */
  private async read(table: string, keyWhere: string, partitions: readonly unknown[][], from: Date, to: Date): Promise<RecordedEvent[]> {
    const events: RecordedEvent[] = [];
    for (const key of partitions) {
      const result = await this.client.execute(
        `SELECT at, kind, host, container, epoch, version, duration_ms, bytes, outcome, detail FROM ${this.keyspace}.${table} WHERE ${keyWhere} AND at >= ? AND at <= ?`,
        [...key, TimeUuid.min(from, 0), TimeUuid.max(to, 9999)],
        { prepare: true, consistency: consistencies.quorum },
      );
      for (const row of result.rows) events.push(toEvent(row));
    }
    return events;
  }
}

function toEvent(row: cassandra.types.Row): RecordedEvent {
  const event: RecordedEvent = { at: (row['at'] as cassandra.types.TimeUuid).getDate(), kind: row['kind'] as EventKind, host: row['host'] as string };
  const container = row['container'] as string | null;
  if (container !== null) event.container = container;
  const epoch = row['epoch'] as cassandra.types.Long | null;
  if (epoch !== null) event.epoch = epoch.toNumber();
  const version = row['version'] as cassandra.types.Long | null;
  if (version !== null) event.version = version.toNumber();
  const durationMs = row['duration_ms'] as number | null;
  if (durationMs !== null) event.durationMs = durationMs;
  const bytes = row['bytes'] as cassandra.types.Long | null;
  if (bytes !== null) event.bytes = bytes.toNumber();
  const outcome = row['outcome'] as RecordedEvent['outcome'] | null;
  if (outcome !== null) event.outcome = outcome;
  const detail = row['detail'] as string | null;
  if (detail !== null) event.detail = detail;
  return event;
}
