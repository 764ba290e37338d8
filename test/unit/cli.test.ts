import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseArgs } from '../../src/cli/args.ts';
import { ExitCode } from '../../src/cli/command.ts';
import { AGENT_FLAGS, agentConfigFromArgs } from '../../src/cli/commands/agent.ts';
import { main } from '../../src/cli/main.ts';
import { run } from '../../src/util/exec.ts';

const repo = join(import.meta.dirname, '../..');

describe('lxcr', () => {
  it('documents its commands and exits 0 for --help', async () => {
    const { stdout } = await run(process.execPath, [join(repo, 'bin/lxcr.js'), '--help']);
    expect(stdout).toMatch(/Usage: lxcr <command>/);
    expect(stdout).toMatch(/demo\s+run the end-to-end demo/);
    expect(stdout).toMatch(/config\s+check an agent config file/);
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

describe('lxcr agent options', () => {
  const base = ['--host-id', 'h1', '--lxcpath', '/var/lib/lxc', '--cassandra', '127.0.0.1', '--insecure'];

  it('keeps standby copies by default, in a directory of its own per host id', () => {
    expect(agentConfigFromArgs(parseArgs(base, AGENT_FLAGS)).standby).toEqual({ dir: '/var/lib/lxcr/standby/h1' });
    expect(agentConfigFromArgs(parseArgs([...base, '--standby-dir', '/srv/standby'], AGENT_FLAGS)).standby).toEqual({ dir: '/srv/standby' });
    expect(agentConfigFromArgs(parseArgs([...base, '--no-standby'], AGENT_FLAGS)).standby).toBe(false);
  });

  it('refuses --no-standby together with --standby-dir, naming both', () => {
    expect(() => agentConfigFromArgs(parseArgs([...base, '--no-standby', '--standby-dir', '/x'], AGENT_FLAGS))).toThrow(/--no-standby and --standby-dir/);
  });
});
