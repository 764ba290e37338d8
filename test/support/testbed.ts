import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import cassandra from 'cassandra-driver';
import type { ContainerRuntime } from '../../src/runtime/runtime.ts';
import { CassandraSnapshotStore } from '../../src/storage/cassandra-store.ts';
import type { ClusterClient } from '../../src/api/cluster-client.ts';
import { clientFor } from '../../testcontainers/client.ts';
import { runtimeFor } from '../../testcontainers/lxc.ts';
import { until } from '../../testcontainers/until.ts';
import { LocalCassandraRing } from '../../testcontainers/cassandra.ts';
import { Testbed } from '../../testcontainers/testbed.ts';

/**
 * The one testbed all integration tests share (started by global-setup.ts). `LXCR_TEST_TESTBED` and
 * `LXCR_TEST_SUBNET` move it, so that two checkouts can run their suites side by side without sharing a ring.
 */
export const SHARED_TESTBED = {
  name: process.env.LXCR_TEST_TESTBED ?? 'test',
  hosts: 3,
  subnet: Number(process.env.LXCR_TEST_SUBNET ?? 10),
} as const;

export function sharedTestbed(): Testbed {
  return Testbed.attach(SHARED_TESTBED.name);
}

/** The ring's JVMs and data directories, for tests that inspect them (local backend only). */
export function localRing(testbed: Testbed): LocalCassandraRing {
  if (!(testbed.ring instanceof LocalCassandraRing)) {
    throw new Error('this test inspects local JVMs and data directories: run it without LXCR_CASSANDRA=docker');
  }
  return testbed.ring;
}

/**
 * The addresses of the nodes whose data directories hold an SSTable of `keyspace.table`, after flushing every
 * node: where the table's rows physically are.
 */
export async function nodesHoldingTable(testbed: Testbed, keyspace: string, table: string): Promise<string[]> {
  const ring = localRing(testbed);
  const holders: string[] = [];
  for (const node of ring.nodes) {
    await ring.nodetool(node.index, ['flush', keyspace, table]);
    const keyspaceDir = join(node.dir, 'data', keyspace);
    const tableDirs = readdirSync(keyspaceDir).filter((d) => d.startsWith(`${table}-`));
    const sstables = tableDirs.flatMap((d) => readdirSync(join(keyspaceDir, d))).filter((f) => f.endsWith('-Data.db'));
    if (sstables.length > 0) holders.push(node.address);
  }
  return holders.sort();
}

/** A connected client and a snapshot store on its own keyspace of the testbed, schema created and agreed. */
export async function connectStore(testbed: Testbed, keyspace: string): Promise<{ client: cassandra.Client; store: CassandraSnapshotStore }> {
  const client = clientFor(testbed);
  await client.connect();
  const store = new CassandraSnapshotStore({ client, keyspace });
  await store.ensureSchema();
  await testbed.ring.waitSchemaAgreement();
  return { client, store };
}

/** Kills and destroys a test's container if it exists. */
export async function removeContainer(runtime: ContainerRuntime, name: string): Promise<void> {
  if (await runtime.exists(name)) {
    await runtime.stop(name, { kill: true });
    await runtime.destroy(name);
  }
}

/** Kills and destroys the named containers on every host of the testbed, wherever they ended up. */
export async function removeContainersEverywhere(testbed: Testbed, names: readonly string[]): Promise<void> {
  for (const host of testbed.hosts) for (const name of names) await removeContainer(runtimeFor(host), name);
}

/** Waits until the cluster, asked through `api`, lists `container` as owned by `hostId` (its agent adopted it). */
export async function untilAdopted(api: ClusterClient, container: string, hostId: string): Promise<void> {
  await until(`${container} adopted by ${hostId}`, async () => ((await api.listContainers()).containers.some((c) => c.name === container && c.host === hostId) || undefined), 60_000, 500);
}
