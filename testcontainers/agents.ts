import { spawn } from 'node:child_process';
import { createWriteStream, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { TlsFiles } from '../src/api/tls.ts';
import { run } from '../src/util/exec.ts';
import { TestbedError } from '../src/util/errors.ts';
import { forgetOnExit, isOurs, killAndWait, killOnExit, signalIfOurs } from './processes.ts';
import { runtimeFor } from './lxc.ts';
import type { Testbed } from './testbed.ts';

/**
 * Agents on the testbed: one `lxcr agent` process per simulated host, started from this checkout. Each agent's
 * PID is written next to its host's lxcpath (`hosts/hostN/agent.pid`), and its command line carries that
 * lxcpath, so a teardown or a later run's leftover cleanup stops it by PID after checking /proc — never by name.
 */

const LXCR = fileURLToPath(new URL('../bin/lxcr.js', import.meta.url));

export interface AgentOptions {
  snapshotKeyspace: string;
  metaKeyspace: string;
  /** Checkpoint period, seconds. */
  everySeconds?: number;
  /** How long to wait for the agent's ready line. Default 60 s. */
  readyTimeoutMs?: number;
  /** Extra environment, e.g. LXCR_LOG_LEVEL. */
  env?: Record<string, string>;
  /** Keep standby copies (in the host's directory, `standby/`). Default true, as the agent does. */
  standby?: boolean;
  /** Serve and call with mutual TLS using these files; default plaintext (--insecure). */
  tls?: TlsFiles;
  /** Serve Prometheus metrics on the host's address, on a free port (--metrics-listen HOST:0). */
  metrics?: boolean;
  /** Require the bearer token in this file of public API calls (--token-file). */
  tokenFile?: string;
  /**
   * Configure the agent with a config file (`hosts/hostN/agent.json`, `--config`) instead of flags, as a deployed
   * agent is. Only --lxcpath stays on the command line: it marks the process as this host's agent.
   */
  configFile?: boolean;
}

export interface TestbedAgent {
  hostIndex: number;
  hostId: string;
  pid: number;
  grpcEndpoint: string;
  /** host:port of the metrics endpoint, when asked for. */
  metricsEndpoint?: string;
  logFile: string;
  /** Resolves when the process exits: its exit code, or the signal that ended it. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

function hostDir(testbed: Testbed, index: number): string {
  return join(testbed.runDir, 'hosts', testbed.host(index).hostId);
}

/** Where the agent of host `index` keeps its standby copies. */
export function standbyDir(testbed: Testbed, index: number): string {
  return join(hostDir(testbed, index), 'standby');
}

/** Where the agent of host `index` stages its dumps and downloads. */
export function agentStagingDir(testbed: Testbed, index: number): string {
  return join(hostDir(testbed, index), 'staging');
}

/** Where a host's agent logs (appended to by every start of it); it goes with the testbed's directory. */
export function agentLogFile(testbed: Testbed, index: number): string {
  return join(hostDir(testbed, index), 'agent.log');
}

export function agentPidFile(testbed: Testbed, index: number): string {
  return join(hostDir(testbed, index), 'agent.pid');
}

/** The marker that must be in an agent's command line before it is signalled: its host's lxcpath. */
function agentMarker(testbed: Testbed, index: number): string {
  return testbed.host(index).lxcpath;
}

export async function startAgent(testbed: Testbed, index: number, options: AgentOptions): Promise<TestbedAgent> {
  const host = testbed.host(index);
  const node = testbed.ring.node(index);
  const dir = hostDir(testbed, index);
  mkdirSync(dir, { recursive: true });
  const logFile = agentLogFile(testbed, index);
  const args = options.configFile ? [LXCR, 'agent', '--config', writeAgentConfig(testbed, index, options), '--lxcpath', host.lxcpath] : [
    LXCR, 'agent', '--host-id', host.hostId, '--lxcpath', host.lxcpath, '--cassandra', host.address,
    '--jmx-port', String(node.jmxPort), '--contact-points', testbed.contactPoints.join(','), '--listen', `${host.address}:0`,
    '--staging', agentStagingDir(testbed, index), '--snapshot-keyspace', options.snapshotKeyspace, '--meta-keyspace', options.metaKeyspace,
    '--meta-rf', String(Math.min(3, testbed.hosts.length)),
    ...(options.tls ? ['--tls-ca', options.tls.ca, '--tls-cert', options.tls.cert, '--tls-key', options.tls.key] : ['--insecure']),
    ...(options.standby === false ? ['--no-standby'] : ['--standby-dir', standbyDir(testbed, index)]),
    ...(options.everySeconds !== undefined ? ['--every', String(options.everySeconds)] : []),
    ...(options.metrics ? ['--metrics-listen', `${host.address}:0`] : []),
    ...(options.tokenFile !== undefined ? ['--token-file', options.tokenFile] : []),
  ];
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...options.env } });
  const pid = child.pid;
  if (pid === undefined) throw new TestbedError(`could not start the agent of ${host.hostId}`);
  writeFileSync(agentPidFile(testbed, index), String(pid));
  killOnExit(pid, agentMarker(testbed, index));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const log = createWriteStream(logFile, { flags: 'a' });
  child.stderr.pipe(log);
  const ready = await new Promise<{ grpc: string; metrics?: string }>((resolve, reject) => {
    let buffered = '';
    const timer = setTimeout(() => reject(new TestbedError(`the agent of ${host.hostId} was not ready within ${options.readyTimeoutMs ?? 60_000} ms; see ${logFile}`)), options.readyTimeoutMs ?? 60_000);
    child.stdout.on('data', (data: Buffer) => {
      buffered += data.toString();
      const line = buffered.split('\n').find((l) => l.startsWith('{"ready"'));
      if (line) {
        clearTimeout(timer);
        resolve((JSON.parse(line) as { ready: { grpc: string; metrics?: string } }).ready);
      }
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new TestbedError(`the agent of ${host.hostId} exited (${signal ?? code}) before it was ready; see ${logFile}:\n${tail(logFile)}`));
    });
  }).catch(async (err: unknown) => {
    await killAndWait(pid, agentMarker(testbed, index));
    throw err;
  });
  child.stdout.resume();
  return { hostIndex: index, hostId: host.hostId, pid, grpcEndpoint: ready.grpc, metricsEndpoint: ready.metrics, logFile, exited };
}

