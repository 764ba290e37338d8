import { execFileSync } from 'node:child_process';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentClient } from '../../src/api/agent-client.ts';
import { startAgentServer, type AgentServer, type ValidRestoreRequest } from '../../src/api/agent-server.ts';
import { AGENT_SERVICE_NAME } from '../../src/api/proto.ts';
import { CodedError, ConflictError, IntegrityError, NotFoundError } from '../../src/util/errors.ts';
import { createLogger } from '../../src/util/log.ts';

// The API layer alone: validation, status codes both ways, health. The operations behind it are exercised on
// the real testbed by the failover tests.
const seen: ValidRestoreRequest[] = [];
let server: AgentServer;
let client: AgentClient;

beforeAll(async () => {
  server = await startAgentServer({
    address: '127.0.0.1:0',
    credentials: grpc.ServerCredentials.createInsecure(),
    logger: createLogger('test-api', 'error'),
    operations: {
      restore: (request) => {
        seen.push(request);
        if (request.container === 'taken') return Promise.reject(new ConflictError('taken is owned by host3 at epoch 4'));
        if (request.container === 'unknown') return Promise.reject(new NotFoundError('unknown has no committed snapshot'));
        if (request.container === 'rotten') return Promise.reject(new IntegrityError('no good copy of chunk ab12'));
        return Promise.resolve({ container: request.container, host: 'host2', epoch: request.expectedEpoch + 1, version: request.version ?? 7, restoreMs: 12.5, alreadyRestored: false });
      },
      handOff: (request) => Promise.resolve({ container: request.container, version: request.checkpoint ? 9 : 0, epoch: request.expectedEpoch, freezeMs: 0 }),
    },
  });
  client = new AgentClient(server.endpoint, grpc.credentials.createInsecure());
});

afterAll(async () => {
  client?.close();
  await server?.stop();
});

const codeOf = (promise: Promise<unknown>) => promise.then(() => 'OK', (err: unknown) => (err instanceof CodedError ? err.code : `not coded: ${String(err)}`));

describe('the agent gRPC API (lxcr.v1.AgentService and grpc.health.v1)', () => {
  it('passes a valid Restore through, with version 0 meaning the newest', async () => {
    const response = await client.restore({ container: 'web-1', expectedEpoch: 3, fromHost: 'host1', requestedBy: 'host3' }, 5000);
    expect(response).toEqual({ container: 'web-1', host: 'host2', epoch: 4, version: 7, restoreMs: 12.5, alreadyRestored: false });
    expect(seen.at(-1)).toEqual({ container: 'web-1', version: undefined, expectedEpoch: 3, fromHost: 'host1', requestedBy: 'host3' });
  });

  it('refuses a malformed request with INVALID_ARGUMENT naming the field, without calling the agent', async () => {
    const before = seen.length;
    const error = await client.restore({ container: '../etc', version: 2 }, 5000).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(CodedError);
    expect((error as CodedError).code).toBe('INVALID_ARGUMENT');
    expect(String(error)).toMatch(/invalid container name "..\/etc"/);
    expect(await codeOf(client.restore({ container: '' }, 5000))).toBe('INVALID_ARGUMENT');
    expect(seen.length).toBe(before);
  });

  it('carries the agent\'s error codes and messages across: ABORTED, NOT_FOUND, DATA_LOSS', async () => {
    const lost = await client.restore({ container: 'taken', expectedEpoch: 3 }, 5000).catch((e: unknown) => e);
    expect((lost as CodedError).code).toBe('ABORTED');
    expect(String(lost)).toContain('taken is owned by host3 at epoch 4');
    expect(await codeOf(client.restore({ container: 'unknown' }, 5000))).toBe('NOT_FOUND');
    expect(await codeOf(client.restore({ container: 'rotten' }, 5000))).toBe('INTEGRITY');
  });

  it('answers the standard health check for the server and the agent service, NOT_FOUND for others', async () => {
    expect(await client.health()).toBe('SERVING');
    expect(await client.health(AGENT_SERVICE_NAME)).toBe('SERVING');
    expect(await codeOf(client.health('no.such.Service'))).toBe('NOT_FOUND');
    server.health.setStatus(AGENT_SERVICE_NAME, 'NOT_SERVING');
    expect(await client.health(AGENT_SERVICE_NAME)).toBe('NOT_SERVING');
    server.health.setStatus(AGENT_SERVICE_NAME, 'SERVING');
  });

  it('reports an agent that does not listen as UNAVAILABLE', async () => {
    const nowhere = new AgentClient('127.0.0.1:1', grpc.credentials.createInsecure());
    try {
      expect(await codeOf(nowhere.health('', 1000))).toMatch(/UNAVAILABLE|TIMEOUT/);
    } finally {
      nowhere.close();
    }
  });

  it('passes a valid Handoff through, and refuses one without an epoch or with a bad name, naming both', async () => {
    expect(await client.handOff({ container: 'web-1', expectedEpoch: 2, checkpoint: true, requestedBy: 'host3' }, 5000)).toEqual({ container: 'web-1', version: 9, epoch: 2, freezeMs: 0 });
    const refused = await client.handOff({ container: '../etc', expectedEpoch: 0 }, 5000).catch((e: unknown) => e);
    expect((refused as CodedError).code).toBe('INVALID_ARGUMENT');
    expect(String(refused)).toMatch(/invalid Handoff request: invalid container name .*; expected_epoch must be a positive integer, got 0/);
  });

  it('has generated types in step with proto/', () => {
    expect(() => execFileSync(process.execPath, ['scripts/gen-proto.mjs', '--check'], { stdio: 'pipe' })).not.toThrow();
  });
});
