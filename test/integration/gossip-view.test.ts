import { createServer } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { GossipUnavailableError, type GossipView } from '../../src/cluster/gossip.ts';
import { startGossipView } from '../../src/cluster/gossip-factory.ts';
import { JmxGossipView } from '../../src/cluster/jmx-gossip.ts';
import { NodetoolGossipView } from '../../src/cluster/nodetool-gossip.ts';
import { statusCode, type RingView } from '../../src/cluster/ring.ts';
import { createLogger } from '../../src/util/log.ts';
import { readProcStat } from '../../src/util/proc.ts';
import { localRing, sharedTestbed } from '../support/testbed.ts';

const testbed = sharedTestbed();
const ring = localRing(testbed);
const logger = createLogger('gossip-test', 'error');

// Every view a test opens is closed here, even when the test failed: close() kills the probe JVM by PID and
// waits for it to exit. The probes' PIDs are kept to check that nothing outlives the test.
const opened: GossipView[] = [];
const probePids = new Set<number>();
afterEach(async () => {
  await Promise.all(opened.splice(0).map((v) => v.close()));
  for (const pid of probePids) expect(await readProcStat(pid), `probe ${pid} still runs after close()`).toBeUndefined();
  probePids.clear();
});

async function jmxView(index: number, options: { port?: number; intervalMs?: number } = {}): Promise<JmxGossipView> {
  const node = ring.node(index);
  const view = await JmxGossipView.start({ host: node.address, port: options.port ?? node.jmxPort, intervalMs: options.intervalMs ?? 1000, logger });
  opened.push(view);
  const pid = view.probePid();
  if (pid !== undefined) probePids.add(pid);
  return view;
}

/** Polls until `predicate` holds for the current view; fails with what was last seen. */
async function until(view: GossipView, what: string, predicate: (v: RingView | undefined) => boolean, timeoutMs = 90_000): Promise<number> {
  const started = Date.now();
  for (;;) {
    const v = view.current();
    if (predicate(v)) return Date.now() - started;
    if (Date.now() - started > timeoutMs) {
      const seen = v ? [...v.values()].map((m) => `${statusCode(m)} ${m.address}`).join(', ') : `no view (${view.lastError()?.message ?? 'no error'})`;
      throw new Error(`${what} not seen within ${timeoutMs} ms; last: ${seen}`);
    }
    await sleep(100);
  }
}

function codes(view: RingView): Record<string, string> {
  return Object.fromEntries([...view.values()].map((m) => [m.address, statusCode(m)]));
}