/** The config file equivalent to startAgent's flags; returns its path. */
function writeAgentConfig(testbed: Testbed, index: number, options: AgentOptions): string {
  const host = testbed.host(index);
  const config = {
    hostId: host.hostId,
    lxcpath: host.lxcpath,
    stagingDir: agentStagingDir(testbed, index),
    standby: options.standby === false ? { enabled: false } : { enabled: true, dir: standbyDir(testbed, index) },
    cassandra: { address: host.address, contactPoints: testbed.contactPoints, jmxPort: testbed.ring.node(index).jmxPort },
    grpc: {
      listen: `${host.address}:0`, ...(options.tls ? { tls: options.tls } : { insecure: true }),
      ...(options.tokenFile !== undefined ? { tokenFile: options.tokenFile } : {}),
    },
    ...(options.metrics ? { metrics: { listen: `${host.address}:0` } } : {}),
    schedule: options.everySeconds !== undefined ? { everySeconds: options.everySeconds } : {},
    keyspaces: { snapshots: options.snapshotKeyspace, meta: options.metaKeyspace, metaReplicationFactor: Math.min(3, testbed.hosts.length) },
  };
  const file = join(hostDir(testbed, index), 'agent.json');
  writeFileSync(file, `${JSON.stringify(config, null, 2)}\n`);
  return file;
}

function tail(file: string, lines = 20): string {
  return existsSync(file) ? readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n') : '(no log)';
}

/**
 * What each agent of the testbed logged at warn and above, its last `max` such lines: after a failure, the only
 * record of what the agents decided (their logs go with the testbed's directory at teardown).
 */
