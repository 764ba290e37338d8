import { mkdtempSync, rmSync } from 'node:fs';
import type cassandra from 'cassandra-driver';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HostSupervisor } from '../../src/actors/host-supervisor.ts';
import type { CassandraSnapshotStore } from '../../src/storage/cassandra-store.ts';
import { NotFoundError } from '../../src/util/errors.ts';
import { run } from '../../src/util/exec.ts';
import { createLogger } from '../../src/util/log.ts';
import { createCounterContainer, readCounter, runtimeFor, startContainer, waitForCounterAbove, waitRunning } from '../../testcontainers/lxc.ts';
import { connectStore, removeContainer, sharedTestbed } from '../support/testbed.ts';

const testbed = sharedTestbed();
const host = testbed.host(2);
const runtime = runtimeFor(host);
const CONTAINER = 'actor-counter';
const staging = mkdtempSync('/var/tmp/lxcr-staging-');
let client: cassandra.Client;
let store: CassandraSnapshotStore;
let supervisor: HostSupervisor;

async function until<T>(what: string, probe: () => Promise<T | undefined> | T | undefined, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

beforeAll(async () => {
  ({ client, store } = await connectStore(testbed, 'agent_test'));
  await createCounterContainer(host, CONTAINER);
  await startContainer(host, CONTAINER);
  await waitRunning(host, CONTAINER);
  supervisor = new HostSupervisor({
    hostId: host.hostId, runtime, store, stagingDir: staging, logger: createLogger('test-agent', 'warn'), pollMs: 300, schedule: { everyMs: 2000 }, keep: 2,
  });
  await until('the supervisor to adopt the container', () => (supervisor.states().get(CONTAINER) === 'RUNNING' ? true : undefined));
});

afterAll(async () => {
  supervisor?.stop();
  await removeContainer(runtime, CONTAINER);
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
    const committed = (await store.versions(CONTAINER)).filter((v) => v.state === 'committed');
    expect(committed.length).toBeLessThanOrEqual(2);
  });

  it('restores a crashed container from its last committed snapshot, and keeps checkpointing it', async () => {
    const before = await readCounter(host, CONTAINER);
    const checkpointed = await supervisor.checkpoint(CONTAINER);
    const { stdout } = await run('lxc-info', ['-P', host.lxcpath, '-n', CONTAINER, '-p', '-H']);
    process.kill(Number(stdout.trim()), 'SIGKILL'); // the container's init dies: a crash nobody asked for

    await until('the container to be restored', async () => ((await runtime.state(CONTAINER).catch(() => undefined)) === 'RUNNING' && supervisor.states().get(CONTAINER) === 'RUNNING' ? true : undefined), 60_000);
    const after = await waitForCounterAbove(host, CONTAINER, before);
    expect(after).toBeGreaterThanOrEqual(before); // continued from a checkpoint, not from 1
    await until('a checkpoint after the restore', async () => ((await store.latestCommitted(CONTAINER))!.version > checkpointed.version + 1 ? true : undefined), 30_000);
  });

  it('answers a checkpoint request for a container it does not supervise with NotFound', async () => {
    await expect(supervisor.checkpoint('no-such-container')).rejects.toThrow(NotFoundError);
  });
});