describe('the JMX gossip view', () => {
  it('shows every node UN from node 1, with the host ids, racks and data centers nodetool shows', async () => {
    const view = await jmxView(1);
    const mine = await view.refresh();
    const theirs = await ring.ringView(1);
    expect(codes(mine)).toEqual({ '127.0.10.1': 'UN', '127.0.10.2': 'UN', '127.0.10.3': 'UN' });
    expect([...mine.values()].sort((a, b) => a.address.localeCompare(b.address)))
      .toEqual([...theirs.values()].sort((a, b) => a.address.localeCompare(b.address)));
    expect(view.current()).toEqual(mine);
    expect(view.lastError()).toBeUndefined();
  });

  it('turns a frozen node DN with a change event, reports its own frozen node as unreadable, and sees it UN after thaw', async () => {
    const view = await jmxView(1);
    const fromFrozen = await jmxView(3);
    await view.refresh();
    await fromFrozen.refresh();
    const node3 = ring.node(3).address;
    const changes: Array<{ node3: string | undefined; previous: string | undefined }> = [];
    view.on('change', (v, previous) => {
      const now = v.get(node3);
      const before = previous?.get(node3);
      changes.push({ node3: now && statusCode(now), previous: before && statusCode(before) });
    });
    const frozenErrors: GossipUnavailableError[] = [];
    fromFrozen.on('error', (e) => frozenErrors.push(e));

    await ring.freeze(3);
    try {
      const detectedMs = await until(view, 'node 3 DN from node 1', (v) => v?.get(node3)?.status === 'D');
      console.log(`gossip view: frozen node 3 seen DN from node 1 after ${detectedMs} ms`);
      expect(changes).toContainEqual({ node3: 'DN', previous: 'UN' });
      // Nodes 1 and 2 stay UN in that view.
      expect(codes(view.current()!)).toEqual({ '127.0.10.1': 'UN', '127.0.10.2': 'UN', '127.0.10.3': 'DN' });

      // The agent on the frozen host cannot read its own node: no view at all rather than a stale "all UN".
      await until(fromFrozen, 'no view from the frozen node', (v) => v === undefined, 30_000);
      await expect(fromFrozen.refresh()).rejects.toBeInstanceOf(GossipUnavailableError);
      expect(frozenErrors.length).toBeGreaterThan(0);
      expect(fromFrozen.lastError()?.message).toMatch(new RegExp(`${ring.node(3).address.replace(/\./g, '\\.')}:${ring.node(3).jmxPort}.*no answer from JMX (for|within) \\d+ ms \\(is the node hung\\?\\)`, 'i'));
    } finally {
      await ring.thaw(3);
      await until(view, 'node 3 UN again from node 1', (v) => v?.get(node3)?.status === 'U');
      await ring.waitStatus(3, 'U', 90_000, 1);
    }
    expect(changes.at(-1)).toEqual({ node3: 'UN', previous: 'DN' });
    // The probe on node 3 reconnects by itself once its node answers again.
    await until(fromFrozen, 'node 3 readable again', (v) => v !== undefined && [...v.values()].every((m) => m.status === 'U'), 60_000);
    for (const pid of [view.probePid(), fromFrozen.probePid()]) if (pid !== undefined) probePids.add(pid);
  });

  it('restarts a probe that dies, and kills and restarts one that goes silent', async () => {
    const view = await jmxView(2, { intervalMs: 500 });
    await view.refresh();
    const first = view.probePid()!;
    process.kill(first, 'SIGKILL');
    await until(view, 'a view from a restarted probe', () => {
      const pid = view.probePid();
      return pid !== undefined && pid !== first && view.lastError() === undefined;
    }, 30_000);
    const second = view.probePid()!;
    probePids.add(second);
    expect((await view.refresh()).size).toBe(3);

    // A stopped probe prints nothing: after 3 intervals it is killed (SIGKILL ends a stopped process) and replaced.
    process.kill(second, 'SIGSTOP');
    await until(view, 'the silent probe replaced', () => {
      const pid = view.probePid();
      return pid !== undefined && pid !== second;
    }, 30_000);
    expect(await readProcStat(second)).toBeUndefined();
    probePids.add(view.probePid()!);
    expect((await view.refresh()).get(ring.node(1).address)?.status).toBe('U');
  });

  it('reports a local node whose JMX does not answer clearly, retries, and never claims a node UN', async () => {
    // A port nothing listens on, on node 1's address.
    const port = await new Promise<number>((resolve, reject) => {
      const server = createServer();
      server.once('error', reject);
      server.listen(0, ring.node(1).address, () => {
        const address = server.address();
        server.close(() => resolve(typeof address === 'object' && address ? address.port : 0));
      });
    });
    const view = await jmxView(1, { port, intervalMs: 500 });
    const errors: GossipUnavailableError[] = [];
    view.on('error', (e) => errors.push(e));
    const changes: RingView[] = [];
    view.on('change', (v) => changes.push(v));
    const err = await view.refresh().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(GossipUnavailableError);
    const message = (err as GossipUnavailableError).message;
    expect(message).toContain(`${ring.node(1).address}:${port}`);
    expect(message).toMatch(/Connection refused/);
    expect(message).toMatch(/Check that the local Cassandra node runs and listens for JMX/);
    // Still trying: the probe keeps running and reporting, once per distinct failure.
    await sleep(2000);
    expect(view.probePid()).toBeDefined();
    expect(view.current()).toBeUndefined();
    expect(changes).toEqual([]);
    expect(errors.length).toBe(1);
  });
});

describe('the nodetool gossip view', () => {
  it('shows the same ring as the JMX view, behind the same interface', async () => {
    const node = ring.node(2);
    const viaNodetool = await startGossipView({
      kind: 'nodetool', host: node.address, port: node.jmxPort, intervalMs: 10_000, logger,
      runStatus: () => ring.nodetool(2, ['status']),
    });
    opened.push(viaNodetool);
    expect(viaNodetool).toBeInstanceOf(NodetoolGossipView);
    const viaJmx = await startGossipView({ kind: 'jmx', host: node.address, port: node.jmxPort, logger });
    opened.push(viaJmx);
    expect(viaJmx).toBeInstanceOf(JmxGossipView);
    probePids.add((viaJmx as JmxGossipView).probePid()!);
    const [a, b] = [await viaNodetool.refresh(), await viaJmx.refresh()];
    expect(codes(a)).toEqual({ '127.0.10.1': 'UN', '127.0.10.2': 'UN', '127.0.10.3': 'UN' });
    expect(codes(b)).toEqual(codes(a));
    expect([...b.values()].map((m) => m.hostId).sort()).toEqual([...a.values()].map((m) => m.hostId).sort());
  });
});
