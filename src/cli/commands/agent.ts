import { Agent, type AgentConfig } from '../../agent/agent.ts';
import { transportSecurityFromFlags } from '../../api/tls.ts';
import { gossipViewKindFromEnv } from '../../cluster/gossip-factory.ts';
import { InvalidArgumentError } from '../../util/errors.ts';
import { createLogger } from '../../util/log.ts';
import { parseListenAddress } from '../../metrics/http.ts';
import { TLS_FLAGS, intFlag, parseArgs, stringFlag, tlsFlags, type ParsedArgs } from '../args.ts';
import { ExitCode, type Command } from '../command.ts';
import { untilTerminated } from '../signals.ts';

export const AGENT_FLAGS = {
  'host-id': { value: true, description: 'this host\'s id in the cluster (required)' },
  lxcpath: { value: true, description: 'the host\'s LXC container directory (required)' },
  cassandra: { value: true, description: 'the local Cassandra node\'s address (required)' },
  'jmx-port': { value: true, description: 'the local node\'s JMX port, for the gossip view (default 7199)' },
  'contact-points': { value: true, description: 'more Cassandra addresses, comma-separated' },
  listen: { value: true, description: 'gRPC address host:port (default CASSANDRA:7500)' },
  'metrics-listen': { value: true, description: 'serve Prometheus metrics at http://HOST:PORT/metrics (default: no metrics endpoint)' },
  staging: { value: true, description: 'local staging directory (default /var/tmp/lxcr-staging/HOST-ID)' },
  'standby-dir': { value: true, description: 'where standby copies of the snapshots this host would restore are kept (default /var/lib/lxcr/standby/HOST-ID)' },
  'no-standby': { value: false, description: 'keep no standby copies: a failover restore then reads the whole snapshot from Cassandra' },
  every: { value: true, description: 'checkpoint every N seconds' },
  cron: { value: true, description: 'or checkpoint on this node-cron expression' },
  keep: { value: true, description: 'committed versions kept per container (default 2)' },
  'meta-rf': { value: true, description: 'replication factor of the registry keyspace (default 3)' },
  'snapshot-keyspace': { value: true, description: 'snapshot keyspace (default lxcr_snapshots)' },
  'meta-keyspace': { value: true, description: 'registry keyspace (default lxcr_meta)' },
  ...TLS_FLAGS,
  'token-file': { value: true, description: 'require the bearer token in this file of every public API call (clients send it with their --token-file)' },
} as const;

function required(args: ParsedArgs, name: string): string {
  const value = stringFlag(args, name, '');
  if (!value) throw new InvalidArgumentError(`--${name} is required`);
  return value;
}

export function agentConfigFromArgs(args: ParsedArgs): AgentConfig {
  const hostId = required(args, 'host-id');
  const address = required(args, 'cassandra');
  if (args.flags.get('no-standby') === true && args.flags.has('standby-dir')) {
    throw new InvalidArgumentError('--no-standby and --standby-dir contradict each other: give one of them');
  }
  const every = args.flags.has('every') ? intFlag(args, 'every', 0, 1, 86_400) : undefined;
  const cron = stringFlag(args, 'cron', '') || undefined;
  const metricsListen = stringFlag(args, 'metrics-listen', '') || undefined;
  const tokenFile = stringFlag(args, 'token-file', '') || undefined;
  if (metricsListen !== undefined) parseListenAddress(metricsListen, '--metrics-listen');
  return {
    hostId,
    lxcpath: required(args, 'lxcpath'),
    stagingDir: stringFlag(args, 'staging', `/var/tmp/lxcr-staging/${hostId}`),
    standby: args.flags.get('no-standby') === true ? false : { dir: stringFlag(args, 'standby-dir', `/var/lib/lxcr/standby/${hostId}`) },
    cassandra: {
      address,
      contactPoints: stringFlag(args, 'contact-points', '').split(',').filter(Boolean),
      jmxPort: intFlag(args, 'jmx-port', 7199, 1, 65_535),
    },
    grpc: {
      listen: stringFlag(args, 'listen', `${address}:7500`), security: transportSecurityFromFlags(tlsFlags(args), 'the agent'),
      ...(tokenFile !== undefined ? { tokenFile } : {}),
    },
    schedule: cron !== undefined ? { cron } : every !== undefined ? { everyMs: every * 1000 } : {},
    keep: intFlag(args, 'keep', 2, 1, 1000),
    gossip: { kind: gossipViewKindFromEnv() },
    snapshotKeyspace: stringFlag(args, 'snapshot-keyspace', '') || undefined,
    metaKeyspace: stringFlag(args, 'meta-keyspace', '') || undefined,
    metaReplication: { class: 'SimpleStrategy', replicationFactor: intFlag(args, 'meta-rf', 3, 1, 9) },
    ...(metricsListen !== undefined ? { metrics: { listen: metricsListen } } : {}),
  };
}

/**
 * `lxcr agent`: the daemon, one per host. It prints one JSON line `{"ready":…}` on stdout once it serves, and
 * stops gracefully on SIGTERM or SIGINT.
 */
export const agentCommand: Command = {
  name: 'agent',
  summary: 'run the agent daemon of this host (supervision, checkpoints, failover)',
  usage: '--host-id ID --lxcpath DIR --cassandra ADDRESS (--tls-ca F --tls-cert F --tls-key F | --insecure) [options]',
  flags: AGENT_FLAGS,
  async run(argv) {
    const config = agentConfigFromArgs(parseArgs(argv, AGENT_FLAGS));
    const logger = createLogger('lxcr-agent');
    const agent = await Agent.start(config, logger);
    process.stdout.write(`${JSON.stringify({ ready: { hostId: config.hostId, grpc: agent.server.endpoint, metrics: agent.metricsServer?.endpoint } })}\n`);
    await untilTerminated();
    await agent.stop();
    return ExitCode.OK;
  },
};
