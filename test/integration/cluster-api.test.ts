import { renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import type cassandra from 'cassandra-driver';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentClient } from '../../src/api/agent-client.ts';
import { ClusterClient } from '../../src/api/cluster-client.ts';
import type { Event__Output } from '../../src/api/generated/lxcr/v1/Event.ts';
import type { ListSnapshotsResponse__Output } from '../../src/api/generated/lxcr/v1/ListSnapshotsResponse.ts';
import { CLUSTER_SERVICE_NAME, clusterProto } from '../../src/api/proto.ts';
import { ClusterRegistry } from '../../src/cluster/registry.ts';
import type { CassandraSnapshotStore } from '../../src/storage/cassandra-store.ts';
import { EventLog } from '../../src/cluster/events.ts';
import { errorMessage, type CodedError } from '../../src/util/errors.ts';
import { createLogger } from '../../src/util/log.ts';
import { CQL_PORT } from '../../testcontainers/cassandra.ts';
import { agentPidFile, type TestbedAgent, startAgents, stopAgents } from '../../testcontainers/agents.ts';
import { readCounter, runCounterContainer, runtimeFor, waitForCounterAbove } from '../../testcontainers/lxc.ts';
import { runningCopiesOf } from '../../testcontainers/testbed.ts';
import { connectStore, sharedTestbed, removeContainersEverywhere, untilAdopted } from '../support/testbed.ts';
import { until } from '../../testcontainers/until.ts';
import { lxcr } from '../support/cli.ts';

/**
 * The public API (lxcr.v1.ClusterService) and the CLI commands over it, against agents on the real testbed: any
 * agent answers for the whole cluster, and a checkpoint asked of one agent runs on the container's owner.
 */

const testbed = sharedTestbed();
const SNAPSHOTS = 'api_snap';
const META = 'api_meta';
const CONTAINER = 'api-a';
let client: cassandra.Client;
let store: CassandraSnapshotStore;
const agents: TestbedAgent[] = [];
let api: ClusterClient;
let registry: ClusterRegistry;

beforeAll(async () => {
  ({ client, store } = await connectStore(testbed, SNAPSHOTS));
  registry = new ClusterRegistry({ client, keyspace: META });
  await registry.ensureSchema();
  await testbed.ring.waitSchemaAgreement();
  await runCounterContainer(testbed.host(1), CONTAINER);
  // No schedule: checkpoints happen only when asked.
  agents.push(...(await startAgents(testbed, { snapshotKeyspace: SNAPSHOTS, metaKeyspace: META })));
  // Asked of host 2's agent; the container lives on host 1.
  api = new ClusterClient(agents[1]!.grpcEndpoint, grpc.credentials.createInsecure());
  await untilAdopted(api, CONTAINER, 'host1');
}, 240_000);

afterAll(async () => {
  api?.close();
  await stopAgents(testbed);
  await removeContainersEverywhere(testbed, [CONTAINER]);
  await client?.shutdown();
}, 120_000);

