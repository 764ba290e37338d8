import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import cassandra from 'cassandra-driver';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it, onTestFailed } from 'vitest';
import { HostSupervisor } from '../../src/actors/host-supervisor.ts';
import { ClusterClient } from '../../src/api/cluster-client.ts';
import { EventLog, eventBucket, eventDay, retentionSeconds } from '../../src/cluster/events.ts';
import { ClusterRegistry } from '../../src/cluster/registry.ts';
import type { CassandraSnapshotStore } from '../../src/storage/cassandra-store.ts';
import { createLogger } from '../../src/util/log.ts';
import { agentStagingDir, agentWarnings, startAgent, stopAgent, type TestbedAgent } from '../../testcontainers/agents.ts';
import { readCounter, runCounterContainer, runtimeFor, waitForCounterAbove } from '../../testcontainers/lxc.ts';
import { runningCopiesOf } from '../../testcontainers/testbed.ts';
import { until } from '../../testcontainers/until.ts';
import { connectStore, removeContainer, sharedTestbed } from '../support/testbed.ts';

/**
 * A graceful stop of a real `lxcr agent` (SIGTERM) on the testbed, with agents on the other hosts: the checkpoint
 * in flight finishes, the agent deregisters and exits 0, leaves no staging, and its containers run on without
 * being restored anywhere else. Also: the audit TTL set through the environment (audit.ttlDays), and the abort
 * of an upload that outlives the drain bound.
 */

const testbed = sharedTestbed();
const SNAPSHOTS = 'shutdown_snap';
const META = 'shutdown_meta';
const CONTAINER = 'sd-run';
const BIG = 'sd-big';
const TTL_DAYS = 7;
let client: cassandra.Client;
let store: CassandraSnapshotStore;
let registry: ClusterRegistry;
const agents: TestbedAgent[] = [];
/** Refused requests audited one by one per minute, set low to see the rest summed up (audit.refusalsPerMinute). */
const REFUSALS_PER_MINUTE = 2;
const agentOptions = {
  snapshotKeyspace: SNAPSHOTS, metaKeyspace: META, env: { LXCR_AUDIT_TTL_DAYS: String(TTL_DAYS), LXCR_AUDIT_REFUSALS_PER_MINUTE: String(REFUSALS_PER_MINUTE) },
};

beforeAll(async () => {
  ({ client, store } = await connectStore(testbed, SNAPSHOTS));
  registry = new ClusterRegistry({ client, keyspace: META });
  await registry.ensureSchema();
  await testbed.ring.waitSchemaAgreement();
  await runCounterContainer(testbed.host(1), CONTAINER, { memoryMiB: 64 });
  // Host 1's agent is configured by a config file, as a deployed one is; the others by flags.
  for (let i = 1; i <= testbed.hosts.length; i++) agents.push(await startAgent(testbed, i, { ...agentOptions, configFile: i === 1 }));
}, 180_000);

afterAll(async () => {
  for (let i = 1; i <= testbed.hosts.length; i++) await stopAgent(testbed, i);
  for (let i = 1; i <= testbed.hosts.length; i++) for (const name of [CONTAINER, BIG]) await removeContainer(runtimeFor(testbed.host(i)), name);
  await client?.shutdown();
}, 120_000);

/** The TTL left on an event row's columns, in seconds (null: none). */
async function ttlOf(table: 'events' | 'events_by_container', where: string, params: unknown[]): Promise<number | null> {
  const row = (await client.execute(`SELECT TTL(kind) AS ttl FROM ${META}.${table} WHERE ${where}`, params, { prepare: true })).first();
  return (row?.['ttl'] as number | null | undefined) ?? null;
}

