/**
 * The open-file capture (src/runtime/capture-open-files.mjs) run on a real process of this machine, and putting
 * captured files back into a rootfs, including a report that tries to write outside it. The end-to-end case (a
 * real container, CRIU's post-dump hook and a restore) is in test/integration/lxc-checkpoint.test.ts.
 */
import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rename, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OPEN_FILES_REPORT, postDumpActionScript, putBackOpenFiles, readCaptureReport } from '../../src/runtime/open-files.ts';
import { CheckpointError, RestoreError } from '../../src/util/errors.ts';
import { run } from '../../src/util/exec.ts';

const KiB = 1024;

let dir: string;
beforeAll(async () => {
  // Under /var/tmp: on this machine's root filesystem, the mount the capture copies from.
  dir = await mkdtemp('/var/tmp/lxcr-open-files-test-');
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Runs the post-dump action script as CRIU would at post-dump for the process tree rooted at `pid`. */
async function runCapture(pid: number, imagesDir: string, maxBytes: number): Promise<void> {
  const script = join(dir, 'post-dump.sh');
  await writeFile(script, postDumpActionScript(), { mode: 0o755 });
  await run(script, [], {
    env: {
      ...process.env,
      CRTOOLS_SCRIPT_ACTION: 'post-dump',
      CRTOOLS_INIT_PID: String(pid),
      LXCR_OPEN_FILES_REPORT: join(imagesDir, OPEN_FILES_REPORT),
      LXCR_OPEN_FILES_MAX_BYTES: String(maxBytes),
    },
  });
}

describe('capturing the files a process tree holds open', () => {
  it('copies each open regular file once, as it is, and leaves out what would pass the cap', async () => {
    const work = await mkdtemp(join(dir, 'capture-'));
    const small = join(work, 'small.db');
    const large = join(work, 'large.db');
    const log = join(work, 'app.log');
    await writeFile(small, 'alpha\n', { mode: 0o640 });
    await writeFile(large, Buffer.alloc(256 * KiB, 7));
    await writeFile(log, 'started\n', { mode: 0o644 });
    // A shell holding them (one twice), and a child holding them too: a process tree as CRIU dumps it.
    const script = `exec 3<>"$0" 4<"$0" 5<"$1" 6>>"$2"; sleep 60 & wait`;
    const holder = spawn('sh', ['-c', script, small, large, log], { stdio: 'ignore' });
    try {
      await new Promise((settled) => setTimeout(settled, 300));
      const images = join(work, 'images');
      await mkdir(images);
      await runCapture(holder.pid!, images, 64 * KiB);

      const report = await readCaptureReport('holder', images);
      expect(report.captured.map((f) => [f.path, f.size, f.mode, f.appendOnly])).toEqual([
        [small, 6, 0o640, false],
        [log, 8, 0o644, true],
      ]);
      expect(report.skipped).toEqual([{ path: large, size: 256 * KiB }]);
      expect(await readFile(join(images, report.captured[0]!.file), 'utf8')).toBe('alpha\n');

      // Renamed away and replaced after the "dump": putting back restores the path as it was.
      await rename(small, `${small}.moved`);
      await writeFile(small, 'something longer, written later\n');
      const rootfs = join(work, 'rootfs');
      await mkdir(rootfs);
      expect(await putBackOpenFiles('holder', images, rootfs)).toBe(2); // the log was gone: written too
      expect(await readFile(join(rootfs, small), 'utf8')).toBe('alpha\n');
      expect((await stat(join(rootfs, small))).mode & 0o777).toBe(0o640);
      expect(await readFile(join(rootfs, log), 'utf8')).toBe('started\n');

      // A log that is still there keeps what was appended after the dump (a crash's last lines); the rest is reset.
      await writeFile(join(rootfs, log), 'started\nlogged after the dump\n');
      await writeFile(join(rootfs, small), 'changed\n');
      expect(await putBackOpenFiles('holder', images, rootfs)).toBe(1);
      expect(await readFile(join(rootfs, log), 'utf8')).toBe('started\nlogged after the dump\n');
      expect(await readFile(join(rootfs, small), 'utf8')).toBe('alpha\n');
    } finally {
      holder.kill('SIGKILL');
    }
  });

  it('reports a capture that did not run, or failed, as a checkpoint error', async () => {
    const images = await mkdtemp(join(dir, 'failed-'));
    await expect(readCaptureReport('c1', images)).rejects.toThrow(CheckpointError);
    await expect(readCaptureReport('c1', images)).rejects.toThrow(/not captured .*post-dump action script/s);
    await runCapture(2 ** 22 + 1, images, KiB); // no such process
    await expect(readCaptureReport('c1', images)).rejects.toThrow(/checkpoint of c1: capturing the files open at the dump failed: .*ENOENT/);
  });
});

describe('putting captured files back', () => {
  async function imagesWith(path: string): Promise<string> {
    const images = await mkdtemp(join(dir, 'images-'));
    await writeFile(join(images, 'lxcr-open-file-0'), 'captured\n');
    const entry = { path, file: 'lxcr-open-file-0', size: 9, mode: 0o600, uid: 0, gid: 0, appendOnly: false };
    await writeFile(join(images, OPEN_FILES_REPORT), JSON.stringify({ captured: [entry], skipped: [], bytes: 9 }));
    return images;
  }

  it('needs nothing for images without a capture (a stopping dump)', async () => {
    expect(await putBackOpenFiles('c1', await mkdtemp(join(dir, 'empty-')), join(dir, 'nowhere'))).toBe(0);
  });

  it('creates missing directories and replaces a symbolic link at the path, not what it points to', async () => {
    const rootfs = await mkdtemp(join(dir, 'rootfs-'));
    const outside = join(dir, 'outside-target');
    await writeFile(outside, 'host file\n');
    await mkdir(join(rootfs, 'var'));
    await symlink(outside, join(rootfs, 'var/data'));
    await putBackOpenFiles('c1', await imagesWith('/var/data'), rootfs);
    expect(await readFile(join(rootfs, 'var/data'), 'utf8')).toBe('captured\n');
    expect(await readFile(outside, 'utf8')).toBe('host file\n');

    await putBackOpenFiles('c1', await imagesWith('/new/dir/file'), rootfs);
    expect(await readFile(join(rootfs, 'new/dir/file'), 'utf8')).toBe('captured\n');
  });

  it('refuses to write through a symbolic link or out of the rootfs, naming the file', async () => {
    const rootfs = await mkdtemp(join(dir, 'rootfs-'));
    const outsideDir = await mkdtemp(join(dir, 'outside-'));
    await symlink(outsideDir, join(rootfs, 'etc'));
    const throughLink = putBackOpenFiles('c1', await imagesWith('/etc/passwd'), rootfs);
    await expect(throughLink).rejects.toThrow(RestoreError);
    await expect(throughLink).rejects.toThrow(/restore of c1: cannot put back \/etc\/passwd, .*symbolic link/);
    await expect(stat(join(outsideDir, 'passwd'))).rejects.toThrow(/ENOENT/);

    await expect(putBackOpenFiles('c1', await imagesWith('/../escape'), rootfs)).rejects.toThrow(/not a plain absolute path/);
    await expect(putBackOpenFiles('c1', await imagesWith('relative'), rootfs)).rejects.toThrow(/not a plain absolute path/);
  });

  it('refuses a malformed report', async () => {
    const images = await mkdtemp(join(dir, 'malformed-'));
    await writeFile(join(images, OPEN_FILES_REPORT), JSON.stringify({ captured: [{ path: '/x', file: '../../etc/shadow' }] }));
    await expect(putBackOpenFiles('c1', images, dir)).rejects.toThrow(/restore of c1: .* is malformed/);
  });
});