describe('the public API, answered by any agent for the whole cluster', () => {
  it('lists the hosts with their gossip state and load, and serves its health', async () => {
    const { hosts, answeredBy } = await api.listHosts();
    expect(answeredBy).toBe('host2');
    expect(hosts.map((h) => [h.hostId, h.state])).toEqual([['host1', 'UN'], ['host2', 'UN'], ['host3', 'UN']]);
    expect(hosts.find((h) => h.hostId === 'host1')!.containers).toBeGreaterThanOrEqual(1);
    expect(hosts.map((h) => h.grpcEndpoint)).toEqual(agents.map((a) => a.grpcEndpoint));
    const health = new AgentClient(agents[1]!.grpcEndpoint, grpc.credentials.createInsecure());
    try {
      expect(await health.health(CLUSTER_SERVICE_NAME)).toBe('SERVING');
    } finally {
      health.close();
    }
  });

  it('checkpoints a container on its owner when another agent is asked, and lists the committed version', async () => {
    const done = await api.checkpoint(CONTAINER);
    expect(done.host).toBe('host1');
    expect(done.version).toBeGreaterThan(0);
    expect(done.logicalBytes).toBeGreaterThan(0);
    expect((await store.latestCommitted(CONTAINER))?.version).toBe(done.version);

    const { snapshots } = await api.listSnapshots(CONTAINER);
    const listed = snapshots.find((s) => s.version === done.version)!;
    expect(listed).toMatchObject({ state: 'committed', sourceHost: 'host1', logicalBytes: done.logicalBytes });
    expect(listed.chunks).toBeGreaterThan(0);
    expect(listed.storedBytes).toBeGreaterThan(0);
    const container = (await api.listContainers()).containers.find((c) => c.name === CONTAINER)!;
    expect(container).toMatchObject({ host: 'host1', state: 'running', epoch: 1, lastVersion: done.version, lastLogicalBytes: done.logicalBytes });
  });

  it('answers bad requests with their status code and what was wrong (a stock generated client)', async () => {
    const stub = new clusterProto.lxcr.v1.ClusterService(agents[2]!.grpcEndpoint, grpc.credentials.createInsecure());
    const listSnapshots = (container: string) =>
      new Promise<grpc.ServiceError | ListSnapshotsResponse__Output>((resolve) => stub.ListSnapshots({ container }, (err, res) => resolve(err ?? res!)));
    try {
      const unknown = (await listSnapshots('no-such-container')) as grpc.ServiceError;
      expect(unknown.code).toBe(grpc.status.NOT_FOUND);
      expect(unknown.details).toMatch(/no-such-container is not in the cluster/);
      const malformed = (await listSnapshots('../etc')) as grpc.ServiceError;
      expect(malformed.code).toBe(grpc.status.INVALID_ARGUMENT);
      expect(malformed.details).toMatch(/invalid ListSnapshots request: invalid container name/);
      const checkpoint = await new Promise<grpc.ServiceError | null>((resolve) => stub.Checkpoint({ container: 'no-such-container' }, (err) => resolve(err)));
      expect(checkpoint?.code).toBe(grpc.status.NOT_FOUND);
      expect(checkpoint?.details).toMatch(/no host owns it/);
    } finally {
      stub.close();
    }
  });
});

describe('migrations and restores asked for through the public API', () => {
  it('migrates a running container to another host exactly once, its counter going on from the last checkpoint', async () => {
    const before = await readCounter(testbed.host(1), CONTAINER);
    const moved = await api.migrate(CONTAINER, 'host3'); // asked of host 2's agent: host 1 hands off, host 3 restores
    expect(moved).toMatchObject({ container: CONTAINER, fromHost: 'host1', toHost: 'host3', epoch: 2 });
    expect(moved.freezeMs).toBeGreaterThan(0);
    expect((await store.latestCommitted(CONTAINER))?.version).toBe(moved.version); // the last checkpoint, taken by host 1
    expect(await runningCopiesOf(testbed, CONTAINER)).toEqual([3]);
    expect(await waitForCounterAbove(testbed.host(3), CONTAINER, before - 1)).toBeGreaterThanOrEqual(before);
    // Host 1's stopped copy goes once its agent sees the new owner; host 3's agent checkpoints it from now on.
    await until('host1\'s stopped copy destroyed', async () => (!(await runtimeFor(testbed.host(1)).exists(CONTAINER)) || undefined), 60_000, 500);
    const checkpoint = await api.checkpoint(CONTAINER);
    expect(checkpoint.host).toBe('host3');
    const events = await new EventLog(client, META, createLogger('test', 'error')).between(new Date(Date.now() - 5 * 60_000), new Date());
    expect(events.find((e) => e.kind === 'handed-off' && e.container === CONTAINER)).toMatchObject({ host: 'host1', epoch: 1, version: moved.version });
    expect(events.find((e) => e.kind === 'migration-done' && e.container === CONTAINER)).toMatchObject({ host: 'host2', epoch: 2, outcome: 'ok' });
  });

  it('restores an older version in place: the running copy is stopped first, one copy runs', async () => {
    const committed = (await api.listSnapshots(CONTAINER)).snapshots.filter((s) => s.state === 'committed');
    expect(committed.length).toBeGreaterThanOrEqual(2);
    const older = committed.at(-1)!.version;
    const restored = await api.restore(CONTAINER, older);
    expect(restored).toMatchObject({ fromHost: 'host3', toHost: 'host3', version: older, epoch: 3 });
    expect(await runningCopiesOf(testbed, CONTAINER)).toEqual([3]);
    expect((await registry.ownership(CONTAINER))).toMatchObject({ owner: 'host3', epoch: 3, state: 'running' });
  });

  it('refuses what it cannot do before stopping anything, with the status code and the reason', async () => {
    const codeOf = (promise: Promise<unknown>) => promise.then(() => 'OK', (err: unknown) => `${(err as CodedError).code}: ${(err as Error).message}`);
    expect(await codeOf(api.migrate(CONTAINER, 'host9'))).toMatch(/^NOT_FOUND: .*the target host host9 is not a host of this cluster/);
    expect(await codeOf(api.migrate(CONTAINER, 'host3'))).toMatch(/^INVALID_ARGUMENT: .*api-a already runs on host3/);
    expect(await codeOf(api.migrate(CONTAINER, ''))).toMatch(/^INVALID_ARGUMENT: .*target_host is required/);
    expect(await codeOf(api.restore(CONTAINER, 999))).toMatch(/^NOT_FOUND: .*api-a has no version 999/);
    expect(await codeOf(api.restore('no-such-container'))).toMatch(/^NOT_FOUND: .*no host owns it/);
    // Still running where it was, untouched.
    expect(await runningCopiesOf(testbed, CONTAINER)).toEqual([3]);
    expect((await registry.ownership(CONTAINER))?.epoch).toBe(3);
  });
});

