import type cassandra from 'cassandra-driver';
import { EventLog, type RecordedEvent } from '../../cluster/events.ts';
import { ClusterRegistry, DEFAULT_META_KEYSPACE } from '../../cluster/registry.ts';
import { formatRing } from '../../cluster/ring.ts';
import { CassandraSnapshotStore } from '../../storage/cassandra-store.ts';
import { decodeManifest, manifestSizes } from '../../storage/manifest.ts';
import { DEFAULT_KEYSPACE } from '../../storage/schema.ts';
import { StandbyCache } from '../../storage/standby-cache.ts';
import type { VersionRecord } from '../../storage/store.ts';
import { createLogger } from '../../util/log.ts';
import { agentWarnings, killHost, standbyDir, startAgent, stopAgent } from '../../../testcontainers/agents.ts';
import { clientFor } from '../../../testcontainers/client.ts';
import { readCounter, runCounterContainer, runtimeFor, waitForCounterAbove } from '../../../testcontainers/lxc.ts';
import { Testbed, runningCopiesOf } from '../../../testcontainers/testbed.ts';
import { until } from '../../../testcontainers/until.ts';
import { intFlag, parseArgs } from '../args.ts';
import { ExitCode, type Command } from '../command.ts';
import { formatBytes } from '../table.ts';

const FLAGS = {
  subnet: { value: true, description: 'the demo hosts get 127.0.SUBNET.1-3 (default 20)' },
  every: { value: true, description: 'the agents checkpoint every N seconds (default 5)' },
} as const;

const HOSTS = [1, 2, 3];
/** The host that crashes, and the containers it runs. */
const KILLED = 3;
const LOST = ['demo-a', 'demo-b'];
/** A container on a host that stays up: failover must leave it alone. */
const BYSTANDER_HOST = 1;
const BYSTANDER = 'demo-c';
const ALL = [...LOST, BYSTANDER];
/** Two, so the second shows deduplication against the first. */
const VERSIONS_BEFORE_KILL = 2;

class Interrupted extends Error {}

function step(text: string): void {
  process.stdout.write(`\n==> ${text}\n`);
}

function say(text: string): void {
  process.stdout.write(`    ${text}\n`);
}

function seconds(ms: number): string {
  return `${(ms / 1000).toFixed(1)} s`;
}

