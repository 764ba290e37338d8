import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { GossipUnavailableError, refreshOnHostDown, statesDiffer, type GossipView } from '../../src/cluster/gossip.ts';
import { gossipViewKindFromEnv } from '../../src/cluster/gossip-factory.ts';
import { parseProbeLine, probeClassDir, probeViewToRing, type ProbeView } from '../../src/cluster/jmx-gossip.ts';
import { NodetoolGossipView } from '../../src/cluster/nodetool-gossip.ts';
import { statusCode, type RingView } from '../../src/cluster/ring.ts';
import { createLogger } from '../../src/util/log.ts';

const quiet = createLogger('test', 'error');

// A line as GossipProbe prints it against Cassandra 2.1 (node 3 frozen, node 4 joining).
const VIEW_LINE =
  '{"type":"view","seq":7,"live":["127.0.10.1","127.0.10.2","127.0.10.4"],"unreachable":["127.0.10.3"],' +
  '"joining":["127.0.10.4"],"leaving":[],"moving":[],' +
  '"hostIds":{"127.0.10.1":"e1fd5fd1-7275-434f-ac78-eaaf4646d6bf","127.0.10.2":"514693c9-6976-44fb-852f-8c8bf8c7a41f",' +
  '"127.0.10.3":"1e3f235b-7686-4d77-890d-f103b1a8cf39"},' +
  '"racks":{"127.0.10.1":"rack1","127.0.10.2":"rack1","127.0.10.3":"rack1","127.0.10.4":"rack1"},' +
  '"datacenters":{"127.0.10.1":"datacenter1","127.0.10.2":"datacenter1","127.0.10.3":"datacenter1","127.0.10.4":"datacenter1"},"pollMs":3}';

function codes(view: RingView): string[] {
  return [...view.values()].map((m) => `${statusCode(m)} ${m.address}`).sort();
}

describe('parseProbeLine', () => {
  it('reads views, errors and the greeting', () => {
    const view = parseProbeLine(VIEW_LINE);
    expect(view.type).toBe('view');
    expect(parseProbeLine('{"type":"error","stage":"connect","message":"java.net.ConnectException: Connection refused"}')).toEqual({
      type: 'error', stage: 'connect', message: 'java.net.ConnectException: Connection refused',
    });
    expect(parseProbeLine('{"type":"waiting","stage":"poll","ms":2004}')).toEqual({ type: 'waiting', stage: 'poll', ms: 2004 });
    expect(parseProbeLine('{"type":"hello","jmx":"127.0.10.1:7361","intervalMs":1000}')).toEqual({
      type: 'hello', jmx: '127.0.10.1:7361', intervalMs: 1000,
    });
  });

  it('rejects what is not a probe line, saying what was wrong', () => {
    expect(() => parseProbeLine('Picked up JAVA_TOOL_OPTIONS: -Dx')).toThrow(/not JSON/);
    expect(() => parseProbeLine('{"type":"view","live":"127.0.10.1"}')).toThrow(/live is not a list/);
    expect(() => parseProbeLine('{"type":"view","seq":1,"live":[],"unreachable":[],"joining":[],"leaving":[],"moving":[],"hostIds":{"a":1},"racks":{},"datacenters":{},"pollMs":1}'))
      .toThrow(/hostIds is not a map/);
    expect(() => parseProbeLine('{"type":"gossip"}')).toThrow(/unknown type/);
    expect(() => parseProbeLine('[]')).toThrow(/unexpected line/);
  });
});

describe('probeViewToRing', () => {
  it('maps live/unreachable and the state lists onto nodetool letters', () => {
    const ring = probeViewToRing(parseProbeLine(VIEW_LINE) as ProbeView);
    expect(codes(ring)).toEqual(['DN 127.0.10.3', 'UJ 127.0.10.4', 'UN 127.0.10.1', 'UN 127.0.10.2']);
    expect(ring.get('127.0.10.3')).toEqual({
      address: '127.0.10.3', status: 'D', state: 'N', hostId: '1e3f235b-7686-4d77-890d-f103b1a8cf39', rack: 'rack1', datacenter: 'datacenter1',
    });
    expect(ring.get('127.0.10.4')?.hostId).toBe('');
  });

  it('never reports a node up that gossip does not list live', () => {
    const ring = probeViewToRing({
      type: 'view', seq: 1, live: ['10.0.0.1'], unreachable: [], joining: [], leaving: ['10.0.0.3'], moving: [],
      hostIds: { '10.0.0.1': 'a', '10.0.0.2': 'b' }, racks: {}, datacenters: {}, pollMs: 1,
    });
    expect(codes(ring)).toEqual(['DL 10.0.0.3', 'DN 10.0.0.2', 'UN 10.0.0.1']);
    expect(ring.get('10.0.0.2')?.rack).toBe('');
  });
});

describe('statesDiffer', () => {
  const base = probeViewToRing(parseProbeLine(VIEW_LINE) as ProbeView);
  it('sees status, state and membership changes, not host ids or racks', () => {
    const copy = new Map(base);
    expect(statesDiffer(base, copy)).toBe(false);
    copy.set('127.0.10.1', { ...copy.get('127.0.10.1')!, rack: 'r9', hostId: 'x' });
    expect(statesDiffer(base, copy)).toBe(false);
    copy.set('127.0.10.3', { ...copy.get('127.0.10.3')!, status: 'U' });
    expect(statesDiffer(base, copy)).toBe(true);
    const fewer = new Map(base);
    fewer.delete('127.0.10.4');
    expect(statesDiffer(base, fewer)).toBe(true);
    expect(statesDiffer(undefined, base)).toBe(true);
    expect(statesDiffer(undefined, undefined)).toBe(false);
  });
});