describe('lxcr status, containers, snapshots and checkpoint', () => {
  const agent = () => ['--agent', agents[0]!.grpcEndpoint, '--insecure'];

  it('print tables, or the response as JSON with --json', () => {
    const status = lxcr('status', ...agent());
    expect(status.status).toBe(0);
    expect(status.stdout).toMatch(/^HOST\s+STATE\s+CONTAINERS/);
    expect(status.stdout).toMatch(/host3\s+UN/);
    const containers = lxcr('containers', ...agent(), '--json');
    expect(containers.status).toBe(0);
    const listed = JSON.parse(containers.stdout) as { containers: Array<{ name: string; host: string }> };
    expect(listed.containers.find((c) => c.name === CONTAINER)?.host).toBe('host3');
    const checkpoint = lxcr('checkpoint', CONTAINER, ...agent());
    expect(checkpoint.status).toBe(0);
    expect(checkpoint.stdout).toMatch(new RegExp(`^${CONTAINER}: version \\d+ committed by host3`));
    const snapshots = lxcr('snapshots', CONTAINER, ...agent());
    expect(snapshots.stdout.split('\n')[0]).toMatch(/^VERSION\s+STATE\s+FROM/);
    expect(snapshots.stdout).toMatch(/committed\s+host3/);
    const migrated = lxcr('migrate', CONTAINER, '--to', 'host1', ...agent());
    expect(migrated.status).toBe(0);
    expect(migrated.stdout).toMatch(new RegExp(`^${CONTAINER}: migrated from host3 to host1, version \\d+, epoch 4`));
  });

  it('exit 5 when the cluster refuses, 6 when no agent answers, 2 for bad arguments — each with its reason', () => {
    const unknown = lxcr('snapshots', 'no-such-container', ...agent());
    expect(unknown.status).toBe(5);
    expect(unknown.stderr).toMatch(/no-such-container is not in the cluster/);
    const noAgent = lxcr('status', '--agent', '127.0.0.1:1', '--insecure');
    expect(noAgent.status).toBe(6);
    expect(noAgent.stderr).toMatch(/ListHosts on 127\.0\.0\.1:1/);
    const noTls = lxcr('status', '--agent', agents[0]!.grpcEndpoint);
    expect(noTls.status).toBe(2);
    expect(noTls.stderr).toMatch(/--insecure/);
    expect(lxcr('snapshots', ...agent()).status).toBe(2);
    expect(lxcr('migrate', CONTAINER, ...agent()).stderr).toMatch(/--to HOST is required/);
    const badVersion = lxcr('restore', CONTAINER, '--version', '999', ...agent());
    expect(badVersion.status).toBe(5);
    expect(badVersion.stderr).toMatch(/has no version 999/);
  });
});

