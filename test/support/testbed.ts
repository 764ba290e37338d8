import cassandra from 'cassandra-driver';
import { CQL_PORT, LOCAL_DATACENTER } from '../../testcontainers/cassandra.ts';
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
