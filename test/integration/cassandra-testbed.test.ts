import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type cassandra from 'cassandra-driver';
import { LocalCassandraRing } from '../../testcontainers/cassandra.ts';
import { clientFor } from '../../testcontainers/client.ts';
import { localRing, nodesHoldingTable, sharedTestbed } from '../support/testbed.ts';

const testbed = sharedTestbed();
let client: cassandra.Client;

beforeAll(async () => {
  client = clientFor(testbed);
  await client.connect();
});

afterAll(async () => {
  await client?.shutdown();
});

describe('the Cassandra side of the testbed', () => {
  it('has every node UN as seen from every node', async () => {
    for (const observer of testbed.ring.nodes) {
      const view = await testbed.ring.ringView(observer.index);
      expect([...view.keys()].sort()).toEqual([...testbed.contactPoints].sort());
      for (const member of view.values()) expect(`${member.status}${member.state}`).toBe('UN');
    }
  });

  it('runs one JVM per host, each on its own loopback address', () => {
    const pids = localRing(testbed).livePids();
    expect(pids.map(([index]) => index)).toEqual([1, 2, 3]);
    expect(new Set(pids.map(([, pid]) => pid)).size).toBe(3);
    expect(testbed.contactPoints).toEqual(['127.0.10.1', '127.0.10.2', '127.0.10.3']);
  });

  it('stores a partition of an RF 2 keyspace on exactly 2 nodes, as the driver and nodetool agree', async () => {
    await client.execute(
      "CREATE KEYSPACE IF NOT EXISTS testbed_rf2 WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 2}",
    );
    await client.execute('CREATE TABLE IF NOT EXISTS testbed_rf2.kv (k text PRIMARY KEY, v blob)');
    await testbed.ring.waitSchemaAgreement();
    await client.metadata.refreshKeyspace('testbed_rf2');
    for (const key of ['alpha', 'beta', 'gamma', 'delta', 'epsilon']) {
      await client.execute('INSERT INTO testbed_rf2.kv (k, v) VALUES (?, ?)', [key, Buffer.from(key)], {
        prepare: true,
        consistency: 2 /* TWO: the write is on both replicas when it returns */,
      });
      const fromDriver = client.getReplicas('testbed_rf2', Buffer.from(key, 'utf8')).map((h) => h.address.split(':')[0]);
      const fromNodetool = await testbed.ring.endpoints('testbed_rf2', 'kv', key);
      expect(fromDriver).toHaveLength(2);
      expect([...fromDriver].sort()).toEqual([...fromNodetool].sort());

    }
  });

  it('writes an RF 2 partition to the disks of exactly its 2 replica nodes', async () => {
    await client.execute('CREATE TABLE IF NOT EXISTS testbed_rf2.single (k text PRIMARY KEY, v blob)');
    await testbed.ring.waitSchemaAgreement();
    await client.execute('INSERT INTO testbed_rf2.single (k, v) VALUES (?, ?)', ['only', Buffer.alloc(1024, 7)], {
      prepare: true,
      consistency: 2,
    });
    const replicas = await testbed.ring.endpoints('testbed_rf2', 'single', 'only');
    const holders = await nodesHoldingTable(testbed, 'testbed_rf2', 'single');
    expect(holders).toHaveLength(2);
    expect([...holders].sort()).toEqual([...replicas].sort());
  });

  it('shows a killed node DN on the others and UN again after a restart', async () => {
    const victim = 3;
    const address = testbed.ring.node(victim).address;
    // Acknowledged just before the kill, with one replica each: the rows on the victim live only in its commit log.
    await client.execute("CREATE KEYSPACE IF NOT EXISTS testbed_rf1 WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}");
    await client.execute('CREATE TABLE IF NOT EXISTS testbed_rf1.kv (k text PRIMARY KEY, v int)');
    await testbed.ring.waitSchemaAgreement();
    const keys = Array.from({ length: 50 }, (_, i) => `durable-${i}`);
    for (const [i, k] of keys.entries()) await client.execute('INSERT INTO testbed_rf1.kv (k, v) VALUES (?, ?)', [k, i], { prepare: true, consistency: 1 });
    await testbed.ring.kill(victim);
    if (testbed.ring instanceof LocalCassandraRing) expect(testbed.ring.pid(victim)).toBeUndefined();
    // Each survivor's failure detector convicts on its own clock, so wait for both.
    for (const observer of [1, 2]) await testbed.ring.waitStatus(victim, 'D', 60_000, observer);
    const fromTwo = await testbed.ring.ringView(2);
    expect(fromTwo.get(address)?.status).toBe('D');
    expect(fromTwo.get(testbed.ring.node(1).address)?.status).toBe('U');

    await testbed.ring.restart(victim);
    for (const observer of [1, 2, 3]) {
      const view = await testbed.ring.ringView(observer);
      expect(view.get(address)?.status).toBe('U');
    }
    // The restarted node serves its data again, including every write acknowledged before the kill (batch commit log).
    const row = await client.execute('SELECT v FROM testbed_rf2.kv WHERE k = ?', ['alpha'], { prepare: true, consistency: 2 });
    expect(row.first()?.['v']).toEqual(Buffer.from('alpha'));
    const survived = await Promise.all(keys.map((k) => client.execute('SELECT v FROM testbed_rf1.kv WHERE k = ?', [k], { prepare: true, consistency: 1 })));
    expect(survived.filter((r) => r.rowLength === 1)).toHaveLength(keys.length);
  });

  it('shows a frozen (SIGSTOPped) node DN, and UN again once thawed', async () => {
    const victim = 2;
    await testbed.ring.freeze(victim);
    try {
      await testbed.ring.waitStatus(victim, 'D', 60_000, 1);
    } finally {
      await testbed.ring.thaw(victim);
    }
    await testbed.ring.waitStatus(victim, 'U', 60_000, 1);
  });
});