describe('a migration that fails half-way', () => {
  it('whose last checkpoint fails: the container runs on where it was, untouched', async () => {
    const owner = (await registry.ownership(CONTAINER))!;
    const source = testbed.hosts.findIndex((h) => h.hostId === owner.owner) + 1;
    const target = source === 2 ? 'host3' : 'host2';
    const undo = breakStaging(source);
    try {
      const failed = await api.migrate(CONTAINER, target).then(() => 'it succeeded', (err: unknown) => errorMessage(err));
      expect(failed).toMatch(/Handoff of api-a/);
    } finally {
      undo();
    }
    expect(await runningCopiesOf(testbed, CONTAINER)).toEqual([source]);
    expect(await registry.ownership(CONTAINER)).toMatchObject({ owner: owner.owner, epoch: owner.epoch, state: 'running' });
    // Still supervised there: it checkpoints on request.
    expect((await api.checkpoint(CONTAINER)).host).toBe(owner.owner);
  });

  it('whose target cannot restore: the error says so, and failover runs the container once elsewhere', async () => {
    const owner = (await registry.ownership(CONTAINER))!;
    const source = testbed.hosts.findIndex((h) => h.hostId === owner.owner) + 1;
    const targetIndex = source === 2 ? 3 : 2;
    const before = await readCounter(testbed.host(source), CONTAINER);
    const undo = breakStaging(targetIndex);
    try {
      const failed = await api.migrate(CONTAINER, `host${targetIndex}`).then(() => 'it succeeded', (err: unknown) => errorMessage(err));
      expect(failed).toMatch(new RegExp(`restore on host${targetIndex} failed: .*restored on its first live replica host by failover`));
      const running = await until('api-a running again', async () => {
        const o = await registry.ownership(CONTAINER);
        return o?.state === 'running' && o.epoch > owner.epoch + 1 ? o : undefined;
      }, 120_000, 500);
      expect(running.owner).not.toBe(`host${targetIndex}`);
    } finally {
      undo();
    }
    const where = await until('one running copy', async () => {
      const copies = await runningCopiesOf(testbed, CONTAINER);
      return copies.length === 1 ? copies : undefined;
    }, 60_000, 500);
    expect(await waitForCounterAbove(testbed.host(where[0]!), CONTAINER, before - 1)).toBeGreaterThanOrEqual(before);
  });
});

/** A real fault on a host: its agent's staging directory is replaced by a file, so dumps and restores there fail. */
function breakStaging(index: number): () => void {
  const staging = join(agentPidFile(testbed, index).replace(/agent\.pid$/, ''), 'staging');
  renameSync(staging, `${staging}.aside`);
  writeFileSync(staging, 'not a directory');
  return () => {
    rmSync(staging, { force: true });
    renameSync(`${staging}.aside`, staging);
  };
}

