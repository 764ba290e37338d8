import { describe, expect, it } from 'vitest';
import { parseArgs } from '../../src/cli/args.ts';
import { ExitCode } from '../../src/cli/command.ts';
import { SCHEMA_FLAGS, schemaRequestFromArgs } from '../../src/cli/commands/schema.ts';
import { main } from '../../src/cli/main.ts';

const request = (argv: string[]) => schemaRequestFromArgs(parseArgs(argv, SCHEMA_FLAGS));

describe('lxcr schema apply options', () => {
  it('defaults to the agent\'s keyspaces: snapshots RF 2, registry RF 3', () => {
    expect(request(['apply'])).toEqual({
      snapshot: { keyspace: 'lxcr_snapshots', replication: { class: 'SimpleStrategy', replicationFactor: 2 } },
      meta: { keyspace: 'lxcr_meta', replication: { class: 'SimpleStrategy', replicationFactor: 3 } },
    });
  });

  it('takes the replication factors and keyspace names asked for, or a factor per data center', () => {
    const asked = request(['apply', '--snapshot-rf', '3', '--meta-rf', '5', '--snapshot-keyspace', 'snaps', '--meta-keyspace', 'meta']);
    expect(asked.snapshot).toEqual({ keyspace: 'snaps', replication: { class: 'SimpleStrategy', replicationFactor: 3 } });
    expect(asked.meta).toEqual({ keyspace: 'meta', replication: { class: 'SimpleStrategy', replicationFactor: 5 } });
    expect(request(['apply', '--snapshot-dcs', 'dc1:2,dc-2:1']).snapshot.replication).toEqual({ class: 'NetworkTopologyStrategy', dataCenters: { dc1: 2, 'dc-2': 1 } });
  });

  it('refuses bad input, naming what is wrong', () => {
    expect(() => request([])).toThrow(/needs the action "apply"/);
    expect(() => request(['apply', 'now'])).toThrow(/got "apply now"/);
    expect(() => request(['apply', '--snapshot-rf', '0'])).toThrow(/--snapshot-rf must be an integer from 1 to 9/);
    expect(() => request(['apply', '--snapshot-rf', '2', '--snapshot-dcs', 'dc1:2'])).toThrow(/contradict/);
    expect(() => request(['apply', '--snapshot-dcs', 'dc1=2'])).toThrow(/DC:FACTOR pairs/);
    expect(() => request(['apply', '--meta-keyspace', 'Bad-Name'])).toThrow(/keyspace "Bad-Name" must be lowercase/);
    expect(() => request(['apply', '--meta-keyspace', 'lxcr_snapshots'])).toThrow(/must differ/);
  });

  it('exits 2 on bad arguments and 6 when Cassandra cannot be reached', async () => {
    expect(await main(['schema', 'apply', '--meta-rf', 'three'])).toBe(ExitCode.USAGE);
    // Nothing listens on port 1 of 127.0.0.1: refused at once.
    expect(await main(['schema', 'apply', '--cassandra', '127.0.0.1', '--port', '1'])).toBe(ExitCode.UNAVAILABLE);
  });
});
