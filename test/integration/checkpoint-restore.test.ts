import { mkdtempSync, rmSync } from 'node:fs';
import { readFile, rename } from 'node:fs/promises';
import { join } from 'node:path';
import type cassandra from 'cassandra-driver';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkpointToStore, describeRestore, discardStaged, dumpToStaging, replicateStaged, restoreFromStore } from '../../src/checkpoint/procedures.ts';
import type { CassandraSnapshotStore } from '../../src/storage/cassandra-store.ts';
import { CompressionPolicy } from '../../src/storage/codec.ts';
import { bucketRoutingKey } from '../../src/storage/placement.ts';
import { AlreadyExistsError, RestoreError } from '../../src/util/errors.ts';
import { crashContainer, createCounterContainer, HELD_FILE, readCounter, runtimeFor, startContainer, waitForCounterAbove, waitRunning } from '../../testcontainers/lxc.ts';
import { connectStore, removeContainer, sharedTestbed } from '../support/testbed.ts';

const testbed = sharedTestbed();
const host = testbed.host(1);
const runtime = runtimeFor(host);
const CONTAINER = 'cr-counter';
const IDLE = 'cr-idle';
const HOLDER = 'cr-holder';
const FALLBACK = 'cr-fallback';
const UNRESTORABLE = 'cr-unrestorable';
const staging = mkdtempSync('/var/tmp/lxcr-staging-');
let client: cassandra.Client;
let store: CassandraSnapshotStore;
const policy = new CompressionPolicy();

beforeAll(async () => {
  ({ client, store } = await connectStore(testbed, 'checkpoint_test'));
  await createCounterContainer(host, CONTAINER);
  await startContainer(host, CONTAINER);
  await waitRunning(host, CONTAINER);
});

afterAll(async () => {
  for (const name of [CONTAINER, IDLE, HOLDER, FALLBACK, UNRESTORABLE]) await removeContainer(runtime, name);
  await client?.shutdown();
  rmSync(staging, { recursive: true, force: true });
});

