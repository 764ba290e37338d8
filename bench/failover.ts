// npm run bench:failover — time from a host kill to its containers running again, on the real testbed (3
// Cassandra nodes, an `lxcr agent` per host, busybox counter containers holding 64 MiB each). For 1, 5 and 20
// containers on the killed host (LXCR_BENCH_COUNTS), side by side in one run, from the SIGKILL of host 3 (its
// Cassandra node, agent and containers) to:
//   (a) DN in the gossip view: the first agent's host-down event;
//   (b) the first restore started: the first restore-claimed event;
//   (c) all its containers running again: the last restore-done event, recorded when the container is RUNNING
//       on a live host and owned there in the registry. The bench then checks exactly that (registry and
//       lxc-info) and reports when its check saw it as observed_running_s_N.
// Prints a line per count and, last, one JSON line with detect_s_N, restore_start_s_N, all_running_s_N and
// scaling_20_vs_5 ((c) − (a) for 20 over (c) − (a) for 5). Agents keep standby copies (as by default) unless
// LXCR_BENCH_STANDBY=off; with them, the kill waits until every restoring host holds its copy.
import { copyFileSync, existsSync, mkdtempSync } from 'node:fs';
import { join } from 'node:path';
import cassandra from 'cassandra-driver';
import { EventLog, type RecordedEvent } from '../src/cluster/events.ts';
import { ClusterRegistry } from '../src/cluster/registry.ts';
import { CassandraSnapshotStore } from '../src/storage/cassandra-store.ts';
import { createLogger } from '../src/util/log.ts';
import { mapBounded } from '../src/util/concurrency.ts';
import { StandbyCache } from '../src/storage/standby-cache.ts';
import { agentLogFile, killHost, standbyDir, startAgent, stopAgent } from '../testcontainers/agents.ts';
import { createCounterContainer, runtimeFor, startContainer, waitRunning } from '../testcontainers/lxc.ts';
import { Testbed } from '../testcontainers/testbed.ts';
import { connectBenchClient, log, round } from './support.ts';

const counts = (process.env.LXCR_BENCH_COUNTS ?? '1,5,20').split(',').map(Number);
const MEMORY_MIB = Number(process.env.LXCR_BENCH_MEMORY_MIB ?? 64);
const FAILED = 3;
/** LXCR_BENCH_STANDBY=off runs the agents without standby copies, for comparison. */
const STANDBY = process.env.LXCR_BENCH_STANDBY !== 'off';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface CountResult {
  count: number;
  detectS: number;
  restoreStartS: number;
  allRunningS: number;
  /** When the bench, polling the registry and lxc-info after the events said so, saw them all running. */
  observedRunningS: number;
  /** Per container, claim to running on the target (download, verify, lay out, lxc-checkpoint -r). */
  restoreMeanS: number;
  restoreMaxS: number;
  /** How many containers each live host restored. */
  perHost: Record<string, number>;
  /** Where the slowest restore's time went. */
  slowest: string;
}

async function until(what: string, probe: () => Promise<boolean>, timeoutMs: number, everyMs = 100): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await probe())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(everyMs);
  }
}

