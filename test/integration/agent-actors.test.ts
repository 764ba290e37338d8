import { mkdtempSync, rmSync } from 'node:fs';
import type cassandra from 'cassandra-driver';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HostSupervisor } from '../../src/actors/host-supervisor.ts';
import type { ClusterEvent } from '../../src/cluster/events.ts';
import type { CassandraSnapshotStore } from '../../src/storage/cassandra-store.ts';
import { CodedError, InvalidArgumentError, NotFoundError } from '../../src/util/errors.ts';
import { run } from '../../src/util/exec.ts';
import { createLogger } from '../../src/util/log.ts';
import { createCounterContainer, readCounter, runtimeFor, startContainer, waitForCounterAbove, waitRunning } from '../../testcontainers/lxc.ts';
import { connectStore, removeContainer, sharedTestbed } from '../support/testbed.ts';
import { until } from '../../testcontainers/until.ts';

const testbed = sharedTestbed();
const host = testbed.host(2);
const runtime = runtimeFor(host);
const CONTAINER = 'actor-counter';
const NEIGHBOUR = 'actor-neighbour';
const staging = mkdtempSync('/var/tmp/lxcr-staging-');
let client: cassandra.Client;
let store: CassandraSnapshotStore;
let supervisor: HostSupervisor;
/** What the actors put in the audit trail (an EventLog writes these to Cassandra; see the failover tests). */
const recorded: ClusterEvent[] = [];

beforeAll(async () => {
  ({ client, store } = await connectStore(testbed, 'agent_test'));
  for (const name of [CONTAINER, NEIGHBOUR]) {
    await createCounterContainer(host, name);
    await startContainer(host, name);
    await waitRunning(host, name);
  }
  supervisor = new HostSupervisor({
    hostId: host.hostId, runtime, store, stagingDir: staging, logger: createLogger('test-agent', 'warn'), pollMs: 300, schedule: { everyMs: 2000 }, keep: 2,
    events: { record: (event) => { recorded.push(event); return Promise.resolve(); } },
  });
  await until('the supervisor to adopt the containers', () =>
    supervisor.states().get(CONTAINER) === 'RUNNING' && supervisor.states().get(NEIGHBOUR) === 'RUNNING' ? true : undefined,
  );
});

afterAll(async () => {
  await supervisor?.stop();
  for (const name of [CONTAINER, NEIGHBOUR]) await removeContainer(runtime, name);
  await client?.shutdown();
  rmSync(staging, { recursive: true, force: true });
});

