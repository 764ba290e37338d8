import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { toAgentConfig } from '../../src/config/agent-config.ts';
import { ConfigError, loadAgentFileConfig, type ConfigSources } from '../../src/config/load.ts';
import { CONFIG_KEYS, envName } from '../../src/config/schema.ts';
import { run } from '../../src/util/exec.ts';

const repo = join(import.meta.dirname, '../..');
const scratch = mkdtempSync(join(tmpdir(), 'lxcr-config-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

let files = 0;
function configFile(content: unknown): string {
  const file = join(scratch, `agent-${++files}.json`);
  writeFileSync(file, typeof content === 'string' ? content : JSON.stringify(content, null, 2));
  return file;
}

/** The smallest valid file: the required keys, plaintext gRPC. */
const MINIMAL = { hostId: 'host1', lxcpath: '/var/lib/lxc', cassandra: { address: '10.0.0.1' }, grpc: { insecure: true } };

/** The problems a configuration has (none: []). */
function problems(sources: ConfigSources): readonly string[] {
  try {
    loadAgentFileConfig(sources);
    return [];
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
}

const pem = (name: string) => {
  const file = join(scratch, name);
  writeFileSync(file, `-----BEGIN ${name}-----\nAAAA\n-----END ${name}-----\n`);
  return file;
};

describe('the agent config file', () => {
  it('fills in every default, the derived ones from the host id and the Cassandra address', () => {
    expect(loadAgentFileConfig({ file: configFile(MINIMAL) })).toEqual({
      hostId: 'host1',
      lxcpath: '/var/lib/lxc',
      stagingDir: '/var/tmp/lxcr-staging/host1',
      standby: { enabled: true, dir: '/var/lib/lxcr/standby/host1' },
      cassandra: { address: '10.0.0.1', contactPoints: [], port: 9042, jmxAddress: '10.0.0.1', jmxPort: 7199 },
      grpc: { listen: '10.0.0.1:7500', insecure: true },
      schedule: {},
      keep: 2,
      keyspaces: { snapshots: 'lxcr_snapshots', snapshotReplicationFactor: 2, meta: 'lxcr_meta', metaReplicationFactor: 3 },
      audit: { ttlDays: 90, refusalsPerMinute: 60 },
    });
  });

  it('accepts the contract\'s example in full, and carries every key into the agent\'s configuration', () => {
    const tls = { ca: pem('ca.pem'), cert: pem('host.pem'), key: pem('host-key.pem') };
    const token = pem('token');
    const key = pem('chunk.key');
    const file = configFile({
      hostId: 'host1', lxcpath: '/var/lib/lxc', stagingDir: '/var/tmp/lxcr-staging/host1',
      standby: { enabled: true, dir: '/var/lib/lxcr/standby/host1' },
      cassandra: { address: '10.0.0.1', contactPoints: ['10.0.0.2'], port: 9042, jmxPort: 7199, localDataCenter: 'dc1' },
      grpc: { listen: '10.0.0.1:7500', tls, insecure: false, tokenFile: token },
      schedule: { cron: '*/5 * * * *' },
      keep: 2,
      keyspaces: { snapshots: 'lxcr_snapshots', snapshotDataCenters: { dc1: 2 }, meta: 'lxcr_meta', metaReplicationFactor: 3 },
      audit: { ttlDays: 30 },
      metrics: { listen: '127.0.0.1:9464' },
      encryption: { keyFile: key },
    });
    const agent = toAgentConfig(loadAgentFileConfig({ file }), 'jmx');
    expect(agent).toMatchObject({
      hostId: 'host1',
      cassandra: { address: '10.0.0.1', contactPoints: ['10.0.0.2'], port: 9042, jmxPort: 7199, localDataCenter: 'dc1' },
      grpc: { listen: '10.0.0.1:7500', security: { tls }, tokenFile: token },
      schedule: { cron: '*/5 * * * *' },
      snapshotReplication: { class: 'NetworkTopologyStrategy', dataCenters: { dc1: 2 } },
      metaReplication: { class: 'SimpleStrategy', replicationFactor: 3 },
      audit: { ttlDays: 30 },
      metrics: { listen: '127.0.0.1:9464' },
      encryption: { keyFile: key },
    });
    expect(toAgentConfig(loadAgentFileConfig({ file: configFile({ ...MINIMAL, schedule: { everySeconds: 300 }, standby: { enabled: false } }) }), 'jmx')).toMatchObject({
      schedule: { everyMs: 300_000 }, standby: false, grpc: { security: { insecure: true } }, snapshotReplication: { class: 'SimpleStrategy', replicationFactor: 2 },
    });
  });

  it('reports every error at once, each line naming its key path', () => {
    const file = configFile({
      hostId: '-bad',
      lxcpath: 'relative/lxc',
      cassandra: { port: 99_999, contactPoints: 'one-string' },
      grpc: { listen: 'no-port', tls: { ca: join(scratch, 'missing-ca.pem') } },
      schedule: { everySeconds: 0 },
      keep: 0,
      keyspaces: { snapshots: 'Bad-Name', snapshotDataCenters: { dc1: 12 } },
      audit: { ttlDays: -1 },
      metrics: {},
    });
    const found = problems({ file });
    const paths = found.map((line) => line.slice(0, line.indexOf(':')));
    expect(new Set(paths)).toEqual(
      new Set([
        'hostId', 'lxcpath', 'cassandra.address', 'cassandra.port', 'cassandra.contactPoints', 'grpc.listen', 'grpc.tls.ca', 'grpc.tls.cert', 'grpc.tls.key',
        'schedule.everySeconds', 'keep', 'keyspaces.snapshots', 'keyspaces.snapshotDataCenters', 'audit.ttlDays', 'metrics.listen',
      ]),
    );
    expect(found).toContain('keep: must be an integer from 1 to 1000, got 0');
    expect(found).toContain('cassandra.address: is required; set cassandra.address in the config file, or LXCR_CASSANDRA_ADDRESS, or --cassandra');
    expect(found.find((l) => l.startsWith('grpc.tls.ca:'))).toMatch(/missing-ca\.pem does not exist or is not readable/);
    expect(problems({ file: configFile({ ...MINIMAL, grpc: { insecure: true, tokenFile: scratch }, encryption: { keyFile: 'key' } }) })).toEqual([
      `grpc.tokenFile: ${scratch} is not a file`,
      'encryption.keyFile: must be an absolute path, got "key"',
    ]);
  });

  it('rejects unknown keys at any depth, suggesting the key that was meant', () => {
    const found = problems({ file: configFile({ ...MINIMAL, kep: 3, cassandra: { adress: '10.0.0.1', address: '10.0.0.1' }, audit: { ttl: 5 } }) });
    expect(found).toHaveLength(3);
    expect(found[0]).toMatch(/^cassandra\.adress: unknown key \(did you mean cassandra\.address\?\); the keys of cassandra are address, contactPoints/);
    expect(found[1]).toMatch(/^kep: unknown key \(did you mean keep\?\); the keys at the top level are hostId, lxcpath/);
    expect(found[2]).toMatch(/^audit\.ttl: unknown key; the keys of audit are ttlDays, refusalsPerMinute$/);
  });

  it('says where a file is not JSON, and that comments are not allowed', () => {
    expect(problems({ file: configFile('{\n  "hostId": "h1",\n  // the lxcpath\n  "lxcpath": "/x"\n}') })).toEqual([
      expect.stringMatching(/agent-\d+\.json: not valid JSON at line 3, column 3: .* \(comments are not allowed in JSON\)$/),
    ]);
    expect(problems({ file: join(scratch, 'nowhere.json') })).toEqual([expect.stringMatching(/nowhere\.json: cannot be read: ENOENT/)]);
    expect(problems({ file: configFile('[1]') })).toEqual([expect.stringMatching(/agent-\d+\.json: must hold one JSON object with the keys hostId, lxcpath.*, got \[1\]$/)]);
    expect(problems({ file: configFile({ ...MINIMAL, standby: true }) })).toEqual([expect.stringMatching(/^standby: must be an object with the keys enabled, dir, got true$/)]);
  });

  it('requires a choice between TLS and plaintext, and refuses both, or both schedules', () => {
    expect(problems({ file: configFile({ ...MINIMAL, grpc: {} }) })).toEqual([expect.stringMatching(/^grpc: needs tls \{ ca, cert, key \} .* or insecure: true/)]);
    expect(problems({ file: configFile({ ...MINIMAL, grpc: { insecure: false } }) })).toEqual([expect.stringMatching(/^grpc: needs tls/)]);
    const both = { ...MINIMAL, grpc: { insecure: true, tls: { ca: pem('ca2.pem'), cert: pem('c2.pem'), key: pem('k2.pem') } }, schedule: { everySeconds: 5, cron: '* * * * *' } };
    expect(problems({ file: configFile(both) })).toEqual([
      'schedule: everySeconds and cron are alternatives; give one of them, not both',
      'grpc: tls and insecure are alternatives; give one of them, not both',
    ]);
  });

  it('lets the environment override the file, and flags override both', () => {
    const file = configFile({ ...MINIMAL, keep: 4, cassandra: { address: '10.0.0.1', jmxPort: 7100 }, audit: { ttlDays: 7 } });
    const env = {
      LXCR_KEEP: '5', LXCR_CASSANDRA_JMX_PORT: '7300', LXCR_CASSANDRA_CONTACT_POINTS: '10.0.0.2, 10.0.0.3', LXCR_KEYSPACES_SNAPSHOT_DATA_CENTERS: 'dc1=2,dc2=3',
      LXCR_STANDBY_ENABLED: 'false', LXCR_AUDIT_TTL_DAYS: '0', LXCR_SCHEDULE_EVERY_SECONDS: '60', LXCR_METRICS_LISTEN: '127.0.0.1:9464',
    };
    const withEnv = loadAgentFileConfig({ file, env });
    expect(withEnv).toMatchObject({
      keep: 5, cassandra: { jmxPort: 7300, contactPoints: ['10.0.0.2', '10.0.0.3'] }, standby: { enabled: false }, audit: { ttlDays: 0 },
      schedule: { everySeconds: 60 }, keyspaces: { snapshotDataCenters: { dc1: 2, dc2: 3 } }, metrics: { listen: '127.0.0.1:9464' },
    });
    expect(withEnv.keyspaces.snapshotReplicationFactor).toBeUndefined();
    const withFlags = loadAgentFileConfig({ file, env, flags: new Map<string, string | true>([['keep', '6'], ['cron', '*/2 * * * *'], ['host-id', 'host9']]) });
    expect(withFlags).toMatchObject({ keep: 6, hostId: 'host9', stagingDir: '/var/tmp/lxcr-staging/host9', cassandra: { jmxPort: 7300 } });
    // A higher source's choice of one alternative replaces a lower source's choice of the other.
    expect(withFlags.schedule).toEqual({ cron: '*/2 * * * *' });
    const tls = { ca: pem('ca3.pem'), cert: pem('c3.pem'), key: pem('k3.pem') };
    const viaEnv = loadAgentFileConfig({ file, env: { LXCR_GRPC_TLS_CA: tls.ca, LXCR_GRPC_TLS_CERT: tls.cert, LXCR_GRPC_TLS_KEY: tls.key } });
    expect(toAgentConfig(viaEnv, 'jmx').grpc.security).toEqual({ tls });
    // insecure=false chooses nothing: the file's tls stays.
    expect(toAgentConfig(loadAgentFileConfig({ file: configFile({ ...MINIMAL, grpc: { tls } }), env: { LXCR_GRPC_INSECURE: 'false' } }), 'jmx').grpc.security).toEqual({ tls });
    expect(toAgentConfig(loadAgentFileConfig({ file: configFile({ ...MINIMAL, grpc: { tls } }), flags: new Map([['insecure', true]]) }), 'jmx').grpc.security).toEqual({ insecure: true });
  });

  it('names the variable or flag a bad value came from, and ignores variables that are not keys or are empty', () => {
    const file = configFile(MINIMAL);
    expect(problems({ file, env: { LXCR_KEEP: 'many', LXCR_STANDBY_ENABLED: 'yes', LXCR_KEYSPACES_SNAPSHOT_DATA_CENTERS: 'dc1:2' }, flags: new Map([['jmx-port', '0']]) })).toEqual([
      'standby.enabled: must be true or false, got "yes" (from LXCR_STANDBY_ENABLED)',
      'cassandra.jmxPort: must be an integer from 1 to 65535, got "0" (from --jmx-port)',
      'keep: must be an integer from 1 to 1000, got "many" (from LXCR_KEEP)',
      'keyspaces.snapshotDataCenters: "dc1:2" is not name=n (from LXCR_KEYSPACES_SNAPSHOT_DATA_CENTERS)',
    ]);
    expect(problems({ file, env: { LXCR_CASSANDRA: 'docker', LXCR_LOG_LEVEL: 'debug', LXCR_HOST_ID: '' } })).toEqual([]);
  });

  it('derives every variable name from its key path', () => {
    expect(envName('schedule.everySeconds')).toBe('LXCR_SCHEDULE_EVERY_SECONDS');
    expect(envName('grpc.tls.ca')).toBe('LXCR_GRPC_TLS_CA');
    expect(envName('hostId')).toBe('LXCR_HOST_ID');
    const names = CONFIG_KEYS.map((key) => envName(key.path));
    expect(new Set(names).size).toBe(names.length);
  });

  it('is documented in the README: every key and its variable', () => {
    const readme = readFileSync(join(repo, 'README.md'), 'utf8');
    const section = readme.slice(readme.indexOf('## Configuration'), readme.indexOf('## Benchmarks'));
    for (const { path } of CONFIG_KEYS) {
      const last = path.split('.').at(-1)!;
      expect(section, path).toMatch(new RegExp(`\\b${last}\\b`));
      const variable = envName(path);
      // Grouped rows abbreviate a shared prefix: LXCR_GRPC_TLS_CA, `_CERT`, `_KEY`.
      expect(section.includes(variable) || section.includes(`\`_${variable.split('_').at(-1)!}\``), variable).toBe(true);
    }
  });
});

describe('lxcr config check', () => {
  const lxcr = (...args: string[]) => run(process.execPath, [join(repo, 'bin/lxcr.js'), ...args], { allowFailure: true, env: { LXCR_KEEP: 'zero' } });

  it('exits 0 and says so for a valid file', async () => {
    const file = configFile(MINIMAL);
    const result = await lxcr('config', 'check', file);
    expect(result).toMatchObject({ exitCode: 0, stdout: `${file}: valid\n` });
  });

  it('exits 2 with the whole report for an invalid file, and applies the environment only with --env', async () => {
    const file = configFile({ ...MINIMAL, keep: 0, hostId: 'a b' });
    const result = await lxcr('config', 'check', file);
    expect(result.exitCode).toBe(2);
    expect(result.stderr.split('\n').filter((line) => /^[a-zA-Z.]+: /.test(line)).map((line) => line.split(':')[0])).toEqual(['hostId', 'keep']);
    expect(result.stderr).toMatch(/2 errors/);
    expect((await lxcr('config', 'check', configFile(MINIMAL), '--env')).stderr).toMatch(/^keep: must be an integer from 1 to 1000, got "zero" \(from LXCR_KEEP\)$/m);
    expect((await lxcr('config', 'frobnicate')).exitCode).toBe(2);
  });

  it('makes the agent refuse to start with the same report: exit 2, nothing created, no ready line', async () => {
    // keep: 0 in the file is overridden by LXCR_KEEP=zero, itself invalid: reported once, as the variable's.
    const staging = join(scratch, 'never-created');
    const file = configFile({ ...MINIMAL, stagingDir: staging, keep: 0, schedule: { every: 5 } });
    const result = await lxcr('agent', '--config', file, '--jmx-port', '0');
    expect(result.exitCode).toBe(2);
    expect(result.stdout).toBe('');
    expect(result.stderr).toMatch(/^lxcr agent: not started: invalid configuration \(.*agent-\d+\.json, environment, flags\), 3 errors:$/m);
    for (const path of ['schedule.every', 'cassandra.jmxPort', 'keep']) expect(result.stderr).toMatch(new RegExp(`^${path.replace('.', '\\.')}: `, 'm'));
    expect(existsSync(staging)).toBe(false);
  });
});
