import { setTimeout as sleep } from 'node:timers/promises';
import cassandra from 'cassandra-driver';
import { contentionBackoffMs, isPaxosTimeout, readWithFallback } from '../storage/consistency.ts';
import { applySchema, replicationMap, schemaAgreement, validateKeyspaceName, type Replication } from '../storage/schema.ts';
import { InvalidArgumentError, UnavailableError } from '../util/errors.ts';
import { eventsSchema } from './events.ts';

const { consistencies } = cassandra.types;

/**
 * The cluster registry: which agents exist (host id, Cassandra address, gRPC endpoint) and which host owns each
 * container, with an epoch that fences every change of owner.
 *
 * It lives in its own keyspace, `lxcr_meta`, with replication factor 3 and QUORUM reads and writes (SERIAL for
 * lightweight transactions): a quorum of 3 is 2, so ownership and restore claims stay writable while any one
 * host of a 3+ host cluster is down, which is exactly when they are needed. The snapshot keyspace's RF 2 would
 * not do: a Paxos round needs a majority of the replicas, and the majority of 2 is 2.
 *
 * Ownership: a container's row holds its owner and an epoch. Adopting a container nobody owns creates epoch 1;
 * every later change of owner is a compare-and-set on the epoch (IF epoch = e → e + 1), so of two agents reacting
 * to the same failure exactly one wins, and an agent that comes back after losing its containers sees a newer
 * epoch and another owner.
 */

export const DEFAULT_META_KEYSPACE = 'lxcr_meta';
export const DEFAULT_META_REPLICATION: Replication = { class: 'SimpleStrategy', replicationFactor: 3 };

export interface HostRecord {
  hostId: string;
  /** The host's Cassandra node as it appears in the ring (listen address). */
  cassandraAddress: string;
  /** host:port of the agent's gRPC server. */
  grpcEndpoint: string;
  startedAt: Date;
  /**
   * serving: the agent runs (or died without a word: only gossip tells a dead host). stopped: it left gracefully
   * (SIGTERM), at `stoppedAt`; its containers run on, unsupervised, and its Cassandra node stays up, so nothing
   * is restored elsewhere for it, and it is no target for restores until its agent starts again. If the host
   * itself then goes DN, its containers are restored like any failed host's.
   */
  agentState: AgentState;
  stoppedAt?: Date;
}

export type AgentState = 'serving' | 'stopped';

/**
 * running: the owner runs it and checkpoints it. restoring: a claim moved it to a new owner that is restoring
 * it. restore-failed: that restore failed (the next candidate host is tried). replicas-not-found: its owner is down and so are both replica hosts of its snapshots; it is restored
 * when one of them returns. released: its owner stopped it for a migration or a restore elsewhere; the next owner
 * claims it from this epoch (or the owner takes it back if nobody does in time).
 */
export type OwnershipState = 'running' | 'restoring' | 'restore-failed' | 'replicas-not-found' | 'released';

export interface Ownership {
  container: string;
  owner: string;
  epoch: number;
  state: OwnershipState;
  updatedAt: Date;
}

export type ClaimResult = { won: true; ownership: Ownership } | { won: false; current: Ownership | undefined };

export interface RegistryOptions {
  client: cassandra.Client;
  keyspace?: string;
  replication?: Replication;
}

const WRITE = { prepare: true, consistency: consistencies.quorum, isIdempotent: true };
const READ = { prepare: true, consistency: consistencies.quorum, isIdempotent: true };
/**
 * Compare-and-set statements are marked idempotent so the driver retries one on the next host when its
 * coordinator does not answer (a hung node, which the driver never marks down). That is safe: a repeat whose
 * first attempt did apply finds its condition false, and the outcome is then read back (see compareAndSet).
 */
const LWT = { prepare: true, consistency: consistencies.quorum, serialConsistency: consistencies.serial, isIdempotent: true };
const SERIAL_READ = { prepare: true, consistency: consistencies.serial, isIdempotent: true };
const MAX_LWT_ATTEMPTS = 8;

