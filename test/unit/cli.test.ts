import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ExitCode } from '../../src/cli/command.ts';
import { main } from '../../src/cli/main.ts';
import { run } from '../../src/util/exec.ts';

const repo = join(import.meta.dirname, '../..');

describe('lxcr', () => {
  it('documents its commands and exits 0 for --help', async () => {
    const { stdout } = await run(process.execPath, [join(repo, 'bin/lxcr.js'), '--help']);
    expect(stdout).toMatch(/Usage: lxcr <command>/);
    expect(stdout).toMatch(/demo\s+run the end-to-end demo/);
    expect(stdout).toMatch(/testbed\s+start \(up\), inspect/);
    const sub = await run(process.execPath, [join(repo, 'bin/lxcr.js'), 'testbed', '--help']);
    expect(sub.stdout).toMatch(/lxcr testbed up\|status\|down/);
  });

  it('exits 2 for an unknown command, an unknown option or a bad value', async () => {
    expect(await main(['nope'])).toBe(ExitCode.USAGE);
    expect(await main(['testbed', 'up', '--bogus'])).toBe(ExitCode.USAGE);
    expect(await main(['testbed', 'up', '--hosts', 'many'])).toBe(ExitCode.USAGE);
    expect(await main(['testbed', 'sideways'])).toBe(ExitCode.USAGE);
  });

  it('exits 4 with the reason when asked about a testbed that is not running', async () => {
    expect(await main(['testbed', 'status', '--name', 'never-started'])).toBe(ExitCode.TESTBED);
  });
});

describe('scripts/setup.sh', () => {
  it('as a non-root user stops at once and prints the exact command to run instead', async () => {
    const result = await run('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', 'bash', join(repo, 'scripts/setup.sh')], {
      env: { npm_lifecycle_event: 'pretest' },
      allowFailure: true,
    });
    expect(result.exitCode).toBe(1);
    expect(result.stderr).toMatch(/need root\. Run instead \(in .*\): sudo npm test/);
  });
});
