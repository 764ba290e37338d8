import type cassandra from 'cassandra-driver';
import { InvalidArgumentError } from '../util/errors.ts';

/**
 * The snapshot keyspace. Replication factor 2 (LXCloud-CR's setting): every chunk and manifest lives on the two
 * replica hosts of its container's home range (see placement.ts). SimpleStrategy for one data center;
 * NetworkTopologyStrategy with a factor per data center for several.
 *
 * Every statement here runs unchanged on Cassandra 2.1 (the local testbed) and 4.1/5.0 (real testbeds).
 */

export type Replication =
  | { class: 'SimpleStrategy'; replicationFactor: number }
  | { class: 'NetworkTopologyStrategy'; dataCenters: Readonly<Record<string, number>> };

export const DEFAULT_KEYSPACE = 'lxcr_snapshots';
export const DEFAULT_REPLICATION: Replication = { class: 'SimpleStrategy', replicationFactor: 2 };

const IDENTIFIER = /^[a-z][a-z0-9_]{0,47}$/;

/** The CQL replication map of a keyspace; throws InvalidArgumentError naming a bad factor or data center. */
export function replicationMap(replication: Replication): string {
  if (replication.class === 'SimpleStrategy') {
    checkFactor('replicationFactor', replication.replicationFactor);
    return `{'class': 'SimpleStrategy', 'replication_factor': ${replication.replicationFactor}}`;
  }
  const entries = Object.entries(replication.dataCenters);
  if (entries.length === 0) throw new InvalidArgumentError('NetworkTopologyStrategy needs at least one data center');
  const parts = entries.map(([dc, factor]) => {
    if (!/^[A-Za-z0-9_.-]{1,64}$/.test(dc)) throw new InvalidArgumentError(`data center name "${dc}" is not valid`);
    checkFactor(`dataCenters.${dc}`, factor);
    return `'${dc}': ${factor}`;
  });
  return `{'class': 'NetworkTopologyStrategy', ${parts.join(', ')}}`;
}

function checkFactor(key: string, factor: number): void {
  if (!Number.isInteger(factor) || factor < 1 || factor > 9) {
    throw new InvalidArgumentError(`${key} must be an integer from 1 to 9, got ${factor}`);
  }
}

export function validateKeyspaceName(keyspace: string): void {
  if (!IDENTIFIER.test(keyspace)) {
    throw new InvalidArgumentError(`keyspace "${keyspace}" must be lowercase letters, digits and _ (max 48), starting with a letter`);
  }
}

/** The DDL that creates the snapshot keyspace and its tables; idempotent (IF NOT EXISTS everywhere). */
export function snapshotSchema(keyspace = DEFAULT_KEYSPACE, replication: Replication = DEFAULT_REPLICATION): string[] {
  validateKeyspaceName(keyspace);
  return [
    `CREATE KEYSPACE IF NOT EXISTS ${keyspace} WITH replication = ${replicationMap(replication)}`,
    // Home partition: one row per version, newest first. A version is visible (restorable) only once its
    // state is 'committed', written after all its chunks. next_version (static: one per container, kept when
    // versions are deleted) is advanced by a lightweight transaction, so no version number is ever reused.
    // upload_buckets: the bucket partitions the version's upload recorded before writing chunks there, so GC
    // finds the chunks of an upload that never committed (see gc.ts).
    `CREATE TABLE IF NOT EXISTS ${keyspace}.manifests (
      container text, version bigint, next_version bigint static, state text, manifest blob, source_host text,
      created_at timestamp, committed_at timestamp, upload_buckets set<int>,
      PRIMARY KEY (container, version)
    ) WITH CLUSTERING ORDER BY (version DESC)`,
    // Home partition: which chunks a container has and where, so an unchanged chunk is never uploaded twice.
    // A chunk is indexed ('stored') once its data is durable. ('pending' rows, written ahead of the data, come
    // only from agents before upload_buckets; they are never reused and GC collects them.)
    `CREATE TABLE IF NOT EXISTS ${keyspace}.chunk_index (
      container text, hash blob, bucket int, raw_size int, stored_size int, codec text, state text, created_at timestamp,
      PRIMARY KEY (container, hash)
    )`,
    // Bucket partitions, co-located with the home partition, each kept to a bounded size.
    `CREATE TABLE IF NOT EXISTS ${keyspace}.chunks (
      container text, bucket int, hash blob, data blob,
      PRIMARY KEY ((container, bucket), hash)
    )`,
    // Home partition: versions being read by a restore right now. GC keeps a leased version and its chunks even
    // when it is no longer among the newest K; the TTL ends the lease of a restore whose host died.
    `CREATE TABLE IF NOT EXISTS ${keyspace}.restore_leases (
      container text, version bigint, holder text, expires_at timestamp,
      PRIMARY KEY (container, version, holder)
    )`,
  ];
}

