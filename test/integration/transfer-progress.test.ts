import * as grpc from '@grpc/grpc-js';
import type cassandra from 'cassandra-driver';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ClusterClient } from '../../src/api/cluster-client.ts';
import type { TransferProgress__Output } from '../../src/api/generated/lxcr/v1/TransferProgress.ts';
import { ClusterRegistry } from '../../src/cluster/registry.ts';
import { errorMessage } from '../../src/util/errors.ts';
import { type TestbedAgent, startAgents, stopAgents } from '../../testcontainers/agents.ts';
import { runCounterContainer } from '../../testcontainers/lxc.ts';
import { connectStore, sharedTestbed, removeContainersEverywhere, untilAdopted } from '../support/testbed.ts';
import { lxcrInBackground } from '../support/cli.ts';

/**
 * Progress of long transfers, on the real testbed: `lxcr checkpoint --progress` of a container holding 128 MiB
 * draws the owner's upload while it runs, and WatchTransfer asked of an agent that runs nothing relays a restore
 * running on another host, which `lxcr restore --progress` draws as a bar.
 */

const testbed = sharedTestbed();
const SNAPSHOTS = 'progress_snap';
const META = 'progress_meta';
const CONTAINER = 'prog-a';
let client: cassandra.Client;
const agents: TestbedAgent[] = [];

beforeAll(async () => {
  ({ client } = await connectStore(testbed, SNAPSHOTS));
  await new ClusterRegistry({ client, keyspace: META }).ensureSchema();
  await testbed.ring.waitSchemaAgreement();
  await runCounterContainer(testbed.host(1), CONTAINER, { memoryMiB: 128 });
  agents.push(...(await startAgents(testbed, { snapshotKeyspace: SNAPSHOTS, metaKeyspace: META })));
  const api = clientOf(1);
  try {
    await untilAdopted(api, CONTAINER, 'host1');
  } finally {
    api.close();
  }
}, 240_000);

afterAll(async () => {
  await stopAgents(testbed);
  await removeContainersEverywhere(testbed, [CONTAINER]);
  await client?.shutdown();
}, 120_000);

function clientOf(hostIndex: number): ClusterClient {
  return new ClusterClient(agents[hostIndex - 1]!.grpcEndpoint, grpc.credentials.createInsecure());
}

/** The progress lines drawn on stderr (redrawn with '\r', ended with '\n'). */
const progressLines = (stderr: string) => stderr.split(/[\r\n]/).map((line) => line.trimEnd()).filter(Boolean);

describe('lxcr checkpoint --progress', () => {
  it('draws the owner\'s upload (bytes rising, MiB/s) on stderr while it runs; exit code and stdout as without it', async () => {
    const agent = ['--agent', agents[1]!.grpcEndpoint, '--insecure']; // host2's agent: the upload runs on host1
    const shown = await lxcrInBackground('checkpoint', CONTAINER, '--progress', ...agent);
    expect(shown.status, shown.stderr).toBe(0);
    expect(shown.stdout).toMatch(new RegExp(`^${CONTAINER}: version \\d+ committed by host1 — frozen \\d+ ms, \\d+ ms in all; [\\d.]+ MiB snapshot, [\\d.]+ MiB uploaded\\n$`));
    const lines = progressLines(shown.stderr);
    // The version is drawn once the upload has begun it.
    const upload = new RegExp(`^upload ${CONTAINER}(?: v\\d+)? on host1  ([\\d.]+) MiB  ([\\d.]+) MiB/s(  done)?$`);
    expect(lines.every((line) => upload.test(line)), shown.stderr).toBe(true);
    const mib = lines.map((line) => Number(upload.exec(line)![1]));
    expect(mib.length, shown.stderr).toBeGreaterThanOrEqual(2);
    expect(mib.every((v, i) => i === 0 || v >= mib[i - 1]!)).toBe(true);
    expect(mib.at(-1)!).toBeGreaterThan(mib[0]!);
    expect(mib.at(-1)!).toBeGreaterThan(128);
    expect(Number(upload.exec(lines.at(-1)!)![2])).toBeGreaterThan(0);
    expect(lines.at(-1)).toMatch(/ done$/);
    console.log(`lxcr checkpoint --progress: ${lines.length} progress lines, last: ${lines.at(-1)}`);

    // Off with --no-progress and with --json (then stdout is the response alone).
    const quiet = await lxcrInBackground('checkpoint', CONTAINER, '--no-progress', ...agent);
    expect([quiet.status, quiet.stderr]).toEqual([0, '']);
    expect(quiet.stdout).toMatch(new RegExp(`^${CONTAINER}: version \\d+ committed by host1`));
    const json = await lxcrInBackground('checkpoint', CONTAINER, '--json', '--progress', ...agent);
    expect([json.status, json.stderr]).toEqual([0, '']);
    expect(JSON.parse(json.stdout)).toMatchObject({ container: CONTAINER, host: 'host1' });
  }, 300_000);
});