describe('the agent on SIGTERM', () => {
  it('writes its audit rows with the TTL that audit.ttlDays sets, here from LXCR_AUDIT_TTL_DAYS', async () => {
    onTestFailed(() => void process.stderr.write(agentWarnings(testbed)));
    const events = new EventLog(client, META, createLogger('test', 'error'));
    const adopted = await until('the agent to record adopting the container', async () => {
      const found = (await events.ofContainer(CONTAINER, new Date(Date.now() - 3600_000), new Date())).find((e) => e.kind === 'container-adopted');
      return found;
    }, 60_000, 500);
    const at = cassandraTimeUuid(adopted.at);
    const byContainer = await ttlOf('events_by_container', 'container = ? AND day = ? AND at >= ? AND at <= ?', [CONTAINER, eventDay(adopted.at), ...at]);
    const byHour = await ttlOf('events', 'bucket = ? AND at >= ? AND at <= ?', [eventBucket(adopted.at), ...at]);
    const full = TTL_DAYS * 86_400;
    for (const ttl of [byContainer, byHour]) {
      expect(ttl).toBeGreaterThan(full - 3600);
      expect(ttl).toBeLessThanOrEqual(full);
    }
    // audit.ttlDays 0: kept forever, no TTL at all.
    const forever = new EventLog(client, META, createLogger('test', 'error'), retentionSeconds(0));
    await forever.record({ kind: 'host-up', host: 'host9', container: 'sd-forever', outcome: 'ok' });
    const [written] = await forever.ofContainer('sd-forever', new Date(Date.now() - 60_000), new Date());
    expect(await ttlOf('events_by_container', 'container = ? AND day = ? AND at >= ? AND at <= ?', ['sd-forever', eventDay(written!.at), ...cassandraTimeUuid(written!.at)])).toBeNull();
  });

  it('finishes the checkpoint in flight, deregisters, exits 0 and leaves no staging; its containers run on, restored nowhere', async () => {
    onTestFailed(() => void process.stderr.write(agentWarnings(testbed)));
    const agent = agents[0]!;
    const owned = await until('host1 to own the container', async () => {
      const o = await registry.ownership(CONTAINER);
      return o?.owner === 'host1' && o.state === 'running' ? o : undefined;
    });
    const api = new ClusterClient(agent.grpcEndpoint, grpc.credentials.createInsecure());
    try {
      // Refused requests beyond audit.refusalsPerMinute are counted, and summed up at the latest when the agent stops.
      const refusedSince = new Date();
      const REFUSED = 5;
      for (let i = 0; i < REFUSED; i++) await expect(api.checkpoint('sd-no-such-container')).rejects.toMatchObject({ code: 'NOT_FOUND' });
      const checkpoint = api.checkpoint(CONTAINER);
      // SIGTERM while the checkpoint is under way: its dump or upload is staged.
      await until('the checkpoint to be staged', () => (readdirSync(agentStagingDir(testbed, 1)).length > 0 ? true : undefined), 60_000, 20);
      const signalledAt = Date.now();
      await stopAgent(testbed, 1, 90_000);
      const exit = await agent.exited;
      const stopMs = Date.now() - signalledAt;

      expect(exit).toEqual({ code: 0, signal: null });
      const done = await checkpoint;
      expect((await store.latestCommitted(CONTAINER))?.version).toBe(done.version);
      expect((await store.versions(CONTAINER)).filter((v) => v.state !== 'committed')).toEqual([]);
      expect(readdirSync(agentStagingDir(testbed, 1))).toEqual([]);
      const host = (await registry.hosts()).find((h) => h.hostId === 'host1')!;
      expect(host.agentState).toBe('stopped');
      expect(host.stoppedAt!.getTime()).toBeGreaterThanOrEqual(signalledAt - 1000);
      // What an operator sees: lxcr status (ListHosts) from another agent shows it stopped, its node still UN.
      const peer = new ClusterClient(agents[1]!.grpcEndpoint, grpc.credentials.createInsecure());
      try {
        const listed = (await peer.listHosts()).hosts.find((h) => h.hostId === 'host1');
        expect(listed).toMatchObject({ agentState: 'stopped', state: 'UN' });
        expect(listed!.stoppedAtMs).toBeGreaterThanOrEqual(signalledAt - 1000);
        expect((await peer.listHosts()).hosts.filter((h) => h.hostId !== 'host1').map((h) => h.agentState)).toEqual(['serving', 'serving']);
      } finally {
        peer.close();
      }
      const events = await new EventLog(client, META, createLogger('test', 'error')).between(new Date(signalledAt - 1000), new Date());
      expect(events.filter((e) => e.kind === 'agent-stopped').map((e) => e.host)).toEqual(['host1']);
      const trail = (await new EventLog(client, META, createLogger('test', 'error')).between(new Date(refusedSince.getTime() - 1000), new Date())).filter((e) => e.host === 'host1');
      const oneByOne = trail.filter((e) => e.kind === 'request-refused' && /sd-no-such-container/.test(e.detail ?? ''));
      const summaries = trail.filter((e) => e.kind === 'requests-unrecorded');
      const summed = summaries.map((e) => Number(/Checkpoint ×(\d+)/.exec(e.detail ?? '')?.[1] ?? 0));
      // Two a minute one by one (the five calls may straddle a minute), every other one counted in a summary.
      expect(oneByOne.length).toBeGreaterThanOrEqual(REFUSALS_PER_MINUTE);
      expect(oneByOne.length).toBeLessThanOrEqual(2 * REFUSALS_PER_MINUTE);
      expect(summaries.length).toBeGreaterThanOrEqual(1);
      expect(summaries.every((e) => e.outcome === 'refused' && /not recorded one by one \(at most 2 a minute are\)/.test(e.detail ?? ''))).toBe(true);
      expect(oneByOne.length + summed.reduce((a, b) => a + b, 0)).toBe(REFUSED);
      process.stderr.write(`graceful stop during a checkpoint of a 64 MiB container: ${stopMs} ms from SIGTERM to exit\n`);

      // The container runs on, unsupervised; the other agents leave it alone (its node is still UN).
      const counter = await readCounter(testbed.host(1), CONTAINER);
      await waitForCounterAbove(testbed.host(1), CONTAINER, counter);
      await new Promise((resolve) => setTimeout(resolve, 12_000)); // > two coordinator passes (5 s) and the follower delay (2 s)
      expect(await registry.ownership(CONTAINER)).toMatchObject({ owner: 'host1', epoch: owned.epoch, state: 'running' });
      expect(await runningCopiesOf(testbed, CONTAINER)).toEqual([1]);
    } finally {
      api.close();
    }
  }, 180_000);

  it('registers as serving again when restarted, and goes on checkpointing its container at the same epoch', async () => {
    onTestFailed(() => void process.stderr.write(agentWarnings(testbed)));
    const epoch = (await registry.ownership(CONTAINER))!.epoch;
    const before = (await store.latestCommitted(CONTAINER))!.version;
    agents[0] = await startAgent(testbed, 1, { ...agentOptions, configFile: true });
    expect((await registry.hosts()).find((h) => h.hostId === 'host1')).toMatchObject({ agentState: 'serving', grpcEndpoint: agents[0].grpcEndpoint });
    const api = new ClusterClient(agents[0].grpcEndpoint, grpc.credentials.createInsecure());
    try {
      const done = await until('the restarted agent to supervise the container again', () => api.checkpoint(CONTAINER).catch(() => undefined), 60_000, 1000);
      expect(done.version).toBeGreaterThan(before);
    } finally {
      api.close();
    }
    expect(await registry.ownership(CONTAINER)).toMatchObject({ owner: 'host1', epoch, state: 'running' });
  }, 120_000);
});

