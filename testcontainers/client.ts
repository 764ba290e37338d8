import cassandra from 'cassandra-driver';
import { CQL_PORT, LOCAL_DATACENTER } from './cassandra.ts';
import type { Testbed } from './testbed.ts';

/**
 * A driver client for a testbed's ring (not connected). Protocol v3 at most: Cassandra 2.1 speaks no newer, and
 * the driver would log a failed probe for v4 first.
 */
export function clientFor(testbed: Testbed, readTimeoutMs = 20_000): cassandra.Client {
  return new cassandra.Client({
    contactPoints: testbed.contactPoints,
    localDataCenter: LOCAL_DATACENTER,
    protocolOptions: { port: CQL_PORT, maxVersion: 3 },
    socketOptions: { connectTimeout: 5000, readTimeout: readTimeoutMs },
  });
}
