import { setTimeout as sleep } from 'node:timers/promises';
import cassandra from 'cassandra-driver';
import { Semaphore } from '../util/concurrency.ts';
import { InvalidArgumentError, NotFoundError, UnavailableError, errorMessage } from '../util/errors.ts';
import { contentionBackoffMs, isPaxosTimeout, readWithFallback } from './consistency.ts';
import { colocatedBuckets, homeRoutingKey } from './placement.ts';
import { DEFAULT_KEYSPACE, DEFAULT_REPLICATION, addColumns, applySchema, schemaAgreement, snapshotSchema, snapshotSchemaAdditions, type Replication } from './schema.ts';
import type { ChunkCipher } from './encryption.ts';
import type { BucketChunk, ChunkLocation, ChunkState, SnapshotStore, VersionReadOptions, VersionRecord, VersionState } from './store.ts';

const { consistencies } = cassandra.types;

/**
 * Consistency: with replication factor 2, every write is at TWO, so a call that returns means both replica
 * hosts have the data; a version committed after its chunks therefore has every chunk on 2 replicas. With one
 * replica down, writes fail (the checkpoint fails and is retried on the next period; earlier versions stay
 * untouched) rather than silently leaving a single copy. Chunks are read at ONE: they are immutable and
 * verified by hash, and a restore must work when only one replica host is alive. Versions and the chunk index
 * are read from both replicas when both answer (a replica that lost recent writes, e.g. a replaced disk, is
 * then outvoted by the other's newer data) and from the one alive otherwise. Version numbers are allocated with a
 * lightweight transaction on a static column of the home partition, so they are never reused, also after GC
 * deletes versions; that needs both replicas up (Paxos majority of 2).
 */
export interface CassandraStoreOptions {
  client: cassandra.Client;
  keyspace?: string;
  replication?: Replication;
  /**
   * Requests this store has in flight at once, across every container's uploads, downloads and GC: one store
   * per agent bounds the load the agent puts on Cassandra. Default 16.
   */
  maxConcurrentRequests?: number;
  /** Encryption at rest of chunk contents (SnapshotStore.cipher). Default: none. */
  cipher?: ChunkCipher;
}

const WRITE = { prepare: true, consistency: consistencies.two };
const READ = { prepare: true, consistency: consistencies.one };
const LWT = { prepare: true, consistency: consistencies.two, serialConsistency: consistencies.serial };
/**
 * Leases are written at ONE, because a restore must work with one replica host down (that is when failover
 * restores run), and read at ALL by GC: ONE + ALL > RF, so GC sees every lease written before it reads. GC
 * needs all replicas up anyway, since it deletes at TWO.
 */
const LEASE_WRITE = { prepare: true, consistency: consistencies.one };
const LEASE_READ = { prepare: true, consistency: consistencies.all };

/** Index rows per batch: ~100 bytes each, far below the batch size warning threshold. */
const INDEX_BATCH = 200;

/** How many times a version allocation tries before giving up on races lost or Paxos timeouts. */
const MAX_ALLOCATION_ATTEMPTS = 12;
const LOST_RACE = -1;
const DEFAULT_MAX_CONCURRENT_REQUESTS = 16;

export class CassandraSnapshotStore implements SnapshotStore {
  private readonly client: cassandra.Client;
  private readonly keyspace: string;
  private readonly replication: Replication;
  /** Bounds this store's requests in flight; its `waiting` is the queue depth an operator watches. */
  readonly limiter: Semaphore;
  readonly cipher?: ChunkCipher;

  constructor(options: CassandraStoreOptions) {
    this.cipher = options.cipher;
    this.client = options.client;
    this.keyspace = options.keyspace ?? DEFAULT_KEYSPACE;
    this.replication = options.replication ?? DEFAULT_REPLICATION;
    this.limiter = new Semaphore(options.maxConcurrentRequests ?? DEFAULT_MAX_CONCURRENT_REQUESTS);
  }

  /** A read from every replica (TWO), or from the one that answers when a replica is down (ONE). */
  private readLatest(query: string, params: unknown[], options: cassandra.QueryOptions): Promise<cassandra.types.ResultSet> {
    return readWithFallback((consistency) => this.execute(query, params, { ...READ, ...options, consistency }), consistencies.two);
  }

