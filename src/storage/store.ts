/**
 * The snapshot store the core depends on: versions of a container's snapshots, made of content-addressed
 * chunks. The Cassandra implementation is in cassandra-store.ts; the core never writes CQL itself.
 */

import type { ChunkCipher } from './encryption.ts';

export type VersionState = 'uploading' | 'committed';

export interface VersionRecord {
  container: string;
  version: number;
  state: VersionState;
  sourceHost: string;
  createdAt: Date;
  committedAt?: Date;
  /** The encoded manifest; present once committed. */
  manifest?: Buffer;
  /**
   * The bucket partitions its upload recorded (store.reserveBuckets) before writing chunks to them: where GC looks
   * for the chunks of an upload that never committed.
   */
  uploadBuckets: number[];
}

export interface ChunkLocation {
  /** Hex sha256 of the chunk's raw (uncompressed) bytes. */
  hash: string;
  bucket: number;
  rawSize: number;
  storedSize: number;
  codec: string;
  /** When the chunk was indexed; absent for a location not read from the store. */
  createdAt?: Date;
  /**
   * 'stored': durable on both replicas. 'pending' only in index rows that agents before upload-bucket reservations
   * wrote ahead of the chunk's data: such a chunk may never have arrived, so it is never reused (GC collects it).
   */
  state?: ChunkState;
}

export type ChunkState = 'pending' | 'stored';

/** A chunk found in a bucket partition, indexed or not. */
export interface BucketChunk {
  hash: string;
  /** When its bytes were last written (the cell's write time). */
  writtenAt: Date;
}

export interface VersionReadOptions {
  /**
   * Read from one replica (the first that answers) instead of both. Enough to find committed versions, which
   * are written to both: what restores use, since right after a host failure a Cassandra node that has not
   * convicted the dead replica yet would make a two-replica read wait for its full timeout (5 s). Not for GC,
   * which must also see versions only one replica holds.
   */
  oneReplica?: boolean;
}

export interface SnapshotStore {
  /**
   * Encrypts the chunks uploads write to this store and opens the encrypted chunks restores read (encryption at
   * rest, see encryption.ts); undefined: new chunks are written in clear.
   */
  readonly cipher?: ChunkCipher;
  /** Creates the keyspace and tables if missing. */
  ensureSchema(): Promise<void>;
  /** The container's replica hosts (their Cassandra addresses), in token-map order: the first live one restores. */
  replicas(container: string): string[];
  /**
   * Reserves the next version number of a container and records it as uploading. Version numbers are never
   * reused, also across hosts and after garbage collection.
   */
  beginVersion(container: string, sourceHost: string): Promise<number>;
  /** Makes a version visible: called only after every chunk it references is durable. */
  commitVersion(container: string, version: number, manifest: Buffer): Promise<void>;
  /** All versions of a container, newest first, committed or not. */
  versions(container: string, options?: VersionReadOptions): Promise<VersionRecord[]>;
  /** The newest committed version, or undefined when the container has none. */
  latestCommitted(container: string, options?: VersionReadOptions): Promise<VersionRecord | undefined>;
  deleteVersion(container: string, version: number): Promise<void>;

  /** The container's indexed chunks by hash; only stored ones may be reused (see ChunkLocation.state). */
  chunkIndex(container: string): Promise<Map<string, ChunkLocation>>;
  /** Buckets co-located with the container's home partition (see placement.ts), in increasing order. */
  buckets(container: string, count: number, after?: number): number[];
  /**
   * Records in an uploading version's row that its upload may write chunks to `buckets`. Called before the first
   * chunk goes to any of them, so GC can find (and collect) what a crashed upload wrote.
   */
  reserveBuckets(container: string, version: number, buckets: readonly number[]): Promise<void>;
  /** Stores a chunk's (possibly compressed) bytes on both replicas; reserve its bucket first. */
  putChunk(container: string, location: ChunkLocation, data: Buffer): Promise<void>;
  /** Adds chunks to the container's chunk index, once their data is durable (so later uploads reuse them). */
  indexChunks(container: string, locations: readonly ChunkLocation[]): Promise<void>;
  /** Every chunk in one of the container's bucket partitions, indexed or not (hashes and write times only). */
  bucketChunks(container: string, bucket: number): Promise<BucketChunk[]>;
  /**
   * Reads a chunk's stored bytes. With `fromHost`, only that replica is asked (to re-read a copy that failed
   * verification from the other replica).
   */
  getChunk(container: string, location: Pick<ChunkLocation, 'hash' | 'bucket'>, fromHost?: string): Promise<Buffer | undefined>;
  /** Deletes a chunk: its index entry, then its bytes. */
  deleteChunk(container: string, location: Pick<ChunkLocation, 'hash' | 'bucket'>): Promise<void>;
  /**
   * Deletes only a chunk's bytes in one bucket: a copy the index does not list there (an abandoned upload's), whose
   * hash may well be indexed in another bucket.
   */
  deleteChunkData(container: string, location: Pick<ChunkLocation, 'hash' | 'bucket'>): Promise<void>;

  /**
   * Marks a version as being read by `holder` (a restore) for at most `ttlMs`: GC neither deletes it nor any
   * chunk it references meanwhile. Taken before the version's manifest is read, released when the read ends.
   */
  leaseVersion(container: string, version: number, holder: string, ttlMs: number): Promise<void>;
  releaseLease(container: string, version: number, holder: string): Promise<void>;
  /** Versions of the container with a live lease. */
  leasedVersions(container: string): Promise<Set<number>>;
}
