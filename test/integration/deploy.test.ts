import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import cassandra from 'cassandra-driver';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeTestCertificates } from '../../testcontainers/certs.ts';
import { CQL_PORT, LOCAL_DATACENTER } from '../../testcontainers/cassandra.ts';
import { run } from '../../src/util/exec.ts';
import { sharedTestbed } from '../support/testbed.ts';

/**
 * The Ansible deployment (deploy/): every play passes --syntax-check, deploy/ passes ansible-lint, and the
 * lxcr_agent role (through agents.yml, the rolling-update play) is applied for real to this machine into a
 * scratch prefix, where its config must pass the agent's own `lxcr config check`, its unit `systemd-analyze
 * verify`, and a second run must change nothing. The schema play runs with it, for real against the shared
 * testbed's ring. Nothing here touches the internet: the release is packed from npm's cache.
 */

const repo = join(import.meta.dirname, '../..');
const deploy = join(repo, 'deploy');
const PLAYS = ['site.yml', 'cassandra.yml', 'lxc_criu.yml', 'schema.yml', 'agents.yml'];
const scratch = mkdtempSync(join(tmpdir(), 'lxcr-deploy-'));
const root = join(scratch, 'root');
const testbed = sharedTestbed();
let release: string;
let inventory: string;
let extraVars: string;

/** ansible-playbook in deploy/ (its ansible.cfg), without colours; returns the output and the play recap's counts. */
async function playbook(args: string[]): Promise<{ output: string; changed: number; failed: number }> {
  const result = await run('ansible-playbook', args, {
    cwd: deploy,
    // Facts are not gathered: the test gives every address they would default. profile_tasks: the output (shown
    // on failure) says where the time went.
    env: { ANSIBLE_NOCOLOR: '1', ANSIBLE_FORCE_COLOR: '0', ANSIBLE_GATHERING: 'explicit', ANSIBLE_CALLBACKS_ENABLED: 'profile_tasks' },
    allowFailure: true,
    missingHint: 'install the ansible package (scripts/setup.sh does)',
    // A run costs ~10 CPU-seconds (Python per task, Node for lxcr); on a loaded 2-core machine it took 50-120 s.
    timeoutMs: 300_000,
  });
  const output = `${result.stdout}\n${result.stderr}`;
  const recap = /localhost\s+: ok=\d+\s+changed=(\d+)\s+unreachable=\d+\s+failed=(\d+)/.exec(output);
  if (result.exitCode !== 0 || !recap) throw new Error(`ansible-playbook ${args.join(' ')} exited ${result.exitCode}:\n${output.slice(-6000)}`);
  return { output, changed: Number(recap[1]), failed: Number(recap[2]) };
}

beforeAll(async () => {
  // npm_config_offline: the release must come from npm's cache (setup.sh's npm install filled it), never the registry.
  const packed = await run('bash', [join(deploy, 'pack-release.sh'), join(scratch, 'release')], { env: { npm_config_offline: 'true' }, timeoutMs: 120_000 });
  release = packed.stdout.trim().split('\n').pop()!;
  const certs = await makeTestCertificates(join(scratch, 'certs'), ['127.0.0.1']);
  const tls = certs.agent('127.0.0.1');
  // JSON is YAML: the inventory Ansible reads.
  inventory = join(scratch, 'hosts.yml');
  writeFileSync(inventory, JSON.stringify({
    all: { children: { lxcr_hosts: { hosts: { localhost: { ansible_connection: 'local', ansible_become: false, ansible_python_interpreter: '/usr/bin/python3' } } } } },
  }));
  extraVars = join(scratch, 'vars.json');
  writeFileSync(extraVars, JSON.stringify({
    lxcr_root: root,
    lxcr_release: release,
    lxcr_node_source: 'system',
    lxcr_node_bin: process.execPath,
    lxcr_host_id: 'deploy-test',
    lxcr_cassandra_address: testbed.hosts[0]!.address,
    lxcr_cassandra_contact_points: testbed.hosts.slice(1).map((h) => h.address),
    lxcr_cassandra_local_dc: LOCAL_DATACENTER,
    lxcr_tls_ca_src: tls.ca,
    lxcr_tls_cert_src: tls.cert,
    lxcr_tls_key_src: tls.key,
    lxcr_snapshot_keyspace: 'deploy_snap',
    lxcr_meta_keyspace: 'deploy_meta',
    lxcr_meta_replication_factor: 2,
  }));
}, 180_000);

afterAll(() => {
  rmSync(scratch, { recursive: true, force: true });
});