/** Columns added to tables after their first release, for keyspaces created before (ALTER TABLE ... ADD). */
export function snapshotSchemaAdditions(keyspace = DEFAULT_KEYSPACE): string[] {
  validateKeyspaceName(keyspace);
  return [`ALTER TABLE ${keyspace}.manifests ADD upload_buckets set<int>`];
}

/** What a node answers to adding a column a table already has (2.1-3.x, then 4.x and later). */
const COLUMN_EXISTS = /conflicts with an existing column|already exists/i;

/**
 * Applies ALTER TABLE ... ADD statements (see applySchema); a column the table already has (created with it, or
 * added by another agent or an earlier start) is fine. There is no ADD IF NOT EXISTS before Cassandra 5.0.
 */
export async function addColumns(execute: (statement: string) => Promise<unknown>, checkAgreement: () => Promise<boolean>, statements: readonly string[]): Promise<void> {
  for (const statement of statements) {
    try {
      await applySchema(execute, checkAgreement, [statement]);
    } catch (err) {
      if (!(err instanceof Error) || !COLUMN_EXISTS.test(err.message)) throw err;
    }
  }
}

/** What a node answers to DDL that refers to a keyspace or table it has not heard of yet. */
const SCHEMA_NOT_YET_PROPAGATED = /non existing keyspace|unconfigured (columnfamily|table)|keyspace \S+ does not exist/i;
const SCHEMA_ATTEMPTS = 6;

/**
 * Runs DDL statements in order. The driver waits (up to 10 s) for schema agreement after each one, but on a
 * loaded ring, or right after a node restarted, agreement can time out, and the next statement then reaches a
 * node that has not seen the keyspace yet ("Cannot add column family ... to non existing keyspace"). Such a
 * statement is retried once the nodes agree. Every statement is idempotent (IF NOT EXISTS).
 */
export async function applySchema(execute: (statement: string) => Promise<unknown>, checkAgreement: () => Promise<boolean>, statements: readonly string[]): Promise<void> {
  for (const statement of statements) {
    for (let attempt = 1; ; attempt++) {
      try {
        await execute(statement);
        break;
      } catch (err) {
        if (attempt >= SCHEMA_ATTEMPTS || !(err instanceof Error) || !SCHEMA_NOT_YET_PROPAGATED.test(err.message)) throw err;
        for (let waited = 0; waited < 10 && !(await checkAgreement().catch(() => false)); waited++) await new Promise((r) => setTimeout(r, 500));
      }
    }
  }
}

/**
 * Whether every node reports the same schema version. The driver has this (Metadata.checkSchemaAgreement, since
 * 4.x) but its type declarations leave it out.
 */
export function schemaAgreement(client: cassandra.Client): () => Promise<boolean> {
  const metadata = client.metadata as unknown as { checkSchemaAgreement(): Promise<boolean> };
  return () => metadata.checkSchemaAgreement();
}