describe("the agent's actors on a real host", () => {
  it('checkpoints on demand, one at a time, and on its schedule, keeping K versions', async () => {
    const [a, b] = await Promise.all([supervisor.checkpoint(CONTAINER), supervisor.checkpoint(CONTAINER)]);
    expect(a.version).not.toBe(b.version);
    expect(await runtime.state(CONTAINER)).toBe('RUNNING');
    const newest = Math.max(a.version, b.version);
    // The schedule (every 2 s) goes on by itself.
    await until('a scheduled checkpoint', async () => ((await store.latestCommitted(CONTAINER))!.version > newest ? true : undefined), 30_000);
    // GC runs right after each commit: between the two there are K + 1 committed versions for a moment.
    const committed = await until('GC down to K = 2 committed versions', async () => {
      const versions = (await store.versions(CONTAINER)).filter((v) => v.state === 'committed');
      return versions.length <= 2 ? versions : undefined;
    }, 30_000);
    expect(committed.length).toBeGreaterThan(0);
  });

  it('restores a crashed container from its last committed snapshot, and keeps checkpointing it', async () => {
    const before = await readCounter(host, CONTAINER);
    const checkpointed = await supervisor.checkpoint(CONTAINER);
    const { stdout } = await run('lxc-info', ['-P', host.lxcpath, '-n', CONTAINER, '-p', '-H']);
    process.kill(Number(stdout.trim()), 'SIGKILL'); // the container's init dies: a crash nobody asked for

    // Right after the kill LXC may still say RUNNING: what says the crash was seen and handled is the audit event.
    const recoveries = await until('the crash recovery in the audit trail', () => {
      const found = recorded.filter((e) => e.container === CONTAINER && e.kind.startsWith('crash-recover'));
      return found.length > 0 ? found : undefined;
    }, 60_000);
    await until('the container to be restored', async () => ((await runtime.state(CONTAINER).catch(() => undefined)) === 'RUNNING' && supervisor.states().get(CONTAINER) === 'RUNNING' ? true : undefined), 60_000);
    const after = await waitForCounterAbove(host, CONTAINER, before);
    expect(after).toBeGreaterThanOrEqual(before); // continued from a checkpoint, not from 1
    expect(recoveries.map((e) => [e.kind, e.host, e.outcome])).toEqual([['crash-recovered', host.hostId, 'ok']]);
    expect(recoveries[0]!.version).toBeGreaterThanOrEqual(checkpointed.version);
    expect(recoveries[0]!.detail).toMatch(/stopped without being asked to; restored on this host: .*lxc-checkpoint -r \d+ ms/);
    await until('a checkpoint after the restore', async () => ((await store.latestCommitted(CONTAINER))!.version > checkpointed.version + 1 ? true : undefined), 30_000);
  });

  it('answers a checkpoint request for a container it does not supervise with NotFound', async () => {
    await expect(supervisor.checkpoint('no-such-container')).rejects.toThrow(NotFoundError);
  });

  it("goes on checkpointing a container while a neighbour's checkpoints fail, and the neighbour's actor stays alive", async () => {
    const lxcFreeze = (tool: 'lxc-freeze' | 'lxc-unfreeze') => run(tool, ['-P', host.lxcpath, '-n', NEIGHBOUR]);
    await lxcFreeze('lxc-freeze');
    try {
      const refused = await supervisor.checkpoint(NEIGHBOUR).catch((e: unknown) => e);
      expect(refused).toBeInstanceOf(CodedError);
      expect((refused as CodedError).code).toBe('FAILED_PRECONDITION');
      expect(String(refused)).toMatch(/FROZEN/);
      const healthy = await supervisor.checkpoint(CONTAINER);
      expect(healthy.version).toBeGreaterThan(0);
    } finally {
      await lxcFreeze('lxc-unfreeze');
    }
    const recovered = await supervisor.checkpoint(NEIGHBOUR);
    expect((await store.latestCommitted(NEIGHBOUR))?.version).toBe(recovered.version);
  });
});

describe('a cron-scheduled host supervisor', () => {
  const cronHost = testbed.host(1);
  const cronRuntime = runtimeFor(cronHost);
  const CRON_CONTAINER = 'actor-cron';
  let cronSupervisor: HostSupervisor | undefined;

  afterAll(async () => {
    await cronSupervisor?.stop();
    await removeContainer(cronRuntime, CRON_CONTAINER);
  });

  it('checkpoints on its cron expression (every 2 s, node-cron with seconds)', async () => {
    await createCounterContainer(cronHost, CRON_CONTAINER);
    await startContainer(cronHost, CRON_CONTAINER);
    await waitRunning(cronHost, CRON_CONTAINER);
    cronSupervisor = new HostSupervisor({
      hostId: cronHost.hostId, runtime: cronRuntime, store, stagingDir: staging, logger: createLogger('test-cron', 'warn'),
      pollMs: 300, schedule: { cron: '*/2 * * * * *' }, keep: 2,
    });
    const first = await until('a first cron checkpoint', async () => (await store.latestCommitted(CRON_CONTAINER))?.version, 30_000);
    await until('a second cron checkpoint', async () => ((await store.latestCommitted(CRON_CONTAINER))!.version > first ? true : undefined), 30_000);
  });

  it('refuses to start with an invalid cron expression, before starting anything', () => {
    expect(() => new HostSupervisor({
      hostId: 'bad', runtime: cronRuntime, store, stagingDir: staging, logger: createLogger('test-cron', 'warn'), schedule: { cron: '61 * * * *' },
    })).toThrow(InvalidArgumentError);
  });
});