describe('checkpoint into Cassandra and restore from it (real LXC, CRIU and Cassandra)', () => {
  it("restores a destroyed container from its committed snapshot with its memory intact", async () => {
    await waitForCounterAbove(host, CONTAINER, 10);
    const first = await checkpointToStore({ runtime, store, policy, container: CONTAINER, sourceHost: host.hostId, stagingDir: staging, stop: true });
    expect(await runtime.state(CONTAINER)).toBe('STOPPED');
    const atDump = await readCounter(host, CONTAINER);
    expect(first.version).toBe(1);
    expect(first.manifest.files.map((f) => f.path)).toEqual(expect.arrayContaining(['config', 'rootfs.tar', 'images/inventory.img']));
    // Every chunk of the committed version lives on exactly the container's two home replicas.
    const home = store.replicas(CONTAINER);
    expect(home).toHaveLength(2);
    for (const chunk of first.manifest.files.flatMap((f) => f.chunks)) {
      const replicas = client.getReplicas('checkpoint_test', bucketRoutingKey(CONTAINER, chunk.bucket)).map((h) => h.address.split(':')[0]);
      expect(replicas).toEqual(home);
    }

    await runtime.destroy(CONTAINER); // everything local is gone: only Cassandra has it
    const restored = await restoreFromStore({ runtime, store, container: CONTAINER, stagingDir: staging });
    expect(restored.manifest.version).toBe(1);
    expect(await runtime.state(CONTAINER)).toBe('RUNNING');
    expect(await store.leasedVersions(CONTAINER)).toEqual(new Set()); // the restore's lease on version 1 is released
    const after = await waitForCounterAbove(host, CONTAINER, atDump + 3);
    expect(after).toBeGreaterThan(atDump); // counted on from the dump, not from 1
  });

  it('uploads only what changed when the running container is checkpointed again', async () => {
    const second = await checkpointToStore({ runtime, store, policy, container: CONTAINER, sourceHost: host.hostId, stagingDir: staging });
    expect(await runtime.state(CONTAINER)).toBe('RUNNING'); // frozen for the dump only
    expect(second.version).toBe(2);
    // The rootfs and most images are unchanged: most chunks are reused.
    expect(second.reusedChunks).toBeGreaterThan(0);
    expect(second.uploadedBytes).toBeLessThan(0.5 * second.logicalBytes);
  });

  /** Starts a container whose holder keeps HELD_FILE open, once its workload runs. */
  async function runHolder(container: string): Promise<void> {
    await createCounterContainer(host, container, { holdOpenFile: true });
    await startContainer(host, container);
    await waitRunning(host, container);
    await waitForCounterAbove(host, container, 3);
  }

  /**
   * The agent's two steps, dump then replicate, with a write-then-rename of the held file landing between the dump
   * and the rootfs archive. `withoutCopy` also leaves the dump's copy of the open files out, as every snapshot was
   * before the copy existed: CRIU will refuse that version.
   */
  async function checkpointWithHeldFileRenamed(container: string, { withoutCopy = false } = {}) {
    const held = join(await runtime.rootfsPath(container), HELD_FILE);
    const staged = await dumpToStaging({ runtime, container, stagingDir: staging });
    try {
      await rename(held, `${held}.moved`);
      const sources = withoutCopy ? staged.sources.filter((source) => !source.path.startsWith('images/lxcr-open-')) : staged.sources;
      return await replicateStaged({ ...staged, sources }, { store, policy, sourceHost: host.hostId });
    } finally {
      await discardStaged(staged);
    }
  }

  it('restores, after a crash, a snapshot whose open file was renamed away before its rootfs was archived', async () => {
    await runHolder(HOLDER);
    const held = join(await runtime.rootfsPath(HOLDER), HELD_FILE);
    const atDump = await readFile(held, 'utf8');
    const committed = await checkpointWithHeldFileRenamed(HOLDER);
    expect(committed.manifest.files.map((f) => f.path)).toContain('images/lxcr-open-files.json');

    await crashContainer(host, HOLDER);
    await runtime.destroy(HOLDER); // restored from Cassandra alone
    const restored = await restoreFromStore({ runtime, store, container: HOLDER, stagingDir: staging });
    expect(restored.manifest.version).toBe(committed.version);
    expect(await runtime.state(HOLDER)).toBe('RUNNING');
    expect(await readFile(held, 'utf8')).toBe(atDump); // restored with its holder, not started again
  });

  it('falls back to the next older committed version when CRIU refuses the newest, and says so; a version asked for is the only one tried', async () => {
    await runHolder(FALLBACK);
    const restorable = await checkpointToStore({ runtime, store, policy, container: FALLBACK, sourceHost: host.hostId, stagingDir: staging });
    const unrestorable = await checkpointWithHeldFileRenamed(FALLBACK, { withoutCopy: true });
    expect(unrestorable.version).toBe(restorable.version + 1);
    await crashContainer(host, FALLBACK);
    await runtime.destroy(FALLBACK);

    const asked = restoreFromStore({ runtime, store, container: FALLBACK, stagingDir: staging, version: unrestorable.version });
    await expect(asked).rejects.toBeInstanceOf(RestoreError);
    await expect(asked).rejects.toThrow(/Can't open file var\/lxcr\/held/);
    expect(await runtime.exists(FALLBACK)).toBe(false); // the failed import is undone

    const restored = await restoreFromStore({ runtime, store, container: FALLBACK, stagingDir: staging });
    expect(restored.manifest.version).toBe(restorable.version);
    expect(restored.fellBackFrom).toEqual([{ version: unrestorable.version, error: expect.stringMatching(/Can't open file var\/lxcr\/held/) as unknown }]);
    expect(describeRestore(restored)).toMatch(new RegExp(`version ${unrestorable.version} did not restore, so ${restorable.version} was \\(restore of ${FALLBACK} failed; CRIU reported: .*Can't open file`));
    expect(await runtime.state(FALLBACK)).toBe('RUNNING');
  });

  it('fails, naming every version tried, when no committed version restores; nothing is left defined', async () => {
    await runHolder(UNRESTORABLE);
    const only = await checkpointWithHeldFileRenamed(UNRESTORABLE, { withoutCopy: true });
    await crashContainer(host, UNRESTORABLE);
    await runtime.destroy(UNRESTORABLE);

    const failure = restoreFromStore({ runtime, store, container: UNRESTORABLE, stagingDir: staging });
    await expect(failure).rejects.toBeInstanceOf(RestoreError);
    await expect(failure).rejects.toThrow(new RegExp(`^no committed version of ${UNRESTORABLE} restores \\(version ${only.version}: restore of ${UNRESTORABLE} failed; CRIU reported: .*Can't open file var/lxcr/held`));
    expect(await runtime.exists(UNRESTORABLE)).toBe(false);
  });

  it('refuses to restore over a container that exists on this host, leaving it untouched', async () => {
    const error = await restoreFromStore({ runtime, store, container: CONTAINER, stagingDir: staging }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(AlreadyExistsError);
    expect(await runtime.state(CONTAINER)).toBe('RUNNING');
  });

  it("uploads almost nothing for a real idle container's second checkpoint", async () => {
    await createCounterContainer(host, IDLE, { memoryMiB: 32 });
    await startContainer(host, IDLE);
    await waitRunning(host, IDLE);
    const checkpoint = () => checkpointToStore({ runtime, store, policy, container: IDLE, sourceHost: host.hostId, stagingDir: staging });
    const first = await checkpoint();
    expect(first.uploadedBytes).toBeGreaterThan(24 * 1024 * 1024); // the 32 MiB it holds (base64 of random: compressible by ~1/4)
    const second = await checkpoint();
    // Only the pages the counter and the idle loop touched, and the manifest-sized tail of each image, change.
    expect(second.uploadedBytes).toBeLessThan(0.1 * first.uploadedBytes);
    expect(second.reusedChunks).toBeGreaterThan(0);
  });
});