export function agentWarnings(testbed: Testbed, max = 40): string {
  const sections: string[] = [];
  for (let i = 1; i <= testbed.hosts.length; i++) {
    const file = agentLogFile(testbed, i);
    if (!existsSync(file)) continue;
    const lines = readFileSync(file, 'utf8').split('\n').filter((l) => / (warn|error) /.test(l));
    sections.push(`--- ${testbed.host(i).hostId} agent (warn+) ---\n${lines.slice(-max).join('\n')}\n`);
  }
  return sections.join('');
}

/** The PID recorded for a host's agent, if that process still runs as this testbed's agent. */
export function runningAgentPid(testbed: Testbed, index: number): number | undefined {
  const file = agentPidFile(testbed, index);
  if (!existsSync(file)) return undefined;
  const pid = Number(readFileSync(file, 'utf8'));
  return Number.isInteger(pid) && isOurs(pid, agentMarker(testbed, index)) ? pid : undefined;
}

/** Starts an agent on every host of the testbed, in host order; `options` may differ per host index. */
export async function startAgents(testbed: Testbed, options: AgentOptions | ((index: number) => AgentOptions)): Promise<TestbedAgent[]> {
  const agents: TestbedAgent[] = [];
  for (let i = 1; i <= testbed.hosts.length; i++) agents.push(await startAgent(testbed, i, typeof options === 'function' ? options(i) : options));
  return agents;
}

/** Stops the agent of every host of the testbed (see stopAgent). */
export async function stopAgents(testbed: Testbed): Promise<void> {
  for (let i = 1; i <= testbed.hosts.length; i++) await stopAgent(testbed, i);
}

/** Stops a host's agent gracefully (SIGTERM), then by SIGKILL if it has not exited in `graceMs`. */
export async function stopAgent(testbed: Testbed, index: number, graceMs = 20_000): Promise<void> {
  const pid = runningAgentPid(testbed, index);
  if (pid === undefined) return;
  signalIfOurs(pid, agentMarker(testbed, index), 'SIGTERM');
  const deadline = Date.now() + graceMs;
  while (isOurs(pid, agentMarker(testbed, index)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  await killAndWait(pid, agentMarker(testbed, index));
  forgetOnExit(pid);
}

/** A host crash: its agent, its Cassandra node and its containers are killed at once (SIGKILL). */
export async function killHost(testbed: Testbed, index: number): Promise<void> {
  const pid = runningAgentPid(testbed, index);
  await Promise.all([
    pid === undefined ? Promise.resolve(true) : killAndWait(pid, agentMarker(testbed, index)),
    testbed.ring.kill(index),
    killContainers(testbed, index),
  ]);
}

async function killContainers(testbed: Testbed, index: number): Promise<void> {
  const host = testbed.host(index);
  const runtime = runtimeFor(host);
  for (const name of await runtime.list()) {
    if ((await runtime.state(name).catch(() => undefined)) === 'RUNNING') {
      await run('lxc-stop', ['-P', host.lxcpath, '-n', name, '-k'], { timeoutMs: 20_000 });
    }
  }
}

/** A hung host: its agent, Cassandra node and containers are stopped (SIGSTOP, lxc-freeze) until thawed. */
export async function freezeHost(testbed: Testbed, index: number): Promise<void> {
  await signalHost(testbed, index, 'SIGSTOP', 'lxc-freeze');
  await testbed.ring.freeze(index);
}

export async function thawHost(testbed: Testbed, index: number): Promise<void> {
  await testbed.ring.thaw(index);
  await signalHost(testbed, index, 'SIGCONT', 'lxc-unfreeze');
}

async function signalHost(testbed: Testbed, index: number, signal: 'SIGSTOP' | 'SIGCONT', tool: 'lxc-freeze' | 'lxc-unfreeze'): Promise<void> {
  const pid = runningAgentPid(testbed, index);
  if (pid !== undefined) signalIfOurs(pid, agentMarker(testbed, index), signal);
  const host = testbed.host(index);
  const runtime = runtimeFor(host);
  for (const name of await runtime.list()) {
    const state = await runtime.state(name).catch(() => undefined);
    if ((tool === 'lxc-freeze' && state === 'RUNNING') || (tool === 'lxc-unfreeze' && state === 'FROZEN')) {
      await run(tool, ['-P', host.lxcpath, '-n', name], { timeoutMs: 20_000 });
    }
  }
}
