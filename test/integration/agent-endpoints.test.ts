import * as grpc from '@grpc/grpc-js';
import type cassandra from 'cassandra-driver';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ClusterClient } from '../../src/api/cluster-client.ts';
import { ClusterRegistry } from '../../src/cluster/registry.ts';
import { startAgent, stopAgent, type TestbedAgent } from '../../testcontainers/agents.ts';
import { runCounterContainer, runtimeFor } from '../../testcontainers/lxc.ts';
import { until } from '../../testcontainers/until.ts';
import { parseExposition } from '../support/exposition.ts';
import { connectStore, removeContainer, sharedTestbed } from '../support/testbed.ts';

/**
 * The agent's operator endpoints on the real testbed: the Prometheus metrics a checkpoint moves, scraped over
 * HTTP from the agents' own addresses.
 */

const testbed = sharedTestbed();
const SNAPSHOTS = 'endpoints_snap';
const META = 'endpoints_meta';
const CONTAINER = 'endpoints-a';
let client: cassandra.Client;
const agents: TestbedAgent[] = [];
let api: ClusterClient;

beforeAll(async () => {
  ({ client } = await connectStore(testbed, SNAPSHOTS));
  await new ClusterRegistry({ client, keyspace: META }).ensureSchema();
  await testbed.ring.waitSchemaAgreement();
  await runCounterContainer(testbed.host(1), CONTAINER);
  for (let i = 1; i <= testbed.hosts.length; i++) {
    agents.push(await startAgent(testbed, i, { snapshotKeyspace: SNAPSHOTS, metaKeyspace: META, metrics: true }));
  }
  api = new ClusterClient(agents[0]!.grpcEndpoint, grpc.credentials.createInsecure());
  await until(`${CONTAINER} adopted by host1`, async () => ((await api.listContainers()).containers.some((c) => c.name === CONTAINER && c.host === 'host1') || undefined), 60_000, 500);
}, 240_000);

afterAll(async () => {
  api?.close();
  for (let i = 1; i <= testbed.hosts.length; i++) await stopAgent(testbed, i);
  for (let i = 1; i <= testbed.hosts.length; i++) await removeContainer(runtimeFor(testbed.host(i)), CONTAINER);
  await client?.shutdown();
}, 120_000);

async function scrape(agent: TestbedAgent): Promise<{ contentType: string | null; text: string }> {
  const response = await fetch(`http://${agent.metricsEndpoint}/metrics`);
  expect(response.status).toBe(200);
  return { contentType: response.headers.get('content-type'), text: await response.text() };
}

describe('the metrics endpoint', () => {
  it('serves each agent on its own address, only at /metrics', async () => {
    for (const agent of agents) expect(agent.metricsEndpoint).toMatch(new RegExp(`^${testbed.host(agent.hostIndex).address.replace(/\./g, '\\.')}:\\d+$`));
    expect((await fetch(`http://${agents[0]!.metricsEndpoint}/`)).status).toBe(404);
  });

  it('counts a checkpoint\'s freeze, dump and upload on the owner, and shows every node UN to every agent', async () => {
    const before = parseExposition((await scrape(agents[0]!)).text);
    const freezesBefore = before.value('lxcr_checkpoint_freeze_seconds_count') ?? 0;
    const uploadedBefore = before.value('lxcr_checkpoint_upload_bytes_total') ?? 0;

    const done = await api.checkpoint(CONTAINER);
    expect(done.host).toBe('host1');

    const { contentType, text } = await scrape(agents[0]!);
    expect(contentType).toBe('text/plain; version=0.0.4; charset=utf-8');
    const after = parseExposition(text);
    expect(after.value('lxcr_checkpoint_freeze_seconds_count')).toBe(freezesBefore + 1);
    expect(after.value('lxcr_checkpoint_freeze_seconds_sum')).toBeGreaterThan(0);
    expect(after.value('lxcr_checkpoint_upload_bytes_total')).toBeGreaterThan(uploadedBefore);
    expect(after.value('lxcr_checkpoint_dump_bytes_total')).toBeGreaterThanOrEqual(done.logicalBytes);
    expect(after.value('lxcr_checkpoint_upload_throughput_bytes_per_second')).toBeGreaterThan(0);
    expect(after.value('lxcr_checkpoints_total', { outcome: 'ok' })).toBeGreaterThanOrEqual(1);
    expect(after.value('lxcr_audit_events_total', { kind: 'checkpoint-committed' })).toBeGreaterThanOrEqual(1);
    expect(after.value('lxcr_replication_queue_depth')).toBe(0);
    expect(after.value('lxcr_pending_checkpoints')).toBe(0);
    expect(after.value('lxcr_restores_in_flight')).toBe(0);
    expect(after.types.get('lxcr_restore_duration_seconds')).toBe('histogram');
    expect(after.types.get('lxcr_gc_freed_bytes_total')).toBe('counter');

    for (const agent of agents) {
      const view = parseExposition((await scrape(agent)).text);
      expect(view.value('lxcr_gossip_view_available')).toBe(1);
      for (const host of testbed.hosts) expect(view.value('lxcr_gossip_node_up', { node: host.address }), `${host.address} as ${agent.hostId} sees it`).toBe(1);
    }
  });
});
