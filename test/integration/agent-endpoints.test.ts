import { writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import type cassandra from 'cassandra-driver';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentClient } from '../../src/api/agent-client.ts';
import { ClusterClient } from '../../src/api/cluster-client.ts';
import { bearerMetadata } from '../../src/api/auth.ts';
import { CLUSTER_SERVICE_NAME, LOADER_OPTIONS } from '../../src/api/proto.ts';
import { EventLog } from '../../src/cluster/events.ts';
import { ClusterRegistry } from '../../src/cluster/registry.ts';
import type { CodedError } from '../../src/util/errors.ts';
import { createLogger } from '../../src/util/log.ts';
import { type TestbedAgent, startAgents, stopAgents } from '../../testcontainers/agents.ts';
import { runCounterContainer } from '../../testcontainers/lxc.ts';
import { until } from '../../testcontainers/until.ts';
import { parseExposition } from '../support/exposition.ts';
import { connectStore, sharedTestbed, removeContainersEverywhere, untilAdopted } from '../support/testbed.ts';
import { lxcr } from '../support/cli.ts';

/**
 * The agent's operator endpoints on the real testbed: the Prometheus metrics a checkpoint moves, scraped over
 * HTTP from the agents' own addresses; server reflection, asked by a stock reflection client; and the bearer
 * token the agents ask of public API calls (started with --token-file).
 */

const testbed = sharedTestbed();
const SNAPSHOTS = 'endpoints_snap';
const META = 'endpoints_meta';
const CONTAINER = 'endpoints-a';
let client: cassandra.Client;
const agents: TestbedAgent[] = [];
let api: ClusterClient;
let tokenFile: string;
const TOKEN = 'e2b7c4f09a1d4e6b8c3f5a7d9e1b2c4d';

beforeAll(async () => {
  ({ client } = await connectStore(testbed, SNAPSHOTS));
  await new ClusterRegistry({ client, keyspace: META }).ensureSchema();
  await testbed.ring.waitSchemaAgreement();
  await runCounterContainer(testbed.host(1), CONTAINER);
  tokenFile = join(testbed.runDir, 'endpoints-token');
  writeFileSync(tokenFile, `${TOKEN}\n`, { mode: 0o600 });
  agents.push(...(await startAgents(testbed, { snapshotKeyspace: SNAPSHOTS, metaKeyspace: META, metrics: true, tokenFile })));
  // Asked of host 2's agent: a checkpoint of host 1's container is forwarded, with host 2's token.
  api = new ClusterClient(agents[1]!.grpcEndpoint, grpc.credentials.createInsecure(), { token: TOKEN });
  await untilAdopted(api, CONTAINER, 'host1');
}, 240_000);

