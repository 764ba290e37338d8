/**
 * Checkpoint/restore of a real LXC container through the LXC driver, on two simulated hosts (two lxcpaths on
 * this machine). Needs root, lxc, busybox-static and a working criu (scripts/setup-criu.sh).
 */
import { mkdir, mkdtemp, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { errorMessage, FailedPreconditionError, InvalidArgumentError, RestoreError } from '../../src/util/errors.ts';
import { resolveCriuPath } from '../../src/runtime/criu.ts';
import type { LxcRuntime } from '../../src/runtime/lxc.ts';
import {
  cleanupLxcHosts,
  copyContainer,
  crashContainer,
  createCounterContainer,
  createLxcHost,
  destroyHost,
  dirtyMemory,
  HELD_FILE,
  readCounter,
  runningLxcMonitors,
  runtimeFor,
  startContainer,
  waitForCounterAbove,
  waitRunning,
  type LxcHost,
} from '../../testcontainers/lxc.ts';

const TESTBED_ROOT = '/var/tmp/lxcr-testbed-lxc-test';
const COUNTER = 'counter';
const MEMORY = 'memory64';
const MEMORY_MIB = 64;
const HOLDER = 'holder';

describe('LXC checkpoint/restore', () => {
  let runDir: string;
  let imagesRoot: string;
  const hosts: LxcHost[] = [];
  let host1: LxcHost;
  let host2: LxcHost;
  let runtime1: LxcRuntime;
  let runtime2: LxcRuntime;

  beforeAll(async () => {
    await cleanupLxcHosts(TESTBED_ROOT);
    await mkdir(TESTBED_ROOT, { recursive: true });
    runDir = await mkdtemp(join(TESTBED_ROOT, 'run-'));
    imagesRoot = join(runDir, 'images');
    host1 = await createLxcHost('host1', join(runDir, 'hosts/host1/lxc'));
    host2 = await createLxcHost('host2', join(runDir, 'hosts/host2/lxc'));
    hosts.push(host1, host2);
    const criuPath = resolveCriuPath();
    runtime1 = runtimeFor(host1, { criuPath });
    runtime2 = runtimeFor(host2, { criuPath });

    await createCounterContainer(host1, COUNTER);
    await startContainer(host1, COUNTER);
    await waitRunning(host1, COUNTER);
  }, 60_000);

  afterAll(async () => {
    const failures: string[] = [];
    for (const host of hosts) await destroyHost(host).catch((err: unknown) => failures.push(errorMessage(err)));
    // Checked from /proc, independently of LXC: no container of this run may survive it.
    const survivors = runDir ? await runningLxcMonitors(runDir) : [];
    const clean = failures.length === 0 && survivors.length === 0;
    if (runDir && clean) await rm(runDir, { recursive: true, force: true });
    expect(failures).toEqual([]);
    expect(survivors).toEqual([]);
  }, 60_000);

  it('dumps a running container, stops it, and restores it with its memory', async () => {
    await waitForCounterAbove(host1, COUNTER, 15);
    const dump = await runtime1.checkpoint(COUNTER, join(imagesRoot, 'dump1'), { stop: true });
    const atDump = await readCounter(host1, COUNTER);
    expect(await runtime1.state(COUNTER)).toBe('STOPPED');
    expect(dump.imageBytes).toBeGreaterThan(0);

    await new Promise((wait) => setTimeout(wait, 500));
    expect(await readCounter(host1, COUNTER)).toBe(atDump);

    await runtime1.restore(COUNTER, join(imagesRoot, 'dump1'));
    expect(await runtime1.state(COUNTER)).toBe('RUNNING');
    // A cold start would count from 1 again; the restored process goes on from where it was frozen.
    expect(await readCounter(host1, COUNTER)).toBeGreaterThanOrEqual(atDump);
    expect(await waitForCounterAbove(host1, COUNTER, atDump + 3)).toBeGreaterThan(atDump + 3);
  }, 60_000);

  it("restores into a copy of the container under another host's lxcpath", async () => {
    const dump = await runtime1.checkpoint(COUNTER, join(imagesRoot, 'dump2'), { stop: true });
    const atDump = await readCounter(host1, COUNTER);
    await copyContainer(host1, host2, COUNTER);
    expect(await runtime2.rootfsPath(COUNTER)).toBe(join(host2.lxcpath, COUNTER, 'rootfs'));

    await runtime2.restore(COUNTER, dump.imagesDir);
    expect(await runtime2.state(COUNTER)).toBe('RUNNING');
    expect(await runtime1.state(COUNTER)).toBe('STOPPED');
    expect(await readCounter(host2, COUNTER)).toBeGreaterThanOrEqual(atDump);
    expect(await waitForCounterAbove(host2, COUNTER, atDump + 3)).toBeGreaterThan(atDump + 3);
    expect(await readCounter(host1, COUNTER)).toBe(atDump);
  }, 60_000);

  it('reads every container state of a host at once, agreeing with lxc-info one by one', async () => {
    for (const runtime of [runtime1, runtime2]) {
      const states = await runtime.states();
      expect([...states.keys()]).toEqual(await runtime.list());
      for (const [name, state] of states) expect(await runtime.state(name)).toBe(state);
    }
    expect((await runtime1.states()).get(COUNTER)).toBe('STOPPED');
    expect((await runtime2.states()).get(COUNTER)).toBe('RUNNING');
    const empty = await createLxcHost('empty', join(runDir, 'hosts/empty/lxc'));
    expect((await runtimeFor(empty).states()).size).toBe(0);
  });

  it('refuses to checkpoint a stopped container (images directory untouched) or restore a running one', async () => {
    expect(await runtime1.state(COUNTER)).toBe('STOPPED');
    await expect(runtime1.checkpoint(COUNTER, join(imagesRoot, 'refused'), { stop: true })).rejects.toBeInstanceOf(
      FailedPreconditionError,
    );
    await expect(stat(join(imagesRoot, 'refused'))).rejects.toThrow(/ENOENT/);
    await expect(runtime2.restore(COUNTER, join(imagesRoot, 'dump2'))).rejects.toBeInstanceOf(FailedPreconditionError);
  });

  it("fails a restore into a mismatched rootfs with CRIU's errors; the container stays stopped", async () => {
    const host3 = await createLxcHost('host3', join(runDir, 'hosts/host3/lxc'));
    hosts.push(host3);
    await copyContainer(host1, host3, COUNTER);
    await rm(join(host3.lxcpath, COUNTER, 'rootfs/bin/lxcr-counter'));
    const runtime3 = runtimeFor(host3);

    const failure = runtime3.restore(COUNTER, join(imagesRoot, 'dump2'));
    await expect(failure).rejects.toBeInstanceOf(RestoreError);
    await expect(failure).rejects.toThrow(/Can't open file bin\/lxcr-counter/);
    expect(await runtime3.state(COUNTER)).toBe('STOPPED');
  }, 60_000);

  it('refuses, with what to do, an lxcpath CRIU could not run its action script under', async () => {
    const spaced = await createLxcHost('spaced', join(runDir, 'hosts/with space/lxc'));
    await mkdir(join(spaced.lxcpath, 'c1'));
    await writeFile(join(spaced.lxcpath, 'c1/config'), 'lxc.uts.name = c1\n');
    const images = join(runDir, 'spaced-images');
    await mkdir(images);
    await writeFile(join(images, 'inventory.img'), '');
    const runtime = runtimeFor(spaced);
    expect(await runtime.state('c1')).toBe('STOPPED');
    const refused = runtime.restore('c1', images);
    await expect(refused).rejects.toBeInstanceOf(FailedPreconditionError);
    await expect(refused).rejects.toThrow(/CRIU cannot run an action script under it .*use a plain path/);
  });

  it.each(['', '.', '..', '../escape', 'a/b', '-n', 'tab\there', 'new\nline', 'x'.repeat(65), 'sp ace'])(
    'rejects the container name %j',
    async (name) => {
      await expect(runtime1.checkpoint(name, join(imagesRoot, 'invalid'), { stop: false })).rejects.toBeInstanceOf(
        InvalidArgumentError,
      );
      await expect(runtime1.state(name)).rejects.toBeInstanceOf(InvalidArgumentError);
    },
  );

  it(`checkpoints and restores a container holding ${MEMORY_MIB} MiB, whose memory can then change`, async () => {
    await createCounterContainer(host1, MEMORY, { memoryMiB: MEMORY_MIB });
    await startContainer(host1, MEMORY);
    await waitRunning(host1, MEMORY);

    const dump = await runtime1.checkpoint(MEMORY, join(imagesRoot, 'memory'), { stop: true });
    expect(dump.imageBytes).toBeGreaterThan(MEMORY_MIB * 1024 * 1024);
    const atDump = await readCounter(host1, MEMORY);

    await runtime1.restore(MEMORY, dump.imagesDir);
    expect(await waitForCounterAbove(host1, MEMORY, atDump)).toBeGreaterThan(atDump);
    await dirtyMemory(host1, MEMORY, 16);
  }, 120_000);
  it('restores a running dump whose open file was renamed away before the rootfs was read, from the copy taken in the freeze', async () => {
    await createCounterContainer(host1, HOLDER, { holdOpenFile: true });
    const held = join(await runtime1.rootfsPath(HOLDER), HELD_FILE);
    const dumpWhileHeld = async (images: string, captureOpenFiles: boolean) => {
      await rm(held, { force: true });
      await startContainer(host1, HOLDER);
      await waitRunning(host1, HOLDER);
      await waitForCounterAbove(host1, HOLDER, 3); // the holder, started alongside, has written its line by now
      const atStart = await readFile(held, 'utf8');
      expect(atStart).toMatch(/^opened by \d+\n$/);
      const dump = await runtime1.checkpoint(HOLDER, join(imagesRoot, images), { stop: false, captureOpenFiles });
      // What a write-then-rename does between the dump and the rootfs archive (CI once caught counter.tmp so).
      await rename(held, `${held}.moved`);
      await crashContainer(host1, HOLDER);
      return { dump, atStart };
    };

    // Without the copy, CRIU finds the file gone: the snapshot would be committed and never restore.
    const plain = await dumpWhileHeld('holder-plain', false);
    expect(plain.dump.capturedOpenFiles).toBe(0);
    const failure = runtime1.restore(HOLDER, plain.dump.imagesDir);
    await expect(failure).rejects.toBeInstanceOf(RestoreError);
    await expect(failure).rejects.toThrow(/Can't open file var\/lxcr\/held/);

    const { dump, atStart } = await dumpWhileHeld('holder', true);
    expect(dump.capturedOpenFiles).toBeGreaterThanOrEqual(1);
    await runtime1.restore(HOLDER, dump.imagesDir);
    expect(await runtime1.state(HOLDER)).toBe('RUNNING');
    // The holder was restored, not started again (which would write a new line): the file is the one of the dump.
    expect(await readFile(held, 'utf8')).toBe(atStart);
    expect(await waitForCounterAbove(host1, HOLDER, await readCounter(host1, HOLDER))).toBeGreaterThan(0);
    await runtime1.stop(HOLDER, { kill: true });
  }, 120_000);
});
