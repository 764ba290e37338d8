import * as grpc from '@grpc/grpc-js';
import type { ServingStatus } from './health.ts';
import type { AgentServiceClient } from './generated/lxcr/v1/AgentService.ts';
import type { HealthClient } from './generated/grpc/health/v1/Health.ts';
import type { HealthCheckResponse__Output } from './generated/grpc/health/v1/HealthCheckResponse.ts';
import type { HandoffRequest } from './generated/lxcr/v1/HandoffRequest.ts';
import type { HandoffResponse__Output } from './generated/lxcr/v1/HandoffResponse.ts';
import type { RestoreRequest } from './generated/lxcr/v1/RestoreRequest.ts';
import type { RestoreResponse__Output } from './generated/lxcr/v1/RestoreResponse.ts';
import { agentProto, healthProto } from './proto.ts';
import { callUnary } from './unary.ts';

/** Another agent, as seen over gRPC: its Restore and its health. Errors come back as our coded errors. */
export class AgentClient {
  private readonly agent: AgentServiceClient;
  private readonly healthClient: HealthClient;

  constructor(
    readonly endpoint: string,
    credentials: grpc.ChannelCredentials,
  ) {
    this.agent = new agentProto.lxcr.v1.AgentService(endpoint, credentials);
    this.healthClient = new healthProto.grpc.health.v1.Health(endpoint, credentials);
  }

  restore(request: RestoreRequest, timeoutMs: number): Promise<RestoreResponse__Output> {
    return callUnary(`Restore of ${request.container} on ${this.endpoint}`, timeoutMs, (options, callback) => this.agent.Restore(request, options, callback));
  }

  handOff(request: HandoffRequest, timeoutMs: number): Promise<HandoffResponse__Output> {
    return callUnary(`Handoff of ${request.container} on ${this.endpoint}`, timeoutMs, (options, callback) => this.agent.Handoff(request, options, callback));
  }

  async health(service = '', timeoutMs = 2000): Promise<ServingStatus> {
    const response = await callUnary<HealthCheckResponse__Output>(`health check of ${this.endpoint}`, timeoutMs, (options, callback) => this.healthClient.Check({ service }, options, callback));
    return response.status;
  }

  close(): void {
    this.agent.close();
    this.healthClient.close();
  }
}