  /** Every request goes through here: bounded, and an unreachable cluster reported as such. */
  private execute(query: string, params: unknown[], options: cassandra.QueryOptions): Promise<cassandra.types.ResultSet> {
    return this.limiter.use(() => this.client.execute(query, params, options)).catch(rethrowUnreachable);
  }

  async ensureSchema(): Promise<void> {
    const execute = (statement: string) => this.execute(statement, [], {});
    await applySchema(execute, schemaAgreement(this.client), snapshotSchema(this.keyspace, this.replication));
    await addColumns(execute, schemaAgreement(this.client), snapshotSchemaAdditions(this.keyspace));
    await this.client.metadata.refreshKeyspace(this.keyspace);
  }

  replicas(container: string): string[] {
    return this.client.getReplicas(this.keyspace, homeRoutingKey(container)).map(hostAddress);
  }

  buckets(container: string, count: number, after?: number): number[] {
    return colocatedBuckets(this.client.metadata, container, count, after);
  }

  async beginVersion(container: string, sourceHost: string): Promise<number> {
    for (let attempt = 0; attempt < MAX_ALLOCATION_ATTEMPTS; attempt++) {
      if (attempt > 0) await sleep(contentionBackoffMs(attempt));
      let version: number;
      try {
        version = await this.claimNextVersion(container);
      } catch (error) {
        // A Paxos timeout leaves the claim's outcome unknown. Re-reading and claiming again is safe: if the
        // timed-out claim did apply, its number is simply skipped, never handed out twice.
        if (isPaxosTimeout(error)) continue;
        throw error;
      }
      if (version === LOST_RACE) continue;
      await this.execute(
        `INSERT INTO ${this.keyspace}.manifests (container, version, state, source_host, created_at) VALUES (?, ?, ?, ?, ?)`,
        [container, version, 'uploading' satisfies VersionState, sourceHost, new Date()],
        WRITE,
      );
      return version;
    }
    throw new UnavailableError(
      `could not allocate a version of ${container}: ${MAX_ALLOCATION_ATTEMPTS} attempts lost races to other writers or timed out; ` +
        'check that both replica hosts of the container are up',
    );
  }

  /** One compare-and-set of the next_version counter: the claimed number, or LOST_RACE. */
  private async claimNextVersion(container: string): Promise<number> {
    const current = await this.execute(
      `SELECT next_version FROM ${this.keyspace}.manifests WHERE container = ? LIMIT 1`,
      [container],
      { prepare: true, consistency: consistencies.serial },
    );
    const next = current.first()?.['next_version'] as cassandra.types.Long | null | undefined;
    const version = next ? next.toNumber() : 1;
    const claim = next
      ? await this.execute(
          `UPDATE ${this.keyspace}.manifests SET next_version = ? WHERE container = ? IF next_version = ?`,
          [version + 1, container, version],
          LWT,
        )
      : await this.execute(
          `INSERT INTO ${this.keyspace}.manifests (container, next_version) VALUES (?, ?) IF NOT EXISTS`,
          [container, version + 1],
          LWT,
        );
    return claim.first()?.['[applied]'] === true ? version : LOST_RACE;
  }

  async commitVersion(container: string, version: number, manifest: Buffer): Promise<void> {
    const existing = await this.execute(
      `SELECT state FROM ${this.keyspace}.manifests WHERE container = ? AND version = ?`,
      [container, version],
      READ,
    );
    const state = existing.first()?.['state'] as string | undefined;
    if (state === undefined || state === null) throw new NotFoundError(`${container} has no version ${version} to commit`);
    if (state === 'committed') throw new InvalidArgumentError(`${container} version ${version} is already committed`);
    await this.execute(
      `UPDATE ${this.keyspace}.manifests SET state = ?, manifest = ?, committed_at = ? WHERE container = ? AND version = ?`,
      ['committed' satisfies VersionState, manifest, new Date(), container, version],
      WRITE,
    );
  }

  async versions(container: string, options: VersionReadOptions = {}): Promise<VersionRecord[]> {
    const query = `SELECT container, version, state, source_host, created_at, committed_at, manifest, upload_buckets FROM ${this.keyspace}.manifests WHERE container = ?`;
    const result = options.oneReplica ? await this.execute(query, [container], READ) : await this.readLatest(query, [container], {});
    // Rows whose version is null are the partition's static row (only next_version), not a version.
    return result.rows.filter((row) => row['version'] !== null).map(toVersionRecord);
  }

