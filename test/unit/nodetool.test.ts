import { describe, expect, it } from 'vitest';
import { parseEndpoints, parseNodetoolStatus } from '../../src/cluster/nodetool.ts';
import { formatRing } from '../../src/cluster/ring.ts';

// Output captured from Cassandra 2.1's nodetool on the testbed (one token per node adds a Token column).
const ONE_TOKEN = `Datacenter: datacenter1
=======================
Status=Up/Down
|/ State=Normal/Leaving/Joining/Moving
--  Address     Load       Owns (effective)  Host ID                               Token                                    Rack
UN  127.0.11.1  64.47 KB   100.0%            dca40840-4290-4edc-b5ae-3ff375c6c861  -9223372036854775808                     rack1
`;

const VNODES = `Datacenter: dc-east
===================
Status=Up/Down
|/ State=Normal/Leaving/Joining/Moving
--  Address     Load       Tokens  Owns (effective)  Host ID                               Rack
UN  10.0.0.1    1.2 MB     256     66.7%             f9fb1b08-decf-4b25-9c19-eaf042580e41  r1
DN  10.0.0.2    ?          256     66.7%             8706320b-db47-4e45-9676-79067c10939a  r2
UJ  10.0.0.3    102.3 KB   256     ?                 7edf2bb3-acd4-45ad-a777-267f9c53d867  r1
`;

describe('parseNodetoolStatus', () => {
  it('reads the single-token layout with its Token column', () => {
    const view = parseNodetoolStatus(ONE_TOKEN);
    expect(view.get('127.0.11.1')).toEqual({
      address: '127.0.11.1', status: 'U', state: 'N', hostId: 'dca40840-4290-4edc-b5ae-3ff375c6c861', rack: 'rack1', datacenter: 'datacenter1',
    });
  });

  it('reads up, down and joining nodes of a vnode ring', () => {
    const view = parseNodetoolStatus(VNODES);
    expect([...view.values()].map((m) => `${m.status}${m.state} ${m.address} ${m.rack} ${m.datacenter}`)).toEqual([
      'UN 10.0.0.1 r1 dc-east', 'DN 10.0.0.2 r2 dc-east', 'UJ 10.0.0.3 r1 dc-east',
    ]);
    expect(formatRing(view)).toMatch(/^DN {2}10\.0\.0\.2 /m);
  });

  it('rejects output with no node rows instead of reporting an empty ring', () => {
    expect(() => parseNodetoolStatus('error: Connection refused')).toThrow(/printed no node rows/);
  });
});

describe('parseEndpoints', () => {
  it('keeps only address lines', () => {
    expect(parseEndpoints('127.0.10.2\n127.0.10.3\n')).toEqual(['127.0.10.2', '127.0.10.3']);
  });
});
