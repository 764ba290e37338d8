import { Agent, type AgentConfig } from '../../agent/agent.ts';
import { gossipViewKindFromEnv } from '../../cluster/gossip-factory.ts';
import { toAgentConfig } from '../../config/agent-config.ts';
import { ConfigError, loadAgentFileConfig } from '../../config/load.ts';
import { DEFAULT_CONFIG_FILE } from '../../config/schema.ts';
import { InvalidArgumentError } from '../../util/errors.ts';
import { createLogger } from '../../util/log.ts';
import { TLS_FLAGS, parseArgs, stringFlag, type ParsedArgs } from '../args.ts';
import { ExitCode, type Command } from '../command.ts';
import { untilTerminated } from '../signals.ts';

/** Every flag overrides its key of the config file (see src/config/schema.ts for which). */
export const AGENT_FLAGS = {
  config: { value: true, description: `the JSON config file (without any option: ${DEFAULT_CONFIG_FILE}); the options below override it` },
  'host-id': { value: true, description: 'this host\'s id in the cluster (required)' },
  lxcpath: { value: true, description: 'the host\'s LXC container directory (required)' },
  cassandra: { value: true, description: 'the local Cassandra node\'s address (required)' },
  'jmx-address': { value: true, description: 'the address the local node\'s JMX listens on (default: CASSANDRA; 127.0.0.1 for loopback-only JMX)' },
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

/**
 * The agent's configuration: defaults < the config file (--config; the default file when no option is given at
 * all) < the LXCR_* environment < the flags. Throws ConfigError listing every problem.
 */
export function agentConfigFromArgs(args: ParsedArgs, env: NodeJS.ProcessEnv = process.env): AgentConfig {
  if (args.flags.get('no-standby') === true && args.flags.has('standby-dir')) {
    throw new InvalidArgumentError('--no-standby and --standby-dir contradict each other: give one of them');
  }
  if (args.positionals.length > 0) throw new InvalidArgumentError(`lxcr agent takes no arguments, got "${args.positionals.join(' ')}"`);
  const file = args.flags.size === 0 ? DEFAULT_CONFIG_FILE : stringFlag(args, 'config', '') || undefined;
  return toAgentConfig(loadAgentFileConfig({ file, env, flags: args.flags }), gossipViewKindFromEnv());
}

/**
 * `lxcr agent`: the daemon, one per host. It prints one JSON line `{"ready":…}` on stdout once it serves, and
 * stops gracefully on SIGTERM or SIGINT. An invalid configuration is reported whole, and nothing starts.
 */
export const agentCommand: Command = {
  name: 'agent',
  summary: 'run the agent daemon of this host (supervision, checkpoints, failover)',
  usage: '[--config FILE] [--host-id ID --lxcpath DIR --cassandra ADDRESS (--tls-ca F --tls-cert F --tls-key F | --insecure)] [options]',
  flags: AGENT_FLAGS,
  async run(argv) {
    let config: AgentConfig;
    try {
      config = agentConfigFromArgs(parseArgs(argv, AGENT_FLAGS));
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      process.stderr.write(`lxcr agent: not started: ${err.message}\n`);
      return ExitCode.USAGE;
    }
    const logger = createLogger('lxcr-agent');
    const agent = await Agent.start(config, logger);
    process.stdout.write(`${JSON.stringify({ ready: { hostId: config.hostId, grpc: agent.server.endpoint, metrics: agent.metricsServer?.endpoint } })}\n`);
    await untilTerminated();
    await agent.stop();
    return ExitCode.OK;
  },
};
