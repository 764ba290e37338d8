import cassandra from 'cassandra-driver';
import { EventLog, type RecordedEvent } from '../../cluster/events.ts';
import { DEFAULT_META_KEYSPACE } from '../../cluster/registry.ts';
import { validateKeyspaceName } from '../../storage/schema.ts';
import { InvalidArgumentError, errorMessage } from '../../util/errors.ts';
import { createLogger } from '../../util/log.ts';
import { parseArgs, parseDuration, stringFlag } from '../args.ts';
import { CASSANDRA_FLAGS, withCassandra } from '../cassandra.ts';
import { ExitCode, type Command } from '../command.ts';
import { formatBytes, formatTable } from '../table.ts';

/**
 * The auditor's commands: they read Cassandra directly (the audit trail is CQL tables in the registry keyspace),
 * so they work with every agent down. `lxcr cql` runs any statement, since Cassandra 2.1's cqlsh does not run on
 * current Pythons.
 */

const CQL_FLAGS = {
  ...CASSANDRA_FLAGS,
  json: { value: false, description: 'print the rows as JSON' },
} as const;

/** A CQL value as one table cell. */
function cell(value: unknown): string {
  if (value === null || value === undefined) return 'null';
  if (Buffer.isBuffer(value)) return `0x${value.subarray(0, 16).toString('hex')}${value.length > 16 ? `… (${value.length} bytes)` : ''}`;
  if (value instanceof Date) return value.toISOString();
  if (value instanceof cassandra.types.TimeUuid) return `${value.toString()} (${value.getDate().toISOString()})`;
  if (value instanceof cassandra.types.Long || value instanceof cassandra.types.Uuid) return value.toString();
  return typeof value === 'string' ? value : JSON.stringify(value);
}

function jsonValue(value: unknown): unknown {
  if (Buffer.isBuffer(value)) return value.toString('base64');
  if (value instanceof cassandra.types.Long || value instanceof cassandra.types.Uuid) return value.toString();
  return value;
}

export const cqlCommand: Command = {
  name: 'cql',
  summary: 'run one CQL statement against the cluster\'s Cassandra and print the rows',
  usage: '"<statement>" [--cassandra HOSTS] [--port P] [--json]',
  flags: CQL_FLAGS,
  async run(argv) {
    const args = parseArgs(argv, CQL_FLAGS);
    const [statement, ...extra] = args.positionals;
    if (!statement || extra.length > 0) throw new InvalidArgumentError('give the CQL statement as one argument, in quotes');
    await withCassandra(args, async (client) => {
      const result = await client.execute(statement).catch((err: unknown) => {
        // Cassandra's own words say what is wrong with the statement.
        throw new InvalidArgumentError(`Cassandra refused the statement: ${errorMessage(err)}`, { cause: err });
      });
      const columns = (result.columns ?? []).map((c) => c.name);
      if (args.flags.get('json') === true) {
        process.stdout.write(`${JSON.stringify(result.rows.map((row) => Object.fromEntries(columns.map((c) => [c, jsonValue(row[c])]))))}\n`);
      } else if (columns.length === 0) {
        process.stdout.write('done (no rows)\n');
      } else {
        process.stdout.write(`${formatTable(columns, result.rows.map((row) => columns.map((c) => cell(row[c]))))}\n(${result.rows.length} rows)\n`);
      }
    });
    return ExitCode.OK;
  },
};

const AUDIT_FLAGS = {
  ...CQL_FLAGS,
  keyspace: { value: true, description: `the registry keyspace holding the audit trail (default ${DEFAULT_META_KEYSPACE})` },
  since: { value: true, description: 'how far back: 30m, 24h, 7d (default 24h)' },
} as const;

function eventRow(e: RecordedEvent): string[] {
  return [
    e.at.toISOString(), e.kind, e.host, e.container ?? '', e.epoch?.toString() ?? '', e.version?.toString() ?? '',
    e.durationMs === undefined ? '' : `${Math.round(e.durationMs)} ms`, e.bytes === undefined ? '' : formatBytes(e.bytes), e.outcome ?? '', e.detail ?? '',
  ];
}
const EVENT_HEADERS = ['AT', 'KIND', 'HOST', 'CONTAINER', 'EPOCH', 'VERSION', 'DURATION', 'BYTES', 'OUTCOME', 'DETAIL'];

const REPORTS = ['history', 'failures', 'restores', 'gc'] as const;

export const auditCommand: Command = {
  name: 'audit',
  summary: 'the common audit reports: a container\'s history, failures, restores per host, storage freed by GC',
  usage: `history CONTAINER | failures | restores | gc [--since 24h] [--keyspace KS] [--cassandra HOSTS] [--json]`,
  flags: AUDIT_FLAGS,
  async run(argv) {
    const args = parseArgs(argv, AUDIT_FLAGS);
    const [report, container, ...extra] = args.positionals;
    if (!REPORTS.includes(report as (typeof REPORTS)[number])) throw new InvalidArgumentError(`audit needs a report: ${REPORTS.join(', ')}${report ? ` (got "${report}")` : ''}`);
    if (report === 'history' ? !container || extra.length > 0 : container !== undefined) {
      throw new InvalidArgumentError(report === 'history' ? 'audit history needs exactly one container name' : `audit ${report} takes no further argument`);
    }
    const keyspace = stringFlag(args, 'keyspace', DEFAULT_META_KEYSPACE);
    validateKeyspaceName(keyspace);
    const to = new Date();
    const from = new Date(to.getTime() - parseDuration('since', stringFlag(args, 'since', '24h')));
    const json = args.flags.get('json') === true;
    await withCassandra(args, async (client) => {
      const log = new EventLog(client, keyspace, createLogger('audit', 'error'));
      const events = report === 'history' ? await log.ofContainer(container!, from, to) : await log.between(from, to);
      if (report === 'history' || report === 'failures') {
        const rows = report === 'failures' ? events.filter((e) => e.outcome === 'failed' || e.outcome === 'refused') : events;
        process.stdout.write(json ? `${JSON.stringify(rows)}\n` : `${formatTable(EVENT_HEADERS, rows.map(eventRow))}\n(${rows.length} events since ${from.toISOString()})\n`);
        return;
      }
      const kind = report === 'restores' ? 'restore-done' : 'gc-collected';
      const byKey = new Map<string, { count: number; totalMs: number; maxMs: number; bytes: number }>();
      for (const e of events.filter((x) => x.kind === kind)) {
        const key = report === 'restores' ? e.host : (e.container ?? '');
        const entry = byKey.get(key) ?? { count: 0, totalMs: 0, maxMs: 0, bytes: 0 };
        entry.count++;
        entry.totalMs += e.durationMs ?? 0;
        entry.maxMs = Math.max(entry.maxMs, e.durationMs ?? 0);
        entry.bytes += e.bytes ?? 0;
        byKey.set(key, entry);
      }
      const rows = [...byKey].sort(([a], [b]) => a.localeCompare(b));
      if (json) {
        process.stdout.write(`${JSON.stringify(Object.fromEntries(rows))}\n`);
      } else if (report === 'restores') {
        process.stdout.write(`${formatTable(['HOST', 'RESTORES', 'MEAN', 'MAX'], rows.map(([host, r]) => [host, String(r.count), `${Math.round(r.totalMs / r.count)} ms`, `${Math.round(r.maxMs)} ms`]))}\n`);
      } else {
        process.stdout.write(`${formatTable(['CONTAINER', 'COLLECTIONS', 'FREED'], rows.map(([name, r]) => [name, String(r.count), formatBytes(r.bytes)]))}\n`);
      }
    });
    return ExitCode.OK;
  },
};