afterAll(async () => {
  api?.close();
  await stopAgents(testbed);
  await removeContainersEverywhere(testbed, [CONTAINER]);
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

    // Scraped while the checkpoint runs: the owner shows it pending and its staged dump in the replicator's queue.
    const depths = { pending: 0, replication: 0 };
    let checkpointing = true;
    const watching = (async () => {
      while (checkpointing) {
        const during = parseExposition((await scrape(agents[0]!)).text);
        depths.pending = Math.max(depths.pending, during.value('lxcr_pending_checkpoints') ?? 0);
        depths.replication = Math.max(depths.replication, during.value('lxcr_replication_queue_depth') ?? 0);
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    })();
    const done = await api.checkpoint(CONTAINER).finally(() => (checkpointing = false));
    await watching;
    expect(done.host).toBe('host1');
    expect(depths).toEqual({ pending: 1, replication: 1 });

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

/** A reflection client as stock tools have it: grpc.reflection.v1 from its own proto, nothing of ours. */
function reflectionClient(endpoint: string) {
  const proto = join(dirname(createRequire(import.meta.url).resolve('@grpc/reflection/package.json')), 'build/proto/grpc/reflection/v1/reflection.proto');
  const loaded = grpc.loadPackageDefinition(protoLoader.loadSync(proto, { keepCase: false, longs: Number, defaults: true, oneofs: true })) as unknown as {
    grpc: { reflection: { v1: { ServerReflection: new (endpoint: string, credentials: grpc.ChannelCredentials) => grpc.Client } } };
  };
  const client = new loaded.grpc.reflection.v1.ServerReflection(endpoint, grpc.credentials.createInsecure());
  type Response = {
    listServicesResponse?: { service: Array<{ name: string }> };
    fileDescriptorResponse?: { fileDescriptorProto: Buffer[] };
    errorResponse?: { errorCode: number; errorMessage: string };
  };
  const ask = (request: Record<string, string>) =>
    new Promise<Response>((resolve, reject) => {
      const call = (client as unknown as { ServerReflectionInfo(): grpc.ClientDuplexStream<unknown, Response> }).ServerReflectionInfo();
      call.once('data', (response: Response) => {
        resolve(response);
        call.end();
      });
      call.once('error', reject);
      call.write(request);
    });
  return { ask, close: () => client.close() };
}

/** FileDescriptorProtos as one FileDescriptorSet (field 1, length-delimited, repeated), what proto-loader reads. */
function descriptorSet(files: readonly Buffer[]): Buffer {
  const parts: Buffer[] = [];
  for (const file of files) {
    const length: number[] = [];
    for (let n = file.length; ; n >>>= 7) {
      if (n < 0x80) {
        length.push(n);
        break;
      }
      length.push((n & 0x7f) | 0x80);
    }
    parts.push(Buffer.from([0x0a, ...length]), file);
  }
  return Buffer.concat(parts);
}

describe('server reflection', () => {
  it('lists the agent\'s services and describes the public API well enough to call it', async () => {
    const reflection = reflectionClient(agents[0]!.grpcEndpoint);
    try {
      const listed = await reflection.ask({ listServices: '*' });
      expect(listed.listServicesResponse?.service.map((s) => s.name).sort()).toEqual(['grpc.health.v1.Health', 'lxcr.v1.AgentService', 'lxcr.v1.ClusterService']);

      const described = await reflection.ask({ fileContainingSymbol: CLUSTER_SERVICE_NAME });
      const files = described.fileDescriptorResponse?.fileDescriptorProto ?? [];
      expect(files.length).toBeGreaterThan(0);
      // A client built from the reflected descriptor alone, as grpcurl does, calls ListHosts.
      const definition = protoLoader.loadFileDescriptorSetFromBuffer(descriptorSet(files), { ...LOADER_OPTIONS, keepCase: true });
      const service = definition[CLUSTER_SERVICE_NAME] as protoLoader.ServiceDefinition;
      expect(Object.keys(service).sort()).toEqual(['Checkpoint', 'ListContainers', 'ListHosts', 'ListSnapshots', 'Migrate', 'Restore', 'StreamEvents', 'WatchTransfer']);
      const checkpointFields = (service['Checkpoint']!.requestType.type as { field: Array<{ name: string }> }).field.map((f) => f.name);
      expect(checkpointFields).toEqual(['container', 'forwarded_by']);
      const Reflected = grpc.makeGenericClientConstructor(service, 'ClusterService');
      const reflected = new Reflected(agents[0]!.grpcEndpoint, grpc.credentials.createInsecure()) as unknown as {
        ListHosts(request: object, metadata: grpc.Metadata, callback: (err: grpc.ServiceError | null, response?: { hosts: Array<{ host_id: string }> }) => void): void;
        close(): void;
      };
      try {
        const hosts = await new Promise<{ hosts: Array<{ host_id: string }> }>((resolve, reject) =>
          reflected.ListHosts({}, bearerMetadata(TOKEN), (err, response) => (err ? reject(err) : resolve(response!))),
        );
        expect(hosts.hosts.map((h) => h.host_id)).toEqual(['host1', 'host2', 'host3']);
      } finally {
        reflected.close();
      }

      const unknown = await reflection.ask({ fileContainingSymbol: 'lxcr.v1.NoSuchService' });
      expect(unknown.errorResponse?.errorCode).toBe(grpc.status.NOT_FOUND);
    } finally {
      reflection.close();
    }
  });
});

describe('the bearer token of the public API', () => {
  it('refuses calls without it or with another one as UNAUTHENTICATED, audits and counts the refusal, and lets agent calls and health through', async () => {
    const since = new Date(Date.now() - 1000);
    const refusedBefore = parseExposition((await scrape(agents[2]!)).text).value('lxcr_requests_refused_total', { outcome: 'refused' }) ?? 0;
    const tokenless = new ClusterClient(agents[2]!.grpcEndpoint, grpc.credentials.createInsecure());
    const wrong = new ClusterClient(agents[2]!.grpcEndpoint, grpc.credentials.createInsecure(), { token: `x${TOKEN.slice(1)}` });
    try {
      await expect(tokenless.listHosts()).rejects.toMatchObject({ code: 'UNAUTHENTICATED', message: expect.stringMatching(/requires a bearer token.*authorization: Bearer/) as unknown });
      await expect(tokenless.streamEvents({ sinceMs: 0, container: '', follow: false }, () => undefined).done).rejects.toMatchObject({ code: 'UNAUTHENTICATED' });
      await expect(tokenless.watchTransfer(CONTAINER, () => undefined).done).rejects.toMatchObject({ code: 'UNAUTHENTICATED' });
      await expect(wrong.checkpoint(CONTAINER)).rejects.toMatchObject({ code: 'UNAUTHENTICATED', message: expect.stringMatching(/not this cluster's/) as unknown });
      await expect(wrong.listHosts()).rejects.toSatisfy((err: CodedError) => err.code === 'UNAUTHENTICATED');
    } finally {
      tokenless.close();
      wrong.close();
    }
    const health = new AgentClient(agents[2]!.grpcEndpoint, grpc.credentials.createInsecure());
    try {
      expect(await health.health(CLUSTER_SERVICE_NAME)).toBe('SERVING');
    } finally {
      health.close();
    }

    const refusedAfter = parseExposition((await scrape(agents[2]!)).text).value('lxcr_requests_refused_total', { outcome: 'refused' });
    expect(refusedAfter).toBe(refusedBefore + 5);
    const log = new EventLog(client, META, createLogger('test'));
    const audited = await until('the refusals in the audit trail', async () => {
      const rows = (await log.between(since, new Date())).filter((e) => e.kind === 'request-refused' && e.host === 'host3' && /bearer token/.test(e.detail ?? ''));
      return rows.length >= 5 ? rows : undefined;
    }, 20_000, 500);
    expect(audited.every((e) => e.outcome === 'refused')).toBe(true);
    expect(audited.map((e) => e.detail!.split(':')[0]).sort()).toEqual(['Checkpoint', 'ListHosts', 'ListHosts', 'StreamEvents', 'WatchTransfer']);
  });

  it('lxcr exits 7 without the token and 0 with --token-file', () => {
    const refused = lxcr('status', '--agent', agents[2]!.grpcEndpoint, '--insecure');
    expect(refused.status, refused.stderr).toBe(7);
    expect(refused.stderr).toMatch(/--token-file/);
    const ok = lxcr('status', '--agent', agents[2]!.grpcEndpoint, '--insecure', '--token-file', tokenFile, '--json');
    expect(ok.status, ok.stderr).toBe(0);
    expect((JSON.parse(ok.stdout) as { hosts: unknown[] }).hosts).toHaveLength(3);
    const unreadable = lxcr('status', '--agent', agents[2]!.grpcEndpoint, '--insecure', '--token-file', join(testbed.runDir, 'no-such-token'));
    expect(unreadable.status).toBe(2);
    expect(unreadable.stderr).toMatch(/--token-file .*no-such-token cannot be read/);
  });
});
