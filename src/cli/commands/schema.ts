import type cassandra from 'cassandra-driver';
import { ClusterRegistry, DEFAULT_META_KEYSPACE } from '../../cluster/registry.ts';
import { CassandraSnapshotStore } from '../../storage/cassandra-store.ts';
import { DEFAULT_KEYSPACE, replicationMap, validateKeyspaceName, type Replication } from '../../storage/schema.ts';
import { FailedPreconditionError, InvalidArgumentError } from '../../util/errors.ts';
import { intFlag, parseArgs, stringFlag, type ParsedArgs } from '../args.ts';
import { CASSANDRA_FLAGS, withCassandra } from '../cassandra.ts';
import { ExitCode, type Command } from '../command.ts';

/**
 * `lxcr schema apply`: creates the snapshot and registry keyspaces and their tables with the very code an agent
 * runs at start (CassandraSnapshotStore / ClusterRegistry.ensureSchema), so a deployment creates them once, with
 * the replication factors the operator chose, before any agent starts. Idempotent; its one JSON line says whether
 * anything was created, which is what Ansible's `changed_when` reads.
 */

export const SCHEMA_FLAGS = {
  ...CASSANDRA_FLAGS,
  'snapshot-keyspace': { value: true, description: `snapshot keyspace (default ${DEFAULT_KEYSPACE})` },
  'snapshot-rf': { value: true, description: 'its replication factor, SimpleStrategy (default 2)' },
  'snapshot-dcs': { value: true, description: 'or NetworkTopologyStrategy: a factor per data center, e.g. dc1:2,dc2:2' },
  'meta-keyspace': { value: true, description: `registry keyspace (default ${DEFAULT_META_KEYSPACE})` },
  'meta-rf': { value: true, description: 'its replication factor, SimpleStrategy (default 3)' },
} as const;

export interface SchemaRequest {
  snapshot: { keyspace: string; replication: Replication };
  meta: { keyspace: string; replication: Replication };
}

/** "dc1:2,dc2:2" as a NetworkTopologyStrategy. */
function dataCenterFactors(text: string): Replication {
  const dataCenters: Record<string, number> = {};
  for (const part of text.split(',').filter(Boolean)) {
    const match = /^([^:]+):(\d+)$/.exec(part);
    if (!match) throw new InvalidArgumentError(`--snapshot-dcs wants DC:FACTOR pairs separated by commas (e.g. dc1:2,dc2:2), got "${part}"`);
    dataCenters[match[1]!] = Number(match[2]);
  }
  return { class: 'NetworkTopologyStrategy', dataCenters };
}

export function schemaRequestFromArgs(args: ParsedArgs): SchemaRequest {
  const [action, ...extra] = args.positionals;
  if (action !== 'apply' || extra.length > 0) throw new InvalidArgumentError(`schema needs the action "apply" and nothing else${action ? ` (got "${args.positionals.join(' ')}")` : ''}`);
  if (args.flags.has('snapshot-rf') && args.flags.has('snapshot-dcs')) {
    throw new InvalidArgumentError('--snapshot-rf and --snapshot-dcs contradict each other: give one of them');
  }
  const snapshotReplication: Replication = args.flags.has('snapshot-dcs')
    ? dataCenterFactors(stringFlag(args, 'snapshot-dcs', ''))
    : { class: 'SimpleStrategy', replicationFactor: intFlag(args, 'snapshot-rf', 2, 1, 9) };
  const request: SchemaRequest = {
    snapshot: { keyspace: stringFlag(args, 'snapshot-keyspace', DEFAULT_KEYSPACE), replication: snapshotReplication },
    meta: { keyspace: stringFlag(args, 'meta-keyspace', DEFAULT_META_KEYSPACE), replication: { class: 'SimpleStrategy', replicationFactor: intFlag(args, 'meta-rf', 3, 1, 9) } },
  };
  for (const { keyspace, replication } of [request.snapshot, request.meta]) {
    validateKeyspaceName(keyspace);
    replicationMap(replication); // throws naming a bad factor or data center
  }
  if (request.snapshot.keyspace === request.meta.keyspace) throw new InvalidArgumentError(`the snapshot and registry keyspaces must differ (both "${request.meta.keyspace}")`);
  return request;
}

