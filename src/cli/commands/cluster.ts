import { readTokenFile } from '../../api/auth.ts';
import { ClusterClient } from '../../api/cluster-client.ts';
import { channelCredentials, transportSecurityFromFlags } from '../../api/tls.ts';
import type { MoveResponse__Output } from '../../api/generated/lxcr/v1/MoveResponse.ts';
import { InvalidArgumentError } from '../../util/errors.ts';
import { TLS_FLAGS, intFlag, parseArgs, parseDuration, stringFlag, tlsFlags, type ParsedArgs } from '../args.ts';
import { ExitCode, type Command } from '../command.ts';
import { withTransferProgress } from '../progress.ts';
import { formatAge, formatBytes, formatTable } from '../table.ts';

/**
 * The operator's commands over the public API (lxcr.v1.ClusterService): any agent answers for the whole cluster.
 * Tables by default, `--json` for scripts (the API's response as JSON).
 */

const DEFAULT_AGENT = '127.0.0.1:7500';

const CLIENT_FLAGS = {
  agent: { value: true, description: `the agent to ask, host:port (default $LXCR_AGENT or ${DEFAULT_AGENT})` },
  ...TLS_FLAGS,
  'token-file': { value: true, description: 'send the bearer token in this file (for agents started with --token-file)' },
  json: { value: false, description: 'print the response as JSON' },
} as const;

async function withClient<T>(args: ParsedArgs, call: (client: ClusterClient) => Promise<T>): Promise<T> {
  const security = transportSecurityFromFlags(tlsFlags(args), 'talking to an agent');
  const tokenFile = stringFlag(args, 'token-file', '') || undefined;
  const token = tokenFile === undefined ? undefined : readTokenFile(tokenFile, '--token-file');
  const client = new ClusterClient(stringFlag(args, 'agent', process.env.LXCR_AGENT || DEFAULT_AGENT), channelCredentials(security), { token });
  try {
    return await call(client);
  } finally {
    client.close();
  }
}

function print(args: ParsedArgs, response: unknown, table: () => string): void {
  process.stdout.write(`${args.flags.get('json') === true ? JSON.stringify(response) : table()}\n`);
}

function onePositional(args: ParsedArgs, what: string): string {
  const [value, ...extra] = args.positionals;
  if (value === undefined || extra.length > 0) throw new InvalidArgumentError(`give exactly one ${what}${extra.length > 0 ? ` (got ${args.positionals.length})` : ''}`);
  return value;
}

function noPositionals(args: ParsedArgs): void {
  if (args.positionals.length > 0) throw new InvalidArgumentError(`unexpected argument "${args.positionals[0]}"`);
}

const CONNECTION_USAGE = '[--agent HOST:PORT] (TLS options | --insecure) [--token-file F] [--json]';

/** The options of the commands whose call waits for a transfer (see progress.ts). */
const PROGRESS_FLAGS = {
  progress: { value: false, description: 'show the transfer\'s progress on stderr (default: when stderr is a terminal)' },
  'no-progress': { value: false, description: 'do not show the transfer\'s progress' },
} as const;
const PROGRESS_USAGE = '[--progress | --no-progress]';

/** Whether to draw the progress bar: asked for, or stderr is a terminal; never with --json or --no-progress. */
function progressWanted(args: ParsedArgs): boolean {
  const on = args.flags.get('progress') === true;
  const off = args.flags.get('no-progress') === true;
  if (on && off) throw new InvalidArgumentError('give --progress or --no-progress, not both');
  if (off || args.flags.get('json') === true) return false;
  return on || process.stderr.isTTY === true;
}

/**
 * One request-response command: its arguments checked (a container name as the one positional, or none), one
 * call to an agent, the response printed as a table or as JSON.
 */
