import cassandra from 'cassandra-driver';
import { CQL_PORT, LOCAL_DATACENTER } from '../testcontainers/cassandra.ts';
import type { Testbed } from '../testcontainers/testbed.ts';

/** A driver client for a benchmark's own testbed, connected. */
export async function connectBenchClient(testbed: Testbed, readTimeoutMs: number): Promise<cassandra.Client> {
  const client = new cassandra.Client({
    contactPoints: testbed.contactPoints,
    localDataCenter: LOCAL_DATACENTER,
    protocolOptions: { port: CQL_PORT, maxVersion: 3 },
    socketOptions: { readTimeout: readTimeoutMs },
  });
  await client.connect();
  return client;
}

export const round = (n: number, digits = 2) => Number(n.toFixed(digits));
export const log = (line: string) => process.stderr.write(`${line}\n`);
