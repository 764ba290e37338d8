import { cronExpressionProblem } from '../actors/container-actor.ts';
import { pemFileProblem } from '../api/tls.ts';
import { validateHostId } from '../cluster/registry.ts';
import { validateKeyspaceName } from '../storage/schema.ts';
import { absolutePath, boolean, checked, integer, integerMap, listenAddress, problemOf, readableFile, text, textList, type FieldKind } from './fields.ts';
import { DEFAULT_REFUSALS_PER_MINUTE } from '../cluster/refused-requests.ts';

/**
 * The agent's per-host config file (/etc/lxcr/agent.json), declared once: every key with its kind, default,
 * the `lxcr agent` flag that overrides it and what it means. Validation, the environment overrides
 * (LXCR_<KEY_PATH>), the flags and `lxcr config check` all read this table; the README's Configuration section
 * documents it for operators (a unit test checks it names every key).
 */

/** A valid config, defaults filled in: what the file means. */
export interface AgentFileConfig {
  hostId: string;
  lxcpath: string;
  stagingDir: string;
  standby: { enabled: boolean; dir: string };
  cassandra: { address: string; contactPoints: string[]; port: number; jmxAddress: string; jmxPort: number; localDataCenter?: string };
  grpc: {
    listen: string;
    tls?: { ca: string; cert: string; key: string };
    /** true: plaintext; absent or false: tls is there. */
    insecure?: boolean;
    /** Bearer token file: validated here, enforced by the API's authentication (not in this module). */
    tokenFile?: string;
  };
  schedule: { everySeconds?: number; cron?: string };
  keep: number;
  keyspaces: {
    snapshots: string;
    snapshotReplicationFactor?: number;
    snapshotDataCenters?: Record<string, number>;
    meta: string;
    metaReplicationFactor: number;
  };
  audit: { ttlDays: number; refusalsPerMinute: number };
  /** The Prometheus endpoint: validated here, served by the metrics module (not in this module). */
  metrics?: { listen: string };
  /** Encryption at rest of chunk contents: validated here, applied by the storage layer (not in this module). */
  encryption?: { keyFile: string };
}

/** The values resolved so far, by key path: what derived defaults are computed from. */
export type ResolvedValues = ReadonlyMap<string, unknown>;

export interface ConfigKey {
  /** The key's path in the file, dot-separated: `cassandra.address`. */
  path: string;
  kind: FieldKind<unknown>;
  /** Must be given (in the file, the environment or a flag); inside an optional section, when that section is. */
  required?: boolean;
  /** The value when none is given; a function for a default derived from other keys (undefined: none). */
  default?: unknown;
  derivedDefault?: (resolved: ResolvedValues) => unknown;
  /** The `lxcr agent` flag that sets the key; `value` for a flag without a value (`--insecure` sets true). */
  flag?: { name: string; value?: unknown };
  doc: string;
}

const hostId = checked(text, (id) => problemOf(() => validateHostId(id)), 'a host id: letters, digits, ".", "_" or "-", starting with a letter or digit');
const keyspace = checked(text, (name) => problemOf(() => validateKeyspaceName(name)), 'a keyspace name: lowercase letters, digits and _, starting with a letter');
const cron = checked(text, cronExpressionProblem, 'a node-cron expression');
const pemFile = checked(readableFile, pemFileProblem, 'a readable PEM file');
const port = integer(1, 65_535);
const replicationFactor = integer(1, 9);

