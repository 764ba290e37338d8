import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import cassandra from 'cassandra-driver';
import { CQL_PORT, LOCAL_DATACENTER, LocalCassandraRing } from '../../testcontainers/cassandra.ts';
import { Testbed } from '../../testcontainers/testbed.ts';

/** The one testbed all integration tests share (started by global-setup.ts). */
export const SHARED_TESTBED = { name: 'test', hosts: 3, subnet: 10 } as const;

export function sharedTestbed(): Testbed {
  return Testbed.attach(SHARED_TESTBED.name);
}

export function clientFor(testbed: Testbed): cassandra.Client {
  return new cassandra.Client({
    contactPoints: testbed.contactPoints,
    localDataCenter: LOCAL_DATACENTER,
    protocolOptions: { port: CQL_PORT, maxVersion: 3 },
    socketOptions: { connectTimeout: 5000, readTimeout: 20_000 },
  });
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
