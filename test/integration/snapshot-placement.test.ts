import type cassandra from 'cassandra-driver';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bucketRoutingKey, colocatedBuckets, homeRoutingKey, isColocated } from '../../src/storage/placement.ts';
import { snapshotSchema } from '../../src/storage/schema.ts';
import { clientFor } from '../../testcontainers/client.ts';
import { nodesHoldingTable, sharedTestbed } from '../support/testbed.ts';

const KEYSPACE = 'placement_test';
const testbed = sharedTestbed();
let client: cassandra.Client;

const addresses = (hosts: cassandra.Host[]) => hosts.map((h) => h.address.split(':')[0]!);

beforeAll(async () => {
  client = clientFor(testbed);
  await client.connect();
  for (const statement of snapshotSchema(KEYSPACE)) await client.execute(statement);
  await testbed.ring.waitSchemaAgreement();
  await client.metadata.refreshKeyspace(KEYSPACE);
});

afterAll(async () => {
  await client?.shutdown();
});

describe("a container's snapshot placement", () => {
  it('puts every bucket of a container on exactly its home partition replicas, as Cassandra itself reports', async () => {
    for (const container of ['web-1', 'db-primary', 'counter.3']) {
      const home = addresses(client.getReplicas(KEYSPACE, homeRoutingKey(container)));
      expect(home).toHaveLength(2);
      expect([...home].sort()).toEqual([...(await testbed.ring.endpoints(KEYSPACE, 'manifests', container))].sort());

      const buckets = colocatedBuckets(client.metadata, container, 4);
      expect(buckets).toHaveLength(4);
      for (const bucket of buckets) {
        // Driver token map with our routing-key encoding, and Cassandra's own answer for the composite key.
        expect(addresses(client.getReplicas(KEYSPACE, bucketRoutingKey(container, bucket)))).toEqual(home);
        const fromCassandra = await testbed.ring.endpoints(KEYSPACE, 'chunks', `${container}:${bucket}`);
        expect([...fromCassandra].sort()).toEqual([...home].sort());
      }
    }
  });

  it('skips bucket numbers that fall in other ranges', () => {
    const buckets = colocatedBuckets(client.metadata, 'web-1', 8);
    const skipped = Array.from({ length: buckets.at(-1)! + 1 }, (_, b) => b).filter((b) => !buckets.includes(b));
    // With 3 equal ranges about two thirds of the numbers belong elsewhere.
    expect(skipped.length).toBeGreaterThan(0);
    for (const bucket of skipped) expect(isColocated(client.metadata, 'web-1', bucket)).toBe(false);
    expect(colocatedBuckets(client.metadata, 'web-1', 3, buckets[4])).toEqual(buckets.slice(5, 8));
  });

  it("writes a container's chunks and manifests to the disks of its two replica hosts only", async () => {
    const container = 'disk-check';
    const [bucket] = colocatedBuckets(client.metadata, container, 1);
    const two = { prepare: true, consistency: 2 /* TWO */ };
    await client.execute(`INSERT INTO ${KEYSPACE}.chunks (container, bucket, hash, data) VALUES (?, ?, ?, ?)`, [container, bucket, Buffer.alloc(32, 1), Buffer.alloc(4096, 2)], two);
    await client.execute(`INSERT INTO ${KEYSPACE}.manifests (container, version, state) VALUES (?, ?, ?)`, [container, 1, 'committed'], two);
    const home = addresses(client.getReplicas(KEYSPACE, homeRoutingKey(container))).sort();
    expect(await nodesHoldingTable(testbed, KEYSPACE, 'chunks')).toEqual(home);
    expect(await nodesHoldingTable(testbed, KEYSPACE, 'manifests')).toEqual(home);
  });
});