describe('probeClassDir', () => {
  it('names the directory by the source hash, as scripts/setup.sh does (sha256sum | cut -c1-16)', () => {
    // sha256("abc") = ba7816bf8f01cfea...
    expect(probeClassDir('/c', 'abc')).toBe('/c/gossip-probe/ba7816bf8f01cfea');
  });
});

describe('gossipViewKindFromEnv', () => {
  it('defaults to jmx and rejects unknown kinds', () => {
    expect(gossipViewKindFromEnv(undefined)).toBe('jmx');
    expect(gossipViewKindFromEnv('nodetool')).toBe('nodetool');
    expect(() => gossipViewKindFromEnv('driver')).toThrow(/LXCR_GOSSIP_VIEW/);
  });
});

const STATUS = (node3: 'UN' | 'DN') => `Datacenter: datacenter1
=======================
--  Address     Load       Owns (effective)  Host ID                               Token                                    Rack
UN  127.0.10.1  64.47 KB   66.7%             dca40840-4290-4edc-b5ae-3ff375c6c861  -9223372036854775808                     rack1
UN  127.0.10.2  64.47 KB   66.7%             f9fb1b08-decf-4b25-9c19-eaf042580e41  -3074457345618258603                     rack1
${node3}  127.0.10.3  64.47 KB   66.7%             8706320b-db47-4e45-9676-79067c10939a  3074457345618258602                      rack1
`;

// The polling machinery shared by both implementations, driven through NodetoolGossipView with scripted output
// (the real nodetool path runs in test/integration/gossip-view.test.ts).
describe('polling gossip view (scripted nodetool output)', () => {
  let view: GossipView | undefined;
  afterEach(async () => {
    await view?.close();
    view = undefined;
  });

  it('announces a change only when a status changes', async () => {
    const outputs = [STATUS('UN'), STATUS('UN'), STATUS('DN'), STATUS('DN'), STATUS('UN')];
    let calls = 0;
    view = new NodetoolGossipView({
      host: '127.0.10.1', port: 7361, intervalMs: 100, logger: quiet,
      runStatus: () => Promise.resolve(outputs[Math.min(calls++, outputs.length - 1)]!),
    });
    const seen: string[] = [];
    view.on('change', (v, previous) => seen.push(`${statusCode(v.get('127.0.10.3')!)} after ${previous ? statusCode(previous.get('127.0.10.3')!) : '-'}`));
    while (calls < outputs.length + 1) await sleep(50);
    expect(seen).toEqual(['UN after -', 'DN after UN', 'UN after DN']);
  });

  it('reports an unreachable node clearly and forgets the last view instead of claiming UN', async () => {
    let fail = false;
    view = new NodetoolGossipView({
      host: '127.0.10.1', port: 7361, intervalMs: 100, timeoutMs: 200, logger: quiet,
      runStatus: () => (fail ? Promise.reject(new Error('nodetool: Failed to connect to 127.0.10.1:7361 - ConnectException')) : Promise.resolve(STATUS('UN'))),
    });
    expect((await view.refresh()).get('127.0.10.3')?.status).toBe('U');
    const errors: GossipUnavailableError[] = [];
    view.on('error', (e) => errors.push(e));
    fail = true;
    await expect(view.refresh()).rejects.toThrow(/127\.0\.10\.1:7361.*Failed to connect.*Check that the local Cassandra node runs/s);
    // Stale after 3 intervals + the call timeout: 500 ms.
    await sleep(800);
    expect(view.current()).toBeUndefined();
    expect(view.lastError()).toBeInstanceOf(GossipUnavailableError);
    expect(view.lastError()?.code).toBe('UNAVAILABLE');
    expect(errors).toHaveLength(1); // once per distinct failure, not once per poll
    fail = false;
    expect((await view.refresh()).size).toBe(3);
    expect(view.current()?.size).toBe(3);
    expect(view.lastError()).toBeUndefined();
  });
});

describe('refreshOnHostDown', () => {
  it('polls when the driver reports a host down, until unsubscribed', async () => {
    const listeners = new Set<(host: { address: string }) => void>();
    const client = {
      on: (_e: 'hostDown', l: (host: { address: string }) => void) => listeners.add(l),
      removeListener: (_e: 'hostDown', l: (host: { address: string }) => void) => listeners.delete(l),
    };
    let refreshes = 0;
    const view = new NodetoolGossipView({
      host: '127.0.10.1', port: 7361, intervalMs: 60_000, logger: quiet,
      runStatus: () => {
        refreshes++;
        return Promise.resolve(STATUS('DN'));
      },
    });
    try {
      await view.refresh();
      await sleep(50); // the first scheduled poll, at start
      const before = refreshes;
      const stop = refreshOnHostDown(client, view);
      for (const l of listeners) l({ address: '127.0.10.3' });
      await sleep(50);
      expect(refreshes).toBe(before + 1);
      stop();
      expect(listeners.size).toBe(0);
    } finally {
      await view.close();
    }
  });
});
