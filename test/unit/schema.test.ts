import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../src/util/errors.ts';
import { bucketRoutingKey } from '../../src/storage/placement.ts';
import { applySchema, snapshotSchema } from '../../src/storage/schema.ts';

describe('snapshotSchema', () => {
  it('creates an RF 2 SimpleStrategy keyspace by default, idempotently', () => {
    const ddl = snapshotSchema();
    expect(ddl[0]).toBe("CREATE KEYSPACE IF NOT EXISTS lxcr_snapshots WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 2}");
    for (const statement of ddl) expect(statement).toMatch(/IF NOT EXISTS/);
  });

  it('takes a replication factor per data center for several data centers', () => {
    expect(snapshotSchema('ks', { class: 'NetworkTopologyStrategy', dataCenters: { east: 2, west: 2 } })[0]).toBe(
      "CREATE KEYSPACE IF NOT EXISTS ks WITH replication = {'class': 'NetworkTopologyStrategy', 'east': 2, 'west': 2}",
    );
  });

  it('rejects names and factors that would not be valid CQL, naming the field', () => {
    expect(() => snapshotSchema('Bad-Name')).toThrow(InvalidArgumentError);
    expect(() => snapshotSchema('ks; DROP KEYSPACE x')).toThrow(/keyspace "ks; DROP KEYSPACE x"/);
    expect(() => snapshotSchema('ks', { class: 'SimpleStrategy', replicationFactor: 0 })).toThrow(/replicationFactor must be an integer from 1 to 9/);
    expect(() => snapshotSchema('ks', { class: 'NetworkTopologyStrategy', dataCenters: { "dc'1": 2 } })).toThrow(/data center name/);
    expect(() => snapshotSchema('ks', { class: 'NetworkTopologyStrategy', dataCenters: {} })).toThrow(/at least one data center/);
  });
});

describe('bucketRoutingKey', () => {
  it("serializes (text, int) the way Cassandra hashes a composite partition key", () => {
    expect(bucketRoutingKey('ab', 1).toString('hex')).toBe('0002616200' + '0004000000010' + '0');
    expect(() => bucketRoutingKey('ab', -1)).toThrow(/bucket must be an integer/);
  });
});

describe('applySchema', () => {
  it('retries a statement a node refused for a keyspace it has not heard of yet, once the nodes agree', async () => {
    const ran: string[] = [];
    let refusals = 2;
    let agreementChecks = 0;
    await applySchema(
      (statement) => {
        ran.push(statement);
        if (statement.startsWith('CREATE TABLE') && refusals-- > 0) return Promise.reject(new Error("Cannot add column family 'manifests' to non existing keyspace 'ks'"));
        return Promise.resolve();
      },
      () => Promise.resolve(++agreementChecks % 2 === 0),
      ['CREATE KEYSPACE ks', 'CREATE TABLE ks.manifests'],
    );
    expect(ran).toEqual(['CREATE KEYSPACE ks', 'CREATE TABLE ks.manifests', 'CREATE TABLE ks.manifests', 'CREATE TABLE ks.manifests']);
  });

  it('passes any other error on at once', async () => {
    let calls = 0;
    const failing = applySchema(() => {
      calls++;
      return Promise.reject(new Error('line 1:0 no viable alternative'));
    }, () => Promise.resolve(true), ['CREATE TABLE nonsense']);
    await expect(failing).rejects.toThrow(/no viable alternative/);
    expect(calls).toBe(1);
  });
});
