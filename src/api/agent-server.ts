import * as grpc from '@grpc/grpc-js';
import { InvalidArgumentError, errorMessage } from '../util/errors.ts';
import type { Logger } from '../util/log.ts';
import type { AgentServiceHandlers } from './generated/lxcr/v1/AgentService.ts';
import type { HandoffRequest__Output } from './generated/lxcr/v1/HandoffRequest.ts';
import type { HandoffResponse } from './generated/lxcr/v1/HandoffResponse.ts';
import type { RestoreRequest__Output } from './generated/lxcr/v1/RestoreRequest.ts';
import type { RestoreResponse } from './generated/lxcr/v1/RestoreResponse.ts';
import { requireBearerToken } from './auth.ts';
import { HealthService } from './health.ts';
import { addReflection } from './reflection.ts';
import { AGENT_SERVICE_NAME, CLUSTER_SERVICE_NAME, agentProto, clusterProto, healthProto } from './proto.ts';
import { clusterHandlers, type ClusterOperations } from './cluster-server.ts';
import { unaryHandler, type RefusalListener } from './unary.ts';
import { containerNameProblems } from './validation.ts';

/** What the agent does for the calls of other agents; the API layer only validates, calls and maps errors. */
export interface AgentOperations {
  restore(request: ValidRestoreRequest): Promise<RestoreResponse>;
  handOff(request: ValidHandoffRequest): Promise<HandoffResponse>;
}

export interface ValidHandoffRequest {
  container: string;
  expectedEpoch: number;
  checkpoint: boolean;
  requestedBy: string;
}

export interface ValidRestoreRequest {
  container: string;
  /** undefined: the newest committed version. */
  version: number | undefined;
  expectedEpoch: number;
  fromHost: string;
  requestedBy: string;
}

export interface AgentServerOptions {
  /** host:port to listen on; port 0 picks a free one. */
  address: string;
  credentials: grpc.ServerCredentials;
  operations: AgentOperations;
  /** The public API (ClusterService), served next to the agents' own calls. */
  cluster?: ClusterOperations;
  logger: Logger;
  /** Told of every refused or failed call (the agent puts them in the audit trail). */
  onRefused?: RefusalListener;
  /** When set, every ClusterService call must carry this bearer token (see auth.ts); AgentService and health do not. */
  clusterToken?: string;
}

export interface AgentServer {
  /** host:port the server listens on (the real port when 0 was asked). */
  endpoint: string;
  health: HealthService;
  /** Stops accepting calls, waits up to `graceMs` for running ones, then cancels the rest. */
  stop(graceMs?: number): Promise<void>;
}


/** Checks a Restore request's fields; every problem is named, not just the first. */
export function validateRestoreRequest(request: RestoreRequest__Output): ValidRestoreRequest {
  const problems = containerNameProblems(request.container);
  for (const [field, value] of [['version', request.version], ['expected_epoch', request.expectedEpoch]] as const) {
    if (!Number.isSafeInteger(value) || value < 0) problems.push(`${field} must be a non-negative integer, got ${value}`);
  }
  if (problems.length > 0) throw new InvalidArgumentError(`invalid Restore request: ${problems.join('; ')}`);
  return {
    container: request.container,
    version: request.version === 0 ? undefined : request.version,
    expectedEpoch: request.expectedEpoch,
    fromHost: request.fromHost,
    requestedBy: request.requestedBy,
  };
}

/** Checks a Handoff request's fields; every problem is named. */
export function validateHandoffRequest(request: HandoffRequest__Output): ValidHandoffRequest {
  const problems = containerNameProblems(request.container);
  if (!Number.isSafeInteger(request.expectedEpoch) || request.expectedEpoch < 1) problems.push(`expected_epoch must be a positive integer, got ${request.expectedEpoch}`);
  if (problems.length > 0) throw new InvalidArgumentError(`invalid Handoff request: ${problems.join('; ')}`);
  return { container: request.container, expectedEpoch: request.expectedEpoch, checkpoint: request.checkpoint, requestedBy: request.requestedBy };
}

export async function startAgentServer(options: AgentServerOptions): Promise<AgentServer> {
  const log = options.logger.child('grpc');
  const context = { log, onRefused: options.onRefused };
  const server = new grpc.Server();
  const health = new HealthService(options.cluster ? [AGENT_SERVICE_NAME, CLUSTER_SERVICE_NAME] : [AGENT_SERVICE_NAME]);
  const handlers: AgentServiceHandlers = {
    Restore: unaryHandler(context, 'Restore', (request) => ({ container: request.container }), (request) => options.operations.restore(validateRestoreRequest(request))),
    Handoff: unaryHandler(context, 'Handoff', (request) => ({ container: request.container }), (request) => options.operations.handOff(validateHandoffRequest(request))),
  };
  server.addService(agentProto.lxcr.v1.AgentService.service, handlers);
  if (options.cluster) {
    const authorize = options.clusterToken === undefined ? undefined : requireBearerToken(options.clusterToken);
    server.addService(clusterProto.lxcr.v1.ClusterService.service, clusterHandlers(options.cluster, { ...context, authorize }));
  }
  server.addService(healthProto.grpc.health.v1.Health.service, health.handlers);
  addReflection(server, options.cluster !== undefined);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(options.address, options.credentials, (err, boundPort) => (err ? reject(err) : resolve(boundPort))),
  ).catch((err: unknown) => {
    throw new InvalidArgumentError(`the agent's gRPC server cannot listen on ${options.address}: ${errorMessage(err)}`, { cause: err });
  });
  const host = options.address.slice(0, options.address.lastIndexOf(':'));
  const endpoint = `${host}:${port}`;
  log.info('gRPC server listening', { endpoint });
  return {
    endpoint,
    health,
    stop: async (graceMs = 5000) => {
      health.shutdown();
      await new Promise<void>((resolve) => {
        const force = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, graceMs);
        server.tryShutdown(() => {
          clearTimeout(force);
          resolve();
        });
      });
    },
  };
}
