import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { ToolMissingError, TestbedError } from '../../src/util/errors.ts';
import { checkJava } from '../../testcontainers/cassandra.ts';
import { isOurs } from '../../testcontainers/processes.ts';
import { Testbed, testbedRoot } from '../../testcontainers/testbed.ts';
import { localRing } from '../support/testbed.ts';

// These tests start their own one-host testbeds on subnets the shared testbed does not use.
const started: Testbed[] = [];
afterEach(async () => {
  while (started.length > 0) await started.pop()!.teardown();
});

function pidAlive(pid: number): boolean {
  return isOurs(pid, 'CassandraDaemon');
}

describe('testbed lifecycle', () => {
  it('tears down every JVM it started and removes its run directory', async () => {
    const testbed = await Testbed.start({ name: 'lifecycle', subnet: 11, hosts: 1, heapMiB: 256 });
    const pids = localRing(testbed).livePids().map(([, pid]) => pid);
    expect(pids).toHaveLength(1);
    expect(pidAlive(pids[0]!)).toBe(true);
    await testbed.teardown();
    expect(pids.filter(pidAlive)).toEqual([]);
    expect(existsSync(testbed.runDir)).toBe(false);
  });

  it("cleans up a crashed run's leftover JVM and directory before starting again", async () => {
    const child = spawn(process.execPath, ['--import', 'tsx', join(import.meta.dirname, '../support/start-testbed-child.ts'), 'leftover', '12'], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const leftoverPid = await new Promise<number>((resolve, reject) => {
      let out = '';
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        const m = /READY (\d+)/.exec(out);
        if (m) resolve(Number(m[1]));
      });
      child.on('exit', (code) => reject(new Error(`child exited with ${code} before the testbed was ready`)));
    });
    child.kill('SIGKILL'); // a crash: no teardown runs
    await new Promise((r) => child.once('exit', r));
    expect(pidAlive(leftoverPid)).toBe(true);

    const testbed = await Testbed.start({ name: 'leftover', subnet: 12, hosts: 1, heapMiB: 256 });
    started.push(testbed);
    expect(pidAlive(leftoverPid)).toBe(false);
    const fresh = localRing(testbed).livePids().map(([, pid]) => pid);
    expect(fresh).toHaveLength(1);
    expect(fresh[0]).not.toBe(leftoverPid);
  });

  it('refuses to start on an address whose port is taken, naming it, and leaves nothing running', async () => {
    const blocker: Server = createServer();
    await new Promise<void>((resolve) => blocker.listen(9042, '127.0.13.1', resolve));
    try {
      const error = await Testbed.start({ name: 'porttaken', subnet: 13, hosts: 1 }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(TestbedError);
      expect((error as Error).message).toMatch(/127\.0\.13\.1:9042 is already in use/);
      expect(existsSync(join(testbedRoot(), 'porttaken'))).toBe(false);
    } finally {
      await new Promise((r) => blocker.close(r));
    }
  });

  it('says how to install Java when it is missing', async () => {
    const path = process.env.PATH;
    process.env.PATH = '/nonexistent';
    try {
      const error = await checkJava().catch((e: unknown) => e);
      expect(error).toBeInstanceOf(ToolMissingError);
      expect((error as Error).message).toMatch(/apt-get install -y openjdk-17-jre-headless/);
    } finally {
      process.env.PATH = path;
    }
  });

  it('gives up on a ring that is not ready in time, with the node logs, and leaves nothing running', async () => {
    const error = await Testbed.start({ name: 'notready', subnet: 14, hosts: 1, readyTimeoutMs: 1 }).catch((e: unknown) => e);
    if (error instanceof Testbed) started.push(error); // torn down even if it wrongly came up
    expect(error).toBeInstanceOf(TestbedError);
    expect((error as Error).message).toMatch(/did not become ready within 1 ms/);
    expect((error as Error).message).toMatch(/node1 \(127\.0\.14\.1\) log tail/);
    expect(existsSync(join(testbedRoot(), 'notready'))).toBe(false);
  });
});
