import * as grpc from '@grpc/grpc-js';
import type cassandra from 'cassandra-driver';
import { readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, onTestFailed } from 'vitest';
import { ClusterClient } from '../../src/api/cluster-client.ts';
import { EventLog } from '../../src/cluster/events.ts';
import { ClusterRegistry, type Ownership } from '../../src/cluster/registry.ts';
import type { CassandraSnapshotStore } from '../../src/storage/cassandra-store.ts';
import { StandbyCache } from '../../src/storage/standby-cache.ts';
import { createLogger } from '../../src/util/log.ts';
import { agentPidFile, agentWarnings, freezeHost, killHost, runningAgentPid, standbyDir, startAgent, stopAgent, thawHost } from '../../testcontainers/agents.ts';
import { readCounter, runCounterContainer, runtimeFor, waitForCounterAbove } from '../../testcontainers/lxc.ts';
import { runningCopiesOf, type SimulatedHost } from '../../testcontainers/testbed.ts';
import { connectStore, removeContainer, sharedTestbed } from '../support/testbed.ts';
import { until } from '../../testcontainers/until.ts';

/**
 * Failover on the real testbed: three hosts, each with its Cassandra node and an `lxcr agent` process; the
 * containers of host 3 are checkpointed by its agent, then host 3 is killed (its JVM, agent and containers).
 */

const testbed = sharedTestbed();
const SNAPSHOTS = 'failover_snap';
const META = 'failover_meta';
const CONTAINERS = ['fo-a', 'fo-b'];
const HUNG = 'fo-hung';
const STAYING = 'fo-stay';
const RETRIED = 'fo-retry';
let lost = '';
const ALL = () => [...CONTAINERS, HUNG, STAYING, RETRIED, ...(lost ? [lost] : [])];
const FAILED = 3;
let client: cassandra.Client;
let store: CassandraSnapshotStore;
let registry: ClusterRegistry;
const agentOptions = { snapshotKeyspace: SNAPSHOTS, metaKeyspace: META, everySeconds: 3 };

const runningCopies = (container: string) => runningCopiesOf(testbed, container);

/**
 * Waits until `host`'s agent owns the container and has committed a checkpoint taken after the counter was read;
 * returns that counter value, which every later restore must reach.
 */
async function counterBeforeACheckpoint(host: SimulatedHost, name: string): Promise<number> {
  await until(`${name} owned by ${host.hostId}`, async () => ((await registry.ownership(name))?.owner === host.hostId ? true : undefined), 60_000);
  const counter = await readCounter(host, name);
  const readAt = Date.now();
  await until(`a checkpoint of ${name} after its counter was read`, async () => ((await store.latestCommitted(name))?.createdAt.getTime() ?? 0) > readAt ? true : undefined, 60_000);
  return counter;
}

/** On failure, what each agent logged at warn and above: the only record of what they decided. */
function printAgentLogs(): void {
  process.stderr.write(agentWarnings(testbed));
}

beforeAll(async () => {
  ({ client, store } = await connectStore(testbed, SNAPSHOTS));
  // The schema is made once, before the agents start: concurrent DDL from several nodes is what Cassandra
  // handles worst (the deploy's one-time play does the same).
  registry = new ClusterRegistry({ client, keyspace: META });
  await registry.ensureSchema();
  await testbed.ring.waitSchemaAgreement();
  for (const name of CONTAINERS) await runCounterContainer(testbed.host(FAILED), name);
  for (let i = 1; i <= testbed.hosts.length; i++) await startAgent(testbed, i, agentOptions);
}, 180_000);

afterAll(async () => {
  for (let i = 1; i <= testbed.hosts.length; i++) await stopAgent(testbed, i);
  // Leave the shared ring whole for the next test file.
  for (const node of testbed.ring.nodes) {
    const view = await testbed.ring.ringView(node.index).catch(() => undefined);
    if (view?.get(node.address)?.status !== 'U') await testbed.ring.restart(node.index);
  }
  for (let i = 1; i <= testbed.hosts.length; i++) for (const name of ALL()) await removeContainer(runtimeFor(testbed.host(i)), name);
  await client?.shutdown();
}, 180_000);