async function benchCount(testbed: Testbed, client: cassandra.Client, count: number): Promise<CountResult> {
  const snapshots = `bench_fo_snap_${count}`;
  const meta = `bench_fo_meta_${count}`;
  const store = new CassandraSnapshotStore({ client, keyspace: snapshots });
  await store.ensureSchema();
  const registry = new ClusterRegistry({ client, keyspace: meta });
  await registry.ensureSchema();
  await testbed.ring.waitSchemaAgreement();

  const host = testbed.host(FAILED);
  const names = Array.from({ length: count }, (_, i) => `fo${count}-${i}`);
  await mapBounded(names, 4, async (name) => {
    await createCounterContainer(host, name, { memoryMiB: MEMORY_MIB });
    await startContainer(host, name);
    await waitRunning(host, name, 120_000);
  });
  const agentOptions = { snapshotKeyspace: snapshots, metaKeyspace: meta, everySeconds: 20, standby: STANDBY };
  for (let i = 1; i <= testbed.hosts.length; i++) await startAgent(testbed, i, agentOptions);
  try {
    await until(
      `a committed snapshot of all ${count} containers`,
      async () => (await Promise.all(names.map((n) => store.latestCommitted(n)))).every((v) => v !== undefined),
      30 * 60_000,
    );
    // Let the checkpoint round in progress finish, so the kill does not land mid-upload by chance.
    await sleep(2000);
    if (STANDBY) {
      // The steady state the agents reach between checkpoints: the host that would restore each container holds
      // a standby copy of its newest version.
      const failedAddress = testbed.ring.node(FAILED).address;
      await until(
        'standby copies of every container on its restoring host',
        async () => {
          const ready = await Promise.all(names.map(async (name) => {
            const address = store.replicas(name).find((a) => a !== failedAddress)!;
            const index = testbed.hosts.findIndex((h) => h.address === address) + 1;
            const copy = await new StandbyCache(standbyDir(testbed, index)).readyVersion(name);
            return copy !== undefined && copy >= (await store.latestCommitted(name))!.version;
          }));
          return ready.every(Boolean);
        },
        5 * 60_000,
      );
    }

    const killedAt = Date.now();
    await killHost(testbed, FAILED);
    // (c) is when the last container ran again: its restore-done event, which the restoring agent records once
    // lxc-checkpoint -r returned with the container RUNNING and the registry marked it running there. The bench
    // reads only the event log while the restores run: polling every container's ownership (QUORUM reads) and
    // state (an lxc-info each) would take CPU from the restores themselves, more the more containers there are.
    const log = new EventLog(client, meta, createLogger('bench', 'error'));
    let events: RecordedEvent[] = [];
    const restoredCount = (name: string) => events.filter((e) => e.kind === 'restore-done' && e.container === name).length;
    await until(
      `a restore-done event for each of the ${count} containers`,
      async () => {
        events = await log.between(new Date(killedAt - 1000), new Date());
        return names.every((n) => restoredCount(n) > 0);
      },
      10 * 60_000,
      250,
    );
    // Then check what the events say: every container RUNNING on a live host that owns it in the registry.
    const live = [1, 2, 3].filter((i) => i !== FAILED).map((i) => testbed.host(i));
    await until(
      `all ${count} containers running on a live host`,
      async () => {
        const owners = await Promise.all(names.map((n) => registry.ownership(n)));
        if (!owners.every((o) => o && o.state === 'running' && o.owner !== host.hostId)) return false;
        const states = await Promise.all(
          owners.map(async (o) => {
            const where = live.find((h) => h.hostId === o!.owner)!;
            return runtimeFor(where).state(o!.container).catch(() => undefined);
          }),
        );
        return states.every((s) => s === 'RUNNING');
      },
      60_000,
    );
    const observedRunningAt = Date.now();
    events = await log.between(new Date(killedAt - 1000), new Date());
    const first = (kind: string) => Math.min(...events.filter((e) => e.kind === kind).map((e) => e.at.getTime()));
    const detectedAt = first('host-down');
    const restoreStartedAt = first('restore-claimed');
    const done = events.filter((e) => e.kind === 'restore-done' && e.durationMs !== undefined);
    // Exactly once: one restore per container, and one running copy of each (checked above).
    const restoredTwice = names.filter((n) => done.filter((e) => e.container === n).length !== 1);
    if (restoredTwice.length > 0) {
      const trail = events
        .filter((e) => restoredTwice.includes(e.container ?? ''))
        .map((e) => `${e.at.toISOString()} ${e.kind} ${e.host} ${e.container} epoch ${e.epoch ?? '-'} ${e.outcome ?? ''} ${e.detail ?? ''}`);
      throw new Error(`not restored exactly once: ${restoredTwice.join(', ')}; their events:\n${trail.join('\n')}`);
    }
    const allRunningAt = Math.max(...done.filter((e) => names.includes(e.container ?? '')).map((e) => e.at.getTime()));
    const perHost: Record<string, number> = {};
    for (const e of done) perHost[e.host] = (perHost[e.host] ?? 0) + 1;
    return {
      count,
      detectS: (detectedAt - killedAt) / 1000,
      restoreStartS: (restoreStartedAt - killedAt) / 1000,
      allRunningS: (allRunningAt - killedAt) / 1000,
      observedRunningS: (observedRunningAt - killedAt) / 1000,
      restoreMeanS: done.reduce((sum, e) => sum + e.durationMs!, 0) / Math.max(1, done.length) / 1000,
      restoreMaxS: Math.max(0, ...done.map((e) => e.durationMs!)) / 1000,
      perHost,
      slowest: done.sort((a, b) => b.durationMs! - a.durationMs!)[0]?.detail ?? '',
    };
  } finally {
    for (let i = 1; i <= testbed.hosts.length; i++) await stopAgent(testbed, i);
    await testbed.ring.restart(FAILED);
    for (const h of testbed.hosts) {
      const runtime = runtimeFor(h);
      for (const name of names) {
        if (await runtime.exists(name)) {
          await runtime.stop(name, { kill: true }).catch(() => undefined);
          await runtime.destroy(name);
        }
      }
    }
  }
}

