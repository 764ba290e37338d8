import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { TestbedError, errorMessage } from '../src/util/errors.ts';
import { createLogger, type Logger } from '../src/util/log.ts';
import { DockerCassandraRing } from './cassandra-docker.ts';
import { LocalCassandraRing, jvmMarker, recordedJvm, type CassandraRing } from './cassandra.ts';
import { cleanupLxcHosts, runtimeFor } from './lxc.ts';
import { claimRunDir, listRunDirs, ownerAlive, readOwner, removeRunDir } from './owner.ts';
import { killAndWait } from './processes.ts';

/**
 * The local testbed: N simulated hosts on one machine. Host i is a real Cassandra node on 127.0.S.i plus its
 * own LXC lxcpath, so "host 2's containers" are a real, separate set. Every test, benchmark and the demo run
 * on this.
 *
 * Layout: <root>/<name>/{owner.json, testbed.json, cassandra/node<i>/..., hosts/host<i>/lxc/...}
 */

export interface TestbedOptions {
  /** Run name: one directory under the root, one testbed at a time per name. Default "default". */
  name?: string;
  /** Number of simulated hosts. Default 3. */
  hosts?: number;
  /** Third octet of the hosts' loopback addresses (127.0.S.i). Default from LXCR_TESTBED_SUBNET, else 10. */
  subnet?: number;
  /** Directory holding all testbed runs. Default LXCR_TESTBED_ROOT, else /var/tmp/lxcr-testbed. */
  rootDir?: string;
  /** Heap per Cassandra node in MiB. Default 512. */
  heapMiB?: number;
  /** How long the ring may take to become ready. Default 120 s. */
  readyTimeoutMs?: number;
  logger?: Logger;
}

export interface SimulatedHost {
  /** host1, host2, ... */
  hostId: string;
  /** The address of the host's Cassandra node (and later of its agent). */
  address: string;
  /** The host's own LXC container directory. */
  lxcpath: string;
}

/** What runs the Cassandra nodes: JVMs on this machine (default), or Docker containers of Cassandra 4.1. */
export type CassandraBackend = 'local' | 'docker';

export function backendFromEnv(value = process.env.LXCR_CASSANDRA): CassandraBackend {
  if (value === undefined || value === '' || value === 'local') return 'local';
  if (value === 'docker') return 'docker';
  throw new TestbedError(`LXCR_CASSANDRA must be "local" (the default) or "docker", not "${value}"`);
}

interface Descriptor {
  name: string;
  backend: CassandraBackend;
  hosts: number;
  subnet: number;
  heapMiB: number;
}

const DESCRIPTOR_FILE = 'testbed.json';
/** JMX/RMI does not work with one port on several addresses, so each testbed's nodes get their own ports. */
function jmxPortBase(subnet: number): number {
  return 7200 + subnet * 16;
}

export function testbedRoot(rootDir?: string): string {
  return rootDir ?? process.env.LXCR_TESTBED_ROOT ?? '/var/tmp/lxcr-testbed';
}

function subnetFrom(value: number | undefined): number {
  const subnet = value ?? Number(process.env.LXCR_TESTBED_SUBNET ?? 10);
  if (!Number.isInteger(subnet) || subnet < 0 || subnet > 255) {
    throw new TestbedError(`testbed subnet must be an integer 0..255 (the S of 127.0.S.i), got ${String(value ?? process.env.LXCR_TESTBED_SUBNET)}`);
  }
  return subnet;
}

export class Testbed {
  readonly ring: CassandraRing;
  readonly hosts: readonly SimulatedHost[];

  private constructor(
    readonly runDir: string,
    private readonly descriptor: Descriptor,
    private readonly logger: Logger,
    readyTimeoutMs: number,
    ownsLifetime: boolean,
  ) {
    const prefix = `127.0.${descriptor.subnet}.`;
    const Ring = descriptor.backend === 'docker' ? DockerCassandraRing : LocalCassandraRing;
    this.ring = new Ring({
      dir: join(runDir, 'cassandra'),
      nodeCount: descriptor.hosts,
      addressPrefix: prefix,
      jmxPortBase: jmxPortBase(descriptor.subnet),
      clusterName: `lxcr-${descriptor.name}`,
      heapMiB: descriptor.heapMiB,
      readyTimeoutMs,
      ownsLifetime,
      logger,
    });
    this.hosts = this.ring.nodes.map((n) => ({
      hostId: `host${n.index}`,
      address: n.address,
      lxcpath: join(runDir, 'hosts', `host${n.index}`, 'lxc'),
    }));
  }

  get name(): string {
    return this.descriptor.name;
  }

  get contactPoints(): string[] {
    return this.ring.contactPoints;
  }

  host(index: number): SimulatedHost {
    const host = this.hosts[index - 1];
    if (!host) throw new TestbedError(`no host ${index}: the testbed has hosts 1..${this.hosts.length}`);
    return host;
  }