describe('the audit trail of all this, in CQL tables and through lxcr audit / lxcr cql', () => {
  const cassandraFlags = () => ['--cassandra', testbed.contactPoints.join(','), '--port', String(CQL_PORT), '--keyspace', META];

  it('has a row for each kind of event the cluster went through, with host, container, version, bytes, duration and outcome', async () => {
    const events = await new EventLog(client, META, createLogger('test', 'error')).ofContainer(CONTAINER, new Date(Date.now() - 3600_000), new Date());
    const first = (kind: string) => events.find((e) => e.kind === kind);
    expect(first('container-adopted')).toMatchObject({ host: 'host1', epoch: 1 });
    expect(first('checkpoint-committed')).toMatchObject({ outcome: 'ok' });
    expect(first('checkpoint-committed')!.version).toBeGreaterThan(0);
    expect(first('checkpoint-committed')!.bytes).toBeGreaterThan(0);
    expect(first('checkpoint-committed')!.durationMs).toBeGreaterThan(0);
    expect(first('checkpoint-failed')).toMatchObject({ outcome: 'failed' }); // the hand-off whose staging was broken
    expect(first('gc-collected')).toMatchObject({ outcome: 'ok' });
    expect(first('handed-off')).toMatchObject({ outcome: 'ok' });
    expect(first('migration-done')).toMatchObject({ outcome: 'ok' });
    expect(first('migration-failed')).toMatchObject({ outcome: 'failed' });
    expect(first('restore-failed')?.detail).toMatch(/ENOTDIR|not a directory/);
    expect(first('restore-done')!.bytes).toBeGreaterThan(0);
    // Refused as asked (a restore of version 999), or failed doing it (the migrations that failed half-way).
    const requests = events.filter((e) => e.kind === 'request-refused');
    expect(requests.find((e) => e.outcome === 'refused')?.detail).toMatch(/^Restore: .*has no version 999/);
    expect(requests.filter((e) => e.outcome === 'failed').map((e) => e.detail!.split(':')[0])).toEqual(expect.arrayContaining(['Migrate', 'Restore', 'Handoff']));
  });

  it('lxcr audit runs the common reports, lxcr cql any statement; both say what was wrong', () => {
    const history = lxcr('audit', 'history', CONTAINER, ...cassandraFlags());
    expect(history.status).toBe(0);
    expect(history.stdout).toMatch(/^AT\s+KIND\s+HOST/);
    expect(history.stdout).toMatch(/migration-done/);
    const failures = lxcr('audit', 'failures', '--since', '1h', ...cassandraFlags(), '--json');
    expect((JSON.parse(failures.stdout) as Array<{ kind: string }>).map((e) => e.kind)).toContain('restore-failed');
    expect(lxcr('audit', 'restores', ...cassandraFlags()).stdout).toMatch(/^HOST\s+RESTORES\s+MEAN\s+MAX\nhost\d/);
    expect(lxcr('audit', 'gc', ...cassandraFlags()).stdout).toMatch(new RegExp(`${CONTAINER}\\s+\\d+`));
    const day = new Date().toISOString().slice(0, 10);
    const cql = lxcr('cql', `SELECT kind, version FROM ${META}.events_by_container WHERE container = '${CONTAINER}' AND day = '${day}'`, ...cassandraFlags().slice(0, 4), '--json');
    expect(cql.status).toBe(0);
    expect((JSON.parse(cql.stdout) as Array<{ kind: string }>).some((row) => row.kind === 'handed-off')).toBe(true);
    const bad = lxcr('cql', 'SELEKT nothing', ...cassandraFlags().slice(0, 4));
    expect(bad.status).toBe(2);
    expect(bad.stderr).toMatch(/Cassandra refused the statement/);
    expect(lxcr('audit', 'everything', ...cassandraFlags()).status).toBe(2);
    expect(lxcr('audit', 'gc', '--since', 'yesterday', ...cassandraFlags()).stderr).toMatch(/--since must be a number with s, m, h or d/);
  });
});

describe('the event stream of the public API', () => {
  it('sends a container\'s events oldest first, then follows new ones until cancelled', async () => {
    const past: Event__Output[] = [];
    await api.streamEvents({ sinceMs: Date.now() - 3600_000, container: CONTAINER }, (e) => past.push(e)).done;
    expect(past.map((e) => e.kind)).toEqual(expect.arrayContaining(['container-adopted', 'handed-off', 'migration-done', 'restore-done']));
    expect(past.map((e) => e.atMs)).toEqual([...past.map((e) => e.atMs)].sort((a, b) => a - b));
    expect(past.every((e) => e.container === CONTAINER)).toBe(true);

    const live: Event__Output[] = [];
    const stream = api.streamEvents({ sinceMs: Date.now(), container: CONTAINER, follow: true }, (e) => live.push(e));
    const done = await api.checkpoint(CONTAINER);
    await until('the new checkpoint on the stream', () => (live.some((e) => e.kind === 'checkpoint-committed' && e.version === done.version) || undefined), 30_000, 200);
    stream.cancel();
    await stream.done;
  });

  it('refuses a malformed filter, and lxcr events prints the stream', async () => {
    const bad = await api.streamEvents({ container: '../etc' }, () => undefined).done.then(() => 'ended', (err: unknown) => `${(err as CodedError).code}: ${errorMessage(err)}`);
    expect(bad).toMatch(/^INVALID_ARGUMENT: .*invalid StreamEvents request/);
    const printed = lxcr('events', '--container', CONTAINER, '--since', '1h', '--json', '--agent', agents[0]!.grpcEndpoint, '--insecure');
    expect(printed.status).toBe(0);
    const kinds = printed.stdout.trim().split('\n').map((line) => (JSON.parse(line) as Event__Output).kind);
    expect(kinds).toContain('migration-done');
  });
});