export function registrySchema(keyspace = DEFAULT_META_KEYSPACE, replication: Replication = DEFAULT_META_REPLICATION): string[] {
  validateKeyspaceName(keyspace);
  return [
    `CREATE KEYSPACE IF NOT EXISTS ${keyspace} WITH replication = ${replicationMap(replication)}`,
    `CREATE TABLE IF NOT EXISTS ${keyspace}.hosts (
      host_id text PRIMARY KEY, cassandra_address text, grpc_endpoint text, started_at timestamp, agent_state text, stopped_at timestamp
    )`,
    `CREATE TABLE IF NOT EXISTS ${keyspace}.ownership (
      container text PRIMARY KEY, owner text, epoch bigint, state text, updated_at timestamp
    )`,
    ...eventsSchema(keyspace),
  ];
}

export class ClusterRegistry {
  private readonly client: cassandra.Client;
  readonly keyspace: string;
  private readonly replication: Replication;

  constructor(options: RegistryOptions) {
    this.client = options.client;
    this.keyspace = options.keyspace ?? DEFAULT_META_KEYSPACE;
    this.replication = options.replication ?? DEFAULT_META_REPLICATION;
  }

  async ensureSchema(): Promise<void> {
    const execute = (statement: string) => this.client.execute(statement);
    const agreed = schemaAgreement(this.client);
    await applySchema(execute, agreed, registrySchema(this.keyspace, this.replication));
    // Columns added since the table was first created (CREATE IF NOT EXISTS leaves an existing table as it was).
    const events = await this.client.metadata.getTable(this.keyspace, 'events');
    if (events && !events.columnsByName['bytes']) await applySchema(execute, agreed, [`ALTER TABLE ${this.keyspace}.events ADD bytes bigint`]);
    const hosts = await this.client.metadata.getTable(this.keyspace, 'hosts');
    if (hosts && !hosts.columnsByName['agent_state']) {
      await applySchema(execute, agreed, [`ALTER TABLE ${this.keyspace}.hosts ADD agent_state text`, `ALTER TABLE ${this.keyspace}.hosts ADD stopped_at timestamp`]);
    }
  }

  /** Records a starting agent: serving, at its gRPC endpoint, since `startedAt`. */
  async registerHost(host: Omit<HostRecord, 'agentState' | 'stoppedAt'>): Promise<void> {
    validateHostId(host.hostId);
    await this.client.execute(
      `INSERT INTO ${this.keyspace}.hosts (host_id, cassandra_address, grpc_endpoint, started_at, agent_state, stopped_at) VALUES (?, ?, ?, ?, ?, ?)`,
      [host.hostId, host.cassandraAddress, host.grpcEndpoint, host.startedAt, 'serving' satisfies AgentState, null],
      WRITE,
    );
  }

  /**
   * Records that the agent which registered at `startedAt` left gracefully. Conditional on that start time, so a
   * late stop of an old run never marks a newer run of the same host stopped. False if a newer run registered.
   */
  async deregisterHost(hostId: string, startedAt: Date, stoppedAt = new Date()): Promise<boolean> {
    return this.withPaxosRetry(`deregistering ${hostId}`, async () => {
      const applied = await this.client.execute(
        `UPDATE ${this.keyspace}.hosts SET agent_state = ?, stopped_at = ? WHERE host_id = ? IF started_at = ?`,
        ['stopped' satisfies AgentState, stoppedAt, hostId, startedAt],
        LWT,
      );
      return applied.first()?.['[applied]'] === true;
    });
  }