describe('deploy/ (Ansible)', () => {
  it('every play passes ansible-playbook --syntax-check with the example inventory', async () => {
    // One run for all plays (ansible-playbook takes several); its output names the play that fails.
    const result = await run('ansible-playbook', ['--syntax-check', ...PLAYS], { cwd: deploy, allowFailure: true, env: { ANSIBLE_NOCOLOR: '1' } });
    expect(result.exitCode, `${result.stdout}${result.stderr}`).toBe(0);
    for (const play of PLAYS) expect(result.stdout).toContain(`playbook: ${play}`);
  });

  it('passes ansible-lint with its default profile and no rule skipped', async () => {
    // --offline (also in deploy/.ansible-lint): no schema download and no update check.
    const result = await run('ansible-lint', ['--nocolor', '--offline'], { cwd: deploy, allowFailure: true, timeoutMs: 120_000, missingHint: 'install the ansible-lint package (scripts/setup.sh does)' });
    expect(result.exitCode, `${result.stdout}${result.stderr}`).toBe(0);
    expect(result.stderr).toMatch(/Passed with production profile: 0 failure\(s\), 0 warning\(s\)/);
  });

  it('applies the schema play and the lxcr_agent role (into a scratch prefix): keyspaces with the inventory\'s factors, a config the agent accepts, a unit systemd accepts, and a second run changes nothing', async () => {
    // Both plays in one ansible-playbook run, as site.yml runs them.
    const first = await playbook(['-i', inventory, '-e', `@${extraVars}`, 'schema.yml', 'agents.yml']);
    expect(first.changed).toBeGreaterThan(0);
    expect(first.output).toMatch(/TASK \[Apply the schema with the agents' own code\][^\n]*\n(\S[^\n]*\n)*changed: \[localhost\]/);
    const client = new cassandra.Client({ contactPoints: testbed.contactPoints, localDataCenter: LOCAL_DATACENTER, protocolOptions: { port: CQL_PORT, maxVersion: 3 } });
    try {
      await client.connect();
      const keyspaces = client.metadata.keyspaces as unknown as Record<string, { strategyOptions: Record<string, string> }>;
      expect(keyspaces['deploy_snap']?.strategyOptions['replication_factor']).toBe('2');
      expect(keyspaces['deploy_meta']?.strategyOptions['replication_factor']).toBe('2');
      expect(await client.metadata.getTable('deploy_snap', 'chunks')).toBeTruthy();
      expect(await client.metadata.getTable('deploy_meta', 'events_by_container')).toBeTruthy();
    } finally {
      await client.shutdown();
    }

    const config = join(root, 'etc/lxcr/agent.json');
    const rendered = JSON.parse(readFileSync(config, 'utf8')) as Record<string, unknown>;
    expect(rendered).toMatchObject({
      hostId: 'deploy-test',
      lxcpath: `${root}/var/lib/lxc`,
      cassandra: { address: testbed.hosts[0]!.address, port: 9042, jmxAddress: '127.0.0.1', jmxPort: 7199, localDataCenter: LOCAL_DATACENTER },
      grpc: { listen: `${testbed.hosts[0]!.address}:7500`, tls: { key: `${root}/etc/lxcr/tls/host-key.pem` } },
      keyspaces: { snapshots: 'deploy_snap', snapshotReplicationFactor: 2, meta: 'deploy_meta', metaReplicationFactor: 2 },
    });
    expect(statSync(join(root, 'etc/lxcr/tls/host-key.pem')).mode & 0o777).toBe(0o600);

    // The agent's own validator, from the installed release (the role ran it already as the template's validate).
    const lxcr = join(root, 'usr/local/bin/lxcr');
    const check = await run(process.execPath, [lxcr, 'config', 'check', config], { allowFailure: true });
    expect(check.exitCode, check.stderr).toBe(0);
    expect(check.stdout).toContain(`${config}: valid`);

    const unit = join(root, 'etc/systemd/system/lxcr-agent.service');
    const analyze = await run('systemd-analyze', ['--version'], { allowFailure: true }).catch(() => undefined);
    if (analyze?.exitCode === 0) {
      const verify = await run('systemd-analyze', ['verify', unit], { allowFailure: true });
      expect(verify.exitCode, `${verify.stdout}${verify.stderr}`).toBe(0);
      // A setting systemd cannot parse is only a warning ("ignoring"), with exit 0: so nothing may be printed at all.
      expect(`${verify.stdout}${verify.stderr}`).toBe('');
    } else {
      console.warn('deploy.test: systemd-analyze is not installed here; the unit file was not verified');
    }
    expect(readFileSync(unit, 'utf8')).toMatch(/^Restart=on-failure$[\s\S]*^KillSignal=SIGTERM$/m);

    const second = await playbook(['-i', inventory, '-e', `@${extraVars}`, 'schema.yml', 'agents.yml']);
    expect(second.changed, second.output.slice(-4000)).toBe(0);

    // Releases unpacked by earlier updates: the newest lxcr_keep_releases (3) stay, the one in use among them.
    const releases = join(root, 'opt/lxcr/releases');
    const current = readdirSync(releases);
    expect(current).toHaveLength(1);
    const old = ['lxcloud-cr-0.0.1', 'lxcloud-cr-0.0.2', 'lxcloud-cr-0.0.3'];
    old.forEach((name, i) => {
      mkdirSync(join(releases, name));
      const when = new Date(Date.now() - (old.length - i) * 10 * 86_400_000); // 30, 20 and 10 days old
      utimesSync(join(releases, name), when, when);
    });
    const pruning = await playbook(['-i', inventory, '-e', `@${extraVars}`, 'agents.yml']);
    expect(pruning.changed, pruning.output.slice(-4000)).toBe(1);
    expect(readdirSync(releases).sort()).toEqual([...current, 'lxcloud-cr-0.0.2', 'lxcloud-cr-0.0.3'].sort());
    const third = await playbook(['-i', inventory, '-e', `@${extraVars}`, 'agents.yml']);
    expect(third.changed, third.output.slice(-4000)).toBe(0);
  }, 600_000);
});