/** Every key of the file. Order is the documentation's order. */
export const CONFIG_KEYS: readonly ConfigKey[] = [
  { path: 'hostId', kind: hostId, required: true, flag: { name: 'host-id' }, doc: 'this host\'s id in the cluster' },
  { path: 'lxcpath', kind: absolutePath, required: true, flag: { name: 'lxcpath' }, doc: 'the host\'s LXC container directory' },
  {
    path: 'stagingDir', kind: absolutePath, flag: { name: 'staging' }, doc: 'local staging for dumps and restores',
    derivedDefault: (r) => r.has('hostId') ? `/var/tmp/lxcr-staging/${String(r.get('hostId'))}` : undefined,
  },
  { path: 'standby.enabled', kind: boolean, default: true, flag: { name: 'no-standby', value: false }, doc: 'keep standby copies of the snapshots this host would restore' },
  {
    path: 'standby.dir', kind: absolutePath, flag: { name: 'standby-dir' }, doc: 'where the standby copies are kept',
    derivedDefault: (r) => r.has('hostId') ? `/var/lib/lxcr/standby/${String(r.get('hostId'))}` : undefined,
  },
  { path: 'cassandra.address', kind: text, required: true, flag: { name: 'cassandra' }, doc: 'the local Cassandra node\'s address: first contact point and gossip source' },
  { path: 'cassandra.contactPoints', kind: textList, default: [], flag: { name: 'contact-points' }, doc: 'more Cassandra addresses, for when the local node is not up yet' },
  { path: 'cassandra.port', kind: port, default: 9042, doc: 'the CQL native port' },
  {
    path: 'cassandra.jmxAddress', kind: text, flag: { name: 'jmx-address' },
    doc: 'where the local node\'s JMX listens, for the gossip view (127.0.0.1 for Cassandra\'s loopback-only JMX)',
    derivedDefault: (r) => r.get('cassandra.address'),
  },
  { path: 'cassandra.jmxPort', kind: port, default: 7199, flag: { name: 'jmx-port' }, doc: 'the local node\'s JMX port, for the gossip view' },
  { path: 'cassandra.localDataCenter', kind: text, doc: 'the driver\'s local data center (default datacenter1)' },
  {
    path: 'grpc.listen', kind: listenAddress, flag: { name: 'listen' }, doc: 'the gRPC address, host:port (port 0: any free port)',
    derivedDefault: (r) => r.has('cassandra.address') ? `${String(r.get('cassandra.address'))}:7500` : undefined,
  },
  { path: 'grpc.tls.ca', kind: pemFile, required: true, flag: { name: 'tls-ca' }, doc: 'PEM file of the cluster CA (mutual TLS)' },
  { path: 'grpc.tls.cert', kind: pemFile, required: true, flag: { name: 'tls-cert' }, doc: 'this host\'s PEM certificate, signed by that CA' },
  { path: 'grpc.tls.key', kind: pemFile, required: true, flag: { name: 'tls-key' }, doc: 'the PEM private key of that certificate' },
  { path: 'grpc.insecure', kind: boolean, flag: { name: 'insecure', value: true }, doc: 'plaintext gRPC, instead of tls: a local testbed only (the agent warns)' },
  { path: 'grpc.tokenFile', kind: readableFile, flag: { name: 'token-file' }, doc: 'bearer token clients must present' },
  { path: 'schedule.everySeconds', kind: integer(1, 86_400), flag: { name: 'every' }, doc: 'checkpoint every N seconds' },
  { path: 'schedule.cron', kind: cron, flag: { name: 'cron' }, doc: 'or checkpoint on this node-cron expression' },
  { path: 'keep', kind: integer(1, 1000), default: 2, flag: { name: 'keep' }, doc: 'committed versions kept per container' },
  { path: 'keyspaces.snapshots', kind: keyspace, default: 'lxcr_snapshots', flag: { name: 'snapshot-keyspace' }, doc: 'the snapshot keyspace' },
  { path: 'keyspaces.snapshotReplicationFactor', kind: replicationFactor, default: 2, doc: 'its replication factor (SimpleStrategy)' },
  { path: 'keyspaces.snapshotDataCenters', kind: integerMap(1, 9), doc: 'or NetworkTopologyStrategy: a factor per data center' },
  { path: 'keyspaces.meta', kind: keyspace, default: 'lxcr_meta', flag: { name: 'meta-keyspace' }, doc: 'the registry keyspace (ownership, hosts, audit trail)' },
  { path: 'keyspaces.metaReplicationFactor', kind: replicationFactor, default: 3, flag: { name: 'meta-rf' }, doc: 'its replication factor' },
  { path: 'audit.ttlDays', kind: integer(0, 7300), default: 90, doc: 'days the audit trail\'s rows are kept (0: forever; Cassandra\'s TTL limit is 20 years)' },
  { path: 'audit.refusalsPerMinute', kind: integer(1, 100000), default: DEFAULT_REFUSALS_PER_MINUTE, doc: 'refused or failed API requests audited one by one per minute; the rest of a minute\'s are counted in one requests-unrecorded row' },
  { path: 'metrics.listen', kind: listenAddress, required: true, flag: { name: 'metrics-listen' }, doc: 'the Prometheus endpoint, host:port (absent: no endpoint)' },
  { path: 'encryption.keyFile', kind: readableFile, required: true, doc: 'the key file for encryption at rest of chunk contents' },
];

/** Sections that may be absent as a whole; their required keys are required only when they are given. */
export const OPTIONAL_SECTIONS: readonly string[] = ['grpc.tls', 'metrics', 'encryption'];

/**
 * Keys (or sections) that are alternatives: a source may choose only one of a group, and a source that chooses
 * one overrides whatever a lower source chose (a `--cron` flag replaces the file's everySeconds). A boolean set
 * to false chooses nothing. `oneRequired`: what to say when neither is chosen, if one must be.
 */
export interface Alternatives {
  keys: readonly [string, string];
  oneRequired?: string;
}

export const ALTERNATIVES: readonly Alternatives[] = [
  { keys: ['schedule.everySeconds', 'schedule.cron'] },
  {
    keys: ['grpc.tls', 'grpc.insecure'],
    oneRequired: 'needs tls { ca, cert, key } (PEM files: the cluster CA, and a certificate and key it signed), or insecure: true for plaintext on a local testbed',
  },
  { keys: ['keyspaces.snapshotReplicationFactor', 'keyspaces.snapshotDataCenters'] },
];

/** The environment variable overriding a key: LXCR_ and the path in SCREAMING_SNAKE (cassandra.jmxPort → LXCR_CASSANDRA_JMX_PORT). */
export function envName(path: string): string {
  return `LXCR_${path.split('.').map((segment) => segment.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toUpperCase()).join('_')}`;
}

/** Where the agent's config lives on a host (what deploy/'s role writes, and `lxcr agent` reads by default). */
export const DEFAULT_CONFIG_FILE = '/etc/lxcr/agent.json';