function requestCommand<F extends typeof CLIENT_FLAGS, T>(spec: {
  name: string;
  summary: string;
  /** Usage before the connection options. */
  usage: string;
  flags: F;
  takesContainer: boolean;
  /** The call waits for a transfer of the container: its progress is drawn on stderr (see progressWanted). */
  showsTransfer?: boolean;
  call: (client: ClusterClient, args: ParsedArgs, container: string) => Promise<T>;
  render: (response: T) => string;
}): Command {
  return {
    name: spec.name,
    summary: spec.summary,
    usage: `${spec.usage}${spec.usage ? ' ' : ''}${CONNECTION_USAGE}`,
    flags: spec.flags,
    async run(argv) {
      const args = parseArgs(argv, spec.flags);
      let container = '';
      if (spec.takesContainer) container = onePositional(args, 'container name');
      else noPositionals(args);
      const progress = spec.showsTransfer === true && progressWanted(args);
      const response = await withClient(args, (client) => {
        const call = spec.call(client, args, container);
        return progress ? withTransferProgress((name, onProgress) => client.watchTransfer(name, onProgress), container, process.stderr, call) : call;
      });
      print(args, response, () => spec.render(response));
      return ExitCode.OK;
    },
  };
}

export const statusCommand = requestCommand({
  name: 'status',
  summary: 'the cluster\'s hosts: UN/DN in the answering agent\'s gossip view, containers owned, agents serving or stopped',
  usage: '',
  flags: CLIENT_FLAGS,
  takesContainer: false,
  call: (client) => client.listHosts(),
  render: (response) =>
    formatTable(
      ['HOST', 'STATE', 'CONTAINERS', 'CASSANDRA', 'AGENT', 'AGENT STATE', 'SINCE'],
      response.hosts.map((h) => [
        h.hostId, h.state, String(h.containers), h.cassandraAddress, h.grpcEndpoint, h.agentState,
        formatAge(h.agentState === 'stopped' ? h.stoppedAtMs : h.startedAtMs),
      ]),
    ) + `\n(as seen by ${response.answeredBy})`,
});

export const containersCommand = requestCommand({
  name: 'containers',
  summary: 'the cluster\'s containers: owner, state, last committed snapshot (version, age, size)',
  usage: '',
  flags: CLIENT_FLAGS,
  takesContainer: false,
  call: (client) => client.listContainers(),
  render: (response) =>
    formatTable(
      ['CONTAINER', 'HOST', 'STATE', 'EPOCH', 'VERSION', 'AGE', 'SIZE', 'STORED'],
      response.containers.map((c) => [
        c.name, c.host, c.state, String(c.epoch), c.lastVersion ? String(c.lastVersion) : '-', formatAge(c.lastCommittedAtMs),
        c.lastVersion ? formatBytes(c.lastLogicalBytes) : '-', c.lastVersion ? formatBytes(c.lastStoredBytes) : '-',
      ]),
    ),
});

export const snapshotsCommand = requestCommand({
  name: 'snapshots',
  summary: 'a container\'s snapshot versions, newest first',
  usage: 'CONTAINER',
  flags: CLIENT_FLAGS,
  takesContainer: true,
  call: (client, _args, container) => client.listSnapshots(container),
  render: (response) =>
    formatTable(
      ['VERSION', 'STATE', 'FROM', 'AGE', 'SIZE', 'STORED', 'CHUNKS'],
      response.snapshots.map((s) => {
        const committed = s.state === 'committed';
        return [
          String(s.version), s.state, s.sourceHost, formatAge(s.committedAtMs || s.createdAtMs),
          committed ? formatBytes(s.logicalBytes) : '-', committed ? formatBytes(s.storedBytes) : '-', committed ? String(s.chunks) : '-',
        ];
      }),
    ),
});

export const checkpointCommand = requestCommand({
  name: 'checkpoint',
  summary: 'checkpoint a container now, on the host that owns it; returns once the version is committed',
  usage: `CONTAINER ${PROGRESS_USAGE}`,
  flags: { ...CLIENT_FLAGS, ...PROGRESS_FLAGS },
  takesContainer: true,
  showsTransfer: true,
  call: (client, _args, container) => client.checkpoint(container),
  render: (r) =>
    `${r.container}: version ${r.version} committed by ${r.host} — frozen ${Math.round(r.freezeMs)} ms, ${Math.round(r.totalMs)} ms in all; ` +
    `${formatBytes(r.logicalBytes)} snapshot, ${formatBytes(r.uploadedBytes)} uploaded`,
});