/** A keyspace's replication as the driver's metadata shows it, in the form replicationMap compares against. */
function existingReplication(client: cassandra.Client, keyspace: string): Replication | undefined {
  const found = (client.metadata.keyspaces as unknown as Record<string, { strategy: string; strategyOptions: Record<string, string> } | undefined>)[keyspace];
  if (!found) return undefined;
  const options = Object.entries(found.strategyOptions ?? {}).filter(([key]) => key !== 'class');
  if (found.strategy.endsWith('SimpleStrategy')) return { class: 'SimpleStrategy', replicationFactor: Number(found.strategyOptions['replication_factor']) };
  return { class: 'NetworkTopologyStrategy', dataCenters: Object.fromEntries(options.map(([dc, factor]) => [dc, Number(factor)])) };
}

/** Every keyspace and table of ours that exists now, as "keyspace" and "keyspace.table". */
async function existingObjects(client: cassandra.Client, request: SchemaRequest): Promise<Set<string>> {
  await client.metadata.refreshKeyspaces();
  const found = new Set<string>();
  for (const { keyspace } of [request.snapshot, request.meta]) {
    if (!existingReplication(client, keyspace)) continue;
    found.add(keyspace);
    const tables = await client.execute('SELECT columnfamily_name FROM system.schema_columnfamilies WHERE keyspace_name = ?', [keyspace], { prepare: true }).then(
      (result) => result.rows.map((row) => row['columnfamily_name'] as string),
      // Cassandra 3.0 and later keep the schema in system_schema instead.
      () => client.execute('SELECT table_name FROM system_schema.tables WHERE keyspace_name = ?', [keyspace], { prepare: true }).then((result) => result.rows.map((row) => row['table_name'] as string)),
    );
    for (const table of tables) found.add(`${keyspace}.${table}`);
  }
  return found;
}

/**
 * Refuses to go on when a keyspace exists with other replication than asked: CREATE ... IF NOT EXISTS would
 * silently keep the old one, and changing it needs a repair the operator must plan.
 */
function checkReplicationUnchanged(client: cassandra.Client, request: SchemaRequest): void {
  for (const { keyspace, replication } of [request.snapshot, request.meta]) {
    const existing = existingReplication(client, keyspace);
    if (existing && replicationMap(existing) !== replicationMap(replication)) {
      throw new FailedPreconditionError(
        `keyspace ${keyspace} exists with replication ${replicationMap(existing)}, not the ${replicationMap(replication)} asked for; ` +
          `ask for what it has, or change it yourself (ALTER KEYSPACE ${keyspace} WITH replication = ${replicationMap(replication)}, then nodetool repair on every node)`,
      );
    }
  }
}

export const schemaCommand: Command = {
  name: 'schema',
  summary: 'create the snapshot and registry keyspaces and tables (idempotent), as the agents would',
  usage: 'apply [--cassandra HOSTS] [--snapshot-rf N | --snapshot-dcs DC:N,…] [--meta-rf N] [--snapshot-keyspace KS] [--meta-keyspace KS]',
  flags: SCHEMA_FLAGS,
  async run(argv) {
    const args = parseArgs(argv, SCHEMA_FLAGS);
    const request = schemaRequestFromArgs(args);
    await withCassandra(args, async (client) => {
      const before = await existingObjects(client, request);
      checkReplicationUnchanged(client, request);
      await new CassandraSnapshotStore({ client, keyspace: request.snapshot.keyspace, replication: request.snapshot.replication }).ensureSchema();
      await new ClusterRegistry({ client, keyspace: request.meta.keyspace, replication: request.meta.replication }).ensureSchema();
      const created = [...(await existingObjects(client, request))].filter((name) => !before.has(name)).sort();
      process.stdout.write(`${JSON.stringify({ changed: created.length > 0, created })}\n`);
    });
    return ExitCode.OK;
  },
};