  /**
   * The registered hosts. `degraded` reads at ONE when a quorum is not reachable (most hosts down): enough to
   * see what happened and report it, never used to decide a claim.
   */
  async hosts(options: { degraded?: boolean } = {}): Promise<HostRecord[]> {
    const result = await this.readAll(`SELECT host_id, cassandra_address, grpc_endpoint, started_at, agent_state, stopped_at FROM ${this.keyspace}.hosts`, {}, options.degraded);
    return result.rows.map((row) => {
      const host: HostRecord = {
        hostId: row['host_id'] as string,
        cassandraAddress: row['cassandra_address'] as string,
        grpcEndpoint: row['grpc_endpoint'] as string,
        startedAt: row['started_at'] as Date,
        // Rows written before agents deregistered have no state: their agents were serving.
        agentState: (row['agent_state'] as AgentState | null) ?? 'serving',
      };
      const stoppedAt = row['stopped_at'] as Date | null;
      if (stoppedAt !== null) host.stoppedAt = stoppedAt;
      return host;
    });
  }

  /** The container's owner as the latest committed Paxos round says (SERIAL read). */
  async ownership(container: string): Promise<Ownership | undefined> {
    const result = await this.withPaxosRetry(`reading the owner of ${container}`, () =>
      this.client.execute(`SELECT container, owner, epoch, state, updated_at FROM ${this.keyspace}.ownership WHERE container = ?`, [container], SERIAL_READ),
    );
    const row = result.first();
    return row ? toOwnership(row) : undefined;
  }

  /** Every container's ownership (the table has one small row per container in the cluster); `degraded` as for hosts(). */
  async allOwnership(options: { degraded?: boolean } = {}): Promise<Ownership[]> {
    const rows: Ownership[] = [];
    let pageState: string | undefined;
    do {
      const page = await this.readAll(`SELECT container, owner, epoch, state, updated_at FROM ${this.keyspace}.ownership`, { fetchSize: 1000, pageState }, options.degraded);
      rows.push(...page.rows.map(toOwnership));
      pageState = page.pageState ?? undefined;
    } while (pageState);
    return rows;
  }

  /** A QUORUM read, or with `degraded`, a ONE read when the quorum is unavailable. */
  private readAll(query: string, options: cassandra.QueryOptions, degraded = false): Promise<cassandra.types.ResultSet> {
    const read = (consistency: number) => this.client.execute(query, [], { ...READ, ...options, consistency });
    return degraded ? readWithFallback(read, consistencies.quorum) : read(consistencies.quorum);
  }

  /**
   * Records `host` as the owner of a container nobody owns yet (epoch 1). If someone already owns it, nothing
   * changes and that ownership is returned: the caller's copy is then either its own (same owner: an agent
   * re-adopting after a restart) or stale (another owner: it must not run here).
   */
  async adopt(container: string, host: string): Promise<ClaimResult> {
    validateHostId(host);
    return this.compareAndSet(container, host, undefined, 'running', () =>
      this.client.execute(
        `INSERT INTO ${this.keyspace}.ownership (container, owner, epoch, state, updated_at) VALUES (?, ?, ?, ?, ?) IF NOT EXISTS`,
        [container, host, 1, 'running' satisfies OwnershipState, new Date()],
        LWT,
      ),
    );
  }

  /**
   * Moves a container to `newOwner` if its epoch is still `expectedEpoch` (the epoch of the failed owner the
   * caller saw), making it expectedEpoch + 1. Of several agents claiming the same failure, exactly one wins.
   */
  async claim(container: string, newOwner: string, expectedEpoch: number, state: OwnershipState = 'restoring'): Promise<ClaimResult> {
    validateHostId(newOwner);
    return this.compareAndSet(container, newOwner, expectedEpoch, state, () =>
      this.client.execute(
        `UPDATE ${this.keyspace}.ownership SET owner = ?, epoch = ?, state = ?, updated_at = ? WHERE container = ? IF epoch = ?`,
        [newOwner, expectedEpoch + 1, state, new Date(), container, expectedEpoch],
        LWT,
      ),
    );
  }

