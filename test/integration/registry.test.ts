import cassandra from 'cassandra-driver';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EventLog } from '../../src/cluster/events.ts';
import { ClusterRegistry } from '../../src/cluster/registry.ts';
import { createLogger } from '../../src/util/log.ts';
import { CQL_PORT, LOCAL_DATACENTER } from '../../testcontainers/cassandra.ts';
import { localRing, sharedTestbed } from '../support/testbed.ts';

const testbed = sharedTestbed();
let client: cassandra.Client;
let registry: ClusterRegistry;

beforeAll(async () => {
  client = new cassandra.Client({
    contactPoints: testbed.contactPoints,
    localDataCenter: LOCAL_DATACENTER,
    protocolOptions: { port: CQL_PORT, maxVersion: 3 },
    // Short, so a request sent to a hung node is retried elsewhere quickly (the agent's registry client does the same).
    socketOptions: { connectTimeout: 5000, readTimeout: 4000 },
  });
  await client.connect();
  registry = new ClusterRegistry({ client, keyspace: 'registry_test' });
  await registry.ensureSchema();
  await testbed.ring.waitSchemaAgreement();
});

afterAll(async () => {
  await client?.shutdown();
});

describe('the cluster registry (keyspace RF 3, QUORUM, LWT epochs)', () => {
  it('registers hosts and lists them', async () => {
    const startedAt = new Date(Math.floor(Date.now() / 1000) * 1000);
    await registry.registerHost({ hostId: 'host1', cassandraAddress: '127.0.10.1', grpcEndpoint: '127.0.10.1:7500', startedAt });
    await registry.registerHost({ hostId: 'host2', cassandraAddress: '127.0.10.2', grpcEndpoint: '127.0.10.2:7500', startedAt });
    const hosts = await registry.hosts();
    expect(hosts.find((h) => h.hostId === 'host2')).toEqual({ hostId: 'host2', cassandraAddress: '127.0.10.2', grpcEndpoint: '127.0.10.2:7500', startedAt, agentState: 'serving' });
    await expect(registry.registerHost({ hostId: '../etc', cassandraAddress: 'x', grpcEndpoint: 'x', startedAt })).rejects.toThrow(/host id/);
  });

  it('gives a container to the first host that adopts it, and tells a later adopter who owns it', async () => {
    const first = await registry.adopt('reg-a', 'host1');
    expect(first).toMatchObject({ won: true, ownership: { owner: 'host1', epoch: 1, state: 'running' } });
    const again = await registry.adopt('reg-a', 'host2');
    expect(again).toMatchObject({ won: false, current: { owner: 'host1', epoch: 1 } });
  });

  it('lets exactly one of several agents claim a failed owner\'s container, with the next epoch', async () => {
    await registry.adopt('reg-race', 'host1');
    const claims = await Promise.all(['host2', 'host3', 'host4', 'host5'].map((host) => registry.claim('reg-race', host, 1)));
    const winners = claims.filter((c) => c.won);
    expect(winners).toHaveLength(1);
    const owner = await registry.ownership('reg-race');
    expect(owner).toMatchObject({ epoch: 2, state: 'restoring' });
    expect(winners[0]!.won && winners[0]!.ownership.owner).toBe(owner!.owner);
    for (const lost of claims.filter((c) => !c.won)) expect(lost.won === false && lost.current?.owner).toBe(owner!.owner);

    // The old owner is fenced: its epoch no longer matches, so its writes are refused.
    expect(await registry.setState('reg-race', 'host1', 1, 'running')).toBe(false);
    expect(await registry.setState('reg-race', owner!.owner, 2, 'running')).toBe(true);
    // A stale claim from the old epoch loses too.
    expect((await registry.claim('reg-race', 'host1', 1)).won).toBe(false);
  });

  it('stays writable with lightweight transactions while one of the three hosts hangs', async () => {
    const ring = localRing(testbed);
    await registry.adopt('reg-down', 'host3');
    await ring.freeze(3);
    try {
      const claim = await registry.claim('reg-down', 'host1', 1);
      expect(claim).toMatchObject({ won: true, ownership: { owner: 'host1', epoch: 2 } });
      expect(await registry.setState('reg-down', 'host1', 2, 'running')).toBe(true);
      expect(await registry.ownership('reg-down')).toMatchObject({ owner: 'host1', epoch: 2, state: 'running' });
    } finally {
      await ring.thaw(3);
    }
    await ring.waitStatus(3, 'U', 60_000);
  });

  it('marks a host\'s agent stopped only for the run that registered at that start time', async () => {
    const first = new Date(Math.floor(Date.now() / 1000) * 1000 - 60_000);
    const second = new Date(first.getTime() + 30_000);
    const record = { hostId: 'host7', cassandraAddress: '127.0.10.7', grpcEndpoint: '127.0.10.7:7500' };
    await registry.registerHost({ ...record, startedAt: first });
    await registry.registerHost({ ...record, startedAt: second });
    const host7 = async () => (await registry.hosts()).find((h) => h.hostId === 'host7');
    expect(await registry.deregisterHost('host7', first)).toBe(false); // a late stop of the older run
    expect(await host7()).toMatchObject({ agentState: 'serving', startedAt: second });
    const stoppedAt = new Date(second.getTime() + 1000);
    expect(await registry.deregisterHost('host7', second, stoppedAt)).toBe(true);
    expect(await host7()).toEqual({ ...record, startedAt: second, agentState: 'stopped', stoppedAt });
    await registry.registerHost({ ...record, startedAt: new Date(stoppedAt.getTime() + 1000) });
    expect((await host7())?.agentState).toBe('serving');
    expect((await host7())?.stoppedAt).toBeUndefined();
  });

  it('records every event once, also when many are recorded at the same time', async () => {
    const events = new EventLog(client, 'registry_test', createLogger('test-events', 'error'));
    const from = new Date(Date.now() - 1000);
    await Promise.all(Array.from({ length: 20 }, (_, i) => events.record({ kind: 'restore-done', host: 'host1', container: `ev-${i}`, outcome: 'ok' })));
    expect(events.backlog).toBe(0);
    const written = (await events.between(from, new Date())).filter((e) => e.container?.startsWith('ev-'));
    expect(written.map((e) => e.container).sort()).toEqual(Array.from({ length: 20 }, (_, i) => `ev-${i}`).sort());
  });
});