/**
 * Copies every agent's log out of the testbed before its teardown deletes them: the only record of what each
 * coordinator and restore did when a run's figures look odd.
 */
function keepAgentLogs(testbed: Testbed): void {
  const dir = mkdtempSync('/var/tmp/lxcr-bench-failover-logs-');
  for (let i = 1; i <= testbed.hosts.length; i++) {
    if (existsSync(agentLogFile(testbed, i))) copyFileSync(agentLogFile(testbed, i), join(dir, `${testbed.host(i).hostId}.log`));
  }
  log(`agent logs kept in ${dir}`);
}

async function main(): Promise<void> {
  const testbed = await Testbed.start({ name: 'bench-failover', subnet: 50, hosts: 3, logger: createLogger('bench', 'warn') });
  let client: cassandra.Client | undefined;
  const results: CountResult[] = [];
  try {
    client = await connectBenchClient(testbed, 20_000);
    for (const count of counts) {
      log(`--- ${count} container(s) of ${MEMORY_MIB} MiB on the killed host`);
      const r = await benchCount(testbed, client, count);
      results.push(r);
      log(`DN seen after ${round(r.detectS)} s, first restore started after ${round(r.restoreStartS)} s, all running after ${round(r.allRunningS)} s (${round(r.allRunningS - r.detectS)} s after detection; the bench's own check saw it at ${round(r.observedRunningS)} s)`);
      log(`one restore took ${round(r.restoreMeanS)} s on average, ${round(r.restoreMaxS)} s at most; restored per host: ${JSON.stringify(r.perHost)}; the slowest: ${r.slowest}`);
    }
  } finally {
    await client?.shutdown();
    keepAgentLogs(testbed);
    await testbed.teardown();
  }
  const summary: Record<string, number | boolean> = { memory_mib: MEMORY_MIB, standby: STANDBY };
  for (const r of results) {
    summary[`detect_s_${r.count}`] = round(r.detectS);
    summary[`restore_start_s_${r.count}`] = round(r.restoreStartS);
    summary[`all_running_s_${r.count}`] = round(r.allRunningS);
    summary[`observed_running_s_${r.count}`] = round(r.observedRunningS);
    summary[`restore_after_detect_s_${r.count}`] = round(r.allRunningS - r.detectS);
    summary[`restore_mean_s_${r.count}`] = round(r.restoreMeanS);
  }
  const of = (n: number) => results.find((r) => r.count === n);
  const [five, twenty] = [of(5), of(20)];
  if (five && twenty) summary.scaling_20_vs_5 = round((twenty.allRunningS - twenty.detectS) / (five.allRunningS - five.detectS), 3);
  process.stdout.write(`${JSON.stringify(summary)}\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`bench:failover failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exitCode = 1;
});
