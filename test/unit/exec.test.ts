import { describe, expect, it } from 'vitest';
import { CommandFailedError, TimeoutError, ToolMissingError } from '../../src/util/errors.ts';
import { run } from '../../src/util/exec.ts';
import { isOurs } from '../../testcontainers/processes.ts';

describe('run', () => {
  it('passes arguments verbatim, never through a shell', async () => {
    const { stdout } = await run('printf', ['%s|', 'a b', '$(id)', ';rm -rf /']);
    expect(stdout).toBe('a b|$(id)|;rm -rf /|');
  });

  it("fails with the program's exit code and output", async () => {
    const error = await run('sh', ['-c', 'echo boom >&2; exit 3']).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(CommandFailedError);
    expect((error as CommandFailedError).exitCode).toBe(3);
    expect((error as Error).message).toMatch(/exited with code 3\nboom/);
  });

  it('names a missing program and how to get it', async () => {
    const error = await run('lxcr-no-such-tool', [], { missingHint: 'install the Debian package foo' }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ToolMissingError);
    expect((error as Error).message).toBe('lxcr-no-such-tool is not available: install the Debian package foo');
  });

  it('on timeout kills the whole process group, grandchildren included', async () => {
    const marker = `lxcr-exec-test-${process.pid}`;
    // The shell starts a grandchild shell (named by the marker, its $0) and both outlive the timeout.
    const started = Date.now();
    const error = await run('sh', ['-c', `sh -c 'sleep 30; true' ${marker} & wait`], { timeoutMs: 500 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(TimeoutError);
    expect(Date.now() - started).toBeLessThan(5000);
    await new Promise((r) => setTimeout(r, 200));
    const { stdout } = await run('sh', ['-c', `grep -l ${marker} /proc/[0-9]*/cmdline 2>/dev/null || true`]);
    const pids = stdout
      .split('\n')
      .map((l) => Number(/\/proc\/(\d+)\//.exec(l)?.[1]))
      .filter((p) => Number.isInteger(p) && isOurs(p, `sleep 30; true ${marker}`));
    expect(pids).toEqual([]);
  });
});