describe('failover of a killed host (Algorithm 3 over gRPC, claims fenced by epoch)', () => {
  it('restores each container of the killed host once, on its first live replica host, from at least its last checkpoint', async () => {
    onTestFailed(printAgentLogs);
    const failedHost = testbed.host(FAILED);
    // Owned by host 3 and checkpointed by its agent, with a counter value known to precede the last commit.
    const before = new Map<string, number>();
    for (const name of CONTAINERS) before.set(name, await counterBeforeACheckpoint(failedHost, name));
    const lastVersion = new Map<string, number>();
    for (const name of CONTAINERS) lastVersion.set(name, (await store.latestCommitted(name))!.version);
    const failedAddress = testbed.ring.node(FAILED).address;
    const restoringHost = (name: string) => {
      const expected = store.replicas(name).find((address) => address !== failedAddress)!;
      return testbed.hosts.findIndex((h) => h.address === expected) + 1;
    };
    // The host that will restore each container holds a standby copy of it before the failure.
    for (const name of CONTAINERS) {
      const cache = new StandbyCache(standbyDir(testbed, restoringHost(name)));
      await until(`a standby copy of ${name}`, async () => ((await cache.readyVersion(name)) ?? 0) >= lastVersion.get(name)! || undefined, 60_000, 500);
    }

    await killHost(testbed, FAILED);

    for (const name of CONTAINERS) {
      const expectedHost = restoringHost(name);
      const owner = await until(
        `${name} restored and owned by a live host`,
        async () => {
          const o = await registry.ownership(name);
          return o && o.owner !== failedHost.hostId && o.state === 'running' ? o : undefined;
        },
        120_000,
        500,
      );
      expect(owner.owner).toBe(testbed.host(expectedHost).hostId); // the first live replica host, in token-map order
      expect(owner.epoch).toBe(2);
      expect(await runningCopies(name)).toEqual([expectedHost]);
      const counter = await waitForCounterAbove(testbed.host(expectedHost), name, before.get(name)! - 1);
      expect(counter).toBeGreaterThanOrEqual(before.get(name)!);
    }
    const events = await new EventLog(client, META, createLogger('test', 'error')).between(new Date(Date.now() - 10 * 60_000), new Date());
    for (const name of CONTAINERS) {
      const done = events.find((e) => e.kind === 'restore-done' && e.container === name && e.outcome === 'ok');
      // From the local standby copy, not pulled through Cassandra: its assembled files moved into place, or (when a
      // checkpoint committed after the copy was assembled) its chunks, with the few new ones from Cassandra.
      expect(done?.detail).toMatch(/^assembled standby copy moved into place|, [1-9]\d* chunks from the standby copy/);
    }
    expect(events.some((e) => e.kind === 'host-down' && e.detail?.includes(failedHost.hostId))).toBe(true);

    // Host 3 comes back: its agent finds its stopped copies owned elsewhere and destroys them; still one copy each.
    await testbed.ring.restart(FAILED);
    await startAgent(testbed, FAILED, agentOptions);
    for (const name of CONTAINERS) {
      await until(`host3's stale copy of ${name} destroyed`, async () => (!(await runtimeFor(failedHost).exists(name)) ? true : undefined), 60_000);
      expect((await runningCopies(name)).length).toBe(1);
      // The new owner goes on checkpointing: the version history continues, numbers never reused.
      await until(`a new checkpoint of ${name} by its new owner`, async () => ((await store.latestCommitted(name))!.version > lastVersion.get(name)! ? true : undefined), 60_000);
    }
  });

  it('moves a restore that fails on the first candidate host to the next one, and the container runs once', async () => {
    onTestFailed(printAgentLogs);
    const failedHost = testbed.host(FAILED);
    await runCounterContainer(failedHost, RETRIED);
    const before = await counterBeforeACheckpoint(failedHost, RETRIED);
    // The candidates: the live replica hosts in token-map order, then the other live hosts.
    const failedAddress = testbed.ring.node(FAILED).address;
    const replicas = store.replicas(RETRIED).filter((a) => a !== failedAddress);
    const others = testbed.hosts.map((h) => h.address).filter((a) => a !== failedAddress && !replicas.includes(a));
    const [first, next] = [...replicas, ...others].map((a) => testbed.hosts.findIndex((h) => h.address === a) + 1);
    // A real fault on the first candidate: its staging directory is a file, so its restore fails half-way.
    const staging = join(agentPidFile(testbed, first!).replace(/agent\.pid$/, ''), 'staging');
    renameSync(staging, `${staging}.aside`);
    writeFileSync(staging, 'not a directory');
    try {
      await killHost(testbed, FAILED);
      const owner = await until(`${RETRIED} running on a live host`, async () => {
        const o = await registry.ownership(RETRIED);
        return o && o.owner !== failedHost.hostId && o.state === 'running' ? o : undefined;
      }, 120_000, 500);
      expect(owner.owner).toBe(testbed.host(next!).hostId);
      expect(owner.epoch).toBe(3); // claimed by the first candidate (2), then by the next (3)
      expect(await runningCopies(RETRIED)).toEqual([next]);
      expect(await waitForCounterAbove(testbed.host(next!), RETRIED, before - 1)).toBeGreaterThanOrEqual(before);
      // The target marks the container running before it records restore-done: wait for the event to land.
      const log = new EventLog(client, META, createLogger('test', 'error'));
      const events = await until('the restore-done event of the retried container', async () => {
        const recent = await log.between(new Date(Date.now() - 5 * 60_000), new Date());
        return recent.some((e) => e.kind === 'restore-done' && e.container === RETRIED) ? recent : undefined;
      }, 30_000, 500);
      const failed = events.find((e) => e.kind === 'restore-failed' && e.container === RETRIED);
      expect(failed?.host).toBe(testbed.host(first!).hostId);
      expect(failed?.detail).toMatch(/ENOTDIR|not a directory/);
      expect(events.filter((e) => e.kind === 'restore-done' && e.container === RETRIED).map((e) => e.host)).toEqual([testbed.host(next!).hostId]);
    } finally {
      rmSync(staging, { force: true });
      renameSync(`${staging}.aside`, staging);
      // Host 3 comes back whatever happened above, so the next tests find the ring whole.
      await testbed.ring.restart(FAILED);
      await startAgent(testbed, FAILED, agentOptions);
    }
    await until(`host3's stale copy of ${RETRIED} destroyed`, async () => (!(await runtimeFor(failedHost).exists(RETRIED)) ? true : undefined), 60_000);
  });

  it('restores the containers of a hung host (SIGSTOP) once gossip says DN, and after SIGCONT there is still one copy', async () => {
    onTestFailed(printAgentLogs);
    const hungHost = testbed.host(FAILED);
    await runCounterContainer(hungHost, HUNG);
    const before = await counterBeforeACheckpoint(hungHost, HUNG);

    await freezeHost(testbed, FAILED);
    let owner: Ownership | undefined;
    try {
      owner = await until(
        `${HUNG} restored on a live host`,
        async () => {
          const o = await registry.ownership(HUNG);
          return o && o.owner !== hungHost.hostId && o.state === 'running' ? o : undefined;
        },
        120_000,
        500,
      );
      const index = testbed.hosts.findIndex((h) => h.hostId === owner!.owner) + 1;
      expect(await runningCopies(HUNG)).toEqual([index]); // host 3's copy is frozen, not running
      expect(await waitForCounterAbove(testbed.host(index), HUNG, before - 1)).toBeGreaterThanOrEqual(before);
    } finally {
      await thawHost(testbed, FAILED);
    }
    const thawedAt = Date.now();
    // Thawed, host 3's agent sees another owner and destroys its copy instead of letting it run on.
    await until(`host3's stale copy of ${HUNG} destroyed`, async () => (!(await runtimeFor(hungHost).exists(HUNG)) ? true : undefined), 60_000);
    expect((await runningCopies(HUNG)).length).toBe(1);
    expect((await registry.ownership(HUNG))?.owner).toBe(owner.owner);
    // Nor does it commit a checkpoint of its diverged copy (one it was uploading when frozen, or dumped after).
    const committedByStale = (await store.versions(HUNG)).filter((v) => v.sourceHost === hungHost.hostId && v.state === 'committed' && v.committedAt!.getTime() >= thawedAt);
    expect(committedByStale).toEqual([]);
    await testbed.ring.waitStatus(FAILED, 'U', 60_000);
  });

  it('re-adopts its running containers when an agent crashes and restarts on a live host, restoring nothing', async () => {
    onTestFailed(printAgentLogs);
    const host = testbed.host(1);
    await runCounterContainer(host, STAYING);
    const adopted = await until(`${STAYING} owned by host1`, async () => {
      const o = await registry.ownership(STAYING);
      return o?.owner === host.hostId ? o : undefined;
    }, 60_000);
    const pid = runningAgentPid(testbed, 1)!;
    process.kill(pid, 'SIGKILL'); // the agent alone crashes; the host, its Cassandra node and containers live on
    const counter = await readCounter(host, STAYING);
    const restartedAt = new Date();
    await startAgent(testbed, 1, agentOptions);
    const committed = (await store.latestCommitted(STAYING))?.version ?? 0;
    await until(`a checkpoint of ${STAYING} by the restarted agent`, async () => ((await store.latestCommitted(STAYING))?.version ?? 0) > committed ? true : undefined, 60_000);
    expect(await registry.ownership(STAYING)).toMatchObject({ owner: host.hostId, epoch: adopted.epoch, state: 'running' });
    expect(await runningCopies(STAYING)).toEqual([1]);
    expect(await readCounter(host, STAYING)).toBeGreaterThan(counter); // the same process counted on
    const events = await new EventLog(client, META, createLogger('test', 'error')).between(restartedAt, new Date());
    expect(events.filter((e) => e.container === STAYING && e.kind.startsWith('restore'))).toEqual([]);
  });

  it('marks a container whose owner and both replica hosts are down "replicas not found", and restores it when a replica host returns', async () => {
    onTestFailed(printAgentLogs);
    const owner = testbed.host(FAILED);
    const failedAddress = testbed.ring.node(FAILED).address;
    // A container whose two replica hosts are host 3 (its owner) and one other, X; the third host, Y, survives.
    for (let i = 0; !lost; i++) if (store.replicas(`fo-lost-${i}`).includes(failedAddress)) lost = `fo-lost-${i}`;
    const otherReplica = testbed.hosts.findIndex((h) => h.address === store.replicas(lost).find((a) => a !== failedAddress)) + 1;
    const survivor = [1, 2, 3].find((i) => i !== FAILED && i !== otherReplica)!;
    await runCounterContainer(owner, lost);
    const before = await counterBeforeACheckpoint(owner, lost);
    const readAt = Date.now();

    await Promise.all([killHost(testbed, FAILED), killHost(testbed, otherReplica)]);
    // The survivor's coordinator says so (its log is what an operator reads; the registry has no quorum now).
    const survivorLog = agentPidFile(testbed, survivor).replace(/agent\.pid$/, 'agent.log');
    await until('the survivor to report replicas not found', () => (readFileSync(survivorLog, 'utf8').split('\n').some((l) => l.includes('replicas not found') && l.includes(lost)) ? true : undefined), 90_000, 500);
    expect(await runningCopies(lost)).toEqual([]);
    // Its public API says so too, from its coordinator's knowledge: the registry could not record it.
    const survivorEndpoint = (await registry.hosts({ degraded: true })).find((h) => h.hostId === testbed.host(survivor).hostId)!.grpcEndpoint;
    const api = new ClusterClient(survivorEndpoint, grpc.credentials.createInsecure());
    try {
      const listed = (await api.listContainers()).containers.find((c) => c.name === lost);
      expect(listed).toMatchObject({ host: owner.hostId, state: 'replicas-not-found', lastVersion: 0 }); // its snapshot is unreadable now
      expect((await registry.allOwnership({ degraded: true })).find((o) => o.container === lost)?.state).not.toBe('replicas-not-found');
    } finally {
      api.close();
    }

    // One replica host returns: the snapshot is readable again and the container is restored — on that host, or
    // on the survivor (reading the returned replica) when the returned host's agent is not serving yet.
    await testbed.ring.restart(otherReplica);
    await startAgent(testbed, otherReplica, agentOptions);
    const restored = await until(
      `${lost} restored on a live host`,
      async () => {
        const o = await registry.ownership(lost);
        return o?.state === 'running' && o.owner !== owner.hostId ? o : undefined;
      },
      120_000,
      500,
    );
    const where = testbed.hosts.findIndex((h) => h.hostId === restored.owner) + 1;
    expect([otherReplica, survivor]).toContain(where);
    expect(await runningCopies(lost)).toEqual([where]);
    expect(await waitForCounterAbove(testbed.host(where), lost, before - 1)).toBeGreaterThanOrEqual(before);
    // The audit trail has both, written once the registry had its quorum back.
    await until('the replicas-not-found event in the audit trail', async () => {
      const events = await new EventLog(client, META, createLogger('test', 'error')).between(new Date(readAt), new Date());
      return events.some((e) => e.kind === 'replicas-not-found' && e.container === lost) && events.some((e) => e.kind === 'restore-done' && e.container === lost) ? true : undefined;
    }, 60_000, 1000);

    // Host 3 returns too: its stale copy goes, and nothing runs twice.
    await testbed.ring.restart(FAILED);
    await startAgent(testbed, FAILED, agentOptions);
    await until(`host3's stale copy of ${lost} destroyed`, async () => (!(await runtimeFor(owner).exists(lost)) ? true : undefined), 60_000);
    for (const name of ALL()) expect((await runningCopies(name)).length).toBeLessThanOrEqual(1);
  });
});