function indent(text: string): string {
  return text
    .split('\n')
    .map((l) => `    ${l}`)
    .join('\n');
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** What the demo's steps share once the ring and the client are up. */
interface Scene {
  testbed: Testbed;
  store: CassandraSnapshotStore;
  registry: ClusterRegistry;
  events: EventLog;
  /** What looked wrong: the demo goes on telling the story, then exits 1. */
  problems: string[];
  checkInterrupted(): void;
}

function hostOf(testbed: Testbed, address: string): string {
  return testbed.hosts.find((h) => h.address === address)?.hostId ?? address;
}

/** The host index that should restore `container` when KILLED dies: its first live replica, in token-map order. */
function restoringHost(scene: Scene, container: string): number {
  const killedAddress = scene.testbed.host(KILLED).address;
  const address = scene.store.replicas(container).find((a) => a !== killedAddress)!;
  return scene.testbed.hosts.findIndex((h) => h.address === address) + 1;
}

/** One committed version, as the store's manifest records it. */
function describeVersion(version: VersionRecord, agentsStartedAt: number): string {
  const manifest = decodeManifest(version.manifest!);
  const size = manifestSizes(manifest).logicalBytes;
  const { rawBytes, storedBytes } = manifest.compression;
  const fresh = rawBytes === 0 ? 'nothing new to upload' : `${formatBytes(rawBytes)} new (stored as ${formatBytes(storedBytes)})`;
  return (
    `+${seconds(manifest.committedAt - agentsStartedAt).padStart(6)}  ${manifest.container} v${manifest.version} by ${manifest.sourceHost}: ` +
    `${formatBytes(size)} snapshot, ${fresh}; frozen ${Math.round(manifest.timings.freezeMs)} ms, durable ${seconds(manifest.committedAt - manifest.createdAt)} after it began`
  );
}

async function watchCheckpoints(scene: Scene, agentsStartedAt: number, timeoutMs: number): Promise<void> {
  const shown = new Map<string, Set<number>>(ALL.map((name) => [name, new Set<number>()]));
  const standbyShown = new Set<string>();
  await until(
    `${VERSIONS_BEFORE_KILL} committed versions of every container and standby copies of ${LOST.join(', ')}`,
    async () => {
      scene.checkInterrupted();
      const fresh: VersionRecord[] = [];
      for (const name of ALL) {
        for (const version of await scene.store.versions(name)) {
          if (version.state !== 'committed' || shown.get(name)!.has(version.version)) continue;
          shown.get(name)!.add(version.version);
          fresh.push(version);
        }
      }
      fresh.sort((a, b) => a.committedAt!.getTime() - b.committedAt!.getTime());
      for (const version of fresh) say(describeVersion(version, agentsStartedAt));
      // The steady state the agents reach between checkpoints: the host that would restore each container
      // holds a copy of its newest version on local disk. Waiting for it keeps the restore below typical.
      for (const name of LOST) {
        if (standbyShown.has(name)) continue;
        const latest = (await scene.store.latestCommitted(name))?.version ?? Number.POSITIVE_INFINITY;
        const host = restoringHost(scene, name);
        const copy = await new StandbyCache(standbyDir(scene.testbed, host)).readyVersion(name);
        if (copy !== undefined && copy >= latest) {
          standbyShown.add(name);
          say(`          host${host} holds a standby copy of ${name} v${copy} on its local disk (it would restore ${name})`);
        }
      }
      const enough = [...shown.values()].every((versions) => versions.size >= VERSIONS_BEFORE_KILL);
      return enough && standbyShown.size === LOST.length ? true : undefined;
    },
    timeoutMs,
    500,
  );
}

interface Restored {
  host: number;
  epoch: number;
  runningAt: number;
}

/** Polls the audit trail and the registry until every container of the killed host runs on a live host. */
async function watchFailover(scene: Scene, killedAt: number, timeoutMs: number): Promise<Map<string, Restored>> {
  const { testbed } = scene;
  const restored = new Map<string, Restored>();
  const seen = new Set<string>();
  const at = (ms: number) => `+${seconds(ms - killedAt).padStart(6)}`;
  await until(
    `${LOST.join(' and ')} running on a live host`,
    async () => {
      scene.checkInterrupted();
      const events = (await scene.events.between(new Date(killedAt - 1000), new Date())).sort((a, b) => a.at.getTime() - b.at.getTime());
      for (const e of events) {
        const key = `${e.kind}/${e.host}/${e.container ?? ''}/${e.epoch ?? ''}`;
        if (seen.has(key)) continue;
        if (e.kind === 'host-down') say(`${at(e.at.getTime())}  ${e.host}'s gossip view shows host${KILLED} DN`);
        else if (e.kind === 'restore-claimed') say(`${at(e.at.getTime())}  ${e.host} claimed ${e.container} in the registry (epoch ${e.epoch! - 1} -> ${e.epoch}) and restores it`);
        else if (e.kind === 'restore-failed') say(`${at(e.at.getTime())}  ${e.host} failed to restore ${e.container}: ${e.detail ?? ''}`);
        else continue;
        seen.add(key);
      }
      for (const name of LOST) {
        if (restored.has(name)) continue;
        const owner = await scene.registry.ownership(name);
        if (!owner || owner.owner === testbed.host(KILLED).hostId || owner.state !== 'running') continue;
        const host = testbed.hosts.findIndex((h) => h.hostId === owner.owner) + 1;
        if ((await runtimeFor(testbed.host(host)).state(name).catch(() => undefined)) !== 'RUNNING') continue;
        restored.set(name, { host, epoch: owner.epoch, runningAt: Date.now() });
        say(`${at(Date.now())}  ${name} is RUNNING on host${host}, owned there at epoch ${owner.epoch}`);
      }
      return restored.size === LOST.length ? restored : undefined;
    },
    timeoutMs,
    250,
  );
  return restored;
}

function auditLine(e: RecordedEvent, killedAt: number): string {
  const offset = e.at.getTime() - killedAt;
  const when = `${offset < 0 ? '-' : '+'}${seconds(Math.abs(offset))}`.padStart(8);
  const columns = [
    when,
    e.host.padEnd(6),
    e.kind.padEnd(20),
    (e.container ?? '').padEnd(7),
    (e.epoch === undefined ? '' : `epoch ${e.epoch}`).padEnd(8),
    (e.version === undefined ? '' : `v${e.version}`).padEnd(4),
    (e.durationMs === undefined ? '' : seconds(e.durationMs)).padEnd(7),
    e.detail ?? '',
  ];
  return columns.join(' ').trimEnd();
}

async function tellTheStory(scene: Scene, everySeconds: number, startedAt: number): Promise<void> {
  const { testbed, store, registry, problems } = scene;
  const killed = testbed.host(KILLED);

  step(`Creating the shared keyspaces once, before any agent runs (concurrent DDL is what Cassandra handles worst)`);
  await store.ensureSchema();
  await registry.ensureSchema();
  await testbed.ring.waitSchemaAgreement();
  say(`${DEFAULT_KEYSPACE}: the snapshots (chunks and manifests), replication factor 2: every snapshot lives on two hosts`);
  say(`${DEFAULT_META_KEYSPACE}: the registry (agents, container owners with epochs) and the audit events, replication factor 3`);

  step(`Starting counter containers: ${LOST.join(' and ')} on host${KILLED} (the host that will crash), ${BYSTANDER} on host${BYSTANDER_HOST}`);
  say('busybox containers counting in a shell variable, ~6 counts a second: the count lives only in memory, so a');
  say('restore that lost the memory would start again at 1');
  await Promise.all([...LOST.map((name) => runCounterContainer(killed, name)), runCounterContainer(testbed.host(BYSTANDER_HOST), BYSTANDER)]);
  for (const name of ALL) {
    say(`${name}: snapshots go to ${store.replicas(name).map((a) => hostOf(testbed, a)).join(' and ')} (the replicas of its home partition, in token order)`);
  }

  step(`Starting one lxcr agent per host, checkpointing every ${everySeconds} s`);
  say('each agent adopts the containers running on its host, checkpoints them with CRIU into Cassandra, keeps standby');
  say('copies of the snapshots it would restore, and watches its Cassandra node\'s gossip view for hosts going DN');
  scene.checkInterrupted();
  const agentsStartedAt = Date.now();
  const agentOptions = { snapshotKeyspace: DEFAULT_KEYSPACE, metaKeyspace: DEFAULT_META_KEYSPACE, everySeconds };
  const agents = await Promise.all(HOSTS.map((i) => startAgent(testbed, i, agentOptions)));
  for (const agent of agents) say(`${agent.hostId}: lxcr agent, pid ${agent.pid}, gRPC on ${agent.grpcEndpoint}`);
  say(`all ready in ${seconds(Date.now() - agentsStartedAt)}`);

  step(`Watching checkpoints land in Cassandra until each container has ${VERSIONS_BEFORE_KILL} committed versions (time since the agents started)`);
  say('a version becomes visible only once every chunk is on both replica hosts; chunks already stored are not sent again');
  await watchCheckpoints(scene, agentsStartedAt, 120_000);

  step(`Crashing host${KILLED}: SIGKILL to its Cassandra node, its agent and its containers, all at once`);
  const lastCheckpoint = new Map<string, { version: number; dumpedAt: number }>();
  for (const name of LOST) {
    const { version, createdAt } = (await store.latestCommitted(name))!;
    lastCheckpoint.set(name, { version, dumpedAt: createdAt.getTime() });
  }
  const atKill = new Map<string, number>();
  for (const name of LOST) atKill.set(name, await readCounter(killed, name));
  const bystanderBefore = await readCounter(testbed.host(BYSTANDER_HOST), BYSTANDER);
  const bystanderOwner = await registry.ownership(BYSTANDER);
  const killedAt = Date.now();
  await killHost(testbed, KILLED);
  for (const name of LOST) {
    const { version, dumpedAt } = lastCheckpoint.get(name)!;
    say(`${name}: counter ${atKill.get(name)} at the kill; its last committed version, v${version}, was taken ${seconds(killedAt - dumpedAt)} before`);
  }
  say(`nobody tells the other agents: their Cassandra nodes must convict host${KILLED} through gossip (phi_convict_threshold 5)`);

  step('Waiting for the survivors to detect it and restore its containers (time since the kill)');
  const restored = await watchFailover(scene, killedAt, 120_000);
  // Right after the restore the rootfs still holds the counter file as it was uploaded, later than the memory
  // image; one second on, the restored process has rewritten it from memory.
  await sleep(1000);
  const events = await scene.events.between(new Date(startedAt), new Date());
  for (const name of LOST) {
    const { host, epoch, runningAt } = restored.get(name)!;
    const resumed = await readCounter(testbed.host(host), name);
    const later = await waitForCounterAbove(testbed.host(host), name, resumed + 5);
    const done = events.filter((e) => e.kind === 'restore-done' && e.container === name);
    const replicas = store.replicas(name).map((a) => hostOf(testbed, a));
    const expected = restoringHost(scene, name);
    say(`${name}: RUNNING on host${host} ${seconds(runningAt - killedAt)} after the kill, epoch ${epoch}, restored from v${done[0]?.version ?? '?'} in ${done[0]?.durationMs === undefined ? '?' : seconds(done[0].durationMs)}`);
    say(`    host${host} is ${host === expected ? '' : 'NOT '}the first live replica host of its snapshot (replicas in token order: ${replicas.join(', ')})`);
    say(`    counter: ${atKill.get(name)} at the kill -> ${resumed} a second after the restore -> ${later}: the restored memory counts on`);
    say(`    from v${done[0]?.version ?? '?'}'s state (what it counted after that checkpoint is counted again); it did not start again at 1`);
    if (host !== expected) problems.push(`${name} was restored on host${host}, not on its first live replica host${expected}`);
    if (resumed <= 20) problems.push(`${name} restarted counting (at ${resumed}): its memory was not restored`);
    const copies = await runningCopiesOf(testbed, name);
    if (done.length !== 1 || copies.length !== 1) problems.push(`${name}: ${done.length} restores done, running on ${copies.map((i) => `host${i}`).join(', ') || 'no host'}`);
  }
  say(`exactly once: each restored once and running on one host only (host${KILLED}'s copies died with it)`);
  const detectedAt = Math.min(...events.filter((e) => e.kind === 'host-down' && e.at.getTime() >= killedAt).map((e) => e.at.getTime()));
  const allRunningAt = Math.max(...[...restored.values()].map((r) => r.runningAt));
  if (Number.isFinite(detectedAt)) say(`in all: host${KILLED} DN ${seconds(detectedAt - killedAt)} after the kill (gossip), all its containers running ${seconds(allRunningAt - killedAt)} after it (${seconds(allRunningAt - detectedAt)} after the detection)`);

  const bystanderNow = await readCounter(testbed.host(BYSTANDER_HOST), BYSTANDER);
  const bystanderOwnerNow = await registry.ownership(BYSTANDER);
  const touched = events.some((e) => e.container === BYSTANDER && e.kind.startsWith('restore'));
  say(`${BYSTANDER} on host${BYSTANDER_HOST} was left alone: same owner (${bystanderOwnerNow?.owner}, epoch ${bystanderOwnerNow?.epoch}), no restore, counter ${bystanderBefore} -> ${bystanderNow} in the same process`);
  if (touched || bystanderOwnerNow?.owner !== bystanderOwner?.owner || bystanderOwnerNow?.epoch !== bystanderOwner?.epoch || bystanderNow <= bystanderBefore) {
    problems.push(`${BYSTANDER} on a live host was disturbed by the failover`);
  }

  step(`The audit trail: the rows of ${DEFAULT_META_KEYSPACE}.events the agents wrote during the demo (time relative to the kill)`);
  for (const e of events.sort((a, b) => a.at.getTime() - b.at.getTime())) say(auditLine(e, killedAt));
}

/**
 * The end-to-end demo on a local 3-host testbed of real Cassandra nodes, LXC containers and `lxcr agent`
 * processes: periodic checkpoints landing in Cassandra, a host crash, its containers restored once on their
 * first live replica hosts with their memory, and the audit trail of it. Everything it starts is torn down at
 * the end, also on failure or Ctrl-C.
 */
export const demoCommand: Command = {
  name: 'demo',
  summary: 'run the end-to-end demo on a local 3-host testbed (real Cassandra, LXC, CRIU and agents; a host crashes)',
  usage: '[--subnet S] [--every N]',
  flags: FLAGS,
  async run(argv) {
    const args = parseArgs(argv, FLAGS);
    const subnet = intFlag(args, 'subnet', 20, 0, 255);
    const everySeconds = intFlag(args, 'every', 5, 1, 60);
    const logger = createLogger('demo', process.env.LXCR_LOG_LEVEL === 'debug' ? 'debug' : 'warn');
    const startedAt = Date.now();

    let interrupted = false;
    let client: cassandra.Client | undefined;
    step(`Bringing up a local 3-host testbed: one real Cassandra 2.1 node per host on 127.0.${subnet}.1-3, each host with its own LXC lxcpath`);
    const starting = Testbed.start({ name: 'demo', hosts: HOSTS.length, subnet, logger });
    let cleaning: Promise<void> | undefined;
    const cleanup = () =>
      (cleaning ??= (async () => {
        const testbed = await starting.catch(() => undefined);
        if (!testbed) return; // a failed start has removed what it had started
        for (const i of HOSTS) await stopAgent(testbed, i);
        await client?.shutdown().catch(() => undefined);
        await testbed.teardown();
      })());
    // A listener of our own stays registered until the teardown is over: the testbed's last-resort handler
    // (testcontainers/processes.ts) ends the process at once when it is the only one, which would cut it short.
    const onSignal = () => {
      if (interrupted) return;
      interrupted = true;
      process.stdout.write('\nInterrupted: stopping the agents and tearing the testbed down.\n');
      void cleanup()
        .catch((err: unknown) => process.stderr.write(`lxcr demo: ${err instanceof Error ? err.message : String(err)}\n`))
        .finally(() => process.exit(ExitCode.INTERRUPTED));
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    const problems: string[] = [];
    try {
      const testbed = await starting;
      say(`ring ready in ${seconds(Date.now() - startedAt)}; as node 1's gossip sees it:`);
      process.stdout.write(`${indent(formatRing(await testbed.ring.ringView(1)))}\n`);
      client = clientFor(testbed);
      await client.connect();
      const scene: Scene = {
        testbed,
        store: new CassandraSnapshotStore({ client, keyspace: DEFAULT_KEYSPACE }),
        registry: new ClusterRegistry({ client, keyspace: DEFAULT_META_KEYSPACE }),
        events: new EventLog(client, DEFAULT_META_KEYSPACE, logger),
        problems,
        checkInterrupted() {
          if (interrupted) throw new Interrupted();
        },
      };
      await tellTheStory(scene, everySeconds, startedAt);
      step('Tearing everything down: the agents by PID (SIGTERM), then every container and JVM of the testbed by PID');
    } catch (err) {
      if (interrupted) await new Promise(() => undefined); // the signal handler finishes the cleanup and exits
      const testbed = await starting.catch(() => undefined);
      if (testbed) process.stderr.write(agentWarnings(testbed));
      process.stderr.write('\nThe demo failed (the reason follows); tearing everything down.\n');
      throw err;
    } finally {
      if (!interrupted) {
        await cleanup();
        process.off('SIGINT', onSignal);
        process.off('SIGTERM', onSignal);
      }
    }
    say(`done in ${seconds(Date.now() - startedAt)}`);
    if (problems.length > 0) {
      process.stderr.write(`lxcr demo: what it showed was not all as designed:\n${problems.map((p) => `  - ${p}`).join('\n')}\n`);
      return ExitCode.FAILED;
    }
    return ExitCode.OK;
  },
};