  /**
   * Brings up a fresh testbed: cleans a crashed earlier run's leftovers, then starts the ring and waits until
   * it is ready. On any failure nothing is left running.
   */
  static async start(options: TestbedOptions = {}): Promise<Testbed> {
    const logger = options.logger ?? createLogger('testbed');
    const descriptor: Descriptor = {
      name: options.name ?? 'default',
      backend: backendFromEnv(),
      hosts: options.hosts ?? 3,
      subnet: subnetFrom(options.subnet),
      heapMiB: options.heapMiB ?? 512,
    };
    if (!/^[a-z0-9][a-z0-9-]{0,30}$/.test(descriptor.name)) {
      throw new TestbedError(`testbed name "${descriptor.name}" must be lowercase letters, digits and dashes (max 31)`);
    }
    if (!Number.isInteger(descriptor.hosts) || descriptor.hosts < 1 || descriptor.hosts > 15) {
      throw new TestbedError(`a testbed has 1..15 hosts, not ${descriptor.hosts}`);
    }
    const root = testbedRoot(options.rootDir);
    await cleanupLeftovers(root, logger, descriptor.name);
    const runDir = join(root, descriptor.name);
    claimRunDir(runDir);
    writeFileSync(join(runDir, DESCRIPTOR_FILE), JSON.stringify(descriptor, null, 2));
    const testbed = new Testbed(runDir, descriptor, logger, options.readyTimeoutMs ?? 120_000, true);
    for (const host of testbed.hosts) mkdirSync(host.lxcpath, { recursive: true });
    const started = Date.now();
    try {
      await testbed.ring.start();
    } catch (err) {
      await testbed.teardown().catch((e: unknown) => logger.error('teardown after failed start failed', { error: errorMessage(e) }));
      throw err;
    }
    logger.info('testbed ready', { name: descriptor.name, hosts: descriptor.hosts, ms: Date.now() - started });
    return testbed;
  }

  /** Attaches to a running testbed started by another process (e.g. vitest's global setup). */
  static attach(name = 'default', options: Pick<TestbedOptions, 'rootDir' | 'logger' | 'readyTimeoutMs'> = {}): Testbed {
    const runDir = join(testbedRoot(options.rootDir), name);
    const path = join(runDir, DESCRIPTOR_FILE);
    if (!existsSync(path)) throw new TestbedError(`no testbed "${name}" is running (no ${path}); start one first`);
    const descriptor = JSON.parse(readFileSync(path, 'utf8')) as Descriptor;
    return new Testbed(runDir, descriptor, options.logger ?? createLogger('testbed'), options.readyTimeoutMs ?? 120_000, false);
  }

  /** Stops every container and JVM of this testbed by PID and removes its run directory. */
  async teardown(): Promise<void> {
    if (this.descriptor.backend === 'docker') await this.ring.stopAll();
    await teardownRunDir(this.runDir, this.logger);
  }
}

/** The testbed hosts (1-based indexes) where a container is RUNNING now: more than one would be a split brain. */
export async function runningCopiesOf(testbed: Testbed, container: string): Promise<number[]> {
  const hosts: number[] = [];
  for (let i = 1; i <= testbed.hosts.length; i++) {
    const runtime = runtimeFor(testbed.host(i));
    if ((await runtime.exists(container)) && (await runtime.state(container).catch(() => undefined)) === 'RUNNING') hosts.push(i);
  }
  return hosts;
}

/** Stops a run's containers and JVMs (each only after /proc confirms it is this run's) and removes its directory. */
async function teardownRunDir(runDir: string, logger: Logger): Promise<void> {
  const problems: string[] = [];
  const hostsDir = join(runDir, 'hosts');
  // Agents first: a live agent would restore or checkpoint the containers being removed.
  for (const host of existsSync(hostsDir) ? readdirSync(hostsDir) : []) {
    const pidFile = join(hostsDir, host, 'agent.pid');
    const pid = existsSync(pidFile) ? Number(readFileSync(pidFile, 'utf8')) : NaN;
    if (Number.isInteger(pid) && !(await killAndWait(pid, join(hostsDir, host, 'lxc')))) {
      problems.push(`the agent of ${host} (pid ${pid}) did not exit after SIGKILL`);
    }
  }
  if (existsSync(hostsDir)) {
    try {
      await cleanupLxcHosts(hostsDir);
    } catch (err) {
      problems.push(errorMessage(err));
    }
  }
  const cassandraDir = join(runDir, 'cassandra');
  if (existsSync(cassandraDir)) {
    for (const entry of readdirSync(cassandraDir)) {
      const nodeDir = join(cassandraDir, entry);
      const pid = recordedJvm(nodeDir);
      if (pid !== undefined && !(await killAndWait(pid, jvmMarker(nodeDir)))) {
        problems.push(`Cassandra ${entry} (pid ${pid}) did not exit after SIGKILL`);
      }
    }
  }
  if (problems.length > 0) {
    throw new TestbedError(`teardown of ${runDir} left processes behind: ${problems.join('; ')}`);
  }
  removeRunDir(runDir);
  logger.debug('testbed removed', { runDir });
}

/**
 * Finds runs left by a crashed earlier process (its owner is gone) and removes them, stopping their JVMs and
 * containers. A run of the same name whose owner still lives is refused: two testbeds would share addresses.
 */
export async function cleanupLeftovers(rootDir: string, logger: Logger, name?: string): Promise<string[]> {
  const cleaned: string[] = [];
  for (const runDir of listRunDirs(rootDir)) {
    const owner = readOwner(runDir);
    if (ownerAlive(owner)) {
      if (runDir === join(rootDir, name ?? '') && owner!.pid !== process.pid) {
        throw new TestbedError(
          `testbed "${name}" is in use by process ${owner!.pid}; stop that run (or tear it down with ` +
            '`lxcr testbed down`) before starting another with the same name',
        );
      }
      if (owner!.pid !== process.pid) continue;
    }
    logger.warn('cleaning up a leftover testbed from an earlier run', { runDir, ownerPid: owner?.pid });
    await teardownRunDir(runDir, logger);
    cleaned.push(runDir);
  }
  return cleaned;
}