describe('a stop that outlives its drain bound', () => {
  it('aborts the upload in flight: no version is committed, its staging is removed, the container runs on', async () => {
    for (let i = 1; i <= testbed.hosts.length; i++) await stopAgent(testbed, i);
    const host = testbed.host(3);
    const runtime = runtimeFor(host);
    await runCounterContainer(host, BIG, { memoryMiB: 128 });
    const staging = mkdtempSync('/var/tmp/lxcr-staging-');
    const supervisor = new HostSupervisor({ hostId: host.hostId, runtime, store, stagingDir: staging, logger: createLogger('test-agent', 'error'), pollMs: 300 });
    let stopped = false;
    try {
      await until('the supervisor to adopt the container', () => (supervisor.states().get(BIG) === 'RUNNING' ? true : undefined));
      const checkpoint = supervisor.checkpoint(BIG).then(
        () => undefined,
        (err: unknown) => err,
      );
      await until('the upload to begin', async () => ((await store.versions(BIG)).some((v) => v.state === 'uploading') ? true : undefined), 60_000, 50);
      const stopping = Date.now();
      await supervisor.stop(1, 15_000);
      stopped = true;
      const stopMs = Date.now() - stopping;
      process.stderr.write(`abort of a 128 MiB upload at stop: ${stopMs} ms\n`);

      expect(String(await checkpoint)).toMatch(/the agent is stopping/);
      expect(stopMs).toBeLessThan(15_000);
      expect(readdirSync(staging)).toEqual([]);
      const versions = await store.versions(BIG);
      expect(versions.length).toBeGreaterThan(0);
      expect(versions.filter((v) => v.state === 'committed')).toEqual([]);
      expect(await store.latestCommitted(BIG)).toBeUndefined();
      expect(await runtime.state(BIG)).toBe('RUNNING');
    } finally {
      if (!stopped) await supervisor.stop(1, 1);
      rmSync(staging, { recursive: true, force: true });
    }
  }, 180_000);
});

/** The timeuuid range of one millisecond, for a WHERE on `at`. */
function cassandraTimeUuid(at: Date): [unknown, unknown] {
  return [cassandra.types.TimeUuid.min(at, 0), cassandra.types.TimeUuid.max(at, 9999)];
}