const MOVE_FLAGS = {
  ...CLIENT_FLAGS,
  ...PROGRESS_FLAGS,
  to: { value: true, description: 'the host id to run it on' },
} as const;

function describeMove(verb: string): (r: MoveResponse__Output) => string {
  return (r) =>
    `${r.container}: ${verb} from ${r.fromHost} to ${r.toHost}, version ${r.version}, epoch ${r.epoch} — ` +
    `${r.freezeMs ? `frozen ${Math.round(r.freezeMs)} ms, ` : ''}${Math.round(r.totalMs)} ms in all`;
}

export const migrateCommand = requestCommand({
  name: 'migrate',
  summary: 'move a running container to another host, exactly once (last checkpoint, restore there, old copy destroyed)',
  usage: `CONTAINER --to HOST ${PROGRESS_USAGE}`,
  flags: MOVE_FLAGS,
  takesContainer: true,
  showsTransfer: true,
  call: (client, args, container) => {
    const to = stringFlag(args, 'to', '');
    if (!to) throw new InvalidArgumentError('--to HOST is required: the host id to move the container to');
    return client.migrate(container, to);
  },
  render: describeMove('migrated'),
});

const RESTORE_FLAGS = {
  ...MOVE_FLAGS,
  to: { value: true, description: 'the host id to restore it on (default: its owner if up, else its first live replica host)' },
  version: { value: true, description: 'a committed version (default: the newest)' },
} as const;

export const restoreCommand = requestCommand({
  name: 'restore',
  summary: 'restore a container from a committed version (a running copy is stopped first)',
  usage: `CONTAINER [--version N] [--to HOST] ${PROGRESS_USAGE}`,
  flags: RESTORE_FLAGS,
  takesContainer: true,
  showsTransfer: true,
  call: (client, args, container) => client.restore(container, intFlag(args, 'version', 0, 1, Number.MAX_SAFE_INTEGER), stringFlag(args, 'to', '')),
  render: describeMove('restored'),
});

const EVENTS_FLAGS = {
  ...CLIENT_FLAGS,
  since: { value: true, description: 'how far back: 30m, 24h, 7d (default 1h)' },
  container: { value: true, description: 'only this container\'s events' },
  follow: { value: false, description: 'keep printing new events until Ctrl-C' },
} as const;

export const eventsCommand: Command = {
  name: 'events',
  summary: 'the cluster\'s audit trail as it happens (oldest first; --follow keeps it open)',
  usage: `[--since 1h] [--container NAME] [--follow] ${CONNECTION_USAGE}`,
  flags: EVENTS_FLAGS,
  async run(argv) {
    const args = parseArgs(argv, EVENTS_FLAGS);
    noPositionals(args);
    const sinceMs = Date.now() - parseDuration('since', stringFlag(args, 'since', '1h'));
    const json = args.flags.get('json') === true;
    await withClient(args, async (client) => {
      const stream = client.streamEvents(
        { sinceMs, container: stringFlag(args, 'container', ''), follow: args.flags.get('follow') === true },
        (e) => {
          const line = json
            ? JSON.stringify(e)
            : [new Date(e.atMs).toISOString(), e.kind, e.host, e.container, e.version ? `v${e.version}` : '', e.outcome, e.detail].filter(Boolean).join('  ');
          process.stdout.write(`${line}\n`);
        },
      );
      const stop = () => stream.cancel();
      process.once('SIGINT', stop).once('SIGTERM', stop);
      try {
        await stream.done;
      } finally {
        process.off('SIGINT', stop).off('SIGTERM', stop);
      }
    });
    return ExitCode.OK;
  },
};