  async latestCommitted(container: string, options?: VersionReadOptions): Promise<VersionRecord | undefined> {
    return (await this.versions(container, options)).find((v) => v.state === 'committed');
  }

  async deleteVersion(container: string, version: number): Promise<void> {
    await this.execute(`DELETE FROM ${this.keyspace}.manifests WHERE container = ? AND version = ?`, [container, version], WRITE);
  }

  async chunkIndex(container: string): Promise<Map<string, ChunkLocation>> {
    const index = new Map<string, ChunkLocation>();
    // Paged: a large container has thousands of chunks.
    let pageState: string | undefined;
    do {
      const page = await this.readLatest(
        `SELECT hash, bucket, raw_size, stored_size, codec, state, created_at FROM ${this.keyspace}.chunk_index WHERE container = ?`,
        [container],
        { fetchSize: 1000, pageState },
      );
      for (const row of page.rows) {
        const hash = (row['hash'] as Buffer).toString('hex');
        index.set(hash, {
          hash,
          bucket: row['bucket'] as number,
          rawSize: row['raw_size'] as number,
          storedSize: row['stored_size'] as number,
          codec: row['codec'] as string,
          createdAt: row['created_at'] as Date,
          state: row['state'] as ChunkState,
        });
      }
      pageState = page.pageState ?? undefined;
    } while (pageState);
    return index;
  }

  async putChunk(container: string, location: ChunkLocation, data: Buffer): Promise<void> {
    if (data.length !== location.storedSize) {
      throw new InvalidArgumentError(`chunk ${location.hash} of ${container}: ${data.length} bytes given, ${location.storedSize} declared`);
    }
    await this.execute(
      `INSERT INTO ${this.keyspace}.chunks (container, bucket, hash, data) VALUES (?, ?, ?, ?)`,
      [container, location.bucket, hashBytes(location.hash), data],
      WRITE,
    );
  }

  async reserveBuckets(container: string, version: number, buckets: readonly number[]): Promise<void> {
    await this.execute(
      `UPDATE ${this.keyspace}.manifests SET upload_buckets = upload_buckets + ? WHERE container = ? AND version = ?`,
      [[...buckets], container, version],
      WRITE,
    );
  }

