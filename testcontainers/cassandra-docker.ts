import { request } from 'node:http';
import { TestbedError, ToolMissingError, errorMessage, lastLines } from '../src/util/errors.ts';
import { CassandraRing, type CassandraNode } from './cassandra.ts';

/**
 * Nodes as Cassandra 4.1 containers, for machines with a Docker engine (`LXCR_CASSANDRA=docker`). Each
 * container uses the host's network, so node i listens on 127.0.S.i exactly like a local JVM would and every
 * test still talks only to loopback. testcontainers' reaper removes the containers if this process dies.
 *
 * This path cannot run on the project's own machines (they have no Docker engine); it exists so the same tests
 * can be pointed at the Cassandra version real testbeds run.
 */

export const DOCKER_IMAGE = process.env.LXCR_CASSANDRA_IMAGE ?? 'cassandra:4.1';
const DOCKER_SOCKET = process.env.DOCKER_HOST?.startsWith('unix://') ? process.env.DOCKER_HOST.slice(7) : '/var/run/docker.sock';

/** Resolves when a Docker engine answers `GET /_ping` on its socket; otherwise throws saying what to do. */
export async function checkDockerEngine(timeoutMs = 3000): Promise<void> {
  const hint =
    `LXCR_CASSANDRA=docker needs a Docker engine, and none answers on ${DOCKER_SOCKET}. ` +
    'Start one, or unset LXCR_CASSANDRA to use the local Cassandra 2.1 nodes';
  await new Promise<void>((resolve, reject) => {
    const req = request({ socketPath: DOCKER_SOCKET, path: '/_ping', timeout: timeoutMs }, (res) => {
      res.resume();
      if (res.statusCode === 200) resolve();
      else reject(new ToolMissingError('Docker engine', `${hint} (it answered HTTP ${res.statusCode})`));
    });
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', (err) => reject(new ToolMissingError('Docker engine', `${hint} (${err.message})`, { cause: err })));
    req.end();
  });
}

/**
 * Containers are found by name (`<cluster>-node<i>`) through the engine, so a process that only attached to the
 * testbed (a test worker) controls them as well as the one that started them.
 */
export class DockerCassandraRing extends CassandraRing {
  private containerName(node: CassandraNode): string {
    return `${this.options.clusterName}-node${node.index}`;
  }

  async start(): Promise<void> {
    await checkDockerEngine();
    try {
      // Nodes start one after another: Cassandra 4.1 refuses concurrent bootstraps.
      for (const node of this.nodes) await this.startContainer(node);
      await this.waitReady(this.options.readyTimeoutMs);
    } catch (err) {
      const logs = await this.logTails();
      await this.stopAll();
      throw new TestbedError(`the Cassandra containers did not form a ring: ${errorMessage(err)}\n${logs}`, { cause: err });
    }
  }

  private async startContainer(node: CassandraNode): Promise<void> {
    const { GenericContainer, Wait } = await import('testcontainers');
    await new GenericContainer(DOCKER_IMAGE)
      .withName(this.containerName(node))
      .withNetworkMode('host')
      .withEnvironment({
        CASSANDRA_CLUSTER_NAME: this.options.clusterName,
        CASSANDRA_LISTEN_ADDRESS: node.address,
        CASSANDRA_BROADCAST_ADDRESS: node.address,
        CASSANDRA_RPC_ADDRESS: node.address,
        CASSANDRA_SEEDS: this.nodes[0]!.address,
        CASSANDRA_NUM_TOKENS: '1',
        CASSANDRA_ENDPOINT_SNITCH: 'SimpleSnitch',
        MAX_HEAP_SIZE: `${this.options.heapMiB}M`,
        HEAP_NEWSIZE: `${Math.max(64, Math.floor(this.options.heapMiB / 4))}M`,
        // Later -D options win: each node its own token and its own local JMX port (all share the host network).
        JVM_EXTRA_OPTS: [
          `-Dcassandra.initial_token=${node.initialToken}`,
          '-Dcassandra.skip_wait_for_gossip_to_settle=0',
          `-Dcassandra.jmx.local.port=${node.jmxPort}`,
        ].join(' '),
      })
      .withWaitStrategy(Wait.forLogMessage(/Starting listening for CQL clients/))
      .withStartupTimeout(this.options.readyTimeoutMs)
      .start();
  }

  private async engine(index: number) {
    const { getContainerRuntimeClient } = await import('testcontainers');
    const client = await getContainerRuntimeClient();
    return { client, container: client.container.getById(this.containerName(this.node(index))) };
  }

  async nodetool(index: number, args: readonly string[]): Promise<string> {
    const { client, container } = await this.engine(index);
    const command = ['nodetool', '-h', '127.0.0.1', '-p', String(this.node(index).jmxPort), ...args];
    const result = await client.container.exec(container, command);
    if (result.exitCode !== 0) {
      throw new TestbedError(`nodetool ${args.join(' ')} on node${index} exited with ${result.exitCode}: ${lastLines(result.output, 5)}`);
    }
    return result.output;
  }

  async kill(index: number): Promise<void> {
    if (await this.isRunning(index)) await (await this.engine(index)).container.kill({ signal: 'SIGKILL' });
  }

  async freeze(index: number): Promise<void> {
    await (await this.engine(index)).container.pause();
  }

  async thaw(index: number): Promise<void> {
    await (await this.engine(index)).container.unpause();
  }

  protected async startAgain(index: number): Promise<void> {
    await (await this.engine(index)).container.start();
  }

  private async state(index: number): Promise<{ Running: boolean; Paused: boolean } | undefined> {
    const { client, container } = await this.engine(index);
    try {
      return (await client.container.inspect(container)).State;
    } catch {
      return undefined; // no such container
    }
  }

  private async isRunning(index: number): Promise<boolean> {
    return (await this.state(index))?.Running === true;
  }

  protected async isServing(index: number): Promise<boolean> {
    const state = await this.state(index);
    return state?.Running === true && !state.Paused;
  }

  async logTail(node: CassandraNode, lines = 15): Promise<string> {
    try {
      const { client, container } = await this.engine(node.index);
      let text = '';
      for await (const chunk of await client.container.logs(container, { tail: lines })) text += String(chunk);
      return text;
    } catch (err) {
      return `(no logs: ${errorMessage(err)})`;
    }
  }

  async stopAll(): Promise<void> {
    // No engine answering means no containers of ours can be running.
    if (!(await checkDockerEngine().then(() => true, () => false))) return;
    await Promise.all(
      this.nodes.map(async (node) => {
        if ((await this.state(node.index)) === undefined) return;
        const { client, container } = await this.engine(node.index);
        await client.container.remove(container, { removeVolumes: true }).catch(async () => {
          await container.kill({ signal: 'SIGKILL' }).catch(() => undefined);
          await client.container.remove(container, { removeVolumes: true });
        });
      }),
    );
  }
}