describe('WatchTransfer', () => {
  it('relays a restore running on another host to an agent that runs nothing, as lxcr restore --progress draws it', async () => {
    const watcher = clientOf(3); // neither the owner (host1) nor the restore's target (host2)
    try {
      // Nothing runs: the stream ends at once, empty.
      const idle: TransferProgress__Output[] = [];
      await watcher.watchTransfer(CONTAINER, (p) => idle.push(p)).done;
      expect(idle).toEqual([]);
      expect(await watcher.watchTransfer('no such', () => undefined).done.then(() => 'ended', (err: unknown) => errorMessage(err))).toMatch(/INVALID_ARGUMENT|container name/i);

      const restoring = lxcrInBackground('restore', CONTAINER, '--to', 'host2', '--progress', '--agent', agents[0]!.grpcEndpoint, '--insecure');
      let finished = false;
      void restoring.finally(() => (finished = true));
      const seen: TransferProgress__Output[] = [];
      while (!finished && !seen.some((p) => p.done)) {
        await watcher.watchTransfer(CONTAINER, (p) => seen.push(p)).done;
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      const restored = await restoring;
      expect(restored.status, restored.stderr).toBe(0);
      expect(restored.stdout).toMatch(new RegExp(`^${CONTAINER}: restored from host1 to host2, version \\d+, epoch \\d+ — \\d+ ms in all\\n$`));

      // Until the restore has read the version's manifest (a lease, a read) it knows neither its version nor its size.
      expect(seen.filter((p) => p.kind === 'restore').length, JSON.stringify(seen)).toBeGreaterThanOrEqual(2);
      const restores = seen.filter((p) => p.kind === 'restore' && p.bytesTotal > 0);
      expect(restores.length, JSON.stringify(seen)).toBeGreaterThanOrEqual(1);
      expect(restores.every((p) => p.host === 'host2' && p.container === CONTAINER && p.version > 0 && p.bytesTotal > 128 * 1024 * 1024)).toBe(true);
      expect(restores.every((p, i) => i === 0 || p.bytesDone >= restores[i - 1]!.bytesDone)).toBe(true);
      const last = restores.at(-1)!;
      expect(last).toMatchObject({ done: true, bytesDone: last.bytesTotal });
      expect(last.elapsedMs).toBeGreaterThan(0);

      const bar = new RegExp(`^restore ${CONTAINER} v\\d+ on host2 \\[[#-]{20}\\] +\\d+%  [\\d.]+/[\\d.]+ MiB  [\\d.]+ MiB/s  (ETA \\S+|done)$`);
      const starting = new RegExp(`^restore ${CONTAINER}(?: v\\d+)? on host2  0\\.0 MiB  0\\.0 MiB/s$`);
      const lines = progressLines(restored.stderr);
      expect(lines.filter((line) => bar.test(line)).length, restored.stderr).toBeGreaterThanOrEqual(1);
      expect(lines.every((line) => bar.test(line) || starting.test(line)), restored.stderr).toBe(true);
      expect(lines.at(-1)).toMatch(/\[#{20}\] 100% .* done$/);
      console.log(`lxcr restore --progress: ${lines.length} progress lines, last: ${lines.at(-1)}; ${restores.length} messages relayed by host3`);
    } finally {
      watcher.close();
    }
  }, 300_000);
});

describe('lxcr migrate --progress', () => {
  it('draws the restore on the target as a bar (and the upload on the owner when it is caught running), then the usual result', async () => {
    const migrated = await lxcrInBackground('migrate', CONTAINER, '--to', 'host3', '--progress', '--agent', agents[0]!.grpcEndpoint, '--insecure');
    expect(migrated.status, migrated.stderr).toBe(0);
    expect(migrated.stdout).toMatch(new RegExp(`^${CONTAINER}: migrated from host2 to host3, version \\d+, epoch \\d+ — frozen \\d+ ms, \\d+ ms in all\\n$`));
    const lines = progressLines(migrated.stderr);
    const upload = new RegExp(`^upload ${CONTAINER}(?: v\\d+)? on host2  [\\d.]+ MiB  [\\d.]+ MiB/s(  done)?$`);
    const restore = new RegExp(`^restore ${CONTAINER}((?: v\\d+)? on host3  0\\.0 MiB  0\\.0 MiB/s| v\\d+ on host3 \\[[#-]{20}\\] +\\d+%  [\\d.]+/[\\d.]+ MiB  [\\d.]+ MiB/s  (ETA \\S+|done))$`);
    expect(lines.every((line) => upload.test(line) || restore.test(line)), migrated.stderr).toBe(true);
    expect(lines.at(-1)).toMatch(restore);
    expect(lines.at(-1)).toMatch(/\[#{20}\] 100% .* done$/);
    // The upload (if drawn) comes before the restore, each on its own line.
    const firstRestore = lines.findIndex((line) => restore.test(line));
    expect(lines.slice(firstRestore).every((line) => restore.test(line))).toBe(true);
    console.log(`lxcr migrate --progress: ${lines.filter((l) => upload.test(l)).length} upload and ${lines.length - firstRestore} restore lines, last: ${lines.at(-1)}`);
  }, 300_000);
});