  /**
   * Changes the state of a container that `owner` holds at `epoch`; fenced: false (and nothing written) when the
   * container has moved on to another owner or epoch since.
   */
  async setState(container: string, owner: string, epoch: number, state: OwnershipState): Promise<boolean> {
    const result = await this.withPaxosRetry(`updating the state of ${container}`, async () => {
      const applied = await this.client.execute(
        `UPDATE ${this.keyspace}.ownership SET state = ?, updated_at = ? WHERE container = ? IF owner = ? AND epoch = ?`,
        [state, new Date(), container, owner, epoch],
        LWT,
      );
      return applied.first()?.['[applied]'] === true;
    });
    return result;
  }

  /** Removes a container from the registry, if `owner` still holds it at `epoch` (it was deleted for good). */
  async release(container: string, owner: string, epoch: number): Promise<boolean> {
    return this.withPaxosRetry(`releasing ${container}`, async () => {
      const applied = await this.client.execute(`DELETE FROM ${this.keyspace}.ownership WHERE container = ? IF owner = ? AND epoch = ?`, [container, owner, epoch], LWT);
      return applied.first()?.['[applied]'] === true;
    });
  }

  /**
   * One compare-and-set with its Paxos timeouts handled: a timed-out round has an unknown outcome, so the row
   * is re-read at SERIAL (which completes any in-progress round) and the claim counts as won only if the row
   * now shows exactly what this claim would have written.
   */
  private async compareAndSet(
    container: string,
    owner: string,
    expectedEpoch: number | undefined,
    state: OwnershipState,
    statement: () => Promise<cassandra.types.ResultSet>,
  ): Promise<ClaimResult> {
    const wanted = (expectedEpoch ?? 0) + 1;
    for (let attempt = 0; attempt < MAX_LWT_ATTEMPTS; attempt++) {
      if (attempt > 0) await sleep(contentionBackoffMs(attempt));
      let result: cassandra.types.ResultSet;
      try {
        result = await statement();
      } catch (error) {
        if (!isPaxosTimeout(error)) throw error;
        const now = await this.ownership(container);
        if (now && now.owner === owner && now.epoch === wanted && now.state === state) return { won: true, ownership: now };
        if (now && now.epoch !== (expectedEpoch ?? now.epoch)) return { won: false, current: now };
        continue; // nothing changed: the round did not apply; try again
      }
      if (result.first()?.['[applied]'] === true) {
        return { won: true, ownership: { container, owner, epoch: wanted, state, updatedAt: new Date() } };
      }
      const current = await this.ownership(container);
      // A driver retry of a round that had applied: the row shows exactly this claim.
      if (current && expectedEpoch !== undefined && current.owner === owner && current.epoch === wanted) return { won: true, ownership: current };
      return { won: false, current };
    }
    throw new UnavailableError(`claiming ${container} for ${owner}: ${MAX_LWT_ATTEMPTS} Paxos rounds timed out; is a quorum of the registry's replicas up?`);
  }

  private async withPaxosRetry<T>(what: string, task: () => Promise<T>): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await task();
      } catch (error) {
        if (!isPaxosTimeout(error)) throw error;
        if (attempt + 1 >= MAX_LWT_ATTEMPTS) {
          throw new UnavailableError(`${what}: ${MAX_LWT_ATTEMPTS} Paxos rounds timed out; is a quorum of the registry's replicas up?`, { cause: error });
        }
        await sleep(contentionBackoffMs(attempt + 1));
      }
    }
  }
}

function toOwnership(row: cassandra.types.Row): Ownership {
  return {
    container: row['container'] as string,
    owner: row['owner'] as string,
    epoch: (row['epoch'] as cassandra.types.Long).toNumber(),
    state: row['state'] as OwnershipState,
    updatedAt: row['updated_at'] as Date,
  };
}

const HOST_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

export function validateHostId(hostId: string): void {
  if (!HOST_ID.test(hostId)) {
    throw new InvalidArgumentError(`host id "${hostId}" must be 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit`);
  }
}