  async indexChunks(container: string, locations: readonly ChunkLocation[]): Promise<void> {
    const now = new Date();
    // One partition (the container's home): an unlogged batch is a single mutation there, and small.
    for (let start = 0; start < locations.length; start += INDEX_BATCH) {
      const batch = locations.slice(start, start + INDEX_BATCH).map((location) => ({
        query: `INSERT INTO ${this.keyspace}.chunk_index (container, hash, bucket, raw_size, stored_size, codec, state, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
        params: [container, hashBytes(location.hash), location.bucket, location.rawSize, location.storedSize, location.codec, 'stored' satisfies ChunkState, now],
      }));
      await this.limiter.use(() => this.client.batch(batch, { ...WRITE, logged: false })).catch(rethrowUnreachable);
    }
  }

  async bucketChunks(container: string, bucket: number): Promise<BucketChunk[]> {
    const chunks: BucketChunk[] = [];
    let pageState: string | undefined;
    do {
      // Hashes and write times only: the chunks' bytes stay on the replicas.
      const page = await this.readLatest(
        `SELECT hash, WRITETIME(data) AS written FROM ${this.keyspace}.chunks WHERE container = ? AND bucket = ?`,
        [container, bucket],
        { fetchSize: 1000, pageState },
      );
      for (const row of page.rows) {
        // Microseconds since the epoch.
        const written = row['written'] as cassandra.types.Long;
        chunks.push({ hash: (row['hash'] as Buffer).toString('hex'), writtenAt: new Date(written.div(1000).toNumber()) });
      }
      pageState = page.pageState ?? undefined;
    } while (pageState);
    return chunks;
  }

  async getChunk(container: string, location: Pick<ChunkLocation, 'hash' | 'bucket'>, fromHost?: string): Promise<Buffer | undefined> {
    const options: cassandra.QueryOptions = { ...READ };
    if (fromHost !== undefined) {
      const host = this.client.hosts.values().find((h) => hostAddress(h) === fromHost);
      if (!host) throw new NotFoundError(`no Cassandra host ${fromHost} is known to the driver`);
      options.host = host;
    }
    try {
      const result = await this.execute(
        `SELECT data FROM ${this.keyspace}.chunks WHERE container = ? AND bucket = ? AND hash = ?`,
        [container, location.bucket, hashBytes(location.hash)],
        options,
      );
      return (result.first()?.['data'] as Buffer | undefined) ?? undefined;
    } catch (err) {
      throw new UnavailableError(`could not read chunk ${location.hash} of ${container}${fromHost ? ` from ${fromHost}` : ''}: ${errorMessage(err)}`, { cause: err });
    }
  }

  async leaseVersion(container: string, version: number, holder: string, ttlMs: number): Promise<void> {
    const ttlSeconds = Math.max(1, Math.ceil(ttlMs / 1000));
    await this.execute(
      `INSERT INTO ${this.keyspace}.restore_leases (container, version, holder, expires_at) VALUES (?, ?, ?, ?) USING TTL ?`,
      [container, version, holder, new Date(Date.now() + ttlSeconds * 1000), ttlSeconds],
      LEASE_WRITE,
    );
  }

  async releaseLease(container: string, version: number, holder: string): Promise<void> {
    await this.execute(`DELETE FROM ${this.keyspace}.restore_leases WHERE container = ? AND version = ? AND holder = ?`, [container, version, holder], LEASE_WRITE);
  }

  async leasedVersions(container: string): Promise<Set<number>> {
    const result = await this.execute(`SELECT version FROM ${this.keyspace}.restore_leases WHERE container = ?`, [container], LEASE_READ);
    return new Set(result.rows.map((row) => (row['version'] as cassandra.types.Long).toNumber()));
  }

  async deleteChunk(container: string, location: Pick<ChunkLocation, 'hash' | 'bucket'>): Promise<void> {
    const hash = hashBytes(location.hash);
    // Index first: a chunk without an index entry is invisible to new uploads, which then store it again.
    await this.execute(`DELETE FROM ${this.keyspace}.chunk_index WHERE container = ? AND hash = ?`, [container, hash], WRITE);
    await this.deleteChunkData(container, location);
  }

  async deleteChunkData(container: string, location: Pick<ChunkLocation, 'hash' | 'bucket'>): Promise<void> {
    await this.execute(
      `DELETE FROM ${this.keyspace}.chunks WHERE container = ? AND bucket = ? AND hash = ?`,
      [container, location.bucket, hashBytes(location.hash)],
      WRITE,
    );
  }
}

/**
 * The driver's "no host could be reached" and client-side timeouts become an UnavailableError that says
 * which hosts were tried; Cassandra's own answers (timeouts at a consistency level, unavailable replicas)
 * pass through unchanged, since they already say what happened and callers classify them.
 */
function rethrowUnreachable(error: unknown): never {
  if (error instanceof cassandra.errors.NoHostAvailableError) {
    const tried = Object.entries((error.innerErrors ?? {}) as Record<string, unknown>).map(([host, cause]) => `${host}: ${errorMessage(cause)}`);
    throw new UnavailableError(
      `Cassandra is unreachable (${tried.join('; ') || 'no host tried'}); check that this host's Cassandra node is running and listening`,
      { cause: error },
    );
  }
  if (error instanceof cassandra.errors.OperationTimedOutError) {
    throw new UnavailableError(`Cassandra did not answer in time (${error.message}); the node may be overloaded or hung`, { cause: error });
  }
  throw error;
}

function hostAddress(host: cassandra.Host): string {
  return host.address.split(':')[0]!;
}

function hashBytes(hex: string): Buffer {
  if (!/^[0-9a-f]{64}$/.test(hex)) throw new InvalidArgumentError(`chunk hash must be 64 lowercase hex digits (sha256), got "${hex}"`);
  return Buffer.from(hex, 'hex');
}

function toVersionRecord(row: cassandra.types.Row): VersionRecord {
  const record: VersionRecord = {
    container: row['container'] as string,
    version: (row['version'] as cassandra.types.Long).toNumber(),
    state: row['state'] as VersionState,
    sourceHost: row['source_host'] as string,
    createdAt: row['created_at'] as Date,
    // The driver returns a set as an array.
    uploadBuckets: ((row['upload_buckets'] as number[] | null) ?? []).slice().sort((a, b) => a - b),
  };
  if (row['committed_at']) record.committedAt = row['committed_at'] as Date;
  if (row['manifest']) record.manifest = row['manifest'] as Buffer;
  return record;
}
